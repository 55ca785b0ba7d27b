"""minGPT (pytorch/examples distributed/minGPT-ddp, single process): a character GPT with a
hand-written causal attention and an nn.MultiheadAttention block given a float attn_mask,
AdamW parameter groups, clipping, a per-step warm-up scheduler, a torch.save snapshot resumed
in a fresh model, and greedy top-k generation. Dropout is 0: the losses agree step by step."""

import warnings

import numpy as np

from tests.scripts.harness import _convert_state, check_same_losses, run


def test_mingpt_trains_resumes_and_generates_like_torch():
    t, k = check_same_losses("mingpt", rtol=1e-5, compiled=False)
    assert len(k["losses"]) == 17      # two epochs of 7 batches, then 3 after resuming
    assert k["n_params"] == t["n_params"]
    assert k["completion"] == t["completion"]


def test_mingpt_compiled_step_replays_without_falling_back():
    t = run("mingpt", "torch", seed=0)
    state = _convert_state(t["initial_state"])
    eager = run("mingpt", "kiln", seed=0, initial_state=state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")      # a fallback to eager warns: fail on it
        compiled = run("mingpt", "kiln", seed=0, compile=True,
                       initial_state=_convert_state(t["initial_state"]))
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=1e-4, atol=1e-5)
    assert compiled["completion"] == eager["completion"]
