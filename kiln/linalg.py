"""`kiln.linalg`: dense linear algebra (torch.linalg), differentiable.

Factorizations and matrix_exp are the `linalg_*` primitives of `kiln.ir.ops_extra` (NumPy/CuPy's
LAPACK, with gradient rules written with tensor ops); everything else (solve, det, norms, pinv,
lstsq, ...) is composed from them and ordinary tensor ops, so autograd and tracing see
through it. Gradients of eigenvectors and singular vectors divide by eigenvalue gaps: like
PyTorch's, they are only meaningful for distinct eigenvalues / singular values. Complex
matrices work throughout, with PyTorch's conjugate transposes and real eigenvalues and
singular values; a loss that depends on the phases of complex eigen- or singular vectors has
no gradient, and backward says so (as torch's).
"""

from __future__ import annotations

import math
import sys as _sys
import warnings
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.ir.ops_complex import eig_factors
from kiln.ir.ops_extra import (_pivots_to_permutation, eigh_factors, lu_factors, qr_factors,
                               slogdet_factors, svd_factors)
from kiln.tracer import autocast as _autocast
from kiln.tracer import functional as F
from kiln.tracer import functional_extra as FX
from kiln.tracer.functional.reductions import _norm_root
from kiln.tracer.creation import (arange as _arange, eye as _eye, randn as _randn,
                                  tensor as _tensor)
from kiln.tracer.errors import op_error, user_stacklevel
from kiln.tracer.tensor import STATE, Tensor


class LinAlgError(RuntimeError):
    """A matrix had no factorization or inverse (singular, not positive-definite)."""


def _float(A: Tensor) -> Tensor:
    """A, a floating point or complex tensor (as PyTorch: no integer linear algebra)."""
    if not (A.dtype.is_floating_point or A.dtype.is_complex):
        raise op_error("linalg", f"Expected a floating point or complex tensor as input. Got "
                       f"{dt.SCALAR_TYPE_NAMES[A.dtype]} ({A.dtype.name} {list(A.shape)}); "
                       "convert it with .float() first")
    return A


def _mT(A: Tensor) -> Tensor:
    return F.transpose(A, -2, -1)


def _mH(A: Tensor) -> Tensor:
    """The conjugate transpose (the transpose of a real matrix)."""
    return FX.conj(_mT(A))


def _constant_of(value: Tensor, A: Tensor) -> Tensor:
    """`value` broadcast to A's shape, as a function of A with gradient 0 (where PyTorch's
    result is a constant that still requires grad: A^0, a product of no reflectors)."""
    return F.where(F.ones_like(A, dtype=dt.bool_), value, A)


def _check_square(A: Tensor, name: str) -> None:
    if A.ndim < 2 or A.shape[-1] != A.shape[-2]:
        raise op_error(f"linalg.{name}", f"A must be batches of square matrices, but they are "
                       f"{'x'.join(map(str, A.shape[-2:]))} matrices")


# ----------------------------------------------------------------------------- products

matmul = F.matmul


def diagonal(A, *, offset=0, dim1=-2, dim2=-1):
    return F.diagonal(A, offset, dim1, dim2)


def vecdot(x, y, *, dim=-1):
    """sum(conj(x) * y): the inner product of complex vectors conjugates the first."""
    return F.sum(FX.conj(x) * y, dim)


def cross(input, other, *, dim=-1):
    a, b = F.broadcast_tensors(input, other)
    if a.dtype is dt.bool_:
        raise op_error("linalg.cross", "\"cross\" not implemented for 'Bool' (as PyTorch); "
                       "take the cross product of .long() tensors", NotImplementedError)
    d = dim % a.ndim
    if a.shape[d] != 3:
        raise op_error("linalg.cross", f"inputs dimension {dim} must have length 3, got "
                       f"{a.shape[d]}")
    a0, a1, a2 = F.unbind(a, d)
    b0, b1, b2 = F.unbind(b, d)
    return F.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], d)


def multi_dot(tensors):
    ts = list(tensors)
    if len(ts) < 2:
        raise op_error("linalg.multi_dot", "expected at least 2 tensors")
    first_vec, last_vec = ts[0].ndim == 1, ts[-1].ndim == 1
    if first_vec:
        ts[0] = F.unsqueeze(ts[0], 0)
    if last_vec:
        ts[-1] = F.unsqueeze(ts[-1], 1)
    out = ts[0]
    for t in ts[1:]:
        out = F.matmul(out, t)
    if first_vec:
        out = F.squeeze(out, 0)
    if last_vec:
        out = F.squeeze(out, -1)
    return out


# ----------------------------------------------------------------------------- factorizations

def inv(A):
    A = _float(A)
    _check_square(A, "inv")
    if A.shape[-1] == 0:
        return A.clone()
    return P.linalg_inv(A)


def inv_ex(A, *, check_errors=False):
    R = namedtuple("inv_ex", ["inverse", "info"])
    return R(inv(A), F.zeros(tuple(A.shape[:-2]), dtype=dt.int32, device=A.device))


