"""PyTorch's own operator samples, run through kiln and compared with PyTorch.

PyTorch describes each of its operators by an `OpInfo` (`torch.testing._internal.
common_methods_invocations.op_db`, ~700 of them) whose `sample_inputs` are the inputs its own
test suite uses: broadcasting, scalars, empty and non-contiguous tensors, keyword options.
`check(op, dtype)` feeds each sample to torch and to kiln's function of the same name
(`nn.functional.conv2d` is `kiln.nn.functional.conv2d`; a name that is only a method is
`kiln.Tensor.<name>`) and sorts the result:

- `ok`: same structure, shapes, dtypes and values (NaN where torch has NaN);
- `wrong`: kiln returned something else: the worst kind, a silent wrong answer;
- `error`: kiln raised where torch did not;
- `missing`: kiln has no function of that name.

A sample that torch itself refuses is skipped. With `grad=True` (floating dtypes), each
sample's differentiable inputs get gradients of a random weighting of the outputs, compared too.

`python -m tests.opinfo_sweep [--dtype float32] [--grad] [--only NAME,...] [--out FILE]` runs the
sweep and prints a table of ops that are not all `ok`. Other ways to call the same samples:
`--out-variant` (the ops that take `out=`, called with it, `run_out_sample`), `--variant
method|inplace` (the op's Tensor method, `x.where(c, y)`, or its in-place one, `x.add_(y)`, on
a clone), `--device cuda` (kiln's inputs are cuda tensors on `tests/fake_cuda.py`'s stand-in,
which refuses NumPy-only code on device arrays). `tests/test_opinfo*.py` run the ops listed as
passing so a regression fails CI.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import random
import re
import signal
import types
import sys
import unittest
import warnings
from collections import Counter

import numpy as np
import torch

import kiln

COMPILED_SAMPLES = 12

# Uninitialized memory: nothing to compare.
UNCOMPARABLE = re.compile(r"(^|[._])empty($|[._])|^new_empty|^empty_")


def ops():
    """The OpInfos (imported lazily: loading them takes ~5 s). Their module's import freezes
    `torch.backends` flags for PyTorch's own suite (`disable_global_flags`): thawed again, as
    tests that set `torch.backends.cudnn.benchmark` run in the same process."""
    from torch.testing._internal import common_utils
    from torch.testing._internal.common_methods_invocations import op_db
    torch.backends.disable_global_flags.__globals__["__allow_nonbracketed_mutation_flag"] = True
    common_utils.set_rng_seed = _set_rng_seed
    from torch.testing._internal.opinfo import core
    common_utils.extract_test_fn = core.extract_test_fn = _extract_test_fn
    return op_db


def _extract_test_fn():
    """PyTorch's test-suite `extract_test_fn` (the unittest test method running the samples),
    which its sample iterators call for every sample: the same frames searched, without
    `inspect.stack`'s source lookups (each scans all of `sys.modules`, most of a sweep's time)."""
    try:
        frame = sys._getframe()
        while frame is not None:
            self_val = frame.f_locals.get("self")
            frame = frame.f_back
            if not isinstance(self_val, unittest.TestCase):
                continue
            *_, cls_name, test_name = self_val.id().rsplit(".", 2)
            if cls_name == type(self_val).__name__ and test_name.startswith("test"):
                return getattr(self_val, test_name).__func__
    except Exception:
        pass
    return None


def _set_rng_seed(seed=None):
    """PyTorch's test-suite `set_rng_seed`, which its sample iterators call before every sample,
    seeding the CPU generator only (see `_seed_torch`): the same draws, without ~3 ms of stack
    formatting per sample."""
    from torch.testing._internal.common_utils import SEED
    seed = SEED if seed is None else seed
    _seed_torch(seed)
    random.seed(seed)
    np.random.seed(seed)


_SEED_OPINFO = [True]       # off in --compiled runs: compiled and eager draw from one seed
DEVICE = ["cpu"]            # --device cuda: kiln's inputs on tests/fake_cuda.py's stand-in


def kiln_set_seed(op, *args, **kwargs):
    """OpInfo's `wrapper_set_seed` for kiln: seed 42, the generator's state restored after
    (which reads the state into Python: a graph break under kiln.compile, hence the switch)."""
    if not _SEED_OPINFO[0]:
        return op(*args, **kwargs)
    with kiln.random.fork_rng():
        kiln.manual_seed(42)
        return op(*args, **kwargs)


def rebound(fn):
    """A copy of one of PyTorch's OpInfo lambdas (`lambda x: x.mT`, `lambda *t, eq: torch.einsum(
    eq, t)`) that reads `torch` (and `F`) as kiln."""
    names = {**fn.__globals__, "torch": kiln, "F": kiln.nn.functional,
             "wrapper_set_seed": kiln_set_seed}
    return types.FunctionType(fn.__code__, names, fn.__name__, fn.__defaults__, fn.__closure__)


def callables(op):
    """(kiln's, torch's) callable for an OpInfo: its own Python function with `torch` read as
    kiln, kiln.ops.aten's twin of an ATen op, or the function or method of the same name."""
    fn = op.op
    if isinstance(fn, types.FunctionType) and fn.__module__.startswith("torch.testing"):
        return rebound(fn), fn
    if isinstance(fn, torch._ops.OpOverload):       # an ATen op (aten.slice.Tensor): kiln's
        packet = getattr(kiln.ops.aten, fn._overloadpacket.__name__, None)
        if getattr(packet, fn._overloadname, None) is not None:
            return getattr(packet, fn._overloadname), fn
    return resolve(op.name, kiln), fn


def variant_callables(op, variant):
    """(kiln's, torch's) callable for an OpInfo's `method` variant (`x.where(c, y)`) or its
    `inplace` one (`x.add_(y)`); (None, None) when it has none, (None, torch's) when kiln's
    Tensor lacks the method. An in-place call acts on a clone of the sample's input (both
    libraries' calls read that input) and must return the clone."""
    fn = op.method_variant if variant == "method" else op.inplace_variant
    if fn is None:
        return None, None
    if isinstance(fn, types.FunctionType) and fn.__module__.startswith("torch.testing"):
        kfn = rebound(fn)                   # `lambda x, *a: F.elu(x, *a, inplace=True)`
    elif isinstance(fn, functools.partial):     # partial(F.mish, inplace=True)
        kfn = resolve(op.name, kiln)
        kfn = kfn and functools.partial(kfn, *fn.args, **fn.keywords)
    elif hasattr(kiln.Tensor, fn.__name__):
        kfn = getattr(kiln.Tensor, fn.__name__)
    else:
        return None, fn
    if kfn is None:
        return None, fn
    return (kfn, fn) if variant == "method" else (_on_clone(kfn), _on_clone(fn))


def _on_clone(fn):
    def inplace(x, *args, **kwargs):
        y = x.clone()
        out = fn(y, *args, **kwargs)
        if out is not y:
            raise AssertionError(f"the in-place call returned {type(out).__name__}, not its "
                                 f"input")
        return out
    return inplace


def resolve(name: str, lib):
    """`lib`'s callable for an OpInfo name (`linalg.svd`, `__radd__`), or None."""
    obj = lib
    for part in name.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            break
    if obj is not None and not isinstance(obj, type(lib)) and callable(obj):
        return obj                  # (not a dtype of the method's name: kiln.cdouble)
    tensor = lib.Tensor
    method = getattr(tensor, name, None)
    if method is not None:
        return lambda self, *a, **k: method(self, *a, **k)
    return None


_DTYPES = {getattr(torch, n): getattr(kiln, n) for n in
           ("float16", "bfloat16", "float32", "float64", "complex64", "complex128", "bool",
            "uint8", "int8", "int16", "int32", "int64") if hasattr(kiln, n)}


def to_kiln(x):
    """Convert a torch sample argument (tensors nested in lists, dtypes, sizes) to kiln's."""
    if isinstance(x, torch.Tensor) and x.layout == torch.sparse_csr and x.ndim == 2:
        k = kiln.sparse_csr_tensor(to_kiln(x.crow_indices()), to_kiln(x.col_indices()),
                                   to_kiln(x.detach().values()), tuple(x.shape))
        return k.requires_grad_(True) if x.requires_grad else k
    if isinstance(x, torch.Tensor):
        t = x.detach().resolve_conj().resolve_neg()
        if t.dtype == torch.bfloat16:
            k = kiln.tensor(t.float().numpy()).to(kiln.bfloat16)
        else:
            k = kiln.tensor(t.numpy().copy(), device=DEVICE[0])
        return k.requires_grad_(True) if x.requires_grad else k
    if isinstance(x, torch.dtype):
        return _DTYPES.get(x, x)
    if isinstance(x, torch.Size):
        return tuple(x)
    if isinstance(x, torch.device):
        return str(x)
    if isinstance(x, torch.memory_format):
        return getattr(kiln, str(x).replace("torch.", ""), x)
    if isinstance(x, torch.layout):
        return getattr(kiln, str(x).replace("torch.", ""), x)
    if isinstance(x, torch.nn.Module) and not list(x.parameters()) and not list(x.buffers()) \
            and hasattr(kiln.nn, type(x).__name__):
        # a stateless module passed as an option (distance_function=PairwiseDistance()):
        # kiln's module of that name with the same public attributes
        module = getattr(kiln.nn, type(x).__name__)()
        module.__dict__.update({k: v for k, v in vars(x).items() if not k.startswith("_")})
        return module
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(to_kiln(v) for v in x)
    if isinstance(x, dict):
        return {k: to_kiln(v) for k, v in x.items()}
    return x


def flat(x):
    if isinstance(x, (list, tuple)):
        return [o for v in x for o in flat(v)]
    return [x]


def tolerance(dtype):
    return {torch.float16: (1e-3, 1e-2), torch.bfloat16: (1e-2, 5e-2),
            torch.float32: (1e-5, 1e-4), torch.complex64: (1e-5, 1e-4),
            torch.float64: (1e-8, 1e-7), torch.complex128: (1e-8, 1e-7)}.get(dtype, (0, 0))


def compare(k, t, what):
    """None when kiln's result `k` equals torch's `t`, else why not."""
    if isinstance(t, torch.Tensor) and t.layout != torch.strided:
        if str(getattr(k, "layout", None)).replace("kiln.", "") != str(t.layout)[6:]:
            return f"{what}: layout {getattr(k, 'layout', None)}, torch {t.layout}"
        return compare(k.to_dense(), t.to_dense(), f"{what} (to_dense)")
    if isinstance(t, torch.Tensor):
        if not isinstance(k, kiln.Tensor):
            return f"{what}: kiln returned {type(k).__name__}, torch a tensor"
        if tuple(k.shape) != tuple(t.shape):
            return f"{what}: shape {tuple(k.shape)}, torch {tuple(t.shape)}"
        tname = str(t.dtype).replace("torch.", "")
        if k.dtype.name != tname:
            return f"{what}: dtype {k.dtype.name}, torch {tname}"
        if t.dtype == torch.bfloat16:
            kv, tv = k.detach().float().numpy(), t.detach().float().numpy()
        else:
            kv = np.asarray(k.detach().cpu().numpy())
            tv = t.detach().resolve_conj().resolve_neg().numpy()
        atol, rtol = tolerance(t.dtype)
        if kv.dtype.kind in "fc":
            kn, tn = np.isnan(kv), np.isnan(tv)
            if (kn != tn).any():
                return f"{what}: NaN at {int((kn != tn).sum())} places where torch differs"
            bad = ~tn & ~np.isclose(kv, tv, atol=atol, rtol=rtol)
            bad &= ~((kv == tv) | (np.isinf(kv) & (kv == tv)))
        else:
            bad = kv != tv
        if bad.any():
            i = np.argwhere(bad)[0]
            return (f"{what}: {int(bad.sum())} of {bad.size} differ, e.g. at {tuple(i)} "
                    f"kiln {kv[tuple(i)]!r} torch {tv[tuple(i)]!r}")
        return None
    if isinstance(t, (list, tuple)):
        if not isinstance(k, (list, tuple)) or len(k) != len(t):
            return f"{what}: kiln returned {type(k).__name__}, torch {type(t).__name__} of {len(t)}"
        for i, (a, b) in enumerate(zip(k, t)):
            why = compare(a, b, f"{what}[{i}]")
            if why:
                return why
        return None
    if isinstance(t, float) and isinstance(k, (float, int)):
        if math.isnan(t) and math.isnan(k) or math.isclose(k, t, rel_tol=1e-6, abs_tol=1e-9):
            return None
        return f"{what}: {k!r}, torch {t!r}"
    if isinstance(k, kiln.Tensor) and not isinstance(t, torch.Tensor):
        return f"{what}: kiln returned a tensor, torch {type(t).__name__} {t!r}"
    if isinstance(t, torch.dtype):
        return None if _DTYPES.get(t) == k else f"{what}: {k!r}, torch {t!r}"
    return None if k == t else f"{what}: {k!r}, torch {t!r}"


class Timeout(Exception):
    pass


def _why(e: Exception) -> str:
    """An exception in one line: its type and the first line of its message."""
    return f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"


def _alarm(signum, frame):
    raise Timeout()


def comparers(dtype=None):
    """Per-op comparisons for results that are not unique (`COMPARE` in `tests/opinfo_known`);
    the bool and complex64 modes' own lists add to the others in those modes."""
    from tests.opinfo_known import bools, complex, core, index, linalg, nn
    by_mode = {torch.bool: bools.COMPARE, torch.complex64: complex.COMPARE}.get(dtype, {})
    return {**core.COMPARE, **index.COMPARE, **nn.COMPARE, **linalg.COMPARE, **by_mode}


def _seed_torch(seed: int) -> None:
    """torch.manual_seed for the CPU generator alone: the full call also queues a lazy CUDA
    seeding that formats the whole Python stack each time (3 ms under pytest, half of the
    max_pool2d sweep's time)."""
    torch.random.default_generator.manual_seed(seed)


def run_sample(kfn, tfn, sample, grad, custom=None):
    """('ok'|'wrong'|'error'|'skip', message) for one sample. `custom(k_out, t_out, args,
    compare)` replaces the comparison of outputs, and then gradients are not compared, unless
    it has `compare_grads = True` (its floating outputs are unique: topk's values)."""
    args = (sample.input, *sample.args)
    try:
        _seed_torch(0)
        t_out = tfn(*args, **sample.kwargs)
    except Exception:
        return "skip", ""
    kargs, kkw = to_kiln(args), to_kiln(sample.kwargs)
    try:
        kiln.manual_seed(0)
        k_out = kfn(*kargs, **kkw)
    except Timeout:
        raise
    except Exception as e:
        return "error", _why(e)
    if custom and getattr(custom, "reads_kwargs", False):      # (sort's dim= and stable=)
        why = custom(k_out, t_out, args, compare, sample.kwargs)
    else:
        why = custom(k_out, t_out, args, compare) if custom else compare(k_out, t_out, "output")
    if why:
        return "wrong", why
    if not grad or custom and not getattr(custom, "compare_grads", False):
        return "ok", ""
    t_in = [x for x in flat(args) if isinstance(x, torch.Tensor) and x.requires_grad]
    # a sparse leaf's gradient is its values' (kiln's leaf is the values tensor itself)
    k_in = [x.values() if x.layout != kiln.strided else x for x in flat(kargs)
            if isinstance(x, kiln.Tensor) and x.requires_grad]
    # a sparse result is differentiated through its values (its pattern is fixed)
    t_outs = [o.values() if o.layout != torch.strided else o for o in flat(t_out)
              if isinstance(o, torch.Tensor) and o.requires_grad and o.dtype.is_floating_point]
    if not t_in or not t_outs or len(t_in) != len(k_in):
        return "ok", ""
    k_outs = [o.values() if o.layout != kiln.strided else o for o in flat(k_out)
              if isinstance(o, kiln.Tensor) and o.requires_grad and o.dtype.is_floating_point]
    if len(k_outs) != len(t_outs):
        return "wrong", f"grad: {len(k_outs)} differentiable outputs, torch {len(t_outs)}"
    rng = np.random.default_rng(1)
    ws = [rng.uniform(-1, 1, tuple(o.shape)) for o in t_outs]
    t_g = torch.autograd.grad(t_outs, t_in, [torch.from_numpy(w).to(o.dtype)
                                             for w, o in zip(ws, t_outs)], allow_unused=True)
    try:
        k_g = kiln.autograd.grad([o for o in k_outs], k_in,
                                 [kiln.tensor(w, device=o.device).to(o.dtype)
                                  for w, o in zip(ws, k_outs)],
                                 allow_unused=True)
    except Timeout:
        raise
    except Exception as e:
        return "error", f"grad: {_why(e)}"
    for i, (a, b) in enumerate(zip(k_g, t_g)):
        if b is None:
            continue
        if b.layout != torch.strided:       # the input's pattern: compared by its values
            b = b.values()
        if a is None:
            if not torch.all(b == 0):
                return "wrong", f"grad {i}: kiln None, torch nonzero"
            continue
        why = compare(a, b, f"grad {i}")
        if why:
            return "wrong", why
    return "ok", ""


# `--out-variant`: each sample once more with `out=` a tensor of the result's shape and dtype,
# an empty one (torch resizes it), and one of float64 for a float32 result (torch casts into it,
# or refuses: an op whose out must have the result's dtype exactly)
OUT_CASES = ("same", "empty", "float64")


def _out_like(t, case):
    """A torch `out` tensor for the result `t`, or None when the case does not apply."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        return None
    if case == "empty":
        return torch.zeros(0, dtype=t.dtype)
    if case == "float64":
        return torch.zeros(t.shape, dtype=torch.float64) if t.dtype == torch.float32 else None
    return torch.zeros(t.shape, dtype=t.dtype)


def run_out_sample(kfn, tfn, sample, case, custom=None):
    """('ok'|'wrong'|'error'|'skip', message): the op with `out=` (a tuple of tensors for a
    multi-output op) in torch and kiln. What is written into `out` must match, and so must
    whether the op returns the `out` tensors themselves, and whether it refuses `out`'s dtype."""
    args = (sample.input, *sample.args)
    try:
        _seed_torch(0)
        expected = tfn(*args, **sample.kwargs)
    except Exception:
        return "skip", ""
    many = isinstance(expected, (tuple, list))
    t_out = [_out_like(t, case) for t in (expected if many else [expected])]
    if not t_out or any(o is None for o in t_out):
        return "skip", ""
    k_out = [to_kiln(o) for o in t_out]
    t_out, k_out = (tuple(t_out), tuple(k_out)) if many else (t_out[0], k_out[0])
    try:
        _seed_torch(0)
        t_ret = tfn(*args, **sample.kwargs, out=t_out)
        t_raised = None
    except TypeError:                       # torch takes no out= on this form
        return "skip", ""
    except Exception as e:
        if case != "float64":
            return "skip", ""
        t_raised = e
    kargs, kkw = to_kiln(args), to_kiln(sample.kwargs)
    try:
        kiln.manual_seed(0)
        k_ret = kfn(*kargs, **kkw, out=k_out)
    except Timeout:
        raise
    except Exception as e:
        if t_raised is not None:
            return "ok", ""
        return "error", _why(e)
    if t_raised is not None:
        return "wrong", (f"out={case}: kiln wrote where torch raised "
                         f"{str(t_raised).splitlines()[0][:150]}")

    def same(ret, out):
        return all(r is o for r, o in zip(ret, out)) if many else ret is out
    if same(k_ret, k_out) != same(t_ret, t_out):
        return "wrong", f"out={case}: kiln returned {type(k_ret).__name__}, not the out tensors"
    if case == "float64":       # torch wrote its float32 result cast to float64
        t_out = t_out.float() if not many else tuple(o.float() for o in t_out)
        k_out = k_out.float() if not many else tuple(o.float() for o in k_out)
    why = custom(k_out, t_out, args, compare) if custom and not getattr(
        custom, "reads_kwargs", False) else compare(k_out, t_out, f"out={case}")
    return ("wrong", why) if why else ("ok", "")


def to_torch(x):
    """kiln results as torch's, to compare compiled with eager through `compare`."""
    if isinstance(x, kiln.Tensor):
        if x.dtype == kiln.bfloat16:
            return torch.from_numpy(x.detach().float().numpy()).to(torch.bfloat16)
        return torch.from_numpy(np.array(x.detach().cpu().numpy()))
    if isinstance(x, (list, tuple)) and not hasattr(x, "_fields"):
        return type(x)(to_torch(v) for v in x)
    if isinstance(x, tuple):              # a named tuple of results
        return tuple(to_torch(v) for v in x)
    return {v: k for k, v in _DTYPES.items()}.get(x, x) if isinstance(x, kiln.dtype) else x


def run_compiled(kfn, sample, grad=False):
    """('ok'|'wrong'|'error'|'fallback'|'skip', message): kiln.compile of the op against kiln
    eager on one sample (the third call, a replay of the compiled program). With `grad`, the
    compiled function also calls backward on a random weighting of the float outputs, and the
    inputs' `.grad` must equal eager's."""
    args = (sample.input, *sample.args)
    fresh = lambda: (to_kiln(args), to_kiln(sample.kwargs))

    def step(*a, **k):
        out = kfn(*a, **k)
        floats = [o for o in flat(out) if isinstance(o, kiln.Tensor) and o.requires_grad
                  and o.dtype.is_floating_point]
        if grad and floats:
            loss = sum((o * kiln.linspace(-1, 1, o.numel(), dtype=o.dtype, device=o.device)
                        .reshape(o.shape)).sum() for o in floats)
            loss.backward()
        return out

    def grads(kargs):
        return [x.grad for x in flat(kargs) if isinstance(x, kiln.Tensor) and x.requires_grad]

    _SEED_OPINFO[0] = False
    try:
        return _run_compiled(step, grads, fresh)
    finally:
        _SEED_OPINFO[0] = True


def _run_compiled(step, grads, fresh):
    try:
        kargs, kkw = fresh()
        kiln.manual_seed(0)
        eager = to_torch(step(*kargs, **kkw))
        eager_grads = to_torch(grads(kargs))
    except Timeout:
        raise
    except Exception:
        return "skip", ""
    compiled = kiln.compile(step)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        try:
            for _ in range(3):
                kargs, kkw = fresh()
                kiln.manual_seed(0)
                out = compiled(*kargs, **kkw)
        except Timeout:
            raise
        except Exception as e:
            return "error", _why(e)
    why = compare(out, eager, "compiled") or compare(grads(kargs), eager_grads, "compiled grads")
    if why:
        return "wrong", why
    fell = [str(w.message) for w in seen if "kiln.compile" in str(w.message)]
    return ("fallback", fell[0].splitlines()[0][:200]) if fell else ("ok", "")


def check(op, dtype, grad=False, limit_s=60, compiled=False, most=None, out_variant=False,
          variant="function"):
    """Counter of outcomes and the first message of each kind, for one OpInfo and dtype (its
    first `most` samples, when given); `out_variant`: each sample in the `OUT_CASES`, for an op
    that takes `out=`; `variant`: the op called as a `function`, or as its Tensor `method` or
    `inplace` method (`variant_callables`), for an op that has one."""
    counts, first = Counter(), {}
    if UNCOMPARABLE.search(op.name) or not op.supports_dtype(dtype, "cpu") or (
            out_variant and not op.supports_out):
        return counts, first
    kfn, tfn = callables(op) if variant == "function" else variant_callables(op, variant)
    if tfn is None:
        return counts, first
    if kfn is None:
        counts["missing"] += 1
        return counts, first
    table = comparers(dtype)
    custom = table.get(label(op)) or table.get(op.name)
    old = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(limit_s)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            grad = grad and op.supports_autograd and dtype.is_floating_point
            samples = op.sample_inputs("cpu", dtype, requires_grad=grad)
            # a compile costs ~0.1-1 s: the first COMPILED_SAMPLES samples of each op
            if most is None and compiled:
                most = COMPILED_SAMPLES
            for sample in itertools.islice(samples, most):
                if out_variant:
                    for case in OUT_CASES:
                        kind, why = run_out_sample(kfn, tfn, sample, case, custom)
                        counts[kind] += 1
                        first.setdefault(kind, why)
                    continue
                kind, why = (run_compiled(kfn, sample, grad) if compiled else
                             run_sample(kfn, tfn, sample, grad, custom))
                counts[kind] += 1
                first.setdefault(kind, why)
    except Timeout:
        counts["timeout"] += 1
    except Exception as e:               # sample generation itself failed
        counts["skip"] += 1
        first.setdefault("skip", f"{type(e).__name__}: {e}"[:200])
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    return counts, first


def label(op):
    return op.name + (f".{op.variant_test_name}" if op.variant_test_name else "")


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--dtype", default="float32")
    p.add_argument("--grad", action="store_true")
    p.add_argument("--only", default="")
    p.add_argument("--out", default="")
    p.add_argument("--compiled", action="store_true", help="kiln.compile against kiln eager")
    p.add_argument("--samples", type=int, default=None, help="at most this many per op")
    p.add_argument("--out-variant", action="store_true",
                   help="ops taking out=: each sample with out= tensors (OUT_CASES)")
    p.add_argument("--variant", default="function", choices=("function", "method", "inplace"),
                   help="call each op as a function, or as its Tensor method or in-place "
                        "method (ops that have one)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                   help="cuda: kiln's inputs on the fake CUDA (tests/fake_cuda.py), against "
                        "torch on the CPU")
    a = p.parse_args(argv)
    if a.device == "cuda":
        from tests import fake_cuda
        fake_cuda.install()
        DEVICE[0] = "cuda"
    dtype = getattr(torch, a.dtype)
    only = set(a.only.split(",")) - {""}
    rows = []
    for op in ops():
        if only and op.name not in only and label(op) not in only:
            continue
        counts, first = check(op, dtype, a.grad, compiled=a.compiled, most=a.samples,
                              out_variant=a.out_variant, variant=a.variant)
        rows.append({"op": label(op), "counts": dict(counts), "first": first})
        bad = {k: v for k, v in counts.items() if k not in ("ok", "skip")}
        if bad:
            worst = next(k for k in ("wrong", "error", "timeout", "missing", "fallback")
                         if k in bad)
            print(f"{label(op):45s} {dict(counts)}  {worst}: {first.get(worst, '')}",
                  flush=True)
    total = Counter()
    for r in rows:
        total.update({("clean" if set(r["counts"]) <= {"ok", "skip"} and r["counts"].get("ok")
                       else "bad" if set(r["counts"]) - {"ok", "skip"} else "untested"): 1})
    print(f"{a.dtype}{' grad' if a.grad else ''}{' compiled' if a.compiled else ''}"
          f"{' out=' if a.out_variant else ''}"
          f"{'' if a.variant == 'function' else ' ' + a.variant}"
          f"{' cuda' if a.device == 'cuda' else ''}: "
          f"{dict(total)} ops")
    if a.out:
        with open(a.out, "w") as f:
            json.dump(rows, f, indent=0)


if __name__ == "__main__":
    main(sys.argv[1:])
