"""The softmax family: softmax, log_softmax, softmin."""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import COPIED, PRIMITIVES, P, Primitive
from kiln.runtime import softmax_gpu
from kiln.runtime.device import CPU
from kiln.runtime.numpy_backend import numpy_impl
from kiln.tracer import autograd as _autograd
from kiln.tracer.functional.common import _floating, _norm_dim, refuse_without_kernel
from kiln.tracer.functional.reductions import _narrowed, _widened
from kiln.tracer.functional.shapes import reshape
from kiln.tracer.provenance import composite
from kiln.tracer.strides import settle
from kiln.tracer.tensor import OBSERVED, STATE, TRACING, Tensor


# ----------------------------------------------------------------------------- eager fast path
#
# Eagerly, softmax as its five primitives costs five dispatches and up to four autograd nodes
# (~16 us on 16 elements against PyTorch's ~1.4 us). Outside a trace the same NumPy calls run
# here directly, in the same order, so the values are bitwise today's, and one autograd node
# with the whole op's gradient is recorded. A trace still records the composite: the compiler
# fuses its primitives and needs no softmax op of its own. The node's "primitive" below exists
# only for autograd (like `copy_slices`); it is never registered, traced or compiled.

def _softmax_grad(g, out, x, e, s, dim):
    if STATE.grad_enabled:
        # create_graph: PyTorch's rule, out * (g - sum(g * out)), differentiable through out
        gout = P.mul(g, out)
        return (P.mul(out, P.sub(g, P.sum(gout, axes=(dim,), keepdim=True))), None, None)
    # first order: the composite's own rules (div, sum, exp, sub) in the order the backward
    # engine runs them, on the saved e = exp(x - max) and s = sum(e), so the gradient is
    # bitwise the composite's, and compiled code (traced from the composite) matches eager
    # as closely as before
    ge = P.div(g, s)
    gs = P.neg(P.div(P.mul(g, out).sum_to_size(tuple(s.shape)), s))
    ge = P.add(ge, P.expand(P.reshape(gs, shape=tuple(s.shape)), shape=tuple(e.shape)))
    return (P.mul(ge, e), None, None)


def _log_softmax_grad(g, out, x, e, s, dim):
    if STATE.grad_enabled:
        # create_graph: PyTorch's rule, g - exp(out) * sum(g)
        return (P.sub(g, P.mul(P.exp(out), P.sum(g, axes=(dim,), keepdim=True))), None, None)
    # first order: the composite's rules (sub, log, sum, exp, sub), as for softmax
    gs = P.div(P.neg(g.sum_to_size(tuple(s.shape))), s)
    ge = P.expand(P.reshape(gs, shape=tuple(s.shape)), shape=tuple(e.shape))
    return (P.add(g, P.mul(ge, e)), None, None)


# output COPIED, as the composite's last div has it: kiln allows an in-place write into the
# result (PyTorch refuses), and such a write first gives the node its own copy of the output,
# so the gradient stays the mathematical one
_SOFTMAX = Primitive("softmax", "custom", None, None, _softmax_grad, 3, reads=(), output=COPIED,
                     doc="eager softmax's autograd node (never traced)")
_LOG_SOFTMAX = Primitive("log_softmax", "custom", None, None, _log_softmax_grad, 3, reads=(),
                         output=COPIED, doc="eager log_softmax's autograd node (never traced)")
_autograd.show_inputs(_SOFTMAX, 1)          # e and s are the rule's, not graph inputs
_autograd.show_inputs(_LOG_SOFTMAX, 1)
_FAST_DTYPES = (dt.float32, dt.float64)
_sum = numpy_impl(PRIMITIVES["sum"])       # the sum the dispatcher runs, so values match
_SMALL = 4096     # below this `_sum` and `max` are NumPy's plain reductions: the ufuncs' own
                  # reduce skips the ndarray methods' Python wrappers (same values, ~0.4 us less)


def _row_max(data, d):
    return np.maximum.reduce(data, d, None, None, True) if data.size < _SMALL else \
        data.max(axis=(d,), keepdims=True)


def _row_sum(e, d):
    return np.add.reduce(e, d, None, None, True) if e.size < _SMALL else _sum(np, e, (d,), True)


