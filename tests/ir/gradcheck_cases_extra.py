"""Finite-difference cases for the primitives of `kiln.ir.ops_extra` (special functions and
linear algebra); `tests/ir/test_gradcheck.py` adds them to its table."""

from __future__ import annotations

import numpy as np

import kiln
from kiln.ir.ops import P
from kiln.ir.ops_extra import svd_factors
from tests.ir.gradcheck_helpers import arg, pos


def spd(n, seed=0, batch=()):
    """A symmetric positive-definite matrix built from a leaf (gradients flow through)."""
    b = arg(*batch, n, n, seed=seed)
    return b


def _sym(b):
    return P.add(P.matmul(b, P.permute(b, perm=tuple(range(b.ndim - 2)) + (b.ndim - 1,
                                                                             b.ndim - 2))),
                 P.mul(kiln.eye(b.shape[-1], dtype=kiln.float64), float(b.shape[-1])))


def _wide_gaps(n, seed):
    """A symmetric matrix with well-separated eigenvalues (eigenvector gradients divide by gaps),
    as a differentiable function of a leaf."""
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(n, n)))
    base = q @ np.diag(np.arange(1.0, n + 1) * 2) @ q.T
    return kiln.tensor(base, dtype=kiln.float64), arg(n, n, seed=seed, low=-0.1, high=0.1)


_EIG_BASE, _EIG_LEAF = _wide_gaps(4, 3)


def _first_k(factors):
    """U's first k columns, S and Vh's first k rows, flattened into one tensor."""
    U, S, Vh = factors
    k = S.shape[-1]
    return kiln.cat([U[..., :, :k].reshape(-1), S.reshape(-1), Vh[..., :k, :].reshape(-1)])


def _eig_input(d):
    return P.add(_EIG_BASE, P.add(d, P.permute(d, perm=(1, 0))))


CASES_EXTRA = {
    "atan": [("", lambda x: P.atan(x), [arg(5)])],
    "asin": [("", lambda x: P.asin(x), [arg(5, low=-0.9, high=0.9)])],
    "atan2": [("broadcast", lambda y, x: P.atan2(y, x), [arg(2, 3), pos(3, seed=1)])],
    "asinh": [("", lambda x: P.asinh(x), [arg(5)])],
    "acosh": [("", lambda x: P.acosh(x), [arg(5, low=1.2, high=3.0)])],
    "atanh": [("", lambda x: P.atanh(x), [arg(5, low=-0.9, high=0.9)])],
    "lgamma": [("", lambda x: P.lgamma(x), [pos(5)])],
    "digamma": [("", lambda x: P.digamma(x), [pos(5)])],
    "polygamma": [("n=1", lambda x: P.polygamma(x, n=1), [pos(5)])],
    "erfc": [("", lambda x: P.erfc(x), [arg(5)])],
    "erfcx": [("", lambda x: P.erfcx(x), [arg(5)])],
    "erfinv": [("", lambda x: P.erfinv(x), [arg(5, low=-0.9, high=0.9)])],
    "ndtri": [("", lambda x: P.ndtri(x), [arg(5, low=0.05, high=0.95)])],
    "log_ndtr": [("", lambda x: P.log_ndtr(x), [arg(5)])],
    "i0": [("", lambda x: P.i0(x), [arg(5)])],
    "i0e": [("", lambda x: P.i0e(x), [arg(5)])],
    "i1": [("", lambda x: P.i1(x), [arg(5)])],
    "i1e": [("", lambda x: P.i1e(x), [arg(5)])],
    "gammainc": [("x only", lambda x: P.gammainc(kiln.tensor([0.5, 2.0, 3.0], dtype=kiln.float64),
                                                  x), [pos(3)])],
    "gammaincc": [("x only", lambda x: P.gammaincc(kiln.tensor([0.5, 2.0, 3.0],
                                                                dtype=kiln.float64), x),
                   [pos(3)])],
    "bessel_j0": [("", lambda x: P.bessel_j0(x), [arg(5, high=6.0)])],
    "bessel_j1": [("", lambda x: P.bessel_j1(x), [arg(5, high=6.0)])],
    "gamma_sample": [("fixed seed", lambda a: P.gamma_sample(a, kiln.tensor(7)), [pos(4)])],
    # the factorizations' primitives return every result packed into one flat tensor: a check
    # of the packed output checks the rule against every result's gradient at once
    "linalg_lu": [("LU", lambda b: P.linalg_lu(_sym(b)), [arg(3, 3)]),
                  ("batched", lambda a: P.linalg_lu(P.add(a, P.mul(kiln.eye(3, dtype=kiln.float64),
                                                                   4.0))),
                   [arg(2, 3, 3)]),
                  ("wide", lambda a: P.linalg_lu(a), [arg(2, 3, 5)]),
                  ("tall", lambda a: P.linalg_lu(a), [arg(5, 3)])],
    "copysign": [("", lambda x, y: P.copysign(x, y), [arg(4), arg(4, seed=1)])],
    # one float step from x toward y: slope 1 in x, 0 in y (PyTorch's rule)
    "nextafter": [("", lambda x, y: P.nextafter(x, y), [arg(4), arg(4, seed=1)])],
    "linalg_inv": [("batched", lambda b: P.linalg_inv(_sym(b)), [arg(2, 3, 3)])],
    "linalg_slogdet": [("batched", lambda b: P.linalg_slogdet(_sym(b)), [arg(2, 3, 3)]),
                       ("negative determinant", lambda a: P.linalg_slogdet(a), [arg(3, 3)])],
    "linalg_cholesky": [("", lambda b: P.linalg_cholesky(_sym(b)), [arg(3, 3)])],
    "linalg_matrix_exp": [("batched", lambda a: P.linalg_matrix_exp(a), [arg(2, 3, 3)]),
                          ("squarings", lambda a: P.linalg_matrix_exp(P.mul(a, 3.0)),
                           [arg(3, 3)])],
    "linalg_qr": [("tall", lambda a: P.linalg_qr(a), [arg(4, 3)]),
                  ("square", lambda a: P.linalg_qr(a), [arg(3, 3)]),
                  ("wide, batched", lambda a: P.linalg_qr(a), [arg(2, 3, 5)])],
    "linalg_eigh": [("lower", lambda d: P.linalg_eigh(_eig_input(d), upper=False), [_EIG_LEAF]),
                    ("upper", lambda d: P.linalg_eigh(_eig_input(d), upper=True), [_EIG_LEAF])],
    "linalg_svd": [("tall", lambda a: P.linalg_svd(a, full_matrices=False), [arg(4, 3)]),
                   ("wide, batched", lambda a: P.linalg_svd(a, full_matrices=False),
                    [arg(2, 3, 4)]),
                   ("square", lambda a: P.linalg_svd(a, full_matrices=False), [arg(3, 3)]),
                   # full matrices: the gradient flows through the first k vectors only (as
                   # torch's), so the check reads those
                   ("full matrices", lambda a: _first_k(svd_factors(a, full_matrices=True)),
                    [arg(4, 3)])],
    "linalg_svdvals": [("tall", lambda a: P.linalg_svdvals(a), [arg(4, 3)]),
                       ("wide, batched", lambda a: P.linalg_svdvals(a), [arg(2, 3, 4)])],
    "linalg_eigvalsh": [("lower", lambda d: P.linalg_eigvalsh(_eig_input(d), upper=False),
                         [_EIG_LEAF]),
                        ("upper", lambda d: P.linalg_eigvalsh(_eig_input(d), upper=True),
                         [_EIG_LEAF])],
}
