"""pytorch/examples actor-critic: shared body with action and value heads, Categorical
log_prob, SavedAction namedtuples, eps-normalized returns, advantage via value.item(),
smooth_l1_loss critic, torch.stack(...).sum() losses, Adam. Not compiled: every step reads the
action into Python (.item()) to drive the environment, and the loss reads value.item()."""

import numpy as np

from tests.scripts.harness import check_same_losses, run
from tests.torch_streams import pytorch_uses_mkl_stream


def test_actor_critic_matches_torch_step_by_step():
    # actions drawn with NumPy from each library's probabilities: the same episodes
    t, k = check_same_losses("actor_critic", sample=False, episodes=15, rtol=1e-5, atol=1e-5,
                             compiled=False)
    assert k["lengths"] == t["lengths"]
    assert k["running_reward"] == t["running_reward"]


def test_actor_critic_learns_like_torch_with_categorical_sampling():
    """Categorical.sample (multinomial with replacement) draws PyTorch's numbers, so from the
    same seed the sampled episodes and losses are torch's; where PyTorch takes MKL's stream
    (Intel CPUs), kiln's late episode length must lie in torch's seed-to-seed range (widened by
    half of it). Either way it beats its early length."""
    torch_runs = [run("actor_critic", "torch", seed=s) for s in (0, 1)]
    torch_late = [r["late_length"] for r in torch_runs]
    k = run("actor_critic", "kiln", seed=0)
    if not pytorch_uses_mkl_stream():
        assert k["lengths"] == torch_runs[0]["lengths"]
        np.testing.assert_allclose(k["losses"], torch_runs[0]["losses"], rtol=1e-4, atol=1e-5)
    low, high = min(torch_late), max(torch_late)
    slack = 0.5 * (high - low) + 0.1 * high
    assert low - slack <= k["late_length"] <= high + slack, (k["late_length"], torch_late)
    assert k["late_length"] > np.mean(k["lengths"][:10])
