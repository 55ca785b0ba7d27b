"""The op dispatcher: every primitive call runs here (check, compute, record autograd, trace).

`apply(prim, args, attrs)` is the only way a tensor operation happens. For each call it
1. looks up the result's shape and dtype from the primitive's rule (cached per signature), so
   bad input fails before any work, with the op, the shapes and the user's source line;
2. computes the result with the device's array module;
3. records an autograd node when grad mode is on and an input requires grad;
4. appends an IR node when a trace is active.
"""

from __future__ import annotations

import warnings

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir import ops as ir_ops
from kiln.ir.ops import BOUNDS_ERRORS, P, Primitive, ShapeError
from kiln.runtime.cupy_backend import CUPY_PATHS as _CUPY_FAST
from kiln.runtime.device import CPU, META, Device, MetaArray, to_device
from kiln.runtime.host_memory import keep_freed_memory
from kiln.runtime.layouts import in_layout as _in_layout
from kiln.runtime.layouts import layout_recipe as _layout_recipe
from kiln.runtime.numpy_backend import FAST_PATHS as _NUMPY_FAST
from kiln.tracer import autograd as _autograd
from kiln.tracer import dispatch_mode as _dispatch_mode
from kiln.tracer import dispatch_subclass as _dispatch_subclass
from kiln.tracer import quantized as _quantized
from kiln.tracer import strides as _strides
from kiln.tracer import unsigned as _unsigned
from kiln.tracer.errors import op_error, user_location
from kiln.tracer.sparse import UNSUPPORTED as _SPARSE_UNSUPPORTED
from kiln.tracer.sparse import _NoDenseMemory
from kiln.tracer.tensor import INFERENCE, STATE, TRACING, InferenceVersion, Tensor

keep_freed_memory()             # an eager step's large temporaries reuse the last step's pages
_INFER_CACHE: dict = {}
_INFER_CACHE_LIMIT = 50_000


# PyTorch computes NaN and inf without a word; NumPy warns ("invalid value encountered in
# multiply") from the line that called the ufunc. Those lines are kiln's (ops' lambdas, the
# backends, the executors), so one filter on kiln's modules silences them for free, where an
# error state around every call costs ~0.3 µs; a user's own NumPy code still warns. Ops that
# make NaN often (exp, log, div, ...) also set the error state (`quiet`), which holds under a
# user's `simplefilter("error")` too.
warnings.filterwarnings("ignore", category=RuntimeWarning, module=r"kiln\.")

# NumPy >= 2 keeps its floating-point error state in a context variable; setting it directly
# costs ~0.3 µs where `with np.errstate(...)` costs ~1.5 µs, the largest single cost of a small
# exp or div. NumPy 1.x has no such variable and gets the context manager.
try:
    from numpy._core._ufunc_config import _extobj_contextvar as _NP_ERRSTATE
    from numpy._core._ufunc_config import _make_extobj
    _IGNORE_ALL = _make_extobj(all="ignore")
except ImportError:                      # pragma: no cover - NumPy 1.x
    _NP_ERRSTATE = None


def infer(prim: Primitive, args: tuple, attrs: dict):
    """The primitive's result (shape, dtype), from its rule; raises the user-facing error."""
    shapes = tuple(a._data.shape if isinstance(a, Tensor) else () for a in args)
    dtypes = tuple(a.dtype if isinstance(a, Tensor) else None for a in args)
    try:
        return prim.infer(shapes, dtypes, **attrs)
    except ShapeError as e:
        raise op_error(prim.name, str(e), e.kind) from None


