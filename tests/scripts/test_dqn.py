"""The DQN tutorial's patterns (replay memory of namedtuples, epsilon-greedy with
max(1).indices, gather, a masked write of the target net's max under no_grad, SmoothL1Loss,
AdamW amsgrad, clip_grad_value_, soft target updates through state dicts) on a small
environment: with Python's random seeded alike, kiln takes the same actions as torch, and the
losses agree step by step."""

from tests.scripts.harness import check_same_losses


def test_dqn_learns_with_torchs_actions_and_losses():
    t, k = check_same_losses("dqn", rtol=1e-5, compiled=False)
    assert k["durations"] == t["durations"]
    assert len(k["losses"]) > 50
