"""More primitives: special functions, sorting and dense linear algebra, run as library calls.

These are not fused: in a compiled graph each is an extern call (like matmul) running the same
array code as eager mode. Special functions use `scipy.special` on the CPU and
`cupyx.scipy.special` on a GPU; linear algebra uses `numpy.linalg` / `cupy.linalg`. A
factorization with several results (an SVD's U, S and Vh) is one primitive that runs the library
routine once and returns every result packed into one flat array (`_pack`; the layout is the
op's `*_layout` function), from which `*_factors` cut the results (`_parts`); so every primitive
keeps one output, and its gradient rule receives the gradients of all the results at once (zeros
for a result the loss does not use). Gradient rules are written with tensor ops, as in
`kiln.ir.ops`.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import _both, _elementwise, _float_unary
from kiln.ir.primitive import COPIED, RANDOM, SAVED, P, ShapeError, define

SPECIAL, SORT, LINALG = "special", "sort", "linalg"


def _scipy_special(xp, name):
    if xp is np:
        try:
            import scipy.special
        except ImportError as err:   # pragma: no cover - scipy is a declared dependency
            raise RuntimeError(f"kiln's {name} needs scipy (pip install scipy)") from err
        return getattr(scipy.special, name)
    import cupyx.scipy.special  # GPU path only
    return getattr(cupyx.scipy.special, name)


def _special(name, scipy_name, grad, arity=1, infer=None, **facts):
    def impl(xp, *args, **attrs):
        fn = _scipy_special(xp, scipy_name)
        if attrs:
            return fn(*attrs.values(), *args)
        return fn(*args)
    if infer is None:
        infer = _float_unary if arity == 1 else _elementwise
    define(name, SPECIAL, infer, impl, grad, arity=arity, quiet=True, **facts)


SQRT_PI, SQRT_2PI = math.sqrt(math.pi), math.sqrt(2 * math.pi)

# inverse trigonometric and hyperbolic functions (NumPy's ufuncs)
define("atan", SPECIAL, _float_unary, lambda xp, x: xp.arctan(x),
       lambda g, out, x: (g / (x * x + 1),), arity=1, quiet=True)
define("asin", SPECIAL, _float_unary, lambda xp, x: xp.arcsin(x),
       lambda g, out, x: (g / P.sqrt(1 - x * x),), arity=1, quiet=True)
define("atan2", SPECIAL, _elementwise, lambda xp, y, x: xp.arctan2(y, x),
       lambda g, out, y, x: _both(g * x / (x * x + y * y), -(g * y) / (x * x + y * y), y, x),
       arity=2, quiet=True)
define("asinh", SPECIAL, _float_unary, lambda xp, x: xp.arcsinh(x),
       lambda g, out, x: (g / P.sqrt(x * x + 1),), arity=1, quiet=True)
define("acosh", SPECIAL, _float_unary, lambda xp, x: xp.arccosh(x),
       lambda g, out, x: (g / P.sqrt(x * x - 1),), arity=1, quiet=True)
define("atanh", SPECIAL, _float_unary, lambda xp, x: xp.arctanh(x),
       lambda g, out, x: (g / (1 - x * x),), arity=1, quiet=True)

# gamma-family and error-function family (scipy.special)
_special("lgamma", "gammaln", lambda g, out, x: (g * P.digamma(x),))
_special("digamma", "psi", lambda g, out, x: (g * P.polygamma(x, n=1),))
_special("polygamma", "polygamma", lambda g, out, x, n: (g * P.polygamma(x, n=n + 1),),
         infer=lambda shapes, dtypes, n: _float_unary(shapes, dtypes))
_special("erfc", "erfc", lambda g, out, x: (g * (-2 / SQRT_PI) * P.exp(-(x * x)),))
_special("erfcx", "erfcx", lambda g, out, x: (g * (2 * x * out - 2 / SQRT_PI),), output=COPIED)
_special("erfinv", "erfinv", lambda g, out, x: (g * (SQRT_PI / 2) * P.exp(out * out),),
         reads=(), output=COPIED)
_special("ndtri", "ndtri", lambda g, out, x: (g * SQRT_2PI * P.exp(out * out / 2),),
         reads=(), output=COPIED)
_special("log_ndtr", "log_ndtr",
         lambda g, out, x: (g * P.exp(-(x * x) / 2 - out) / SQRT_2PI,), output=COPIED)
_special("i0", "i0", lambda g, out, x: (g * P.i1(x),))
_special("i0e", "i0e", lambda g, out, x: (g * (P.i1e(x) - P.sign(x) * out),), output=COPIED)


def _i1_grad(g, out, x):
    # d/dx I1 = I0 - I1/x, which is 1/2 at x = 0
    safe = P.where(P.eq(x, 0), 1.0, x)
    return (g * P.where(P.eq(x, 0), 0.5, P.i0(x) - out / safe),)


def _i1e_grad(g, out, x):
    safe = P.where(P.eq(x, 0), 1.0, x)
    return (g * P.where(P.eq(x, 0), 0.5, P.i0e(x) - out * (P.sign(x) + 1 / safe)),)


_special("i1", "i1", _i1_grad, output=COPIED)
_special("i1e", "i1e", _i1e_grad, output=COPIED)


def _gammainc_grad(upper):
    def rule(g, out, a, x):
        # d/dx P(a, x) = x^(a-1) e^-x / Gamma(a); PyTorch has no gradient for `a` either
        dx = P.exp((a - 1) * P.log(x) - x - P.lgamma(a))
        return _both(None, -(g * dx) if upper else g * dx, a, x)
    return rule


_special("gammainc", "gammainc", _gammainc_grad(False), arity=2)
_special("gammaincc", "gammaincc", _gammainc_grad(True), arity=2)
_special("zeta", "zeta", None, arity=2)
define("nextafter", SPECIAL, _elementwise, lambda xp, x, y: xp.nextafter(x, y),
       lambda g, out, x, y: _both(g, g * 0, x, y), arity=2)    # PyTorch's: one step is 0


def _integer_binary(shapes, dtypes):
    shape, dtype = _elementwise(shapes, dtypes)
    if dtype.is_floating_point or dtype is dt.bool_:
        raise ShapeError(f"expected integer inputs, got {dtype.name}", TypeError)
    return shape, dtype


define("gcd", SPECIAL, _integer_binary, lambda xp, x, y: xp.gcd(x, y), None, arity=2)
define("lcm", SPECIAL, _integer_binary, lambda xp, x, y: xp.lcm(x, y), None, arity=2)
define("bitwise_left_shift", SPECIAL, _integer_binary, lambda xp, x, y: xp.left_shift(x, y),
       None, arity=2)
define("bitwise_right_shift", SPECIAL, _integer_binary, lambda xp, x, y: xp.right_shift(x, y),
       None, arity=2)
define("signbit", SPECIAL, lambda shapes, dtypes: (shapes[0], dt.bool_),
       lambda xp, x: xp.signbit(x), None, arity=1)
define("copysign", SPECIAL, _elementwise, lambda xp, x, y: xp.copysign(x, y),
       lambda g, out, x, y: _both(g * P.sign(x) * P.sign(out), g * 0, x, y), arity=2,
       output=COPIED)


# ----------------------------------------------------------------------------- sorting

def _argsort_infer(shapes, dtypes, axis, descending):
    if dtypes[0].is_complex:
        raise ShapeError(f"Sort does not support complex dtypes ({dtypes[0].name}): complex "
                         "numbers have no order; sort their .abs() or .real instead")
    if not 0 <= axis < max(len(shapes[0]), 1):
        raise ShapeError(f"argsort: dim {axis} is out of range for shape {list(shapes[0])}",
                         IndexError)
    return shapes[0], dt.int64


def _argsort_impl(xp, x, axis, descending):
    if x.ndim == 0:
        return xp.zeros((), dtype=np.int64)
    if descending:
        # argsort of -x is stable for ties; NaN (torch's largest value) is then moved first
        if x.dtype == bool:
            return xp.argsort(~x, axis=axis, kind="stable")
        if x.dtype.kind in "ui":
            key = ~x        # reverses an integer order exactly (-x overflows at the minimum)
        else:
            key = -x
        order = xp.argsort(key, axis=axis, kind="stable")
        if x.dtype.kind == "f":
            nan_last = ~xp.isnan(xp.take_along_axis(x, order, axis=axis))
            order = xp.take_along_axis(order, xp.argsort(nan_last, axis=axis, kind="stable"),
                                       axis=axis)
        return order
    return xp.argsort(x, axis=axis, kind="stable")


define("argsort", SORT, _argsort_infer, _argsort_impl, None, arity=1,
       doc="indices that sort along an axis, always stably (equal elements keep their order); "
           "NaN counts as the largest value")


# ----------------------------------------------------------------------------- linear algebra

def _square_infer(shapes, dtypes, **attrs):
    s = shapes[0]
    if len(s) < 2 or s[-1] != s[-2]:
        raise ShapeError(f"A must be batches of square matrices, but they are "
                         f"{'x'.join(map(str, s[-2:]))} matrices")
    if not (dtypes[0].is_floating_point or dtypes[0].is_complex):
        raise ShapeError(f"Expected a floating point or complex tensor as input, got "
                         f"{dtypes[0].name}", TypeError)
    return s, dtypes[0]


def _mT(t):
    perm = tuple(range(t.ndim - 2)) + (t.ndim - 1, t.ndim - 2)
    return P.permute(t, perm=perm)


def _mH(t):
    """The conjugate transpose: the transpose of a real matrix (no conj node for it)."""
    return P.conj(_mT(t)) if t.dtype.is_complex else _mT(t)


def _like(t, a):
    """t (real values) in a's dtype, for the products of a complex rule (one dtype per op)."""
    return P.cast(t, dtype=a.dtype) if t.dtype is not a.dtype else t