def apply(prim: Primitive, args: tuple, attrs: dict, device: Device | None = None) -> Tensor:
    """Run one primitive on tensors and Python-number literals; returns a new Tensor."""
    if _MODES[0]:         # a TorchDispatchMode, or a Tensor subclass with __torch_dispatch__
        out = _intercept(prim, args, attrs, device)
        if out is not _PASS:
            return out
    # Eager mode's hot path: a small op costs about as much Python here as the array work, so
    # one plain loop gathers everything the steps below need, with no generators.
    arrays = []
    # The rule's result depends only on the op, its attributes and the inputs' shapes and
    # dtypes (a literal counts as shape () and dtype None, whatever its value). A tensor adds
    # (shape, dtype) to the key and a literal adds None, so keys of different inputs differ.
    key = [prim, tuple(attrs.items())] if attrs else [prim]
    wants_grad = mixed = False
    for a in args:
        if isinstance(a, Tensor):
            view = a._base
            if view is not None and view[3] != a._version[0]:
                _autograd.refresh_view(a)    # its memory was written since: take a new history
            data = a._data
            arrays.append(data)
            key.append(data.shape)
            key.append(data.strides)     # the result's strides follow the inputs' (`strides`)
            key.append(a.dtype)
            if device is None:
                device = a.device
            elif a.device is not device:
                mixed = True
            if a._requires_grad:       # the slot: the view was refreshed just above
                wants_grad = True
        else:
            arrays.append(a)
            key.append(None)
    if device is None:
        device = CPU
    elif mixed:
        device = _move_cpu_scalars(prim, args, arrays, device)

    key = tuple(key)
    try:
        facts = _INFER_CACHE.get(key)
    except TypeError:            # an unhashable attribute: compute without caching
        facts, key = None, None
    if facts is None:
        if any(a.dtype.is_quantized for a in args if isinstance(a, Tensor)):
            # quantized tensors take their own rules (never cached, so never on the fast path)
            return _quantized.apply_primitive(prim, args, attrs, apply)
        facts = _facts(prim, infer(prim, args, attrs), args, arrays)
        if key is not None:
            if len(_INFER_CACHE) > _INFER_CACHE_LIMIT:   # shapes that keep changing
                _INFER_CACHE.clear()
            _INFER_CACHE[key] = facts
    (dtype, np_dtype, numpy_impl, cupy_impl, quiet, movement, differentiable, widen, layout,
     device_layout) = facts
    if widen is not None and device is CPU:
        arrays = _widen_half(arrays, widen)

    if device is CPU:
        xp = np
    elif device is META:                 # devices are interned: one object per device
        return _apply_meta(prim, args, attrs, device, dtype, np_dtype,
                           wants_grad and differentiable)
    else:
        xp = device.xp
        layout = device_layout           # (the CPU's stops checking once NumPy's agrees)
        if dtype is dt.bfloat16 or widen is not None and widen[2]:
            raise op_error(prim.name, f"{dt.NO_CUDA_BFLOAT16} (on {device})")
    impl = numpy_impl if xp is np else cupy_impl
    try:
        if not quiet:
            out = impl(xp, *arrays, **attrs)
        elif _NP_ERRSTATE is not None:   # impl may hit NaN/inf: silence NumPy's warnings
            token = _NP_ERRSTATE.set(_IGNORE_ALL)
            try:
                out = impl(xp, *arrays, **attrs)
            finally:
                _NP_ERRSTATE.reset(token)
        else:                            # pragma: no cover - NumPy 1.x
            with np.errstate(all="ignore"):
                out = impl(xp, *arrays, **attrs)
    except BOUNDS_ERRORS as e:          # check_index's: it names the user's op already
        raise ir_ops.as_user_error(e, f" (at {user_location()})") from None
    except (IndexError, ValueError, TypeError) as e:
        if any(type(getattr(a, "_data", None)) is _NoDenseMemory for a in args):  # any layout
            raise op_error(prim.name, _SPARSE_UNSUPPORTED, NotImplementedError) from None
        raise op_error(prim.name, str(e), type(e)) from None
    if out.dtype is not np_dtype and out.dtype != np_dtype:
        out = out.astype(np_dtype)
    if xp is np and type(out) is not np.ndarray:
        out = np.asarray(out)        # NumPy hands back scalars for 0-d results
    if layout is not None:
        if out.strides != layout[0]:
            if not _KEEP_NUMPY[0]:
                out = _in_layout(out, layout[1], xp)  # PyTorch's strides, NumPy chose others
        elif xp is np and key is not None:
            # NumPy lays out this signature's result as PyTorch does: no check on later calls
            _INFER_CACHE[key] = facts[:8] + (None,) + facts[9:]
    result = _new_tensor(out, dtype, device)
    src = None
    if movement and len(arrays) == 1:
        base = out.base
        if base is not None and (base is arrays[0] or base is arrays[0].base
                                 or getattr(base, "base", None) is arrays[0]):
            # (the last: NumPy's as_strided, whose result's base wraps the input)
            src = args[0]                        # a view: it shares its input's memory
            result._version = src._version       # and so its version counter

    if wants_grad and differentiable and STATE.grad_enabled:
        _autograd.record(prim, args, attrs, result)
    elif INFERENCE[0] and src is None and STATE.inference:
        result._version = InferenceVersion(result._version)   # an inference tensor
    if src is not None:
        # how the view was taken, so that an in-place write through it or through its base
        # can rebuild the other's autograd history (autograd.rebase_view); a view taken of a
        # tensor that requires grad with grad mode off is marked, as writes through it are
        # refused
        view = src._base
        result._base = (src, prim, attrs, src._version[0],
                        (result._requires_grad or not src._requires_grad)
                        and (view is None or view[4]))
    if TRACING[0] and STATE.tracer is not None:
        STATE.tracer.record(prim, args, attrs, result)
    return result


def _apply_meta(prim: Primitive, args: tuple, attrs: dict, device: Device, dtype, np_dtype,
                record: bool) -> Tensor:
    """A primitive on meta tensors: the result's shape and dtype from the op's rule, and no
    computation. Autograd records as usual, so a backward on meta tensors gives meta grads."""
    if TRACING[0] and STATE.tracer is not None:
        STATE.tracer.graph_break(f"{prim.name} on a meta tensor (no data to compile)")
    result = _new_tensor(MetaArray(infer(prim, args, attrs)[0], np_dtype), dtype, device)
    if record and STATE.grad_enabled:
        _autograd.record(prim, args, attrs, result)
    return result


