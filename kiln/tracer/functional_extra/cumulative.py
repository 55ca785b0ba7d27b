"""Cumulative ops: cummax/cummin, logcumsumexp, diff, gradient, trapezoid, cumulative_trapezoid."""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _norm_dim
from kiln.tracer.functional.common import refuse_without_kernel
from kiln.tracer.functional_extra.common import _f, values_indices
from kiln.tracer.functional_extra.elementwise import logaddexp
from kiln.tracer.provenance import composite
from kiln.tracer.tensor import Tensor


# ----------------------------------------------------------------------------- cumulative

def _cum_extreme(input, dim, largest):
    """Running max (min) and where it was, by a doubling scan (log2(n) steps of tensor ops, so
    it traces): each step merges every position's best with the best `step` places before.
    The merge is associative: a NaN beats any number, and of equal values (NaNs too) the later
    wins, as in PyTorch."""
    x = input
    if x.ndim == 0:
        return values_indices(x.clone(), F.zeros((), dtype=dt.int64))
    d = _norm_dim(dim, x.ndim)
    n = x.shape[d]
    best = x.detach()
    where = [1] * x.ndim
    where[d] = n
    idx = F.clone(F.expand(F.reshape(F.arange(n, device=x.device), tuple(where)), tuple(x.shape)))
    step = 1
    while step < n:
        earlier, later = F.narrow(best, d, 0, n - step), F.narrow(best, d, step, n - step)
        beats = F.ge(later, earlier) if largest else F.le(later, earlier)
        if x.dtype.is_floating_point:
            beats = F.logical_or(F.isnan(later),
                                 F.logical_and(beats, F.logical_not(F.isnan(earlier))))
        best = F.cat([F.narrow(best, d, 0, step), F.where(beats, later, earlier)], d)
        idx = F.cat([F.narrow(idx, d, 0, step),
                     F.where(beats, F.narrow(idx, d, step, n - step),
                             F.narrow(idx, d, 0, n - step))], d)
        step *= 2
    return values_indices(F.gather(x, d, idx), idx)


def cummax(input, dim):
    return _cum_extreme(input, dim, True)


def cummin(input, dim):
    return _cum_extreme(input, dim, False)


@composite
def logcumsumexp(input, dim):
    refuse_without_kernel("logcumsumexp", input, (dt.BOOL, dt.INT))
    x = _f(input)
    d = _norm_dim(dim, x.ndim) if x.ndim else 0
    if x.ndim == 0 or x.numel() == 0:
        return x.clone()
    if x.dtype.is_complex:
        # PyTorch scans with the complex logaddexp, whose imaginary parts are not wrapped into
        # (-pi, pi] as a whole: the same scan, one step per position of `dim`
        steps = F.unbind(x, d)
        out = [steps[0]]
        for step in steps[1:]:
            out.append(logaddexp(out[-1], step))
        return F.stack(out, d)
    m = F.amax(x, d, keepdim=True).detach()
    m = F.where(F.isinf(m), 0.0, m)
    return F.log(F.cumsum(F.exp(x - m), d)) + m


def diff(input, n=1, dim=-1, prepend=None, append=None):
    """n-th forward differences along `dim` of prepend, input, append; n=0 is the input alone
    (prepend and append unused, as in torch)."""
    if n < 0:
        raise op_error("diff", f"order must be non-negative but got {n}")
    x = input
    d = _norm_dim(dim, x.ndim)
    if n == 0:
        return x.clone()
    if prepend is not None or append is not None:
        parts = ([prepend] if prepend is not None else []) + [x] + \
            ([append] if append is not None else [])
        x = F.cat([p if p.ndim == x.ndim else F.expand(p, tuple(x.shape[:d]) + (1,) +
                                                        tuple(x.shape[d + 1:])) for p in parts], d)
    for _ in range(n):
        length = x.shape[d]
        if length == 0:
            break                 # differences of nothing are nothing, as in torch
        hi, lo = F.narrow(x, d, 1, length - 1), F.narrow(x, d, 0, length - 1)
        x = F.logical_xor(hi, lo) if x.dtype is dt.bool_ else hi - lo
    return x


def gradient(input, *, spacing=1, dim=None, edge_order=1):
    """Second-order central differences inside, first- or second-order one-sided ones at the
    edges, per dimension; `spacing` is one step for all dimensions, a step per dimension, or
    a coordinate tensor per dimension (then the non-uniform formulas)."""
    if edge_order not in (1, 2):
        raise op_error("gradient", "torch.gradient only supports edge_order=1 and "
                       "edge_order=2.")
    dims = list(range(input.ndim)) if dim is None else (
        [dim] if isinstance(dim, int) else list(dim))
    if spacing is None:
        spacing = 1
    if isinstance(spacing, (list, tuple)):
        if len(spacing) != len(dims):
            raise op_error("gradient", f"torch.gradient expected spacing to be unspecified, a "
                           f"scalar, or a list of length {len(dims)} (the dimensions it "
                           f"differentiates), but got a list of length {len(spacing)}")
        steps = list(spacing)
    else:
        steps = [spacing] * len(dims)
    for d in dims:
        if input.shape[_norm_dim(d, input.ndim)] < edge_order + 1:
            raise op_error("gradient", "torch.gradient expected each dimension size to be at "
                           f"least edge_order+1, got shape {tuple(input.shape)}")
    out = []
    for d, h in zip(dims, steps):
        d = _norm_dim(d, input.ndim)
        if isinstance(h, Tensor) and h.ndim == 1:
            out.append(_gradient_coordinates(input, d, h, edge_order))
        else:
            out.append(_gradient_uniform(input, d, h.item() if isinstance(h, Tensor) else h,
                                         edge_order))
    return tuple(out)


