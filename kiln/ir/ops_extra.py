"""More primitives: special functions, sorting and dense linear algebra, run as library calls.

These are not fused: in a compiled graph each is an extern call (like matmul) running the same
array code as eager mode. Special functions use `scipy.special` on the CPU and
`cupyx.scipy.special` on a GPU; linear algebra uses `numpy.linalg` / `cupy.linalg`. An op with
several results (an SVD's U, S and Vh) is one primitive per result, told apart by a `part`
attribute, so every primitive keeps one output; each part's gradient rule covers that part.
Gradient rules are written with tensor ops, as in `kiln.ir.ops`.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import _both, _elementwise, _float_unary
from kiln.ir.primitive import COPIED, RANDOM, P, ShapeError, define

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


# complex too: inverse is holomorphic, and autograd conjugates its rule for complex inputs
define("linalg_inv", LINALG, _square_infer, lambda xp, a: xp.linalg.inv(a),
       lambda g, out, a: (-P.matmul(P.matmul(_mT(out), g), _mT(out)),), arity=1, reads=(),
       output=COPIED)


def _slogdet_infer(shapes, dtypes, part):
    s, d = _square_infer(shapes, dtypes)
    return s[:-2], (d if part == "sign" else d.to_real())     # logabsdet is real


def _slogdet_impl(xp, a, part):
    sign, logabs = xp.linalg.slogdet(a)
    return sign if part == "sign" else logabs


def _slogdet_grad(g, out, a, part):
    # d logabsdet = Re tr(A^-1 dA); a complex sign = e^(i theta) moves with
    # d theta = Im tr(A^-1 dA): gA = (g_logabs - i Im(conj(g_sign) sign)) A^-H (a real sign
    # is locally constant)
    if part == "sign" and not a.dtype.is_complex:
        return (P.mul(P.reshape(g, shape=tuple(g.shape) + (1, 1)), 0.0) + P.mul(a, 0.0),)
    if part == "sign":
        g = P.mul(_i_imag(P.mul(P.conj(g), out)), -1.0)
    g = _like(g, a)
    return (P.mul(P.reshape(g, shape=tuple(g.shape) + (1, 1)), _mH(P.linalg_inv(a))),)


define("linalg_slogdet", LINALG, _slogdet_infer, _slogdet_impl, _slogdet_grad, arity=1,
       complex_grad=True, output=COPIED)      # a complex sign's rule reads it


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


def _qr_infer(shapes, dtypes, part):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.qr: the input must have at least 2 dimensions, got {list(s)}")
    m, n = s[-2], s[-1]
    k = min(m, n)
    return (s[:-2] + ((m, k) if part == "Q" else (k, n))), dtypes[0]


def _qr_impl(xp, a, part):
    q, r = xp.linalg.qr(a, mode="reduced")
    return q if part == "Q" else r


def _cols(t, start, stop):
    """t[..., :, start:stop]."""
    batch = tuple(t.shape[:-1])
    return P.slice(t, starts=(0,) * len(batch) + (start,), stops=batch + (stop,),
                   steps=(1,) * t.ndim)


def _rows(t, start, stop):
    return _mT(_cols(_mT(t), start, stop))


def _qr_grad(g, out, a, part):
    # reduced QR with m >= n: M = R gR^H - gQ^H Q; A_bar = (gQ + Q copyltu(M)) R^-H, copyltu
    # mirroring M's strict lower triangle onto the upper with the real part of its diagonal
    # (R's diagonal is real). Wide (m < n): A = [X Y], R = [R1 R2], X = Q R1 that square QR,
    # R2 = Q^H Y: gY = Q gR2, and gQ gains Y gR2^H before X's rule (torch's linalg_qr_backward)
    Q, R = P.linalg_qr(a, part="Q"), P.linalg_qr(a, part="R")
    m, n = a.shape[-2], a.shape[-1]
    gQ = g if part == "Q" else P.mul(Q, 0.0)
    gR = g if part == "R" else P.mul(R, 0.0)
    if m < n:
        gR2, Y = _cols(gR, m, n), _cols(a, m, n)
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


define("linalg_qr", LINALG, _qr_infer, _qr_impl, _qr_grad, arity=1, complex_grad=True)


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


def _eigh_infer(shapes, dtypes, part, upper):
    s, d = _square_infer(shapes, dtypes)
    return (s[:-1], d.to_real()) if part == "L" else (s, d)     # real eigenvalues


def _eigh_impl(xp, a, part, upper):
    w, v = xp.linalg.eigh(a, UPLO="U" if upper else "L")
    return w if part == "L" else v


def _eigh_grad(g, out, a, part, upper):
    # gA = V (diag(gL) + skew(V^H gV) / E) V^H, E_ij = L_j - L_i, off the diagonal (where a
    # complex skew has the phases' part, which a well-posed loss does not change; as torch's
    # eigh backward)
    L = _like(P.linalg_eigh(a, part="L", upper=upper), a)
    V = P.linalg_eigh(a, part="V", upper=upper)
    if part == "L":
        inner = _diag_embed(_like(g, a))
    else:
        VtgV = P.matmul(_mH(V), g)
        if a.dtype.is_complex:
            _refuse_phase_dependence(P.imag(_diagonal(VtgV)), "linalg.eigh", "eigenvectors",
                                     "|V| or V diag(f(L)) V^H")
        skew = P.mul(P.sub(VtgV, _mH(VtgV)), 0.5)
        n = L.shape[-1]
        E = P.sub(P.reshape(L, shape=tuple(L.shape[:-1]) + (1, n)),
                  P.reshape(L, shape=tuple(L.shape) + (1,)))
        eye = _eye_like(a)
        inner = P.div(P.mul(skew, P.sub(1.0, eye)), P.add(E, eye))
    return (P.matmul(P.matmul(V, inner), _mH(V)),)


define("linalg_eigh", LINALG, _eigh_infer, _eigh_impl, _eigh_grad, arity=1, complex_grad=True)


def _svd_infer(shapes, dtypes, part):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.svd: the input must have at least 2 dimensions, got {list(s)}")
    m, n = s[-2], s[-1]
    k = min(m, n)
    # U_rest / Vh_rest: the columns / rows full_matrices=True adds beyond the first k; UV: U
    # above V = Vh^H, one result whose rule sees both gradients (a complex SVD's needs them)
    shape = {"U": s[:-2] + (m, k), "S": s[:-2] + (k,), "Vh": s[:-2] + (k, n),
             "UV": s[:-2] + (m + n, k),
             "U_rest": s[:-2] + (m, m - k), "Vh_rest": s[:-2] + (n - k, n)}[part]
    return shape, (dtypes[0].to_real() if part == "S" else dtypes[0])   # real singular values


def _svd_impl(xp, a, part):
    if part in ("U_rest", "Vh_rest"):
        u, s, vh = xp.linalg.svd(a, full_matrices=True)
        k = s.shape[-1]
        return u[..., :, k:] if part == "U_rest" else vh[..., k:, :]
    u, s, vh = xp.linalg.svd(a, full_matrices=False)
    if part == "UV":
        return xp.concatenate([u, xp.conj(xp.swapaxes(vh, -1, -2))], axis=-2)
    return {"U": u, "S": s, "Vh": vh}[part]


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


def _svd_uv_grad(g, a):
    # the U and Vh rules on the two halves of g; their phase terms must cancel (a pair of
    # singular vectors shares its phase)
    m = a.shape[-2]
    gU, gV = _rows(g, 0, m), _rows(g, m, g.shape[-2])
    U, V = P.linalg_svd(a, part="U"), _mH(P.linalg_svd(a, part="Vh"))
    _refuse_phase_dependence(P.add(P.imag(_diagonal(P.matmul(_mH(U), gU))),
                                   P.imag(_diagonal(P.matmul(_mH(V), gV)))),
                             "linalg.svd", "singular vectors", "|U|, U diag(S) Vh or U Vh")
    return (P.add(_svd_grad(gU, None, a, "U")[0], _svd_grad(_mH(gV), None, a, "Vh")[0]),)


def _svd_grad(g, out, a, part):
    # torch's svd_backward, with only this part's gradient nonzero. Complex: skew(U^H gU) off
    # the diagonal, where i Im(U^H gU) / S stands for the phases of the vectors (a well-posed
    # loss changes with U's phases as against V's: their parts sum to zero)
    if part in ("U_rest", "Vh_rest"):
        # like torch, the gradient flows through the first k singular vectors only
        return (P.mul(a, 0.0),)
    if part == "UV":
        return _svd_uv_grad(g, a)
    U, S, Vh = (P.linalg_svd(a, part=p) for p in ("U", "S", "Vh"))
    S = _like(S, a)
    m, n, k = a.shape[-2], a.shape[-1], S.shape[-1]
    row = tuple(S.shape[:-1]) + (1, k)          # S as a row: scales columns
    col = tuple(S.shape) + (1,)                 # S as a column: scales rows
    if part == "S":
        return (P.matmul(P.mul(U, P.reshape(_like(g, a), shape=row)), Vh),)
    S2 = P.mul(S, S)
    eye = _eye_like(_diag_embed(S))
    E = P.add(P.sub(P.reshape(S2, shape=row), P.reshape(S2, shape=col)), eye)
    if part == "U":
        UhgU = P.matmul(_mH(U), g)
        skew = P.sub(UhgU, _mH(UhgU))
        gA = P.div(P.mul(skew, P.reshape(S, shape=row)), E)
        if a.dtype.is_complex:
            gA = P.add(P.mul(gA, P.sub(1.0, eye)),
                       _diag_embed(P.div(_i_imag(_diagonal(UhgU)), S)))
        gA = P.matmul(U, gA)
        if m > k:
            gUSinv = P.div(g, P.reshape(S, shape=row))
            gA = P.add(gA, P.sub(gUSinv, P.matmul(U, P.matmul(_mH(U), gUSinv))))
        return (P.matmul(gA, Vh),)
    V = _mH(Vh)
    gV = _mH(g)
    VhgV = P.matmul(Vh, gV)
    skew = P.sub(VhgV, _mH(VhgV))
    gA = P.div(P.mul(P.reshape(S, shape=col), skew), E)
    if a.dtype.is_complex:                  # a real skew's diagonal is 0 already
        gA = P.mul(gA, P.sub(1.0, eye))
    gA = P.matmul(gA, Vh)
    if n > k:
        gVSinv = P.div(gV, P.reshape(S, shape=row))
        gA = P.add(gA, _mH(P.sub(gVSinv, P.matmul(V, P.matmul(Vh, gVSinv)))))
    return (P.matmul(U, gA),)


define("linalg_svd", LINALG, _svd_infer, _svd_impl, _svd_grad, arity=1, complex_grad=True)


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

def _lu_infer(shapes, dtypes, part):
    s = shapes[0]
    if len(s) < 2:
        raise ShapeError(f"linalg.lu_factor: the input must have at least 2 dimensions, got "
                         f"{list(s)}")
    if not (dtypes[0].is_floating_point or dtypes[0].is_complex):
        raise ShapeError(f"linalg.lu_factor: expected a floating point or complex tensor, got "
                         f"{dtypes[0].name}", TypeError)
    m, n = s[-2], s[-1]
    if part == "LU":
        return s, dtypes[0]
    if part == "pivots":
        return s[:-2] + (min(m, n),), dt.int32
    return s[:-2] + (m, m), dtypes[0]                  # "P": the row permutation matrix


def _pivots_to_permutation(piv, m):
    """LAPACK's row swaps (0-based) as the permutation matrix P with A = P L U."""
    order = np.arange(m)
    for i, j in enumerate(piv):
        order[[i, j]] = order[[j, i]]
    perm = np.zeros((m, m))
    perm[order, np.arange(m)] = 1.0            # row i of L U is row order[i] of A
    return perm


