"""Finite-difference cases for the primitives of `kiln.ir.ops_complex` (complex parts, views and
FFTs); `tests/ir/test_gradcheck.py` adds them to its table. Each case maps real float64 leaves
to a real result through complex values, so the check perturbs every real and imaginary part:
a rule that is right only for real numbers, or misses PyTorch's conjugation, fails here."""

from __future__ import annotations

from kiln.ir.ops import P
from kiln.ir.ops_complex import eig_factors
from tests.ir.gradcheck_helpers import arg, pos


def _z(x):
    return P.view_as_complex(x)


CASES_COMPLEX = {
    "complex": [("broadcast, through a product", lambda a, b: P.view_as_real(
        P.complex(a, b) * P.complex(b, a)), [arg(2, 3), arg(3, seed=1)])],
    "real": [("of a product", lambda x: P.real(_z(x) * _z(x)), [arg(3, 2)])],
    "imag": [("of exp", lambda x: P.imag(P.exp(_z(x))), [arg(3, 2)])],
    "view_as_real": [("of a quotient", lambda x, y: P.view_as_real(_z(x) / _z(y)),
                      [arg(2, 3, 2), pos(2, 3, 2, seed=1)])],
    "view_as_complex": [("through sin", lambda x: P.view_as_real(P.sin(_z(x))), [arg(4, 2)])],
    "conj": [("times itself", lambda x: P.view_as_real(P.conj(_z(x)) * P.exp(_z(x))),
              [arg(3, 2)])],
    "angle": [("", lambda x: P.angle(_z(x)), [arg(5, 2)])],
    "fft_c2c": [("forward, ortho", lambda x: P.view_as_real(P.fft_c2c(
        _z(x), dims=(0,), norm="ortho", forward=True)), [arg(5, 3, 2)]),
        ("inverse over two dims", lambda x: P.view_as_real(P.fft_c2c(
            _z(x), dims=(1, 0), norm="backward", forward=False)), [arg(3, 4, 2)])],
    "fft_r2c": [("two dims", lambda x: P.view_as_real(P.fft_r2c(
        x, dims=(0, 1), norm="backward")), [arg(3, 5)]),
        ("even length, forward norm", lambda x: P.view_as_real(P.fft_r2c(
            x, dims=(1,), norm="forward")), [arg(2, 6)])],
    "fft_c2r": [("even n", lambda x: P.fft_c2r(_z(x), dims=(1,), n=6, norm="backward"),
                 [arg(3, 4, 2)]),
                ("odd n, two dims", lambda x: P.fft_c2r(_z(x), dims=(0, 1), n=7, norm="ortho"),
                 [arg(3, 4, 2)])],
    # eigenvectors are defined up to a phase: the checks read phase-free values of them
    "linalg_eig": [("eigenvalues of a real matrix", lambda a: P.view_as_real(
        eig_factors(a)[0]), [arg(4, 4)]),
        ("eigenvector magnitudes of a complex matrix", lambda x: P.abs(
            eig_factors(_z(x))[1]), [arg(3, 3, 2)]),
        ("eigenvalues and eigenvector magnitudes", lambda a: P.cat(
            P.reshape(P.abs(eig_factors(a)[1]), shape=(16,)),
            P.view_as_real(eig_factors(a)[0])[:, 0], axis=0), [arg(4, 4, seed=1)])],
    "linalg_eigvals": [("of a real matrix", lambda a: P.view_as_real(P.linalg_eigvals(a)),
                        [arg(2, 4, 4)]),
                       ("of a complex matrix", lambda x: P.view_as_real(P.linalg_eigvals(_z(x))),
                        [arg(3, 3, 2)])],
}
