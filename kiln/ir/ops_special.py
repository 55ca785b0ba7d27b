"""Primitives for torch.special's rarer functions: Bessel functions of the second kind, modified
Bessel functions of the second kind, Airy Ai, the spherical j0, and the classical orthogonal
polynomials (Chebyshev, shifted Chebyshev, Hermite, Laguerre, Legendre).

Like the special functions in `kiln.ir.ops_extra`, the Bessel and Airy functions call
`scipy.special` on the CPU and `cupyx.scipy.special` on a GPU (on the host where CuPy lacks
one). The polynomials are their three-term recurrences written with array operations, so they
run on either device. PyTorch gives none of these a derivative (their outputs never require
grad), so none is differentiable here either.
"""

from __future__ import annotations

import numpy as np

from kiln.ir.ops import _float_unary
from kiln.ir.primitive import ShapeError, define

SPECIAL = "special"


def _scipy_function(xp, name: str):
    """scipy.special's `name` for NumPy arrays; CuPy's, or the host's through a copy, on a GPU."""
    import scipy.special
    if xp is np:
        return getattr(scipy.special, name)
    import cupyx.scipy.special      # GPU path only
    on_device = getattr(cupyx.scipy.special, name, None)
    if on_device is not None:
        return on_device
    return lambda x: xp.asarray(getattr(scipy.special, name)(xp.asnumpy(x)))


def _airy_ai(x):
    import scipy.special
    return scipy.special.airy(x)[0]


def _bessel(scipy_name: str, zero_at=()):
    """The impl of a unary Bessel-type primitive. `zero_at`: the infinities where the function
    tends to 0 and scipy and PyTorch return nan (+inf for Y0 and Y1, both for Ai, which
    oscillates toward 0 as x goes to -inf)."""
    def impl(xp, x):
        if scipy_name == "airy_ai":
            fn = _airy_ai if xp is np else (lambda v: xp.asarray(_airy_ai(xp.asnumpy(v))))
        else:
            fn = _scipy_function(xp, scipy_name)
        out = xp.asarray(fn(x)).astype(x.dtype, copy=False)
        for limit in zero_at:
            out = xp.where(x == limit, xp.zeros_like(out), out)
        return out
    return impl


def _spherical_j0(xp, x):
    # sin(x)/x, 1 at x = 0 and 0 at +-inf (sin(x)/x has no cancellation, so no series needed)
    safe = xp.where((x == 0) | xp.isinf(x), xp.ones_like(x), x)
    out = xp.sin(safe) / safe
    out = xp.where(x == 0, xp.ones_like(x), out)
    return xp.where(xp.isinf(x), xp.zeros_like(x), out).astype(x.dtype, copy=False)


def _real_float_unary(name):
    def infer(shapes, dtypes):
        if dtypes[0].is_complex:
            raise ShapeError(f"special.{name}: expected a real floating-point input, got "
                             f"{dtypes[0].name}", TypeError)
        return _float_unary(shapes, dtypes)
    return infer


for _name, _scipy_name, _zero_at in (
        ("bessel_y0", "y0", (np.inf,)), ("bessel_y1", "y1", (np.inf,)),
        ("modified_bessel_k0", "k0", ()), ("modified_bessel_k1", "k1", ()),
        ("scaled_modified_bessel_k0", "k0e", ()), ("scaled_modified_bessel_k1", "k1e", ()),
        ("airy_ai", "airy_ai", (np.inf, -np.inf))):
    define(_name, SPECIAL, _real_float_unary(_name), _bessel(_scipy_name, _zero_at), None,
           arity=1, quiet=True)
define("spherical_bessel_j0", SPECIAL, _real_float_unary("spherical_bessel_j0"), _spherical_j0,
       None, arity=1, quiet=True)


# ----------------------------------------------------------------------------- polynomials

# p0 = 1, p1 = first(x), p_{k+1} = step(x, k, p_k, p_{k-1}): one row per family
_CHEBYSHEV = lambda x, k, p, q: 2 * x * p - q  # noqa: E731
_RECURRENCES = {
    "chebyshev_polynomial_t": (lambda x: x, _CHEBYSHEV),
    "chebyshev_polynomial_u": (lambda x: 2 * x, _CHEBYSHEV),
    "chebyshev_polynomial_v": (lambda x: 2 * x - 1, _CHEBYSHEV),
    "chebyshev_polynomial_w": (lambda x: 2 * x + 1, _CHEBYSHEV),
    "hermite_polynomial_h": (lambda x: 2 * x, lambda x, k, p, q: 2 * x * p - 2 * k * q),
    "hermite_polynomial_he": (lambda x: x, lambda x, k, p, q: x * p - k * q),
    "laguerre_polynomial_l": (lambda x: 1 - x,
                              lambda x, k, p, q: ((2 * k + 1 - x) * p - k * q) / (k + 1)),
    "legendre_polynomial_p": (lambda x: x,
                              lambda x, k, p, q: ((2 * k + 1) * x * p - k * q) / (k + 1)),
}
# the shifted Chebyshev polynomials are the Chebyshev ones at 2x - 1
POLYNOMIALS = tuple(_RECURRENCES) + tuple(f"shifted_{k}" for k in _RECURRENCES
                                          if k.startswith("chebyshev"))


def _polynomial_infer(shapes, dtypes, name):
    if dtypes[0] is not dtypes[1] or not dtypes[0].is_floating_point:
        raise ShapeError(f"special.{name}: x and n must share a real floating dtype, got "
                         f"{dtypes[0].name} and {dtypes[1].name}", TypeError)
    return tuple(np.broadcast_shapes(*shapes)), dtypes[0]


def _polynomial_impl(xp, x, n, name):
    """The degree-n polynomial at x, evaluated in float64 by its recurrence. The degree is n
    truncated toward zero, as in PyTorch; a negative degree gives 0, a nan or infinite one nan.
    An infinite x gives the infinite limit (PyTorch: nan)."""
    x64, n64 = xp.broadcast_arrays(x.astype(np.float64), n.astype(np.float64))
    if name.startswith("shifted_"):
        name, x64 = name[len("shifted_"):], 2 * x64 - 1
    first, step = _RECURRENCES[name]
    finite = xp.isfinite(n64)
    degree = xp.where(finite, xp.trunc(n64), -1.0)
    out = xp.where(finite, xp.where(degree == 0, 1.0, 0.0), np.nan)
    top = int(degree.max()) if degree.size else 0
    previous, current = xp.ones_like(x64), first(x64)
    for k in range(1, top + 1):
        out = xp.where(degree == k, current, out)
        if k < top:
            previous, current = current, step(x64, k, current, previous)
    # at x = +-inf the leading term decides (the recurrence gives inf - inf = nan there): its
    # coefficient is positive, except Laguerre's (-1)^n / n!
    lead = (-1.0) ** degree if name == "laguerre_polynomial_l" else 1.0
    at_inf = lead * xp.sign(x64) ** degree * np.inf
    out = xp.where(xp.isinf(x64) & (degree >= 1), at_inf, out)
    return out.astype(x.dtype)


for _name in POLYNOMIALS:
    define(_name, SPECIAL, lambda shapes, dtypes, _n=_name: _polynomial_infer(shapes, dtypes, _n),
           lambda xp, x, n, _n=_name: _polynomial_impl(xp, x, n, _n), None, arity=2, quiet=True)
