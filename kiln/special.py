"""`kiln.special`: special functions (torch.special), differentiable where PyTorch's are.

Gamma-family, error-function, Bessel and normal-distribution functions are primitives backed
by scipy.special (cupyx.scipy.special on a GPU); the rest are compositions.
"""

from __future__ import annotations

from kiln.ir.ops import P
from kiln.tracer import functional_extra as FX
from kiln.tracer.functional_extra import (  # noqa: F401
    digamma, entr, erfc, erfcx, erfinv, expit, gammainc, gammaincc, i0, i0e, i1, i1e, log_ndtr,
    logit, multigammaln, ndtr, ndtri, polygamma, psi, sinc, xlog1py, xlogy, zeta)
from kiln.tracer.functional import (erf, exp2, expm1, log1p, log_softmax, logsumexp,  # noqa: F401
                                    round, softmax)

gammaln = FX.lgamma
modified_bessel_i0 = FX.i0
modified_bessel_i1 = FX.i1


def bessel_j0(input):
    return P.bessel_j0(FX._f(input))


def bessel_j1(input):
    return P.bessel_j1(FX._f(input))