def _i_imag(z):
    """i Im(z) of a complex tensor."""
    return P.mul(P.cast(P.imag(z), dtype=z.dtype), 1j)


def _diag_embed(v):
    """(..., n) -> (..., n, n) with v on the diagonal (eye * v)."""
    n = v.shape[-1]
    eye = P.cast(P.eq(P.reshape(P.arange(start=0, stop=n, step=1, dtype=dt.int64,
                                          device=v.device), shape=(n, 1)),
                      P.reshape(P.arange(start=0, stop=n, step=1, dtype=dt.int64,
                                         device=v.device), shape=(1, n))), dtype=v.dtype)
    return P.mul(P.reshape(v, shape=tuple(v.shape) + (1,)), eye)


def _eye_like(a):
    n = a.shape[-1]
    ones = P.full(shape=(n,), value=1.0, dtype=a.dtype, device=a.device)
    return _diag_embed(ones)


def _tril(a, k=0):
    n, m = a.shape[-2], a.shape[-1]
    rows = P.reshape(P.arange(start=0, stop=n, step=1, dtype=dt.int64, device=a.device),
                     shape=(n, 1))
    cols = P.reshape(P.arange(start=0, stop=m, step=1, dtype=dt.int64, device=a.device),
                     shape=(1, m))
    return P.where(P.le(P.sub(cols, rows), k), a, 0.0)


