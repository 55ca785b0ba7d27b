"""Run one PyTorch-style script under real torch and under `import kiln as torch`; compare.

A script in `programs/` is written exactly as a PyTorch user writes it (`import torch`,
`import torch.nn as nn`, `from torch.utils.data import DataLoader`, ...) and defines
`main(seed=0, compile=False, initial_state=None) -> dict`, returning at least `losses`. The
harness executes the same source text twice: once as is, and once with every `torch...` import
resolved to the matching `kiln...` module (through the script's own `__import__`, so nothing
global is swapped and torch itself stays importable).

Three comparisons, strongest first:
  * `check_same_losses`: the torch run's initial weights are loaded into the kiln run
    (`initial_state`); with the same batches the per-step losses must agree to `rtol`.
  * `check_within_spread`: kiln's final metric must lie inside the range torch reaches over a
    few seeds, widened by half that range (scripts with dropout or sampling); and where kiln
    draws PyTorch's random numbers (not on Intel CPUs, whose PyTorch takes MKL's dropout
    stream), the same seed alone must give torch's losses.
  * `check_compiled`: the kiln run with its train step under `kiln.compile` gives the eager
    kiln run's losses (same seed, so the same weights and random draws).
"""

from __future__ import annotations

import builtins
import sys
import types
from pathlib import Path

import numpy as np

from tests.torch_streams import pytorch_uses_mkl_stream

PROGRAMS = Path(__file__).parent / "programs"


def _kiln_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (name == "torch" or name.startswith("torch.")):
        name = "kiln" + name[len("torch"):]
    elif level == 0 and name == "functorch":      # functorch's former API: kiln.functorch
        builtins.__import__("kiln.functorch", globals, locals, fromlist, level)
        return sys.modules["kiln.functorch"]
    return builtins.__import__(name, globals, locals, fromlist, level)


def load(program: str, lib: str) -> dict:
    """The script's namespace after running its top level with `torch` bound to `lib`."""
    path = PROGRAMS / f"{program}.py"
    code = compile(path.read_text(), str(path), "exec")
    # a module of its own in sys.modules while it runs, as a script has (dataclasses and
    # pickle look their classes' module up there)
    module = types.ModuleType(f"programs.{program}")
    module.__file__ = str(path)
    namespace = module.__dict__
    if lib == "kiln":
        namespace["__builtins__"] = dict(vars(builtins), __import__=_kiln_import)
    elif lib != "torch":
        raise ValueError(f"lib must be 'torch' or 'kiln', got {lib!r}")
    sys.modules[module.__name__] = module
    # and a parent package there, so pickle can import it to save the script's classes by name
    # (`torch.save(model)` of a whole module)
    if "programs" not in sys.modules:
        package = types.ModuleType("programs")
        package.__path__ = [str(PROGRAMS)]
        sys.modules["programs"] = package
    exec(code, namespace)
    return namespace


def run(program: str, lib: str, **kwargs) -> dict:
    return load(program, lib)["main"](**kwargs)


def _convert_state(state):
    """torch's initial weights for the kiln run: a tensor, or (nested) dicts of them."""
    import kiln
    if isinstance(state, dict):
        return {k: _convert_state(v) for k, v in state.items()}
    if hasattr(state, "detach"):
        return kiln.tensor(state.detach().cpu().numpy().copy())
    raise TypeError(f"initial_state must hold tensors or dicts of them, got {type(state)}")


def check_same_losses(program: str, rtol: float = 1e-5, atol: float = 1e-6,
                      compiled: bool = True, **kwargs) -> tuple[dict, dict]:
    """Torch's run, then kiln's from torch's initial weights: the losses agree step by step.
    With `compiled`, the kiln run with its train step compiled repeats kiln's eager losses."""
    t = run(program, "torch", seed=0, **kwargs)
    state = _convert_state(t["initial_state"])
    k = run(program, "kiln", seed=0, initial_state=state, **kwargs)
    np.testing.assert_allclose(k["losses"], t["losses"], rtol=rtol, atol=atol,
                               err_msg=f"{program}: kiln's losses differ from torch's")
    if compiled:
        _check_compiled(program, k, initial_state=_convert_state(t["initial_state"]), **kwargs)
    return t, k