def _gradient_uniform(x, d, h, edge_order):
    def part(start, length):
        return F.narrow(x, d, start, length)
    n = x.shape[d]
    inner = (part(2, n - 2) - part(0, n - 2)) / h / 2
    if edge_order == 1:
        first = (part(1, 1) - part(0, 1)) / h
        last = (part(n - 1, 1) - part(n - 2, 1)) / h
    else:
        first = (part(0, 1) * -1.5 + part(1, 1) * 2 - part(2, 1) * 0.5) / h
        last = (part(n - 3, 1) * 0.5 + part(n - 2, 1) * -2 + part(n - 1, 1) * 1.5) / h
    return _as_float(F.cat([first, inner, last], d))


def _gradient_coordinates(x, d, coords, edge_order):
    """Differences at unevenly spaced coordinates: each point's three-point Lagrange
    derivative (interior weights a, b, c of f[i-1], f[i], f[i+1])."""
    def part(start, length):
        return F.narrow(x, d, start, length)
    n = x.shape[d]
    if coords.shape[0] != n:
        raise op_error("gradient", f"torch.gradient expected the coordinates of dim {d} to "
                       f"have {n} values, got {coords.shape[0]}")
    step = diff(coords)
    shape = [1] * x.ndim
    shape[d] = -1
    dx1, dx2 = step[:-1], step[1:]
    a = F.reshape(-dx2 / (dx1 * (dx1 + dx2)), shape)
    b = F.reshape((dx2 - dx1) / (dx1 * dx2), shape)
    c = F.reshape(dx1 / (dx2 * (dx1 + dx2)), shape)
    inner = a * part(0, n - 2) + b * part(1, n - 2) + c * part(2, n - 2)
    h0, hl = step[0], step[-1]
    if edge_order == 1:
        first = (part(1, 1) - part(0, 1)) / h0
        last = (part(n - 1, 1) - part(n - 2, 1)) / hl
    else:
        h1, hk = step[1], step[-2]
        first = (-(2.0 * h0 + h1) / (h0 * (h0 + h1)) * part(0, 1)
                 + (h0 + h1) / (h0 * h1) * part(1, 1) - h0 / (h1 * (h0 + h1)) * part(2, 1))
        last = (hl / (hk * (hl + hk)) * part(n - 3, 1) - (hl + hk) / (hl * hk) * part(n - 2, 1)
                + (2.0 * hl + hk) / (hl * (hl + hk)) * part(n - 1, 1))
    return _as_float(F.cat([first, inner, last], d))


def _as_float(x):
    """An integer input's differences of integer steps are still integers: torch's are
    floating (the default dtype)."""
    return x if x.dtype.is_floating_point or x.dtype.is_complex else \
        x.to(dt.get_default_dtype())


def trapezoid(y, x=None, *, dx=None, dim=-1):
    if y.dtype is dt.bool_:
        raise op_error("trapezoid", "trapezoid: received a bool input for `y`, but bool is not "
                       "supported (as PyTorch); pass y.float()")
    d = _norm_dim(dim, y.ndim)
    n = y.shape[d]
    if x is None and n:
        # PyTorch's spacing-only formula: the sum less half the two ends (an integer y's ends
        # add in its own dtype, wrapping as there)
        ends = F.select(y, d, 0) + F.select(y, d, n - 1)
        return (F.sum(y, d) - ends * 0.5) * (1.0 if dx is None else dx)
    avg = (F.narrow(y, d, 1, n - 1) + F.narrow(y, d, 0, n - 1)) * 0.5
    if x is not None:
        return F.sum(avg * diff(x, dim=dim if x.ndim == y.ndim else -1), d)
    return F.sum(avg, d) * (1.0 if dx is None else dx)


trapz = trapezoid


def cumulative_trapezoid(y, x=None, *, dx=None, dim=-1):
    d = _norm_dim(dim, y.ndim)
    n = y.shape[d]
    avg = (F.narrow(y, d, 1, n - 1) + F.narrow(y, d, 0, n - 1)) * 0.5
    if x is not None:
        avg = avg * diff(x, dim=dim if x.ndim == y.ndim else -1)
    elif dx is not None:
        avg = avg * dx
    return F.cumsum(avg, d)