def slogdet(A):
    A = _float(A)
    _check_square(A, "slogdet")
    R = namedtuple("slogdet", ["sign", "logabsdet"])
    return R(*slogdet_factors(A))


def det(A):
    sign, logabs = slogdet(A)
    return sign * F.exp(logabs)


def cholesky(A, *, upper=False):
    A = _float(A)
    _check_square(A, "cholesky")
    L = P.linalg_cholesky(A)
    return _mH(L) if upper else L


def cholesky_ex(A, *, upper=False, check_errors=False):
    R = namedtuple("cholesky_ex", ["L", "info"])
    return R(cholesky(A, upper=upper), F.zeros(tuple(A.shape[:-2]), dtype=dt.int32,
                                                device=A.device))


def qr(A, mode="reduced"):
    """Q and R with A = QR: reduced (Q m x k, R k x n, k = min(m, n)), complete (Q m x m, R
    m x n) or R alone (mode 'r', Q an empty tensor), as torch's."""
    if mode not in ("reduced", "complete", "r"):
        raise op_error("linalg.qr", f"qr received unrecognized mode '{mode}' but expected one of "
                       "'reduced' (default), 'r', or 'complete'")
    A = _float(A)
    R = namedtuple("qr", ["Q", "R"])
    if mode == "r":
        return R(F.zeros(0, dtype=A.dtype, device=A.device), *qr_factors(A, mode))
    return R(*qr_factors(A, mode))


def eigh(A, UPLO="L"):
    A = _float(A)
    _check_square(A, "eigh")
    R = namedtuple("eigh", ["eigenvalues", "eigenvectors"])
    return R(*eigh_factors(A, upper=UPLO == "U"))


def eig(A):
    """Eigenvalues and unit eigenvectors of a general square matrix (complex, as torch's)."""
    _check_square(A, "eig")
    A = _float(A)
    R = namedtuple("eig", ["eigenvalues", "eigenvectors"])
    return R(*eig_factors(A))


def _wants_grad(A: Tensor) -> bool:
    """Whether a gradient may flow back to A: then eigenvalues and singular values come with
    the vectors their backward reads (one factorization), else from LAPACK's cheaper
    values-only drivers (as torch chooses)."""
    return A.requires_grad and STATE.grad_enabled


def eigvals(A):
    _check_square(A, "eigvals")
    A = _float(A)
    return eig_factors(A)[0] if _wants_grad(A) else P.linalg_eigvals(A)


def eigvalsh(A, UPLO="L"):
    A = _float(A)
    _check_square(A, "eigvalsh")
    upper = UPLO == "U"
    return eigh_factors(A, upper=upper)[0] if _wants_grad(A) else \
        P.linalg_eigvalsh(A, upper=upper)


def svd(A, full_matrices=True):
    A = _float(A)
    R = namedtuple("svd", ["U", "S", "Vh"])
    return R(*svd_factors(A, full_matrices=full_matrices))


def svdvals(A):
    A = _float(A)
    return svd_factors(A)[1] if _wants_grad(A) else P.linalg_svdvals(A)


def _check_pivot(pivot):
    if not pivot:
        raise op_error("linalg.lu_factor", "pivot=False (LU without pivoting) is not supported "
                       "by kiln on the CPU, nor by torch there")


def lu_factor(A, *, pivot=True):
    _check_pivot(pivot)
    A = _float(A)
    R = namedtuple("lu_factor", ["LU", "pivots"])
    return R(*lu_factors(A)[:2])


def lu_factor_ex(A, *, pivot=True, check_errors=False):
    R = namedtuple("lu_factor_ex", ["LU", "pivots", "info"])
    LU, piv = lu_factor(A, pivot=pivot)
    return R(LU, piv, F.zeros(tuple(A.shape[:-2]), dtype=dt.int32, device=A.device))


def _unpack_factors(LU):
    m, n = LU.shape[-2], LU.shape[-1]
    k = min(m, n)
    L = F.tril(F.narrow(LU, -1, 0, k), -1) + _eye(m, k, dtype=LU.dtype, device=LU.device)
    U = F.triu(F.narrow(LU, -2, 0, k))
    return L, U


