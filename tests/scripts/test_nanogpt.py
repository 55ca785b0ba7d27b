"""nanoGPT's train.py pattern (see the program's docstring): `torch.compile(model)`, gradient
accumulation, a disabled GradScaler, cosine lr into the param groups, an estimate of train/val
loss under `@torch.no_grad()`, a checkpoint of the compiled model resumed after stripping
`_orig_mod.`, greedy generation. Dropout is 0: the losses agree step by step."""

import numpy as np

from tests.scripts.harness import _convert_state, no_compile_fallback, run


def test_nanogpt_trains_checkpoints_resumes_and_generates_like_torch():
    t = run("nanogpt", "torch", seed=0)
    k = run("nanogpt", "kiln", seed=0, initial_state=_convert_state(t["initial_state"]))
    assert len(k["losses"]) == 18           # iterations 0-12, then 12-16 after resuming
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(k["evals"], t["evals"], rtol=1e-5, atol=1e-6)
    assert k["resumed_from"] == t["resumed_from"] == 12
    assert k["saved_keys"] == t["saved_keys"]
    assert (k["completion"], k["n_params"]) == (t["completion"], t["n_params"])


def test_nanogpt_compiled_model_replays_and_saves_torch_compile_keys():
    t = run("nanogpt", "torch", seed=0)
    eager = run("nanogpt", "kiln", seed=0, initial_state=_convert_state(t["initial_state"]))
    with no_compile_fallback():
        compiled = run("nanogpt", "kiln", seed=0, compile=True,
                       initial_state=_convert_state(t["initial_state"]))
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(compiled["evals"], eager["evals"], rtol=1e-4, atol=1e-5)
    # the checkpoint of a compiled model has torch.compile's keys, which the script strips
    assert compiled["saved_keys"] == sorted("_orig_mod." + k for k in t["saved_keys"])
    assert compiled["completion"] == eager["completion"]


def test_nanogpt_from_the_same_seed_alone_gives_torchs_run():
    """No weights copied: `torch.manual_seed(0)` gives kiln PyTorch's initial weights (normal_
    init, to float32 rounding), so the whole run repeats torch's."""
    t = run("nanogpt", "torch", seed=0)
    k = run("nanogpt", "kiln", seed=0)
    for name, value in t["initial_state"].items():
        np.testing.assert_allclose(k["initial_state"][name].numpy(), value.numpy(), rtol=1e-5,
                                   atol=1e-7, err_msg=name)
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=1e-5, atol=1e-6)
    assert k["completion"] == t["completion"]