# ----------------------------------------------------------------------------- packed results
# A layout is a tuple of (shape, transposed, dtype), one per result: the result's elements lie
# in the packed array one after another, batch dims included, each in row-major order of the
# result or (transposed) of its matrix transpose, which makes the result column-major as
# PyTorch's LAPACK results are. The packed array has the factorization's widest dtype.

def _pack(xp, dtype, arrays):
    """The arrays' values in one flat array of `dtype`, in `_parts`' order; a transposed
    result is passed as its transpose."""
    out = xp.empty((sum(int(a.size) for a in arrays),), dtype=dtype)
    start = 0
    for a in arrays:
        out[start:start + a.size].reshape(a.shape)[...] = a
        start += a.size
    return out


def _packed_size(layout) -> int:
    return sum(math.prod(shape) for shape, _, _ in layout)


def _parts(t, layout, copy):
    """The results packed in the flat tensor t: copies with their own memory when `copy` (what
    a factorization returns), else views (a gradient rule's reading of them). A result of
    another dtype than t's is cast: a complex array's real part, or integers."""
    out, start = [], 0
    for shape, transposed, dtype in layout:
        size = math.prod(shape)
        piece = P.slice(t, starts=(start,), stops=(start + size,), steps=(1,))
        if transposed:
            piece = _mT(P.reshape(piece, shape=tuple(shape[:-2]) + (shape[-1], shape[-2])))
        else:
            piece = P.reshape(piece, shape=tuple(shape))
        if copy or dtype is not t.dtype:
            piece = P.cast(piece, dtype=dtype)
        out.append(piece)
        start += size
    return tuple(out)


def _swap(xp, x):
    return xp.swapaxes(x, -1, -2)


def _over(num, den):
    """num / den, taken as 0 where den is exactly 0: a gap between eigenvalues or singular
    values that repeat exactly, or a singular value that is exactly 0, where the vectors have no
    derivative (torch's rule gives inf or NaN there). A result the loss does not use gets a zero
    gradient, and 0 / 0 would make the whole gradient NaN where such values repeat or vanish.
    Linear in num (forward-mode AD differentiates the rule in its gradient at 0)."""
    zero = P.eq(den, 0)
    return P.mul(num, P.where(zero, 0.0, P.div(1.0, P.where(zero, 1.0, den))))


# complex too: inverse is holomorphic, and autograd conjugates its rule for complex inputs
define("linalg_inv", LINALG, _square_infer, lambda xp, a: xp.linalg.inv(a),
       lambda g, out, a: (-P.matmul(P.matmul(_mT(out), g), _mT(out)),), arity=1, reads=(),
       output=COPIED)


def _slogdet_layout(shape, dtype):
    batch = tuple(shape[:-2])
    return ((batch, False, dtype), (batch, False, dtype.to_real()))      # sign, logabsdet


def _slogdet_infer(shapes, dtypes):
    s, d = _square_infer(shapes, dtypes)
    return (_packed_size(_slogdet_layout(s, d)),), d


def _slogdet_impl(xp, a):
    return _pack(xp, a.dtype, xp.linalg.slogdet(a))


def _slogdet_grad(g, out, a):
    # d logabsdet = Re tr(A^-1 dA); a complex sign = e^(i theta) moves with
    # d theta = Im tr(A^-1 dA): gA = (g_logabs - i Im(conj(g_sign) sign)) A^-H (a real sign
    # is locally constant)
    layout = _slogdet_layout(a.shape, a.dtype)
    sign, _ = _parts(out, layout, copy=False)
    g_sign, g_logabs = _parts(g, layout, copy=False)
    coef = _like(g_logabs, a)
    if a.dtype.is_complex:
        coef = P.sub(coef, _i_imag(P.mul(P.conj(g_sign), sign)))
    return (P.mul(P.reshape(coef, shape=tuple(coef.shape) + (1, 1)), _mH(P.linalg_inv(a))),)


define("linalg_slogdet", LINALG, _slogdet_infer, _slogdet_impl, _slogdet_grad, arity=1,
       complex_grad=True, output=SAVED,     # a complex sign's rule reads it
       doc="sign and log|det| of square matrices, packed (slogdet_factors unpacks them)")


def slogdet_factors(a):
    """(sign, logabsdet) of `a`, from one slogdet."""
    return _parts(P.linalg_slogdet(a), _slogdet_layout(a.shape, a.dtype), copy=True)