def _permutation_from_pivots(pivots, m, like):
    """The permutation matrices P (A = P L U) of LAPACK's 1-based row swaps. Eagerly from the
    pivots read on the host; while a trace records, by tensor ops (torch's lu_unpack is a
    tensor op: reading the pivots would be a graph break), the same integers: swap i applied to
    the row order `order` in turn, then P[order[c], c] = 1."""
    if STATE.tracer is None:
        piv = pivots._host("lu_unpack()").astype(np.int64) - 1
        flat = piv.reshape((int(np.prod(piv.shape[:-1])), piv.shape[-1]))
        mats = np.stack([_pivots_to_permutation(p, m) for p in flat]) if flat.shape[0] else \
            np.zeros((0, m, m))
        return _tensor(mats.reshape(tuple(pivots.shape[:-1]) + (m, m)), dtype=like.dtype,
                       device=like.device)
    rows = _arange(m, dtype=dt.int64, device=pivots.device)
    swaps = F.sub(pivots.to(dt.int64), 1)
    order = rows.expand(tuple(pivots.shape[:-1]) + (m,))
    for i in range(pivots.shape[-1]):
        j = F.narrow(swaps, -1, i, 1)
        at_i, at_j = F.narrow(order, -1, i, 1), F.gather(order, -1, j)
        order = F.where(F.eq(rows, i), at_j, F.scatter(order, -1, j, at_i))
    return F.eq(F.unsqueeze(order, -2), F.unsqueeze(rows, -1)).to(like.dtype)


def lu(A, *, pivot=True):
    A = _float(A)
    R = namedtuple("lu", ["P", "L", "U"])
    _check_pivot(pivot)
    LU, _, perm = lu_factors(A)
    L, U = _unpack_factors(LU)
    return R(perm.detach(), L, U)       # P: not differentiable, as torch's


def lu_unpack(LU_data, LU_pivots, unpack_data=True, unpack_pivots=True):
    R = namedtuple("lu_unpack", ["P", "L", "U"])
    empty = F.zeros(0, dtype=LU_data.dtype, device=LU_data.device)
    L, U = _unpack_factors(LU_data) if unpack_data else (empty, empty)
    perm = _permutation_from_pivots(LU_pivots, LU_data.shape[-2], LU_data) if unpack_pivots \
        else empty
    return R(perm, L, U)


def lu_solve(LU, pivots, B, *, left=True, adjoint=False):
    perm, L, U = lu_unpack(LU, pivots)
    A = F.matmul(F.matmul(perm, L), U)
    if adjoint:                         # A^H: conjugated where complex
        A = _mH(A)
    return solve(A, B, left=left)


# ----------------------------------------------------------------------------- solving

def solve(A, B, *, left=True):
    """A^-1 B through inv."""
    A, B = _float(A), _float(B)
    _check_square(A, "solve")
    if not left:                        # X A = B  <=>  A^T X^T = B^T
        return _mT(solve(_mT(A), _mT(B)))
    vector = B.ndim == A.ndim - 1 or (B.ndim == 1)
    Bm = F.unsqueeze(B, -1) if vector else B
    X = F.matmul(inv(A), Bm)
    return F.squeeze(X, -1) if vector else X


def solve_ex(A, B, *, left=True, check_errors=False):
    R = namedtuple("solve_ex", ["result", "info"])
    return R(solve(A, B, left=left), F.zeros(tuple(A.shape[:-2]), dtype=dt.int32,
                                             device=A.device))


def solve_triangular(A, B, *, upper, left=True, unitriangular=False):
    T = F.triu(A) if upper else F.tril(A)
    if unitriangular:
        eye = _eye(A.shape[-1], dtype=A.dtype, device=A.device)
        T = T * (1 - eye) + eye
    return solve(T, B, left=left)


def pinv(A, rcond=None, hermitian=False, *, atol=None, rtol=None):
    """The pseudo-inverse: singular values (or eigenvalues when `hermitian`, of the lower
    triangle as eigh reads it) at or below the cutoff count as 0. `rcond` is rtol's old name.
    Its gradient is the pseudo-inverse's own (`_pinv_gradient`), as PyTorch's."""
    if rcond is not None:
        rtol = rcond
    A = _float(A)
    if hermitian:
        L, V = eigh(A)
        keep = F.gt(F.abs(L), _cutoff(A, F.abs(L), atol, rtol))
        inv_l = F.where(keep, 1.0 / F.where(keep, L, 1.0), 0.0)
        X = F.matmul(V * F.unsqueeze(inv_l, -2), _mH(V))
    else:
        U, S, Vh = svd(A, full_matrices=False)
        keep = F.gt(S, _cutoff(A, S, atol, rtol))
        inv_s = F.where(keep, 1.0 / F.where(keep, S, 1.0), 0.0)
        X = F.matmul(_mH(Vh) * F.unsqueeze(inv_s, -2), _mH(U))
    return X if not A.requires_grad else X.detach() + _pinv_gradient(A, X.detach())


def _pinv_gradient(A, X):
    """A zero whose gradient in A is that of the pseudo-inverse X = A+ along perturbations of
    A's rank (Golub and Pereyra): dX = -X dA X + X X^T dA^T (I - A X) + (I - X A) dA^T X^T X.
    It is what PyTorch differentiates, where the factorization's own gradient divides by
    the gaps between zero singular values and is no derivative at all. Complex: ^H for ^T."""
    At, A0, Xt = _mH(A), A.detach(), _mH(X)
    XXt, XtX = F.matmul(X, Xt), F.matmul(Xt, X)
    dX = (F.matmul(XXt, At) - F.matmul(F.matmul(XXt, At), F.matmul(A0, X))
          + F.matmul(At, XtX) - F.matmul(F.matmul(X, A0), F.matmul(At, XtX))
          - F.matmul(F.matmul(X, A), X))
    return dX - dX.detach()


