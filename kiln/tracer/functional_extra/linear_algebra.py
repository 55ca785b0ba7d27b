"""Linear-algebra shortcuts of the torch namespace: addmv, addr, addbmm, adjoint, chain_matmul,
vdot, kron, cdist, cov, corrcoef."""

from __future__ import annotations

import math

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import creation
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional.matrix import integral_scales
from kiln.tracer.functional_extra.common import _f, _py_max
from kiln.tracer.provenance import composite


# ----------------------------------------------------------------------------- linear algebra

@composite
def addmv(input, mat, vec, *, beta=1, alpha=1):
    return _scaled_sum(input, F.mv(mat, vec), beta, alpha)


def addr(input, vec1, vec2, *, beta=1, alpha=1):
    if input.dtype.category < dt.FLOAT and any(isinstance(v, float) for v in (beta, alpha)):
        raise op_error("addr", f"For integral input tensors, argument beta and alpha must not "
                       f"be floating point numbers (got beta={beta}, alpha={alpha} for "
                       f"{input.dtype.name})")
    if _all_half(input, vec1, vec2):
        # ATen's CPU kernel on half types: beta * input + (alpha * vec1) * vec2 with the
        # scalars in the tensors' dtype, each op rounded
        beta, alpha = dt.half_value(beta, input.dtype), dt.half_value(alpha, input.dtype)
        return _scaled(input, beta) + F.outer(vec1 * alpha if alpha != 1 else vec1, vec2)
    return _scaled_sum(input, F.outer(vec1, vec2), beta, alpha)


def addbmm(input, batch1, batch2, *, beta=1, alpha=1):
    if _all_half(input, batch1, batch2) and batch1.shape[0]:
        # ATen's CPU kernel on half types: one addmm per batch entry, each rounded (the sum of
        # the products in float32 would differ where the entries cancel)
        out = F.addmm(input, batch1[0], batch2[0], beta=beta, alpha=alpha)
        for i in range(1, batch1.shape[0]):
            out = F.addmm(out, batch1[i], batch2[i], alpha=alpha)
        return out
    return _scaled_sum(input, F.sum(F.bmm(batch1, batch2), 0), beta, alpha)


def _all_half(*tensors) -> bool:
    """Whether all are CPU tensors of one half dtype (float16 or bfloat16)."""
    first = tensors[0].dtype
    return first in dt.HALF and all(
        t.dtype is first and t.device.type == "cpu" for t in tensors)


def _scaled_sum(input, product, beta, alpha):
    beta, alpha = integral_scales(input, product, beta, alpha)
    return _scaled(input, beta) + (product * alpha if alpha != 1 else product)


def _scaled(input, beta):
    if beta == 0:
        return F.zeros_like(input)
    return input * beta if beta != 1 else input


def adjoint(input):
    out = F.transpose(input, -2, -1)
    return P.conj(out) if out.dtype.is_complex else out


def chain_matmul(*matrices):
    out = matrices[0]
    for m in matrices[1:]:
        out = F.matmul(out, m)
    return out


def vdot(input, other):
    return F.dot(P.conj(input) if input.dtype.is_complex else input, other)


def kron(input, other):
    a, b = input, other
    nd = _py_max(a.ndim, b.ndim)
    a = F.reshape(a, (1,) * (nd - a.ndim) + tuple(a.shape))
    b = F.reshape(b, (1,) * (nd - b.ndim) + tuple(b.shape))
    ai = F.reshape(a, tuple(s for d in a.shape for s in (d, 1)))
    bi = F.reshape(b, tuple(s for d in b.shape for s in (1, d)))
    return F.reshape(ai * bi, tuple(x * y for x, y in zip(a.shape, b.shape)))


def cdist(x1, x2, p=2.0, compute_mode=None):
    if not x1.dtype.is_floating_point:
        raise op_error("cdist", f"cdist only supports floating-point dtypes, X1 got: "
                       f"{dt.SCALAR_TYPE_NAMES[x1.dtype]} ({x1.dtype.name})")
    diff_ = F.unsqueeze(x1, -2) - F.unsqueeze(x2, -3)
    if p == 2:
        return _root_or_zero(F.sum(diff_ * diff_, -1), 2)
    if p == 0:          # a count of differing coordinates: its gradient is zero
        return creation.zero_gradient(F.sum(F.ne(diff_, 0), -1).to(x1.dtype), [x1, x2])
    if math.isinf(p):
        return F.amax(F.abs(diff_), -1)
    if p == 1:
        return F.sum(F.abs(diff_), -1)
    if p < 1:       # |d| ** p has an infinite slope at d == 0: PyTorch's subgradient there is 0
        return _root_or_zero(F.sum(_root_or_zero(F.abs(diff_), 1.0 / p), -1), p)
    return _root_or_zero(F.sum(F.pow(F.abs(diff_), p), -1), p)


def _root_or_zero(s, p):
    """s ** (1 / p) with PyTorch's subgradient 0 where s == 0 (coincident points, a kernel
    matrix's diagonal): the root's slope there is infinite, and the chain rule's 0 * inf a NaN."""
    zero = F.eq(s, 0)
    safe = F.where(zero, F.ones_like(s), s)
    root = F.sqrt(safe) if p == 2 else F.pow(safe, 1.0 / p)
    return F.where(zero, F.zeros_like(root), root)


def _conj_t(x):
    """x^H of a matrix: complex covariances pair each row with the conjugate of the other."""
    xt = F.transpose(x, 0, 1)
    return P.conj(xt) if xt.dtype.is_complex else xt


def cov(input, *, correction=1, fweights=None, aweights=None):
    """Covariance of the rows (variables) over the columns (observations). The weights keep
    their own dtype in their sums and in the normalization, as PyTorch's."""
    x = _f(input)
    if x.ndim == 1:
        x = F.unsqueeze(x, 0)
    n = x.shape[1]
    w = fweights
    if aweights is not None:
        w = aweights if w is None else w * aweights
    if w is None:
        mean = F.mean(x, 1, keepdim=True)
        xc = x - mean
        c = F.matmul(xc, _conj_t(xc)) / (n - correction)
    else:
        wsum = F.sum(w)
        mean = F.sum(x * w, 1, keepdim=True) / wsum
        xc = x - mean
        if aweights is None:
            norm = wsum - correction
        else:
            norm = wsum - correction * F.sum(w * aweights) / wsum
        c = F.matmul(xc * w, _conj_t(xc)) / norm
    return F.reshape(c, ()) if tuple(c.shape) == (1, 1) else c    # one variable: 0-d


def corrcoef(input):
    c = cov(input)
    if c.ndim == 0:
        return c / c
    if c.dtype.is_complex:      # the diagonal is real; PyTorch clips each part to [-1, 1]
        d = F.sqrt(P.real(F.diagonal(c)))
        c = c / F.unsqueeze(d, 1) / F.unsqueeze(d, 0)
        return P.complex(F.clamp(P.real(c), -1, 1), F.clamp(P.imag(c), -1, 1))
    d = F.sqrt(F.diagonal(c))
    return F.clamp(c / F.unsqueeze(d, 1) / F.unsqueeze(d, 0), -1, 1)
