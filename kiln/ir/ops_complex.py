"""The primitives of complex tensors: parts and views (real, imag, view_as_real, ...), and FFTs.

Gradients follow PyTorch's convention for complex numbers: for a real loss L and a complex
input z = x + iy, the gradient is dL/dx + i dL/dy (the conjugate Wirtinger derivative, times
2). A C-linear map A then has the gradient A^H g, and a real input of a map into complex
numbers gets the real part of that. The rules of the ordinary primitives (mul, exp, matmul,
...) are written for real numbers; the autograd engine conjugates around them for complex
gradients (kiln.tracer.autograd), so only the ops below, which are not holomorphic or change
between real and complex, carry rules of their own.

None of these has a kernel spelling: a compiled function that touches a complex tensor runs
eagerly (kiln.compiler), so they only ever run through NumPy/CuPy.
"""

from __future__ import annotations

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import broadcast_shapes, unbroadcast
from kiln.ir.ops_extra import _over, _pack, _packed_size, _parts
from kiln.ir.primitive import MOVEMENT, SAVED, P, ShapeError, define

# computed by NumPy/CuPy between kernels; never fused (a compiled function with a complex tensor
# runs eagerly)
COMPLEX = "complex"


def _complex_input(name: str, dtype: dt.DType) -> None:
    if not dtype.is_complex:
        raise ShapeError(f"{name} expects a complex tensor, got {dtype.name}", RuntimeError)


# ----------------------------------------------------------------------------- parts (views)

def _part_infer(shapes, dtypes):
    _complex_input("real/imag", dtypes[0])
    return shapes[0], dtypes[0].to_real()


# x.real and x.imag are strided views of x's memory in NumPy and CuPy, as in PyTorch
define("real", MOVEMENT, _part_infer, lambda xp, x: x.real,
       lambda g, out, x: (P.cast(g, dtype=x.dtype),), arity=1, reads=(), view=True,
       doc="the real parts of a complex tensor (a view)")
define("imag", MOVEMENT, _part_infer, lambda xp, x: x.imag,
       lambda g, out, x: (P.cast(g, dtype=x.dtype) * 1j,), arity=1, reads=(), view=True,
       doc="the imaginary parts of a complex tensor (a view)")


def _view_as_real_infer(shapes, dtypes):
    _complex_input("view_as_real", dtypes[0])
    return shapes[0] + (2,), dtypes[0].to_real()


def _view_as_real_impl(xp, x):
    part = x.real                                    # a view; its strides step over pairs
    if x.ndim and x.strides[-1] == x.itemsize:
        # adjacent elements (the usual case): a reinterpreting view, whose base NumPy/CuPy
        # track, so the dispatcher sees a view (shared version counter, refused writes)
        return x.view(part.dtype).reshape(x.shape + (2,))
    return xp.lib.stride_tricks.as_strided(part, shape=x.shape + (2,),
                                           strides=part.strides + (part.itemsize,))


def _view_as_complex_infer(shapes, dtypes):
    if dtypes[0] not in (dt.float32, dt.float64):
        raise ShapeError(f"view_as_complex is only supported for float and double tensors, "
                         f"but got a tensor of scalar type: {dtypes[0].name}", RuntimeError)
    if not shapes[0] or shapes[0][-1] != 2:
        raise ShapeError(f"Tensor must have a last dimension of size 2, got shape "
                         f"{list(shapes[0])}", RuntimeError)
    return shapes[0][:-1], dtypes[0].to_complex()


def _view_as_complex_impl(xp, x):
    if x.strides[-1] != x.itemsize:
        x = xp.ascontiguousarray(x)        # PyTorch needs the pair adjacent; a gradient's copy
    return x.view(dt.from_numpy(x.dtype).to_complex().np)[..., 0]


define("view_as_real", MOVEMENT, _view_as_real_infer, _view_as_real_impl,
       lambda g, out, x: (P.view_as_complex(g),), arity=1, reads=(), view=True,
       doc="a complex tensor's memory as pairs (real, imag) in a last dim of size 2 (a view)")