def _rtol(A, atol, rtol):
    """rtol, or its default for A: max(m, n) * eps, 0 where a positive atol is given alone."""
    if rtol is not None:
        return rtol
    default = max(A.shape[-2], A.shape[-1]) * float(np.finfo(A.dtype.np).eps)
    if atol is None:
        return default
    return F.where(F.gt(atol, 0), 0.0, default) if isinstance(atol, Tensor) else \
        (0.0 if atol > 0 else default)


def _cutoff(A, S, atol, rtol):
    """max(atol, rtol * largest S) per matrix, shaped (*, 1) to compare with S (*, k). atol and
    rtol are floats or tensors of the batch shape; rtol is max(m, n) * eps by default, and 0
    where a positive atol is given alone (as PyTorch)."""
    def column(t):
        return F.unsqueeze(t, -1) if isinstance(t, Tensor) else t
    rtol = _rtol(A, atol, rtol)
    largest = F.amax(S, -1, keepdim=True) if S.shape[-1] else F.sum(S, -1, keepdim=True)
    tol = column(rtol) * largest
    if atol is None:
        return tol
    return F.maximum(tol, column(atol)) if isinstance(atol, Tensor) else F.clamp_min(tol, atol)


def lstsq(A, B, rcond=None, *, driver=None):
    """The least-squares solution pinv(A) B, with LAPACK's extras as PyTorch reports them per
    driver (default 'gelsy'): the ranks (not for 'gels'), the singular values ('gelsd',
    'gelss'), and the squared residuals |AX - B|^2 per column where m > n, the driver is not
    'gelsy' and every A has full rank (else empty)."""
    R = namedtuple("lstsq", ["solution", "residuals", "rank", "singular_values"])
    A, B = _float(A), _float(B)
    driver = "gelsy" if driver is None else driver
    if driver not in ("gels", "gelsy", "gelsd", "gelss"):
        raise op_error("linalg.lstsq", f"parameter `driver` should be one of (gels, gelsy, "
                       f"gelsd, gelss), got {driver!r}")
    if A.ndim < 2 or B.ndim < A.ndim - 1:
        raise op_error("linalg.lstsq", f"A must be batches of matrices and B of matrices or "
                       f"vectors, got shapes {list(A.shape)} and {list(B.shape)}")
    vector = B.ndim == A.ndim - 1
    Bm = F.unsqueeze(B, -1) if vector else B
    m, n = A.shape[-2], A.shape[-1]
    X = F.matmul(pinv(A, rtol=rcond), Bm)
    batch = tuple(X.shape[:-2])
    no_float = F.zeros(0, dtype=A.dtype.to_real(), device=A.device)
    S = svdvals(A) if driver != "gels" else None
    rank = F.zeros(0, dtype=dt.int64, device=A.device)
    if S is not None:
        rtol = max(m, n) * float(np.finfo(A.dtype.np).eps) if rcond is None else rcond
        rank = F.expand(matrix_rank(A, rtol=rtol), batch)
    full = S is not None and bool(F.all(F.eq(rank, n)))
    if m > n and driver != "gelsy" and (driver == "gels" or full):
        residuals = F.sum(F.square(F.abs(F.matmul(A, X) - Bm)), -2)    # real for complex
        residuals = F.squeeze(residuals, -1) if vector else residuals
    else:                               # empty, and differentiable as PyTorch's
        residuals = F.narrow(F.reshape(F.abs(X), (-1,)), 0, 0, 0)
    X = F.squeeze(X, -1) if vector else X
    sv = F.expand(S, batch + (min(m, n),)).detach() if driver in ("gelsd", "gelss") \
        else no_float
    return R(X, residuals, rank, sv)


def matrix_rank(A, *, atol=None, rtol=None, hermitian=False, tol=None):
    """How many singular values (|eigenvalues| when `hermitian`) exceed the cutoff; `tol` is
    the old name of atol, with rtol 0."""
    if tol is not None:
        atol, rtol = tol, 0.0
    S = F.abs(eigvalsh(A)) if hermitian else svdvals(A)
    return F.sum(F.gt(S, _cutoff(A, S, atol, rtol)), -1)


def tensorinv(A, ind=2):
    out_shape = tuple(A.shape[ind:]) + tuple(A.shape[:ind])
    rows = int(np.prod(A.shape[:ind]))
    return F.reshape(inv(F.reshape(A, (rows, -1))), out_shape)


def tensorsolve(A, B, dims=None):
    if dims is not None:
        A = F.movedim(A, dims, tuple(range(A.ndim - len(dims), A.ndim)))
    n = B.numel()
    x_shape = tuple(A.shape[B.ndim:])
    return F.reshape(solve(F.reshape(A, (n, -1)), F.reshape(B, (n,))), x_shape)