def _cholesky_grad(g, out, a):
    # Murray (2016): A_bar = L^-H Phi(L^H L_bar) L^-1, made Hermitian; Phi keeps the lower
    # triangle and halves the diagonal
    L = out
    phi = _tril(P.matmul(_mH(L), g))
    phi = phi - _diag_embed(P.mul(_diagonal(phi), 0.5))
    Linv = P.linalg_inv(L)
    s = P.matmul(P.matmul(_mH(Linv), phi), Linv)
    return (P.mul(P.add(s, _mH(s)), 0.5),)


def _diagonal(a):
    n = a.shape[-1]
    eye = _eye_like(a)
    return P.sum(P.mul(a, eye), axes=(a.ndim - 1,), keepdim=False) if n else \
        P.sum(a, axes=(a.ndim - 1,), keepdim=False)


def _cholesky_impl(xp, a):
    try:
        return xp.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        raise ValueError("linalg.cholesky: The factorization could not be completed because "
                         "the input is not positive-definite") from None


define("linalg_cholesky", LINALG, _square_infer, _cholesky_impl, _cholesky_grad, arity=1,
       reads=(), output=COPIED, complex_grad=True)


def _qr_layout(shape, dtype, mode="reduced"):
    batch, (m, n) = tuple(shape[:-2]), shape[-2:]
    k = m if mode == "complete" else min(m, n)
    r = (batch + (k, n), True, dtype)
    return (r,) if mode == "r" else ((batch + (m, k), True, dtype), r)      # (Q,) R


def _qr_infer(shapes, dtypes, mode="reduced"):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.qr: the input must have at least 2 dimensions, got {list(s)}")
    return (_packed_size(_qr_layout(s, dtypes[0], mode)),), dtypes[0]


def _qr_impl(xp, a, mode="reduced"):
    if mode == "r":         # LAPACK's geqrf alone: Q is never formed
        return _pack(xp, a.dtype, (_swap(xp, xp.linalg.qr(a, mode="r")),))
    q, r = xp.linalg.qr(a, mode=mode)
    return _pack(xp, a.dtype, (_swap(xp, q), _swap(xp, r)))


def _cols(t, start, stop):
    """t[..., :, start:stop]."""
    batch = tuple(t.shape[:-1])
    return P.slice(t, starts=(0,) * len(batch) + (start,), stops=batch + (stop,),
                   steps=(1,) * t.ndim)


def _rows(t, start, stop):
    return _mT(_cols(_mT(t), start, stop))


def _qr_grad(g, out, a, mode="reduced"):
    # reduced QR with m >= n: M = R gR^H - gQ^H Q; A_bar = (gQ + Q copyltu(M)) R^-H, copyltu
    # mirroring M's strict lower triangle onto the upper with the real part of its diagonal
    # (R's diagonal is real). Wide (m < n): A = [X Y], R = [R1 R2], X = Q R1 that square QR,
    # R2 = Q^H Y = R's last n - m columns: gY = Q gR2, and gQ gains Y gR2^H before X's rule
    # (torch's linalg_qr_backward). The complete QR of a wide or square matrix is its reduced
    # one; torch's refusals otherwise, with its messages
    m, n = a.shape[-2], a.shape[-1]
    if mode == "r":
        raise RuntimeError("The derivative of linalg.qr depends on Q, which is not computed when "
                           "mode='r'. Please use linalg.qr(A, mode='reduced') if you are going "
                           "to differentiate through linalg.qr.")
    if mode == "complete" and m > n:
        raise RuntimeError("The QR decomposition is not differentiable when mode='complete' and "
                           "nrows > ncols.")
    layout = _qr_layout(a.shape, a.dtype, mode)
    Q, R = _parts(out, layout, copy=False)
    gQ, gR = _parts(g, layout, copy=False)
    if m < n:
        gR2, Y = _cols(gR, m, n), P.matmul(Q, _cols(R, m, n))
        gQ = P.add(gQ, P.matmul(Y, _mH(gR2)))
        R, gR = _cols(R, 0, m), _cols(gR, 0, m)
    M = P.sub(P.matmul(R, _mH(gR)), P.matmul(_mH(gQ), Q))
    low = _tril(M, -1)
    diag = _diagonal(M)
    diag = P.cast(P.real(diag), dtype=M.dtype) if M.dtype.is_complex else diag
    copyltu = P.add(P.add(low, _mH(low)), _diag_embed(diag))
    lhs = P.add(gQ, P.matmul(Q, copyltu))
    gA = P.matmul(lhs, _mH(P.linalg_inv(R)))
    if m < n:
        gA = P.cat(gA, P.matmul(Q, gR2), axis=a.ndim - 1)
    return (gA,)


define("linalg_qr", LINALG, _qr_infer, _qr_impl, _qr_grad, arity=1, complex_grad=True,
       reads=(), output=SAVED,
       doc="the QR of matrices (mode 'reduced', 'complete' or 'r'), packed (qr_factors unpacks it)")