def _facts(prim: Primitive, rule: tuple, args: tuple, arrays: list) -> tuple:
    """What `apply` needs of one op on inputs of given shapes and dtypes, found once per
    signature (the cache's value): the result's dtype and NumPy dtype, the NumPy backend's
    faster spelling of the op where it has one, the CuPy backend's likewise, the primitive's
    flags, so that a cached call reads no attribute of the frozen dataclass, and how its
    float16/bfloat16 inputs are widened to float32 first on the CPU (`_widen_half`): None, or
    (whether literals keep their value, the dtype literals round to or None, any bfloat16),
    and the layout PyTorch gives the result (`tracer.strides`), twice (for the CPU, and for
    other devices): None where the array module's stands, else (its byte strides, the recipe
    `runtime.layouts.in_layout` copies a result by). NumPy's layout of a result follows from
    the signature, so the CPU's is set to None once a result is seen laid out right."""
    dtype = rule[1]
    if any(isinstance(a, Tensor) and a.dtype in _unsigned.LIMITED for a in args):
        _unsigned.check_primitive(prim, args)     # PyTorch computes few ops on uint16/32/64
    movement = prim.kind is _MOVEMENT
    widen = None
    halves = {a.dtype for a in args if isinstance(a, Tensor) and a.dtype in dt.HALF}
    if halves and not movement:
        floats = {a.dtype for a in args if isinstance(a, Tensor) and
                  (a.dtype.is_floating_point or a.dtype.is_complex)}
        # a literal rounds to the tensors' half dtype (none where another floating one is in)
        round_to = floats.pop() if len(floats) == 1 else None
        widen = (prim.name in ("mul", "div"), round_to, dt.bfloat16 in halves)
    # an integer or bool result never requires grad (x.long(), a pivot), as in PyTorch
    differentiable = prim.grad is not None and (dtype.is_floating_point or dtype.is_complex)
    layout = None
    strides = _strides.primitive_strides(prim, arrays, rule[0], dtype.np_dtype.itemsize)
    if strides is not None:
        layout = (strides, _layout_recipe(rule[0], strides, dtype.np_dtype.itemsize))
    return (dtype, dtype.np_dtype, _NUMPY_FAST.get(prim.name, prim.impl),
            _CUPY_FAST.get(prim.name, prim.impl), prim.quiet, movement, differentiable, widen,
            layout, layout)


def _widen_half(arrays: list, widen: tuple) -> list:
    """The arrays an op on float16 or bfloat16 tensors computes with on the CPU: each such one
    as float32.

    PyTorch's CPU kernels compute both in float32 and round each result once; so does kiln:
    the op runs on float32 copies, and `apply` rounds its output to the result's dtype (round
    to nearest even). A sum, a cumulative sum or a matmul then accumulates in float32, where
    NumPy's float16 cumsum accumulates in float16 (and its matmul runs ~50x slower than
    float32's BLAS). Movement ops (views) keep their input's memory and are never widened. A
    Python number operand is first rounded to the tensors' dtype, as PyTorch's CPU kernels take
    it (x + 0.3 adds bfloat16's 0.30078), except in mul and div, whose kernels read it as a
    float32. CUDA tensors are not widened: kiln's GPU kernels pick their own compute dtype."""
    keeps, round_to = widen[0], widen[1]
    bf16 = dt.bfloat16.np_dtype if widen[2] else None
    out = []
    for a in arrays:
        if isinstance(a, np.ndarray):
            if a.dtype == _F16 or a.dtype == bf16:
                a = a.astype(np.float32)
        elif not keeps and round_to is not None and (type(a) is float or type(a) is int):
            a = dt.half_value(a, round_to)
        out.append(a)
    return out


def _move_cpu_scalars(prim: Primitive, args: tuple, arrays: list, first: Device) -> Device:
    """The device of an op whose tensors are on several devices, as PyTorch decides it: a 0-d
    CPU tensor goes along with tensors on another device (its value is copied there, in
    `arrays`, and its dtype still takes part in type promotion as a 0-d tensor's); any other
    mix is the user's mistake."""
    devices = []
    for a in args:
        if isinstance(a, Tensor) and not (a.device is CPU and a._data.ndim == 0) and \
                a.device not in devices:
            devices.append(a.device)
    if len(devices) != 1:
        others = [d for d in devices if d is not first]
        raise op_error(prim.name, f"Expected all tensors to be on the same device, but found "
                       f"at least two devices, {first} and {others[0] if others else CPU}!")
    device = devices[0]
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and a.device is not device:
            arrays[i] = to_device(a._data, device)
    return device


_new_tensor = Tensor._make
_MODES = _dispatch_mode.ACTIVE
_intercept, _PASS = _dispatch_subclass.intercept, _dispatch_subclass.PASS
_MOVEMENT = ir_ops.MOVEMENT
_F16 = np.dtype(np.float16)
_KEEP_NUMPY = _strides.KEEP_NUMPY


# kiln.profiler swaps this slot for a timing wrapper while it records (and back when it stops):
# reach the dispatcher through `P.dispatch`, never by holding `apply`.
P.dispatch = apply
_dispatch_mode.KERNEL[0] = apply