# ----------------------------------------------------------------------------- powers, norms

def matrix_power(A, n):
    _check_square(A, "matrix_power")
    if n == 0:
        return _constant_of(_eye(A.shape[-1], dtype=A.dtype, device=A.device), A)
    if n < 0:
        A, n = inv(A), -n
    result, base = None, A
    while n:
        if n & 1:
            result = base if result is None else F.matmul(result, base)
        n >>= 1
        if n:
            base = F.matmul(base, base)
    return result


def matrix_exp(A):
    """exp(A): the `linalg_matrix_exp` primitive (scaling and squaring of a degree-18 Taylor
    polynomial; its gradient is the same primitive on a block matrix). One library call, so a
    compiled function runs it as an extern, whatever the norm that sets its squarings."""
    A = _float(A)
    _check_square(A, "matrix_exp")
    return P.linalg_matrix_exp(A)


def householder_product(A, tau, *, out=None):
    """The first n columns of H_1 H_2 ... H_k, H_i = I - tau_i v_i v_i^H, v_i the i-th column of
    A below the diagonal with a 1 on it (LAPACK's orgqr, torch.linalg.householder_product).
    Composed of matmuls, so it is differentiable in A's strictly lower part and in tau."""
    A, tau = _float(A), _float(tau)
    name = "torch.linalg.householder_product"
    if A.ndim < 2:
        raise op_error(name, f"input must have at least 2 dimensions, got {A.ndim}")
    if tau.ndim != A.ndim - 1:
        raise op_error(name, f"Expected tau to have one dimension less than input, but got "
                       f"tau.ndim equal to {tau.ndim} and input.ndim is equal to {A.ndim}")
    m, n, k = A.shape[-2], A.shape[-1], tau.shape[-1]
    if m < n:
        raise op_error(name, "input.shape[-2] must be greater than or equal to input.shape[-1]")
    if n < k:
        raise op_error(name, "input.shape[-1] must be greater than or equal to tau.shape[-1]")
    eye = _eye(m, n, dtype=A.dtype, device=A.device)
    reflectors = F.tril(A, -1) + eye                  # column i is v_i: zeros above row i
    Q = _constant_of(eye, A)
    for i in reversed(range(k)):                      # Q = H_1 (H_2 (... (H_k I)))
        v = reflectors[..., :, i:i + 1]
        t = F.unsqueeze(F.unsqueeze(tau[..., i], -1), -1)
        Q = Q - t * F.matmul(v, F.matmul(_mH(v), Q))
    if out is not None:
        out.copy_(Q)
        return out
    return Q


def _root(s, p):
    """s ** (1/p) of a sum of powers, with gradient 0 where s is 0 (the zero vector)."""
    return _norm_root(s, F.sqrt if p == 2 else lambda t: F.pow(t, 1.0 / p))


def _max_norm(t, dim, keepdim):
    """amax of nonnegative values, 0 over an empty dim (the norm of nothing), as PyTorch."""
    return F.sum(t, dim, keepdim) if t.shape[dim] == 0 else F.amax(t, dim, keepdim)


def vector_norm(x, ord=2, dim=None, keepdim=False, *, dtype=None):
    x = x if dtype is None else x.to(dtype)
    if x.dtype in dt.HALF and x.device.type == "cpu":
        # in float32, rounded once, as PyTorch's CPU kernel: |x| ** ord overflows float16
        # (8.5 ** 6 > 65504) where the norm does not
        return vector_norm(x.float(), ord, dim, keepdim).to(x.dtype)
    if x.dtype.is_complex:                 # the norm of complex numbers is that of |x|: real
        x = F.abs(x)
    x = _float(x)
    if dim is None or (not isinstance(dim, int) and len(dim) == 0):
        dim = tuple(range(x.ndim))         # every element, as one vector
    a = F.abs(x)
    if ord == math.inf:
        if x.numel() == 0:
            return F.sum(a, dim, keepdim)
        return F.amax(a, dim, keepdim)
    if ord == -math.inf:
        return F.amin(a, dim, keepdim)
    if ord == 0:                           # a count: differentiable, with gradient 0
        return F.sum(F.where(F.ne(x, 0), 1.0, x * 0.0), dim, keepdim)
    if ord == 1:
        return F.sum(a, dim, keepdim)
    if ord == 2:
        return _root(F.sum(x * x, dim, keepdim), 2)
    # |x| ** ord, with 0 ** ord (0, or inf for ord < 0) given gradient 0 as PyTorch's
    zero = F.eq(a, 0)
    powers = F.where(zero, 0.0 if ord > 0 else math.inf,
                     F.pow(F.where(zero, 1.0, a), float(ord)))
    total = F.sum(powers, dim, keepdim)
    return _root(total, ord) if ord > 0 else F.pow(total, 1.0 / ord)