define("view_as_complex", MOVEMENT, _view_as_complex_infer, _view_as_complex_impl,
       lambda g, out, x: (P.view_as_real(g),), arity=1, reads=(), view=True,
       doc="a last dim of (real, imag) pairs as one complex tensor (a view)")


# ----------------------------------------------------------------------------- elementwise

def _conj_infer(shapes, dtypes):
    return shapes[0], dtypes[0]


define("conj", COMPLEX, _conj_infer, lambda xp, x: xp.conj(x), lambda g, out, x: (P.conj(g),),
       arity=1, reads=(), doc="the complex conjugate (materialized, unlike PyTorch's lazy bit)")


def _angle_infer(shapes, dtypes):
    _complex_input("angle", dtypes[0])
    return shapes[0], dtypes[0].to_real()


def _angle_grad(g, out, x):
    # d angle = (x dy - y dx) / |z|^2, so the gradient is g (-y + ix) / |z|^2 = g i z / |z|^2;
    # 0 at z = 0, as PyTorch
    mag2 = P.abs(x) * P.abs(x)
    return (P.where(P.eq(x, 0), 0j, P.cast(g, dtype=x.dtype) * x * 1j
                    / P.cast(P.where(P.eq(mag2, 0), 1.0, mag2), dtype=x.dtype)),)


define("angle", COMPLEX, _angle_infer, lambda xp, x: xp.angle(x), _angle_grad, arity=1,
       doc="the argument of each complex element, in (-pi, pi]")


def _complex_infer(shapes, dtypes):
    re, im = dtypes
    if re is not im or re not in (dt.float32, dt.float64):
        raise ShapeError(f"complex: expected both inputs to be float or double tensors of "
                         f"one dtype, got {re.name} and {im.name}", RuntimeError)
    return broadcast_shapes(*shapes), re.to_complex()


def _complex_impl(xp, re, im):
    out = xp.empty(np.broadcast_shapes(re.shape, im.shape),
                   dtype=dt.from_numpy(re.dtype).to_complex().np)
    out.real, out.imag = re, im
    return out


define("complex", COMPLEX, _complex_infer, _complex_impl,
       lambda g, out, re, im: (unbroadcast(P.real(g), re.shape),
                               unbroadcast(P.imag(g), im.shape)),
       arity=2, reads=(), doc="a complex tensor from its real and imaginary parts")


# ----------------------------------------------------------------------------- FFTs

NORMS = ("backward", "ortho", "forward")
# the adjoint of a transform normalized one way is the inverse transform normalized the other:
# fft(norm="backward") is unscaled, its adjoint n * ifft(norm="backward") = ifft(norm="forward")
DUAL = {"backward": "forward", "ortho": "ortho", "forward": "backward"}


def _check_dims(shape, dims):
    for d in dims:
        if not 0 <= d < len(shape):
            raise ShapeError(f"FFT dims {list(dims)} out of range for shape {list(shape)}",
                             IndexError)
        if shape[d] == 0:
            raise ShapeError(f"Invalid number of data points (0) specified (dim {d} of shape "
                             f"{list(shape)})", RuntimeError)


def _c2c_infer(shapes, dtypes, dims, norm, forward):
    _complex_input("fft_c2c", dtypes[0])
    _check_dims(shapes[0], dims)
    return shapes[0], dtypes[0]


def _c2c_impl(xp, x, dims, norm, forward):
    fn = xp.fft.fftn if forward else xp.fft.ifftn
    return fn(x, axes=dims, norm=norm).astype(x.dtype, copy=False)


define("fft_c2c", COMPLEX, _c2c_infer, _c2c_impl,
       lambda g, out, x, dims, norm, forward: (
           P.fft_c2c(g, dims=dims, norm=DUAL[norm], forward=not forward),),
       arity=1, reads=(), doc="complex-to-complex FFT over `dims` (numpy.fft.fftn / ifftn)")