# NumPy's warnings silenced as the dispatcher does it for quiet primitives (its comment: the
# context variable costs a fifth of `np.errstate`)
try:
    from numpy._core._ufunc_config import _extobj_contextvar as _NP_ERRSTATE
    from numpy._core._ufunc_config import _make_extobj
    _IGNORE_ALL = _make_extobj(all="ignore")
except ImportError:                      # pragma: no cover - NumPy 1.x
    _NP_ERRSTATE = None

if _NP_ERRSTATE is not None:
    def _quiet():
        return _NP_ERRSTATE.set(_IGNORE_ALL)

    _loud = _NP_ERRSTATE.reset
else:                                     # pragma: no cover - NumPy 1.x
    def _quiet():
        state = np.errstate(all="ignore")
        state.__enter__()
        return state

    def _loud(state):
        state.__exit__(None, None, None)


def _fast_input(x, dim, dtype):
    """The normalized dim when softmax of `x` can take an eager fast path, else None: an eager
    CPU float32/float64 tensor (or a cuda float16/32/64 one the kernels take) of at least one
    dimension, not empty along `dim`, whose autograd history is current (a stale view takes
    the dispatcher's path)."""
    if dtype is not None or type(x) is not Tensor or (TRACING[0] and STATE.tracer is not None) \
            or OBSERVED[0]:
        return None
    if x.device is CPU:
        if x.dtype not in _FAST_DTYPES:
            return None
    elif x.device.type != "cuda" or not softmax_gpu.supported(x._data, x.dtype):
        return None
    data = x._data
    ndim = data.ndim
    if not ndim or (x._base is not None and x._base[3] != x._version[0]):
        return None
    d = _norm_dim(-1 if dim is None else dim, ndim)
    return d if data.shape[d] else None


def _finish(prim, x, out, e, s, d) -> Tensor:
    result = settle(Tensor._make(out, x.dtype, CPU), "contiguous")    # PyTorch's layout
    if x.requires_grad and STATE.grad_enabled:
        # e and s ride along as inputs that need no gradient (their edges are None)
        saved = (Tensor._make(e, x.dtype, CPU), Tensor._make(s, x.dtype, CPU))
        _autograd.record(prim, (x,) + saved, {"dim": d}, result)
    return result


def _eager_softmax(x, d) -> Tensor:
    data = x._data
    token = _quiet()                     # inf inputs give NaN, silently, as the primitives do
    try:
        e = np.exp(data - _row_max(data, d))
        total = _row_sum(e, d)
        out = e / total
    finally:
        _loud(token)
    return _finish(_SOFTMAX, x, out, e, total, d)


def _eager_log_softmax(x, d) -> Tensor:
    data = x._data
    token = _quiet()
    try:
        shifted = data - _row_max(data, d)
        e = np.exp(shifted)
        total = _row_sum(e, d)
        out = shifted - np.log(total)
    finally:
        _loud(token)
    return _finish(_LOG_SOFTMAX, x, out, e, total, d)


# ----------------------------------------------------------------------------- on a GPU
#
# On cuda the composite costs five or six CuPy calls each way, each microseconds of host time
# on a GPU. Outside a trace, one kernel launch computes the whole op (`kiln.runtime.
# softmax_gpu`) and one autograd node, whose first-order gradient is one launch too, is
# recorded; float16 is computed in float32 inside the kernels, as the composite computes it.

def _cuda_grad(kind):
    def grad(g, out, x, dim):
        if STATE.grad_enabled or g.dtype is not out.dtype or g.device is not out.device:
            # create_graph (or a gradient of another dtype or device): PyTorch's rules as
            # differentiable ops, as on the CPU
            if kind == "softmax":
                gout = P.mul(g, out)
                return (P.mul(out, P.sub(g, P.sum(gout, axes=(dim,), keepdim=True))),)
            return (P.sub(g, P.mul(P.exp(out), P.sum(g, axes=(dim,), keepdim=True))),)
        dx = softmax_gpu.softmax_backward(out.device.xp, g._data, out._data, dim, kind)
        return (Tensor._make(dx, out.dtype, out.device),)
    return grad


# the rule reads only the output, which an in-place write copies first (COPIED, as above)
_SOFTMAX_CUDA = Primitive("softmax", "custom", None, None, _cuda_grad("softmax"), 1, reads=(),
                          output=COPIED, doc="eager softmax's autograd node on cuda (never traced)")
