"""Elementwise math beyond `functional`: inverse trigonometric and hyperbolic functions, special
functions (lgamma, digamma, erfinv, i0, ndtr, igamma, zeta, ...), logit/xlogy/entr, logaddexp,
sign and bit tricks (copysign, ldexp, frexp, gcd, shifts), fmax/fmin, and real-tensor forms of
the complex helpers (conj, real, angle, is_complex)."""

from __future__ import annotations

import math
from collections import namedtuple

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P
from kiln.tracer import functional as F
from kiln.tracer.errors import op_error
from kiln.tracer.functional import _as_tensor, _binary
from kiln.tracer.functional.common import both_bool, refuse_without_kernel, result_type
from kiln.tracer.functional_extra.common import _f, _full_like
from kiln.tracer.provenance import composite
from kiln.tracer.tensor import STATE, InferenceVersion, Tensor


# ----------------------------------------------------------------------------- elementwise math

def asin(input):
    return P.asin(_f(input))


def acos(input):
    return math.pi / 2 - P.asin(_f(input))


def atan(input):
    return P.atan(_f(input))


def atan2(input, other):
    a, b = _f(input), other
    return _binary(P.atan2, a, b if isinstance(b, Tensor) else float(b), float_only=True)


@composite
def sinh(input):
    x = _f(input)
    return (P.expm1(x) - P.expm1(-x)) * 0.5


@composite
def cosh(input):
    x = _f(input)
    return (P.exp(x) + P.exp(-x)) * 0.5


@composite
def asinh(input):
    return P.asinh(_f(input))


@composite
def acosh(input):
    return P.acosh(_f(input))


@composite
def atanh(input):
    return P.atanh(_f(input))


arcsin, arccos, arctan, arctan2, arcsinh, arccosh, arctanh = (asin, acos, atan, atan2, asinh,
                                                              acosh, atanh)


def deg2rad(input):
    return _f(input) * (math.pi / 180)


def rad2deg(input):
    return _f(input) * (180 / math.pi)


def lgamma(input):
    return P.lgamma(_f(input))


def digamma(input):
    return P.digamma(_f(input))


psi = digamma


def polygamma(n, input):
    return P.polygamma(_f(input), n=int(n))


def mvlgamma(input, p):
    x = _f(input)
    total = 0
    for j in range(int(p)):
        total = total + P.lgamma(x - j / 2)
    return total + p * (p - 1) / 4 * math.log(math.pi)


multigammaln = mvlgamma


def erfc(input):
    return P.erfc(_f(input))


def erfcx(input):
    return P.erfcx(_f(input))


def erfinv(input):
    return P.erfinv(_f(input))


def i0(input):
    return P.i0(_f(input))


def i0e(input):
    return P.i0e(_f(input))


def i1(input):
    return P.i1(_f(input))


def i1e(input):
    return P.i1e(_f(input))


def ndtr(input):
    return (1 + F.erf(_f(input) * (1 / math.sqrt(2)))) * 0.5


def ndtri(input):
    return P.ndtri(_f(input))


def log_ndtr(input):
    return P.log_ndtr(_f(input))


def igamma(input, other):
    a, x = _promote_float(input, other, "igamma")
    return P.gammainc(a, x)


def igammac(input, other):
    a, x = _promote_float(input, other, "igammac")
    return P.gammaincc(a, x)


gammainc, gammaincc = igamma, igammac


def zeta(input, other):
    a, x = _promote_float(input, other, "zeta")
    return P.zeta(a, x)


def _promote_float(a, b, op, complex_ok=False):
    """a and b broadcast to their floating promotion; complex only where `op` takes it (as
    PyTorch, which has no complex kernel for the others); a number or a 0-d tensor does not
    widen a tensor of the same category (copysign(half, -3.14) is half)."""
    kind = result_type(a, b)
    a = a if isinstance(a, Tensor) else _as_tensor(float(a), b if isinstance(b, Tensor) else None)
    b = b if isinstance(b, Tensor) else _as_tensor(float(b), a)
    if kind.is_complex and not complex_ok:
        raise op_error(op, f"\"{op}\" is not implemented for complex tensors ({a.dtype.name} "
                       f"{list(a.shape)}, {b.dtype.name} {list(b.shape)}), as in PyTorch",
                       NotImplementedError)
    if not (kind.is_floating_point or kind.is_complex):
        kind = dt.get_default_dtype()
    a, b = a.to(kind), b.to(kind)
    shape = tuple(np.broadcast_shapes(tuple(a.shape), tuple(b.shape)))
    return F.expand(a, shape), F.expand(b, shape)