def matrix_norm(A, ord="fro", dim=(-2, -1), keepdim=False, *, dtype=None):
    A = A if dtype is None else A.to(dtype)
    if A.dtype.is_complex and ord in ("fro", 1, -1, math.inf, -math.inf):
        A = F.abs(A)                       # these norms read only the magnitudes
    A = _float(A)
    d0, d1 = (d % A.ndim for d in dim)
    if ord == "fro":
        return _root(F.sum(A * A, (d0, d1), keepdim), 2)
    if ord in ("nuc", 2, -2):
        M = F.movedim(A, (d0, d1), (-2, -1))
        S = svdvals(M)
        out = F.sum(S, -1) if ord == "nuc" else \
            (_max_norm(S, -1, False) if ord == 2 else F.amin(S, -1))
        if keepdim:
            out = F.unsqueeze(F.unsqueeze(out, min(d0, d1)), max(d0, d1))
        return out
    if ord in (1, -1, math.inf, -math.inf):
        sum_dim, pick_dim = (d0, d1) if ord in (1, -1) else (d1, d0)
        sums = F.sum(F.abs(A), sum_dim, keepdim=True)
        out = (_max_norm if ord > 0 else F.amin)(sums, pick_dim, keepdim=True)
        if not keepdim:
            out = F.squeeze(F.squeeze(out, max(d0, d1)), min(d0, d1))
        return out
    raise op_error("linalg.matrix_norm", f"Order {ord} not supported.", ValueError)


def norm(A, ord=None, dim=None, keepdim=False, *, dtype=None):
    if isinstance(ord, str) or (dim is not None and not isinstance(dim, int) and
                                len(dim) == 2) or (ord is not None and dim is None and
                                                   A.ndim == 2):
        return matrix_norm(A, "fro" if ord is None else ord, (-2, -1) if dim is None else dim,
                           keepdim, dtype=dtype)
    return vector_norm(A, 2 if ord is None else ord, dim, keepdim, dtype=dtype)


def cond(A, p=None):
    if p is None or p == 2 or p == -2:
        S = svdvals(A)
        big, small = F.amax(S, -1), F.amin(S, -1)
        return small / big if p == -2 else big / small
    return matrix_norm(A, p) * matrix_norm(inv(A), p)


def vander(x, *, N=None):
    """Increasing powers x^0 .. x^(N-1) of each element of x's last dim: (*, n) -> (*, n, N),
    N = n by default; a 0-d x is one element."""
    if x.ndim == 0:
        x = F.reshape(x, (1,))
    return FX.vander(x, x.shape[-1] if N is None else N, increasing=True)


# ----------------------------------------------------------------------------- torch.* forms

def torch_cholesky(A, upper=False):
    return cholesky(A, upper=upper)


def cholesky_inverse(L, upper=False):
    """(L L^H)^-1; with upper=True L is U and A = U^H U."""
    T = _mH(L) if upper else L
    return inv(F.matmul(T, _mH(T)))


def cholesky_solve(B, L, upper=False):
    T = _mH(L) if upper else L
    return F.matmul(cholesky_inverse(T), B)


def logdet(A):
    """log det A: complex for a complex A (log of its sign's phase added), else NaN where the
    determinant is negative."""
    sign, logabs = slogdet(A)
    if A.dtype.is_complex:
        return F.log(sign) + logabs
    return F.where(F.lt(sign, 0), math.nan, F.where(F.eq(sign, 0), -math.inf, logabs))


def torch_qr(A, some=True):
    return qr(A, "reduced" if some else "complete")


def torch_svd(A, some=True, compute_uv=True):
    R = namedtuple("svd", ["U", "S", "V"])
    U, S, Vh = svd(A, full_matrices=not some)
    return R(U, S, _mH(Vh))


def pinverse(input, rcond=1e-15):
    return pinv(input, rtol=rcond)


def triangular_solve(b, A, upper=True, transpose=False, unitriangular=False):
    R = namedtuple("triangular_solve", ["solution", "cloned_coefficient"])
    T = _mT(A) if transpose else A
    return R(solve_triangular(T, b, upper=upper != transpose, unitriangular=unitriangular),
             A.clone())


_CROSS_WARNED: list = []


def torch_cross(input, other, dim=None):
    if dim is None:
        if not _CROSS_WARNED:       # PyTorch warns once per process
            _CROSS_WARNED.append(True)
            warnings.warn("Using torch.cross without specifying the dim arg is deprecated.\n"
                          "Please either pass the dim explicitly or simply use "
                          "torch.linalg.cross.\nThe default value of dim will change to agree "
                          "with that of linalg.cross in a future release.", UserWarning,
                          stacklevel=user_stacklevel())
        dim = next(i for i, s in enumerate(input.shape) if s == 3)
    return cross(input, other, dim=dim)


def torch_lu(A, pivot=True, get_infos=False):
    LU, piv = lu_factor(A, pivot=pivot)
    if get_infos:
        return LU, piv, F.zeros(tuple(A.shape[:-2]), dtype=dt.int32, device=A.device)
    return LU, piv