def check_within_spread(program: str, key: str = "losses", seeds=(0, 1, 2),
                        compiled: bool = True, same_seed_rtol: float = 1e-4,
                        **kwargs) -> tuple[list, dict]:
    """kiln's final `key` lies within torch's seed-to-seed range, widened by half of it (and
    by 2% of its size, so a range of zero width still admits rounding); kiln's loss falls.
    Where kiln's random streams are PyTorch's (everywhere but Intel CPUs, where PyTorch draws
    dropout from MKL), kiln's run from seed 0 also gives torch's seed-0 losses to
    `same_seed_rtol`. With `compiled`, the compiled kiln run repeats the eager one's losses."""
    def final(result):
        value = result[key]
        return float(value[-1] if isinstance(value, (list, tuple)) else value)
    torch_runs = [run(program, "torch", seed=s, **kwargs) for s in seeds]
    torch_values = [final(r) for r in torch_runs]
    k = run(program, "kiln", seed=0, **kwargs)
    value = final(k)
    if not pytorch_uses_mkl_stream():
        # kiln draws PyTorch's numbers (weights, shuffles, dropout masks, samples): from the
        # same seed alone the run is torch's, step by step
        np.testing.assert_allclose(k["losses"], torch_runs[0]["losses"], rtol=same_seed_rtol,
                                   atol=1e-6, err_msg=f"{program}: from the same seed, kiln's "
                                   "losses differ from torch's")
    low, high = min(torch_values), max(torch_values)
    slack = 0.5 * (high - low) + 0.02 * max(abs(low), abs(high))
    assert low - slack <= value <= high + slack, \
        f"{program}: kiln's final {key} {value:.5g} is outside torch's range " \
        f"[{low:.5g}, {high:.5g}] over seeds {seeds} (slack {slack:.3g})"
    losses = k["losses"]
    assert losses[-1] < losses[0], f"{program}: kiln's loss did not decrease: {losses}"
    if compiled:
        _check_compiled(program, k, **kwargs)
    return torch_values, k


def _check_compiled(program: str, eager: dict, rtol: float = 1e-4, atol: float = 1e-5,
                    **kwargs) -> dict:
    """The kiln run with its train step compiled repeats the eager kiln run's losses."""
    compiled = run(program, "kiln", seed=0, compile=True, **kwargs)
    np.testing.assert_allclose(compiled["losses"], eager["losses"], rtol=rtol, atol=atol,
                               err_msg=f"{program}: compiled kiln differs from eager kiln")
    return compiled


def _as_array(value):
    if hasattr(value, "detach"):
        value = value.detach()
    if hasattr(value, "numpy"):
        return np.asarray(value.numpy())
    return np.asarray(value)


def check_same_values(program: str, rtol: float = 1e-6, atol: float = 1e-7,
                      **kwargs) -> tuple[dict, dict]:
    """Scripts that compute rather than train: every entry of `values` (tensors, arrays,
    numbers, strings) agrees between torch and kiln, in shape and value."""
    t = run(program, "torch", seed=0, **kwargs)["values"]
    k = run(program, "kiln", seed=0, **kwargs)["values"]
    assert list(k) == list(t), f"{program}: the scripts computed different entries"
    for name in t:
        tv, kv = t[name], k[name]
        if isinstance(tv, str) or isinstance(tv, bool):
            assert kv == tv, f"{program}: {name}: kiln gives {kv!r}, torch {tv!r}"
            continue
        ta, ka = _as_array(tv), _as_array(kv)
        assert ka.shape == ta.shape, f"{program}: {name}: shape {ka.shape} != {ta.shape}"
        np.testing.assert_allclose(ka.astype(np.float64), ta.astype(np.float64), rtol=rtol,
                                   atol=atol, err_msg=f"{program}: {name}")
    return t, k


class no_compile_fallback:
    """A context in which a `kiln.compile` warning (a graph break, an eager fallback, a
    recompile limit) fails the test; only a machine without a C compiler is excused."""

    def __enter__(self):
        import warnings
        self._catcher = warnings.catch_warnings(record=True)
        self.caught = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)
        notes = [str(w.message) for w in self.caught if str(w.message).startswith("kiln.compile")
                 and "no working C compiler" not in str(w.message)]
        if exc[0] is None:
            assert not notes, f"the compiled step fell back to eager: {notes}"
        return False