@composite
def logit(input, eps=None):
    x = _f(input)
    if eps is not None:
        x = F.clamp(x, eps, 1 - eps)
    return F.log(x / (1 - x))


def expit(input):
    return F.sigmoid(input)


def _x_times(x, y, log_y):
    # x * log(y), taken as 0 where x == 0 unless y is NaN, even when log(y) is infinite or NaN
    # (xlogy(0, -1) is 0); the gradient for x stays log(y) there, as in PyTorch
    zero = F.logical_and(F.eq(x, 0), F.logical_not(F.isnan(y)))
    return x * F.where(F.logical_and(zero, F.logical_not(F.isfinite(log_y))), 0.0, log_y)


@composite
def xlogy(input, other):
    x, y = _promote_float(input, other, "xlogy")
    return _x_times(x, y, F.log(y))


@composite
def xlog1py(input, other):
    x, y = _promote_float(input, other, "xlog1py")
    return _x_times(x, y, F.log1p(y))


@composite
def entr(input):
    x = _f(input)
    outside = F.where(F.eq(x, 0), F.zeros_like(x), _full_like(x, -math.inf))
    return F.where(F.gt(x, 0), -x * F.log(F.where(F.gt(x, 0), x, 1.0)),
                   F.where(F.isnan(x), x, outside))


@composite
def sinc(input):
    x = _f(input)
    px = x * math.pi
    safe = F.where(F.eq(x, 0), 1.0, px)
    return F.where(F.eq(x, 0), 1.0, F.sin(safe) / safe)


@composite
def logaddexp(input, other):
    refuse_without_kernel("logaddexp", input, (dt.BOOL, dt.INT))
    a, b = _promote_float(input, other, "logaddexp", complex_ok=True)
    if a.dtype.is_complex:
        # as PyTorch: the operand of larger real part plus log1p(exp(other - it)), so the
        # imaginary part is that operand's plus a principal-branch log, not wrapped as a whole
        first = F.ge(P.real(a), P.real(b))
        m, rest = F.where(first, a, b), F.where(first, b, a)
        return m + F.log1p(F.exp(rest - m))
    m = F.maximum(a, b)
    finite = F.where(F.isinf(m), 0.0, m)
    return finite + F.log(F.exp(a - finite) + F.exp(b - finite))


@composite
def logaddexp2(input, other):
    refuse_without_kernel("logaddexp2", input, (dt.BOOL, dt.INT))
    a, b = _promote_float(input, other, "logaddexp2")
    return logaddexp(a * math.log(2), b * math.log(2)) / math.log(2)


def sgn(input):
    if input.dtype.is_complex:
        # z / |z| (0 at 0), composed so that its gradient is PyTorch's sgn gradient
        mag = P.abs(input)
        return input / F.where(F.eq(mag, 0), 1.0, mag)
    return F.sign(input)


def signbit(input):
    return P.signbit(input if input.dtype.is_floating_point else input.to(dt.float32))


def copysign(input, other):
    a, b = _promote_float(input, other, "copysign")
    return P.copysign(a, b)


def heaviside(input, values):
    """0 below zero, 1 above, `values` at zero; input and values broadcast together."""
    return F.where(F.eq(input, 0), values, F.gt(input, 0).to(input.dtype))


def ldexp(input, other):
    return _f(input) * F.pow(2.0, other.to(_f(input).dtype) if isinstance(other, Tensor)
                             else float(other))


def frexp(input):
    x = _f(input)
    data = x._read("frexp()")
    xp = x.device.xp
    exponent = xp.frexp(data)[1]
    # the mantissa as x * 2^-exponent, so its gradient is 2^-exponent; in two exact power-of-two
    # steps, as 2^1073 (a subnormal's) is past float64's range
    half = -exponent // 2
    scales = [Tensor._make(xp.ldexp(xp.ones((), x.dtype.np), e).astype(x.dtype.np),
                           x.dtype, x.device) for e in (half, -exponent - half)]
    Mant = namedtuple("frexp", ["mantissa", "exponent"])
    return Mant(x * scales[0] * scales[1],
                Tensor._make(exponent.astype(np.int32), dt.int32, x.device))


def nextafter(input, other):
    refuse_without_kernel("nextafter", input, (dt.BOOL, dt.INT))
    a, b = _promote_float(input, other, "nextafter")
    return P.nextafter(a, b)