def torch_nuclear_norm(input, dim=(-2, -1), keepdim=False):
    """torch.nuclear_norm: the sum of the singular values over `dim`."""
    return matrix_norm(input, "nuc", dim, keepdim)


def torch_lu_solve(b, LU_data, LU_pivots):
    return lu_solve(LU_data, LU_pivots, b)


def _lapack(name, dtype):
    """scipy's LAPACK routine `name` ('sytrf', ...) for a float or complex dtype."""
    from scipy.linalg import lapack
    prefix = {dt.float32: "s", dt.float64: "d", dt.complex64: "c", dt.complex128: "z"}[dtype]
    return getattr(lapack, prefix + name)


def _each_matrix(arrays, fn, outs):
    """fn on each matrix of the batched arrays (batch dims broadcast), results stacked into
    arrays of the per-matrix shapes and dtypes in `outs`: [(shape, dtype), ...]."""
    batch = np.broadcast_shapes(*(a.shape[:-2] for a in arrays))
    arrays = [np.broadcast_to(a, batch + a.shape[-2:]) for a in arrays]
    results = [np.zeros(batch + shape, dtype) for shape, dtype in outs]
    for i in np.ndindex(*batch):
        for res, value in zip(results, fn(*(a[i] for a in arrays))):
            res[i] = value
    return results


def ldl_factor_ex(A, *, hermitian=False, check_errors=False):
    """The LDL^T factorization of symmetric matrices with Bunch-Kaufman pivoting (LAPACK's
    sytrf on the lower triangle; LDL^H and hetrf for complex ones with `hermitian`), compact as
    LAPACK gives it: L below the diagonal, D's 1x1 and 2x2 blocks on and next to it, pivots
    negative for a 2x2 block. Read into NumPy and not differentiable, as torch's."""
    A = _float(A)
    _check_square(A, "ldl_factor")
    n, sytrf = A.shape[-1], _lapack(_ldl_routine("trf", A, hermitian), A.dtype)

    def one(a):
        ldu, piv, info = sytrf(a, lower=1) if n else (a, np.zeros(0, np.int32), 0)
        return np.tril(ldu), piv, info
    LD, piv, info = _each_matrix([A._host("ldl_factor()")], one,
                                 [((n, n), A.dtype.np), ((n,), np.int32), ((), np.int32)])
    if check_errors and info.any():
        raise op_error("linalg.ldl_factor", "the factorization could not be completed: D has "
                       "a zero on its diagonal", LinAlgError)
    R = namedtuple("ldl_factor_ex", ["LD", "pivots", "info"])
    return R(*(_tensor(x, dtype=d, device=A.device)
               for x, d in zip((LD, piv, info), (A.dtype, dt.int32, dt.int32))))


def ldl_factor(A, *, hermitian=False):
    R = namedtuple("ldl_factor", ["LD", "pivots"])
    return R(*ldl_factor_ex(A, hermitian=hermitian)[:2])


def _ldl_routine(step, A, hermitian):
    """LAPACK's name of an LDL step ('trf', 'trs'): 'he' for Hermitian complex matrices."""
    return ("he" if hermitian and A.dtype.is_complex else "sy") + step


def ldl_solve(LD, pivots, B, *, hermitian=False):
    """X with A X = B from ldl_factor's (LD, pivots) (LAPACK's sytrs, or hetrs; batch dims
    broadcast)."""
    LD, B = _float(LD), _float(B)
    n, k, sytrs = LD.shape[-1], B.shape[-1], _lapack(_ldl_routine("trs", LD, hermitian),
                                                     LD.dtype)
    if B.ndim < 2 or B.shape[-2] != n:
        raise op_error("linalg.ldl_solve", f"B must be batches of {n}-row matrices, got "
                       f"{list(B.shape)}")
    piv = pivots._host("ldl_solve()")[..., None, :]    # a 1 x n "matrix" each

    def one(ld, p, b):
        return (sytrs(ld, p[0], b, lower=1)[0] if n and k else b,)
    X, = _each_matrix([LD._host("ldl_solve()"), piv,
                       B._host("ldl_solve()")], one, [((n, k), B.dtype.np)])
    return _tensor(X, dtype=B.dtype, device=B.device)


def geqrf(input):
    """LAPACK's QR in its packed form (a, tau): R on and above a's diagonal, the Householder
    vectors below it, their scales in tau. Not differentiable (as torch's); computed from the
    values read into NumPy, so a compiled function breaks its graph here."""
    A = _float(input)
    if A.ndim < 2:
        raise op_error("geqrf", f"input must have at least 2 dimensions, got {list(A.shape)}")
    h, tau = np.linalg.qr(A._host("geqrf()"), mode="raw")
    R = namedtuple("geqrf", ["a", "tau"])
    return R(_tensor(np.swapaxes(h, -1, -2), dtype=A.dtype, device=A.device),
             _tensor(tau, dtype=A.dtype, device=A.device))