_LOG_SOFTMAX_CUDA = Primitive("log_softmax", "custom", None, None, _cuda_grad("log_softmax"), 1,
                              reads=(), output=COPIED,
                              doc="eager log_softmax's autograd node on cuda (never traced)")


def _cast_on_cuda(x, dtype) -> bool:
    """Whether softmax(x, dtype=...) casts first and then takes the kernels: a cuda tensor,
    eager, to a floating dtype (the composite casts first too)."""
    return type(x) is Tensor and x.device is not CPU and \
        getattr(dtype, "is_floating_point", False) and not (TRACING[0] and STATE.tracer is not None)


def _cuda_softmax(x, d, kind, prim) -> Tensor:
    y = softmax_gpu.softmax_forward(x.device.xp, x._data, d, kind)
    result = Tensor._make(y, x.dtype, x.device)
    if x.requires_grad and STATE.grad_enabled:
        _autograd.record(prim, (x,), {"dim": d}, result)
    return result


# ----------------------------------------------------------------------------- softmax family

def _cpu_half_log_softmax(w: Tensor, half) -> Tensor:
    """PyTorch's CPU kernel for a bfloat16 log_softmax over the last dim, on `w`, its input in
    float32: the sum of exponentials and its log are each rounded to bfloat16 before the
    subtraction (over other dims, and on a GPU, the result is rounded once). The same numbers
    as torch, so bfloat16 autocast losses agree to float32 rounding, not 1e-3. Not for
    float16: there torch's rounded sum overflows past 65504 equal terms (-inf where the answer
    is -log(n)); kiln rounds the float32 answer once."""
    last = w.ndim - 1
    shifted = w - P.max(w, axes=(last,), keepdim=True).detach()
    total = _widened(_narrowed(P.sum(P.exp(shifted), axes=(last,), keepdim=True), half))
    return shifted - _widened(_narrowed(P.log(total), half))


@composite
def softmax(input, dim=None, dtype=None):
    if dtype is not None and _cast_on_cuda(input, dtype):
        input, dtype = input.to(dtype), None
    d = _fast_input(input, dim, dtype)
    if d is not None:
        if input.device is not CPU:
            return _cuda_softmax(input, d, "softmax", _SOFTMAX_CUDA)
        return _eager_softmax(input, d)
    if dtype is None:
        refuse_without_kernel("softmax", input, (dt.BOOL, dt.INT))
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype in dt.HALF:
        return _narrowed(softmax(_widened(x), dim), x.dtype)
    if x.ndim == 0:
        return reshape(softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    # x, m, e and the sum share x's floating dtype, so the primitives need no promotion
    m = P.max(x, axes=(d,), keepdim=True).detach() if x._data.shape[d] else x
    e = P.exp(P.sub(x, m))
    return settle(P.div(e, P.sum(e, axes=(d,), keepdim=True)), "contiguous")


@composite
def log_softmax(input, dim=None, dtype=None):
    if dtype is not None and _cast_on_cuda(input, dtype):
        input, dtype = input.to(dtype), None
    d = _fast_input(input, dim, dtype)
    if d is not None:
        if input.device is not CPU:
            return _cuda_softmax(input, d, "log_softmax", _LOG_SOFTMAX_CUDA)
        return _eager_log_softmax(input, d)
    if dtype is None:
        refuse_without_kernel("softmax", input, (dt.BOOL, dt.INT))
    x = _floating(input if dtype is None else input.to(dtype))
    if x.dtype in dt.HALF:
        if x.dtype is dt.bfloat16 and x.device is CPU and x.ndim and x.shape[-1] and \
                _norm_dim(-1 if dim is None else dim, x.ndim) == x.ndim - 1:
            return _narrowed(_cpu_half_log_softmax(_widened(x), x.dtype), x.dtype)
        return _narrowed(log_softmax(_widened(x), dim), x.dtype)
    if x.ndim == 0:
        return reshape(log_softmax(reshape(x, (1,)), 0), ())
    d = _norm_dim(-1 if dim is None else dim, x.ndim)
    shifted = x - P.max(x, axes=(d,), keepdim=True).detach() if x.shape[d] else x
    out = shifted - P.log(P.sum(P.exp(shifted), axes=(d,), keepdim=True))
    return settle(out, "contiguous")


@composite
def softmin(input, dim=None, dtype=None):
    return softmax(-input, dim, dtype)