def qr_factors(a, mode="reduced"):
    """(Q, R) of `a` from one factorization, or (R,) for mode 'r' (Q never formed)."""
    return _parts(P.linalg_qr(a, mode=mode), _qr_layout(a.shape, a.dtype, mode), copy=True)


def _matrix_exp_impl(xp, a):
    # scaling and squaring: a / 2^s has every column's 1-norm below 1/2 (s from the largest in
    # the batch), where a degree-18 Taylor polynomial is float64-accurate; then s squarings
    norm = float(xp.abs(a).sum(-2).max()) if a.size else 0.0
    s = max(0, int(math.ceil(math.log2(norm / 0.5)))) if norm > 0.5 else 0
    x = a / (2.0 ** s)
    term = xp.broadcast_to(xp.eye(a.shape[-1], dtype=a.dtype), a.shape)
    total = term
    for k in range(1, 19):
        term = xp.matmul(term, x) / k
        total = total + term
    for _ in range(s):
        total = xp.matmul(total, total)
    return total


def _matrix_exp_grad(g, out, a):
    # the Frechet derivative of exp at a^T in the direction g: the upper-right block of
    # exp([[a^T, g], [0, a^T]]) (as PyTorch's backward); a rule built on the primitive itself,
    # so it differentiates again
    n, last = a.shape[-1], a.ndim - 1
    at = _mT(a)
    block = P.cat(P.cat(at, g, axis=last), P.cat(P.mul(at, 0.0), at, axis=last), axis=last - 1)
    big = P.linalg_matrix_exp(block)
    batch = tuple(big.shape[:-2])
    return (P.slice(big, starts=(0,) * len(batch) + (0, n), stops=batch + (n, 2 * n),
                    steps=(1,) * (len(batch) + 2)),)


define("linalg_matrix_exp", LINALG, _square_infer, _matrix_exp_impl, _matrix_exp_grad, arity=1)


def _eigh_layout(shape, dtype):
    batch, n = tuple(shape[:-2]), shape[-1]
    return ((batch + (n,), False, dtype.to_real()), (batch + (n, n), True, dtype))    # L, V


def _eigh_infer(shapes, dtypes, upper):
    s, d = _square_infer(shapes, dtypes)
    return (_packed_size(_eigh_layout(s, d)),), d


def _eigh_impl(xp, a, upper):
    w, v = xp.linalg.eigh(a, UPLO="U" if upper else "L")
    return _pack(xp, a.dtype, (w, _swap(xp, v)))


def _eigh_grad(g, out, a, upper):
    # gA = V (diag(gL) + skew(V^H gV) / E) V^H, E_ij = L_j - L_i, off the diagonal (where a
    # complex skew has the phases' part, which a well-posed loss does not change; as torch's
    # eigh backward)
    layout = _eigh_layout(a.shape, a.dtype)
    L, V = _parts(out, layout, copy=False)
    gL, gV = _parts(g, layout, copy=False)
    L = _like(L, a)
    VhgV = P.matmul(_mH(V), gV)
    if a.dtype.is_complex:
        _refuse_phase_dependence(P.imag(_diagonal(VhgV)), "linalg.eigh", "eigenvectors",
                                 "|V| or V diag(f(L)) V^H")
    skew = P.mul(P.sub(VhgV, _mH(VhgV)), 0.5)
    n = L.shape[-1]
    E = P.sub(P.reshape(L, shape=tuple(L.shape[:-1]) + (1, n)),
              P.reshape(L, shape=tuple(L.shape) + (1,)))
    eye = _eye_like(a)
    inner = P.add(_over(P.mul(skew, P.sub(1.0, eye)), P.add(E, eye)), _diag_embed(_like(gL, a)))
    return (P.matmul(P.matmul(V, inner), _mH(V)),)


define("linalg_eigh", LINALG, _eigh_infer, _eigh_impl, _eigh_grad, arity=1, complex_grad=True,
       reads=(), output=SAVED,
       doc="eigenvalues and eigenvectors of Hermitian matrices, packed (eigh_factors)")


def eigh_factors(a, upper=False):
    """(eigenvalues, eigenvectors) of the Hermitian `a` (its upper or lower triangle), from
    one eigh."""
    return _parts(P.linalg_eigh(a, upper=upper), _eigh_layout(a.shape, a.dtype), copy=True)


def _eigvalsh_infer(shapes, dtypes, upper):
    s, d = _square_infer(shapes, dtypes)
    return s[:-1], d.to_real()


def _eigvalsh_grad(g, out, a, upper):
    # eigh's rule for the values alone, V diag(gL) V^H, with V from a second eigh (kiln.linalg
    # takes the values from linalg_eigh when a gradient is wanted, as torch does)
    _, V = eigh_factors(a, upper=upper)
    n = a.shape[-1]
    return (P.matmul(P.mul(V, P.reshape(_like(g, a), shape=tuple(g.shape[:-1]) + (1, n))),
                     _mH(V)),)


define("linalg_eigvalsh", LINALG, _eigvalsh_infer,
       lambda xp, a, upper: xp.linalg.eigvalsh(a, UPLO="U" if upper else "L"), _eigvalsh_grad,
       arity=1, complex_grad=True,
       doc="eigenvalues of Hermitian matrices alone (LAPACK's cheaper values-only driver)")


