"""`kiln.special`: special functions (torch.special), differentiable where PyTorch's are.

Gamma-family, error-function, Bessel, Airy and normal-distribution functions are primitives
backed by scipy.special (cupyx.scipy.special on a GPU); the orthogonal polynomials are
recurrence primitives (`kiln.ir.ops_special`); the rest are compositions.
"""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional_extra as FX
from kiln.tracer.functional_extra import (  # noqa: F401
    digamma, entr, erfc, erfcx, erfinv, expit, gammainc, gammaincc, i0, i0e, i1, i1e, log_ndtr,
    logit, multigammaln, ndtr, ndtri, polygamma, psi, sinc, xlog1py, xlogy, zeta)
from kiln.tracer.functional import (erf, exp2, expm1, log1p, log_softmax, logsumexp,  # noqa: F401
                                    round, softmax)
from kiln.tracer.functional.common import result_type
from kiln.tracer.creation import as_tensor
from kiln.tracer.tensor import Tensor

gammaln = FX.lgamma
modified_bessel_i0 = FX.i0
modified_bessel_i1 = FX.i1


def bessel_j0(input):
    return P.bessel_j0(FX._f(input))


def bessel_j1(input):
    return P.bessel_j1(FX._f(input))



# ----------------------------------------------------------------------------- rarer functions
# (primitives in kiln.ir.ops_special; PyTorch gives them no derivative, nor does kiln)

def bessel_y0(input):
    return P.bessel_y0(FX._f(input))


def bessel_y1(input):
    return P.bessel_y1(FX._f(input))


def modified_bessel_k0(input):
    return P.modified_bessel_k0(FX._f(input))


def modified_bessel_k1(input):
    return P.modified_bessel_k1(FX._f(input))


def scaled_modified_bessel_k0(input):
    return P.scaled_modified_bessel_k0(FX._f(input))


def scaled_modified_bessel_k1(input):
    return P.scaled_modified_bessel_k1(FX._f(input))


def airy_ai(input):
    return P.airy_ai(FX._f(input))


def spherical_bessel_j0(input):
    return P.spherical_bessel_j0(FX._f(input))


def _polynomial(name: str):
    """torch.special.<name>(input, n): the degree-n polynomial at input, n a tensor or a number
    (truncated toward zero), broadcast together; the dtype is the promoted one, float if both
    are integers."""
    def polynomial(input, n, *, out=None):
        if not isinstance(input, Tensor) and not isinstance(n, Tensor):
            raise TypeError(f"special.{name}(): expected input or n to be a tensor, got "
                            f"{type(input).__name__} and {type(n).__name__}")
        kind = result_type(input, n)
        if not kind.is_floating_point:
            kind = dt.get_default_dtype()
        like = input if isinstance(input, Tensor) else n
        x, degree = (v.to(kind) if isinstance(v, Tensor) else as_tensor(v, dtype=kind,
                                                                         device=like.device)
                     for v in (input, n))
        result = getattr(P, name)(x.detach(), degree.detach())
        return result if out is None else out.copy_(result)
    polynomial.__name__ = polynomial.__qualname__ = name
    return polynomial


chebyshev_polynomial_t = _polynomial("chebyshev_polynomial_t")
chebyshev_polynomial_u = _polynomial("chebyshev_polynomial_u")
chebyshev_polynomial_v = _polynomial("chebyshev_polynomial_v")
chebyshev_polynomial_w = _polynomial("chebyshev_polynomial_w")
shifted_chebyshev_polynomial_t = _polynomial("shifted_chebyshev_polynomial_t")
shifted_chebyshev_polynomial_u = _polynomial("shifted_chebyshev_polynomial_u")
shifted_chebyshev_polynomial_v = _polynomial("shifted_chebyshev_polynomial_v")
shifted_chebyshev_polynomial_w = _polynomial("shifted_chebyshev_polynomial_w")
hermite_polynomial_h = _polynomial("hermite_polynomial_h")
hermite_polynomial_he = _polynomial("hermite_polynomial_he")
laguerre_polynomial_l = _polynomial("laguerre_polynomial_l")
legendre_polynomial_p = _polynomial("legendre_polynomial_p")