def _r2c_infer(shapes, dtypes, dims, norm):
    if dtypes[0] not in (dt.float32, dt.float64):
        raise ShapeError(f"rfft expects a float or double tensor, got {dtypes[0].name}",
                         RuntimeError)
    _check_dims(shapes[0], dims)
    shape = list(shapes[0])
    shape[dims[-1]] = shape[dims[-1]] // 2 + 1
    return tuple(shape), dtypes[0].to_complex()


def _r2c_impl(xp, x, dims, norm):
    out = xp.fft.rfftn(x, axes=dims, norm=norm)
    return out.astype(dt.from_numpy(x.dtype).to_complex().np, copy=False)


def _r2c_grad(g, out, x, dims, norm):
    # the one-sided spectrum is the full one's first n // 2 + 1 bins: the adjoint zero-fills
    # the rest and runs the inverse transform; x is real, so it takes the real part
    last, n = dims[-1], x.shape[dims[-1]]
    pads = tuple((0, n - g.shape[last]) if i == last else (0, 0) for i in range(len(g.shape)))
    full = P.pad(g, pads=pads, value=0.0)
    return (P.real(P.fft_c2c(full, dims=dims, norm=DUAL[norm], forward=False)),)


define("fft_r2c", COMPLEX, _r2c_infer, _r2c_impl, _r2c_grad, arity=1, reads=(),
       doc="real-to-complex FFT over `dims`, one-sided in the last (numpy.fft.rfftn)")


def _c2r_infer(shapes, dtypes, dims, n, norm):
    _complex_input("irfft", dtypes[0])
    _check_dims(shapes[0], dims)
    if n < 1:
        raise ShapeError(f"Invalid number of data points ({n}) specified", RuntimeError)
    if shapes[0][dims[-1]] != n // 2 + 1:
        raise ShapeError(f"fft_c2r: the last dim has {shapes[0][dims[-1]]} bins, an output of "
                         f"{n} points needs {n // 2 + 1}")
    shape = list(shapes[0])
    shape[dims[-1]] = n
    return tuple(shape), dtypes[0].to_real()


def _c2r_impl(xp, x, dims, n, norm):
    sizes = [x.shape[d] for d in dims[:-1]] + [n]
    out = xp.fft.irfftn(x, s=sizes, axes=dims, norm=norm)
    return out.astype(dt.from_numpy(x.dtype).to_real().np, copy=False)