def _svd_layout(shape, dtype, full_matrices):
    batch, (m, n) = tuple(shape[:-2]), shape[-2:]
    k = min(m, n)
    ku, kv = (m, n) if full_matrices else (k, k)
    return ((batch + (m, ku), True, dtype), (batch + (k,), False, dtype.to_real()),
            (batch + (kv, n), True, dtype))                                    # U, S, Vh


def _svd_infer(shapes, dtypes, full_matrices):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.svd: the input must have at least 2 dimensions, got {list(s)}")
    return (_packed_size(_svd_layout(s, dtypes[0], full_matrices)),), dtypes[0]


def _svd_impl(xp, a, full_matrices):
    u, s, vh = xp.linalg.svd(a, full_matrices=full_matrices)
    return _pack(xp, a.dtype, (_swap(xp, u), s, _swap(xp, vh)))


def _refuse_phase_dependence(phases, op, what, instead):
    """Raise when a loss changes with the phases of complex eigen- or singular vectors (each is
    defined up to e^(i phi)): `phases`, Im diag(V^H gV), is its derivative along them, and
    past torch's tolerance the loss has no gradient. The values are read: a compiled function
    with complex tensors runs eagerly."""
    if phases.numel() and float(P.max(P.abs(phases), axes=tuple(range(phases.ndim)),
                                       keepdim=False)) > 1e-2:
        raise RuntimeError(f"{op} backward: the {what} of a complex matrix are defined up to "
                           f"multiplication by e^(i phi), and the loss depends on that phase, "
                           f"so it has no gradient (use quantities that do not, such as "
                           f"{instead})")


def _svd_grad(g, out, a, full_matrices):
    # torch's svd_backward with every gradient (zeros for unused results):
    # gA = U [(skew(U^H gU) S + S skew(Vh gVh^H)) / E + diag(gS)] Vh, E_ij = S_j^2 - S_i^2
    # off the diagonal, plus the parts of gU and gVh outside the spans of U and V, and for a
    # complex matrix diag(i Im(U^H gU)) / S, the vectors' phases (a well-posed loss changes
    # with U's phases as against V's: their parts sum to zero). full_matrices: the gradient
    # flows through the first k singular vectors only, as in torch
    layout = _svd_layout(a.shape, a.dtype, full_matrices)
    U, S, Vh = _parts(out, layout, copy=False)
    gU, gS, gVh = _parts(g, layout, copy=False)
    m, n, k = a.shape[-2], a.shape[-1], S.shape[-1]
    if full_matrices:
        U, gU, Vh, gVh = _cols(U, 0, k), _cols(gU, 0, k), _rows(Vh, 0, k), _rows(gVh, 0, k)
    S = _like(S, a)
    row = tuple(S.shape[:-1]) + (1, k)          # S as a row: scales columns
    col = tuple(S.shape) + (1,)                 # S as a column: scales rows
    UhgU = P.matmul(_mH(U), gU)
    VhgV = P.matmul(Vh, _mH(gVh))
    if a.dtype.is_complex:
        _refuse_phase_dependence(P.add(P.imag(_diagonal(UhgU)), P.imag(_diagonal(VhgV))),
                                 "linalg.svd", "singular vectors", "|U|, U diag(S) Vh or U Vh")
    skew_u, skew_v = P.sub(UhgU, _mH(UhgU)), P.sub(VhgV, _mH(VhgV))
    S2 = P.mul(S, S)
    eye = _eye_like(_diag_embed(S))
    E = P.add(P.sub(P.reshape(S2, shape=row), P.reshape(S2, shape=col)), eye)
    inner = _over(P.add(P.mul(skew_u, P.reshape(S, shape=row)),
                        P.mul(P.reshape(S, shape=col), skew_v)), E)
    inner = P.add(inner, _diag_embed(_like(gS, a)))
    if a.dtype.is_complex:
        inner = P.add(inner, _diag_embed(_over(_i_imag(_diagonal(UhgU)), S)))
    if m > k:
        gUSinv = _over(gU, P.reshape(S, shape=row))
        gA = P.matmul(U, inner)
        gA = P.add(gA, P.sub(gUSinv, P.matmul(U, P.matmul(_mH(U), gUSinv))))
        return (P.matmul(gA, Vh),)
    if n > k:
        SinvgVh = _over(gVh, P.reshape(S, shape=col))
        gA = P.matmul(inner, Vh)
        gA = P.add(gA, P.sub(SinvgVh, P.matmul(P.matmul(SinvgVh, _mH(Vh)), Vh)))
        return (P.matmul(U, gA),)
    return (P.matmul(U, P.matmul(inner, Vh)),)


define("linalg_svd", LINALG, _svd_infer, _svd_impl, _svd_grad, arity=1, complex_grad=True,
       reads=(), output=SAVED,
       doc="the singular value decomposition of matrices, packed (svd_factors unpacks it)")


def svd_factors(a, full_matrices=False):
    """(U, S, Vh) of `a`, from one SVD; U and Vh column-major, as PyTorch's."""
    return _parts(P.linalg_svd(a, full_matrices=full_matrices),
                  _svd_layout(a.shape, a.dtype, full_matrices), copy=True)