def _lu_impl(xp, a, part):
    import scipy.linalg
    host = a if xp is np else xp.asnumpy(a)
    m, n = host.shape[-2:]
    flat = host.reshape((-1, m, n))
    out = []
    for mat in flat:
        getrf, = scipy.linalg.get_lapack_funcs(("getrf",), (mat,))
        lu, piv, _ = getrf(mat)
        if part == "LU":
            out.append(lu)
        elif part == "pivots":
            out.append(piv.astype(np.int32) + 1)          # LAPACK's 1-based pivots, as torch
        else:
            out.append(_pivots_to_permutation(piv, m))
    shape = {"LU": host.shape, "pivots": host.shape[:-2] + (min(m, n),),
             "P": host.shape[:-2] + (m, m)}[part]
    result = np.stack(out).reshape(shape) if out else np.zeros(shape)
    result = result if part == "pivots" else result.astype(host.dtype)
    return result if xp is np else xp.asarray(result)


def _lu_grad(g, out, a, part):
    # A = P L U (torch's linalg_lu_backward). Square: gA = P L^-T phi U^-T with
    # phi = tril(L^T gL, -1) + triu(gU U^T), gL / gU the strict-lower / upper parts of the
    # packed gradient. Wide (m < n), U = [U1 U2]: U2 = L^-1 P^T A2 adds P L^-T gU2 for A2 and
    # -gU2 U2^T to L^T gL. Tall (m > n), L = [L1; L2]: L2 = (P^T A)_2 U^-1 adds gL2 U^-T for
    # those rows and -L2^T gL2 to gU U^T.
    if part != "LU":
        return (P.mul(a, 0.0),)
    m, n = a.shape[-2], a.shape[-1]
    k = min(m, n)
    low = _tril(_cols(out, 0, k), -1)
    L, U = P.add(low, _cols(_eye_like(_mT(low)), 0, k)), P.sub(_rows(out, 0, k), _tril(_rows(out, 0, k), -1))
    gL = _tril(_cols(g, 0, k), -1)
    gU = P.sub(_rows(g, 0, k), _tril(_rows(g, 0, k), -1))
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
    return (P.matmul(P.linalg_lu(a, part="P"), grad),)


define("linalg_lu", LINALG, _lu_infer, _lu_impl, _lu_grad, arity=1, output=COPIED,
       doc="LU factorization with partial pivoting (LAPACK getrf): packed LU, pivots or P")


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