def _integer_pair(a, b):
    """Both operands in their result type (a Python int or a 0-d tensor takes the other's)."""
    kind = result_type(a, b)
    a = a if isinstance(a, Tensor) else _as_tensor(int(a), b)
    b = b if isinstance(b, Tensor) else _as_tensor(int(b), a)
    return a.to(kind), b.to(kind)


def gcd(input, other):
    if both_bool(input, other):
        refuse_without_kernel("gcd", input if isinstance(input, Tensor) else other)
    return P.gcd(*_integer_pair(input, other))


def lcm(input, other):
    if both_bool(input, other):
        refuse_without_kernel("lcm", input if isinstance(input, Tensor) else other)
    return P.lcm(*_integer_pair(input, other))


def bitwise_left_shift(input, other):
    if both_bool(input, other):
        refuse_without_kernel("lshift", input if isinstance(input, Tensor) else other)
    return P.bitwise_left_shift(*_integer_pair(input, other))


def bitwise_right_shift(input, other):
    if both_bool(input, other):
        refuse_without_kernel("rshift", input if isinstance(input, Tensor) else other)
    return P.bitwise_right_shift(*_integer_pair(input, other))


def fmax(input, other):
    """Maximum that ignores NaN (NaN only where both are NaN)."""
    return F.where(F.isnan(input), other, F.where(F.isnan(other), input,
                                                   F.maximum(input, other)))


def fmin(input, other):
    return F.where(F.isnan(input), other, F.where(F.isnan(other), input,
                                                   F.minimum(input, other)))


def positive(input):
    if input.dtype is dt.bool_:
        raise op_error("positive", "The `+` operator, on a bool tensor is not supported.")
    return input


multiply, subtract = F.mul, F.sub


# complex helpers; on a real tensor each is what PyTorch gives (conj and real: the tensor itself)
def conj(input):
    """The complex conjugate. PyTorch returns a lazy view with a conjugate bit; kiln computes
    it (conj_physical), so `is_conj` is always False and resolve_conj is the identity."""
    return P.conj(input) if input.dtype.is_complex else input


def conj_physical(input):
    return conj(input)


def resolve_conj(input):
    return input


resolve_neg = resolve_conj


def real(input):
    """The real parts: a view of a complex tensor's memory (writing it changes the tensor)."""
    return P.real(input) if input.dtype.is_complex else input


def imag(input):
    """The imaginary parts: a view of a complex tensor's memory."""
    if not input.dtype.is_complex:
        raise op_error("imag", "imag is not implemented for tensors with non-complex dtypes.")
    return P.imag(input)


def angle(input):
    if input.dtype.is_complex:
        return P.angle(input)
    x = _f(input)
    return F.where(F.lt(x, 0), math.pi, F.where(F.isnan(x), x, 0.0))


def view_as_real(input):
    if not input.dtype.is_complex:
        raise op_error("view_as_real", f"view_as_real is only supported for complex tensors, "
                       f"got {input.dtype.name}")
    return P.view_as_real(input)


def view_as_complex(input):
    return P.view_as_complex(input)


def complex(real, imag, *, out=None):
    """The complex tensor real + i imag (both float32 or both float64; broadcast)."""
    return P.complex(real, imag)


def polar(abs, angle, *, out=None):
    """The complex tensor abs * (cos(angle) + i sin(angle))."""
    return P.complex(abs * F.cos(angle), abs * F.sin(angle))


def is_complex(input) -> bool:
    return input.dtype.is_complex


def is_conj(input) -> bool:
    return False


def is_neg(input) -> bool:
    return False


def isreal(input):
    if input.dtype.is_complex:
        return F.eq(P.imag(input), 0)
    return F.ones_like(input, dtype=dt.bool_)


def is_signed(input) -> bool:
    return input.dtype not in (dt.bool_, dt.uint8)


def is_nonzero(input) -> bool:
    if input.numel() != 1:
        what = "no values" if input.numel() == 0 else "more than one value"
        raise op_error("is_nonzero", f"Boolean value of Tensor with {what} is ambiguous")
    return bool(input.reshape(()).item() != 0)


def is_same_size(input, other) -> bool:
    return tuple(input.shape) == tuple(other.shape)


def is_inference(input) -> bool:
    """Whether an op made `input` (or what it views) under inference_mode."""
    return type(input._version) is InferenceVersion


def is_inference_mode_enabled() -> bool:
    return bool(STATE.inference)