def _svdvals_infer(shapes, dtypes):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.svdvals: the input must have at least 2 dimensions, got "
                         f"{list(s)}")
    return s[:-2] + (min(s[-2], s[-1]),), dtypes[0].to_real()


def _svdvals_grad(g, out, a):
    # the SVD's rule for the values alone, U diag(gS) Vh, with U and Vh from a second SVD
    # (kiln.linalg takes the values from linalg_svd when a gradient is wanted, as torch does)
    U, _, Vh = svd_factors(a)
    row = tuple(g.shape[:-1]) + (1, g.shape[-1])
    return (P.matmul(P.mul(U, P.reshape(_like(g, a), shape=row)), Vh),)


define("linalg_svdvals", LINALG, _svdvals_infer,
       lambda xp, a: xp.linalg.svd(a, compute_uv=False), _svdvals_grad, arity=1,
       complex_grad=True, doc="singular values alone (LAPACK's cheaper values-only driver)")


# Bessel functions of the first kind (torch.special.bessel_j0 / bessel_j1)
def _j1_grad(g, out, x):
    # d/dx J1 = J0 - J1/x, which is 1/2 at x = 0
    safe = P.where(P.eq(x, 0), 1.0, x)
    return (g * P.where(P.eq(x, 0), 0.5, P.bessel_j0(x) - out / safe),)


_special("bessel_j0", "j0", lambda g, out, x: (-(g * P.bessel_j1(x)),))
_special("bessel_j1", "j1", _j1_grad, output=COPIED)


# ----------------------------------------------------------------------------- gamma sampling

def _gamma_sample_infer(shapes, dtypes):
    if dtypes[1] is not dt.int64 or shapes[1] != ():
        raise ShapeError("gamma_sample: the seed must be a 0-d int64 tensor")
    return _float_unary(shapes[:1], dtypes[:1])


def _gamma_sample_impl(xp, alpha, seed):
    # inverse-CDF sampling, x = P^-1(alpha, u): a smooth function of alpha for a fixed seed,
    # which the implicit-reparameterization gradient below differentiates
    gen = np.random.Generator(np.random.Philox(key=int(seed)))
    u = gen.random(alpha.shape)
    u = u if xp is np else xp.asarray(u)
    x = _scipy_special(xp, "gammaincinv")(alpha, u)
    return xp.maximum(x, np.finfo(alpha.dtype).tiny).astype(alpha.dtype)


def _gamma_sample_grad(g, out, alpha, seed):
    # implicit reparameterization: F(x; alpha) = u fixed, so dx/dalpha = -(dF/dalpha) / pdf(x)
    log_pdf = (alpha - 1) * P.log(out) - out - P.lgamma(alpha)
    return (-(g * P.gammainc_dalpha(alpha, out)) / P.exp(log_pdf), None)


def _gammainc_dalpha_impl(xp, alpha, x):
    # d/dalpha of the regularized lower incomplete gamma function: no closed form; a central
    # difference of scipy's gammainc (step ~1e-5 alpha: ~1e-9 relative error)
    fn = _scipy_special(xp, "gammainc")
    h = 1e-5 * xp.maximum(alpha, 1.0)
    return (fn(alpha + h, x) - fn(alpha - h, x)) / (2 * h)


define("gamma_sample", RANDOM, _gamma_sample_infer, _gamma_sample_impl, _gamma_sample_grad,
       arity=2, quiet=True, reads=(0,), output=COPIED,
       doc="Gamma(alpha, 1) draws by inverse CDF, a pure function of the seed input")
define("gammainc_dalpha", SPECIAL, _elementwise, _gammainc_dalpha_impl, None, arity=2,
       quiet=True)


# ----------------------------------------------------------------------------- LU

def _lu_layout(shape, dtype):
    batch, (m, n) = tuple(shape[:-2]), shape[-2:]
    # LU (packed L below the diagonal, U on and above it), LAPACK's 1-based pivots, the row
    # permutation P with A = P L U
    return ((batch + (m, n), True, dtype), (batch + (min(m, n),), False, dt.int32),
            (batch + (m, m), False, dtype))


def _lu_infer(shapes, dtypes):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.lu_factor: the input must have at least 2 dimensions, got "
                         f"{list(s)}")
    if not (dtypes[0].is_floating_point or dtypes[0].is_complex):
        raise ShapeError(f"linalg.lu_factor: expected a floating point or complex tensor, got "
                         f"{dtypes[0].name}", TypeError)
    return (_packed_size(_lu_layout(s, dtypes[0])),), dtypes[0]


def _pivots_to_permutation(piv, m):
    """LAPACK's row swaps (0-based) as the permutation matrix P with A = P L U."""
    order = np.arange(m)
    for i, j in enumerate(piv):
        order[[i, j]] = order[[j, i]]
    perm = np.zeros((m, m))
    perm[order, np.arange(m)] = 1.0            # row i of L U is row order[i] of A
    return perm