def _c2r_grad(g, out, x, dims, n, norm):
    # irfft reads bin k (0 < k < n/2) twice, as itself and as the conjugate bin n - k; the
    # adjoint is the one-sided forward transform with those bins doubled (bin 0 and, for even
    # n, bin n/2 are read once, their imaginary parts not at all: rfft's are zero there)
    last = dims[-1]
    m = n // 2 + 1
    k = P.arange(start=0, stop=m, step=1, dtype=dt.int64, device=g.device)
    once = P.eq(k, 0) if n % 2 else P.bitwise_or(P.eq(k, 0), P.eq(k, n // 2))
    weights = 2.0 - P.cast(once, dtype=g.dtype)
    weights = P.reshape(weights, shape=(m,) + (1,) * (len(g.shape) - last - 1))
    return (P.fft_r2c(g, dims=dims, norm=DUAL[norm]) * weights,)


define("fft_c2r", COMPLEX, _c2r_infer, _c2r_impl, _c2r_grad, arity=1, reads=(),
       doc="complex-to-real inverse FFT over `dims` of a one-sided spectrum "
           "(numpy.fft.irfftn), `n` points in the last")



# ----------------------------------------------------------------------------- eig

def _eig_layout(shape, dtype):
    batch, n = tuple(shape[:-2]), shape[-1]
    return ((batch + (n,), False, dtype), (batch + (n, n), True, dtype))      # L, V


def _eig_infer(shapes, dtypes):
    s = shapes[0]
    if len(s) < 2 or s[-1] != s[-2]:
        raise ShapeError(f"linalg.eig: A must be batches of square matrices, but they are "
                         f"{'x'.join(map(str, s[-2:]))} matrices")
    if dtypes[0] not in (dt.float32, dt.float64, dt.complex64, dt.complex128):
        raise ShapeError(f"linalg.eig: expected a float, double or complex tensor, got "
                         f"{dtypes[0].name}", TypeError)
    d = dtypes[0].to_complex()
    return (_packed_size(_eig_layout(s, d)),), d


def _eig_impl(xp, a):
    # LAPACK's geev through NumPy, as PyTorch's CPU eig (the same order of eigenvalues and
    # unit-norm eigenvectors); CuPy has no general eigensolver, so a cuda input goes by the host
    host = a if xp is np else a.get()
    w, v = np.linalg.eig(host)
    out = _pack(np, dt.from_numpy(a.dtype).to_complex().np, (w, np.swapaxes(v, -1, -2)))
    return out if xp is np else xp.asarray(out)


def _eig_grad(g, out, a):
    # PyTorch's linalg_eig_backward: gA = V^-H (diag(gL) + P(V^H gV) / conj(E)) V^H,
    # E_ij = L_j - L_i off the diagonal, P the projection removing the part that changes with
    # the eigenvectors' norms
    layout = _eig_layout(a.shape, a.dtype.to_complex())
    L, V = _parts(out, layout, copy=False)
    gL, gV = _parts(g, layout, copy=False)
    n = a.shape[-1]
    Vh = P.conj(P.permute(V, perm=tuple(range(V.ndim - 2)) + (V.ndim - 1, V.ndim - 2)))
    k = P.arange(start=0, stop=n, step=1, dtype=dt.int64, device=a.device)
    eye = P.eq(P.reshape(k, shape=(n, 1)), P.reshape(k, shape=(1, n)))
    VhgV = Vh @ gV
    diag = P.sum(P.where(eye, VhgV, 0j), axes=(VhgV.ndim - 1,), keepdim=False)
    VhgV = VhgV - Vh @ (V * P.reshape(P.real(diag), shape=diag.shape[:-1] + (1, n)))
    Lc = P.conj(L)
    gaps = P.reshape(Lc, shape=Lc.shape[:-1] + (1, n)) - \
        P.reshape(Lc, shape=Lc.shape[:-1] + (n, 1))
    inner = P.where(eye, P.reshape(gL, shape=gL.shape[:-1] + (1, n)),
                    _over(VhgV, P.where(eye, 1.0, gaps)))
    gA = P.linalg_inv(Vh) @ (inner @ Vh)
    return (gA if a.dtype.is_complex else P.real(gA),)


define("linalg_eig", COMPLEX, _eig_infer, _eig_impl, _eig_grad, arity=1, reads=(),
       output=SAVED, doc="eigenvalues and unit eigenvectors of general square matrices, packed "
                         "(eig_factors unpacks them)")


def eig_factors(a):
    """(eigenvalues, eigenvectors) of the square `a` (complex), from one eig."""
    return _parts(P.linalg_eig(a), _eig_layout(a.shape, a.dtype.to_complex()), copy=True)


def _eigvals_infer(shapes, dtypes):
    _, d = _eig_infer(shapes, dtypes)
    return tuple(shapes[0][:-1]), d


def _eigvals_impl(xp, a):
    host = a if xp is np else a.get()
    out = np.linalg.eigvals(host).astype(dt.from_numpy(a.dtype).to_complex().np)
    return out if xp is np else xp.asarray(out)


def _eigvals_grad(g, out, a):
    # eig's rule for the values alone, V^-H diag(gL) V^H, with V from a second eig (kiln.linalg
    # takes the values from linalg_eig when a gradient is wanted, as torch does)
    _, V = eig_factors(a)
    n = a.shape[-1]
    Vh = P.conj(P.permute(V, perm=tuple(range(V.ndim - 2)) + (V.ndim - 1, V.ndim - 2)))
    gA = P.linalg_inv(Vh) @ (P.reshape(g, shape=tuple(g.shape[:-1]) + (n, 1)) * Vh)
    return (gA if a.dtype.is_complex else P.real(gA),)


define("linalg_eigvals", COMPLEX, _eigvals_infer, _eigvals_impl, _eigvals_grad, arity=1,
       doc="eigenvalues alone of general square matrices (LAPACK's values-only geev)")