def ormqr(input, tau, other, left=True, transpose=False):
    """other multiplied by Q = H_1 ... H_k of geqrf's packed reflectors (Q^H with `transpose`;
    from the right unless `left`). Q is householder_product of the reflectors padded to a
    square matrix, so it is differentiable in all three inputs."""
    m = input.shape[-2]
    V = F.narrow(input, -1, 0, min(m, input.shape[-1]))
    if V.shape[-1] < m:
        V = F.cat([V, F.zeros(tuple(V.shape[:-1]) + (m - V.shape[-1],), dtype=V.dtype,
                               device=V.device)], -1)
    Q = householder_product(V, tau)
    Q = _mH(Q) if transpose else Q
    return F.matmul(Q, other) if left else F.matmul(other, Q)


def svd_lowrank(A, q=6, niter=2, M=None):
    """A rank-q SVD (U, S, V) of A - M by Halko, Martinsson and Tropp's randomized range finder
    (their algorithms 4.4 and 5.1): a Gaussian test matrix drawn from kiln's generator (as
    torch's from its own), `niter` power iterations. Exact when A - M has rank <= q."""
    A = _float(A)
    q = 6 if q is None else q
    m, n = A.shape[-2], A.shape[-1]
    if M is not None:
        M = F.broadcast_to(M, tuple(A.shape))
    if m < n:                           # work on the tall matrix; swap U and V at the end
        A = _mH(A)
        M = None if M is None else _mH(M)
    Q = _range_basis(A, q, niter, M)
    B = F.matmul(_mH(Q), A)
    if M is not None:
        B = B - F.matmul(_mH(Q), M)
    U, S, Vh = svd(B, full_matrices=False)
    U, V = F.matmul(Q, U), _mH(Vh)
    R = namedtuple("svd_lowrank", ["U", "S", "V"])
    return R(V, S, U) if m < n else R(U, S, V)


def _range_basis(A, q, niter, M):
    """Orthonormal columns spanning (approximately) the range of A - M: Q of (A - M) G for a
    Gaussian n x q G, refined by `niter` rounds through (A - M)^T and back."""
    def times(X, transpose=False):
        out = F.matmul(_mH(A) if transpose else A, X)
        return out if M is None else out - F.matmul(_mH(M) if transpose else M, X)
    Q = qr(times(_randn(A.shape[-1], q, dtype=A.dtype, device=A.device))).Q
    for _ in range(niter):
        Q = qr(times(Q, transpose=True)).Q
        Q = qr(times(Q)).Q
    return Q


def pca_lowrank(A, q=None, center=True, niter=2):
    """Principal components of A's rows: svd_lowrank of A with its column means taken off
    (center=True); q defaults to min(6, m, n)."""
    m, n = A.shape[-2], A.shape[-1]
    if q is None:
        q = min(6, m, n)
    elif not 0 <= q <= min(m, n):
        raise op_error("pca_lowrank", f"q(={q}) must be non-negative integer and not greater "
                       f"than min(m, n)={min(m, n)}", ValueError)
    if niter < 0:
        raise op_error("pca_lowrank", f"niter(={niter}) must be non-negative integer",
                       ValueError)
    A = _float(A)
    return svd_lowrank(A - F.mean(A, -2, keepdim=True) if center else A, q, niter)


TORCH_FORMS = {"lu": torch_lu, "lu_solve": torch_lu_solve, "lu_unpack": lu_unpack,
               "cholesky": torch_cholesky, "cholesky_inverse": cholesky_inverse,
               "cholesky_solve": cholesky_solve, "det": det, "inverse": inv, "logdet": logdet,
               "slogdet": slogdet, "qr": torch_qr, "svd": torch_svd, "pinverse": pinverse,
               "matrix_exp": matrix_exp, "triangular_solve": triangular_solve,
               "cross": torch_cross, "matrix_power": matrix_power,
               "nuclear_norm": torch_nuclear_norm, "svd_lowrank": svd_lowrank,
               "geqrf": geqrf, "ormqr": ormqr, "orgqr": householder_product,
               "pca_lowrank": pca_lowrank}
_NOT_METHODS = ("nuclear_norm", "svd_lowrank", "pca_lowrank")     # torch has no such methods
# autocast's policy on the torch forms its tables name (torch.inverse, torch.cholesky, ...)
TORCH_FORMS = {name: _autocast.autocast_op(fn, name) if name in _autocast.policy_names() else fn
               for name, fn in TORCH_FORMS.items()}


def _bind_tensor_methods() -> None:
    """`A.det()`, `A.inverse()`, `b.cholesky_solve(L)`, ...: the torch forms as Tensor methods."""
    for name, fn in TORCH_FORMS.items():
        if name not in _NOT_METHODS:
            setattr(Tensor, name, fn)


_bind_tensor_methods()
# and on this module's own (linalg.solve, linalg.svd, ...; linalg.lu_solve is not torch.lu_solve)
_autocast.install(_sys.modules[__name__], _autocast.policy_names() - {"lu_solve"})