def _lu_impl(xp, a):
    import scipy.linalg
    host = a if xp is np else xp.asnumpy(a)
    batch, (m, n) = host.shape[:-2], host.shape[-2:]
    lus = np.empty(batch + (n, m), host.dtype)          # transposed: LAPACK's column-major
    pivots = np.empty(batch + (min(m, n),), host.dtype)
    perms = np.empty(batch + (m, m), host.dtype)
    for i in np.ndindex(*batch):
        getrf, = scipy.linalg.get_lapack_funcs(("getrf",), (host[i],))
        lu, piv, _ = getrf(host[i])
        lus[i], pivots[i], perms[i] = lu.T, piv + 1, _pivots_to_permutation(piv, m)
    out = _pack(np, host.dtype, (lus, pivots, perms))
    return out if xp is np else xp.asarray(out)


def _lu_grad(g, out, a):
    # A = P L U (torch's linalg_lu_backward). Square: gA = P L^-T phi U^-T with
    # phi = tril(L^T gL, -1) + triu(gU U^T), gL / gU the strict-lower / upper parts of the
    # packed gradient. Wide (m < n), U = [U1 U2]: U2 = L^-1 P^T A2 adds P L^-T gU2 for A2 and
    # -gU2 U2^T to L^T gL. Tall (m > n), L = [L1; L2]: L2 = (P^T A)_2 U^-1 adds gL2 U^-T for
    # those rows and -L2^T gL2 to gU U^T.
    layout = _lu_layout(a.shape, a.dtype)
    LU, _, perm = _parts(out, layout, copy=False)
    gLU = _parts(g, layout, copy=False)[0]
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    low = _tril(_cols(LU, 0, k), -1)
    L = P.add(low, _cols(_eye_like(_mT(low)), 0, k))
    U = P.sub(_rows(LU, 0, k), _tril(_rows(LU, 0, k), -1))
    gL = _tril(_cols(gLU, 0, k), -1)
    gU = P.sub(_rows(gLU, 0, k), _tril(_rows(gLU, 0, k), -1))
    L1, U1 = _rows(L, 0, k), _cols(U, 0, k)
    lower = P.matmul(_mT(L1), _rows(gL, 0, k))
    upper = P.matmul(_cols(gU, 0, k), _mT(U1))
    if m < n:
        gU2 = _cols(gU, k, n)
        lower = P.sub(lower, P.matmul(gU2, _mT(_cols(U, k, n))))
    if m > n:
        gL2 = _rows(gL, k, m)
        upper = P.sub(upper, P.matmul(_mT(_rows(L, k, m)), gL2))
    phi = P.add(_tril(lower, -1), P.sub(upper, _tril(upper, -1)))
    L1inv_t, U1inv_t = _mT(P.linalg_inv(L1)), _mT(P.linalg_inv(U1))
    grad = P.matmul(P.matmul(L1inv_t, phi), U1inv_t)            # rows/cols of (P^T A)_1
    if m < n:
        grad = P.cat(grad, P.matmul(L1inv_t, gU2), axis=a.ndim - 1)
    if m > n:
        grad = P.cat(grad, P.matmul(gL2, U1inv_t), axis=a.ndim - 2)
    return (P.matmul(perm, grad),)


define("linalg_lu", LINALG, _lu_infer, _lu_impl, _lu_grad, arity=1, reads=(), output=SAVED,
       doc="LU factorization with partial pivoting (LAPACK getrf): LU, pivots and P, packed "
           "(lu_factors unpacks them)")


def lu_factors(a):
    """(LU, pivots, P) of `a`, from one LU factorization."""
    return _parts(P.linalg_lu(a), _lu_layout(a.shape, a.dtype), copy=True)


# ----------------------------------------------------------------------------- collectives
COLLECTIVE = "collective"

# the communicators a compiled program's collectives call, by the name in their `group`
# attribute (kiln.distributed registers its groups here: `ir` imports no other layer). Each has
# `sum_in_place(array)` and `broadcast_in_place(array, src)`, on a contiguous array of its own.
COMMUNICATORS: dict = {}


def _collective_infer(shapes, dtypes, group, **attrs):
    if len(shapes) not in (1, 2):
        raise ShapeError(f"a collective takes a tensor and an optional ordering input, got "
                         f"{len(shapes)} inputs")
    return shapes[0], dtypes[0]


def _communicator(group: str):
    found = COMMUNICATORS.get(group)
    if found is None:
        raise RuntimeError(f"the process group {group!r} this compiled program talks to is gone "
                           "(its DistributedDataParallel was deleted)")
    return found


# `after`, the previous collective's result, is not read: as an input it orders this collective
# after that one in every program, so all ranks issue their collectives in the same order
def _all_reduce_impl(xp, x, *after, group):
    out = xp.array(x, order="C")        # a copy: the input is left as it was
    _communicator(group).sum_in_place(out)
    return out


def _broadcast_impl(xp, x, *after, group, src):
    out = xp.array(x, order="C")
    _communicator(group).broadcast_in_place(out, src)
    return out


define("all_reduce_sum", COLLECTIVE, _collective_infer, _all_reduce_impl, None,
       doc="a tensor summed over a process group's ranks (DDP's gradient all-reduce in a "
           "compiled step); never fused, nor reordered past another collective")
define("broadcast_from", COLLECTIVE, _collective_infer, _broadcast_impl, None,
       doc="rank `src`'s value of a tensor on every rank of a process group (DDP's buffer "
           "broadcast in a compiled step); never fused, nor reordered past another collective")
