"""The NumPy backend's fast paths give exactly what their primitive's own impl gives."""

import numpy as np
import pytest

from kiln.ir.ops import PRIMITIVES
from kiln.runtime import conv_cpu, gemm_cpu, numpy_backend
from kiln.runtime.numpy_backend import FAST_PATHS, numpy_impl

RNG = np.random.default_rng(0)


def test_every_fast_path_is_a_primitive_and_is_picked():
    for name, fast in FAST_PATHS.items():
        assert name in PRIMITIVES, name
        assert numpy_impl(PRIMITIVES[name]) is fast
    assert numpy_impl(PRIMITIVES["exp"]) is PRIMITIVES["exp"].impl


@pytest.mark.parametrize("shape", [(7,), (64, 96), (3, 70, 41)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_matches_the_primitive(shape, dtype):
    x = RNG.standard_normal(shape).astype(dtype)
    x.flat[::5] = np.nan
    x.flat[1::7] = -0.0
    want = PRIMITIVES["relu"].impl(np, x)
    got = FAST_PATHS["relu"](np, x)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == want.dtype


@pytest.mark.parametrize("shape", [(9,), (80, 70)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.float16])
@pytest.mark.parametrize("sides", ["arrays", "zero_left", "zero_right", "broadcast", "permuted"])
def test_where_matches_the_primitive(shape, dtype, sides):
    c = RNG.random(shape) < 0.4
    x = (RNG.standard_normal(shape) * 10).astype(dtype)
    y = (RNG.standard_normal(shape) * 10).astype(dtype)
    if sides == "zero_left":
        x = 0.0 if np.dtype(dtype).kind == "f" else 0
    elif sides == "zero_right":
        y = 0.0 if np.dtype(dtype).kind == "f" else 0
    elif sides == "broadcast":
        y = y[..., :1]
    elif sides == "permuted":
        c, x, y = c.T, x.T, y.T
    want = PRIMITIVES["where"].impl(np, c, x, y)
    got = FAST_PATHS["where"](np, c, x, y)
    np.testing.assert_array_equal(got, want.astype(got.dtype))


@pytest.mark.parametrize("shape,axes", [((16, 8, 9, 7), (0, 2, 3)), ((64, 128), (1,)),
                                        ((256, 32), (0,)), ((8, 8, 100), (0, 1)),
                                        ((5, 3), (0,))])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("keepdim", [False, True])
def test_sum_matches_the_primitive(shape, axes, layout, keepdim):
    x = RNG.standard_normal(shape)
    if layout == "channels_last" and x.ndim == 4:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    want = PRIMITIVES["sum"].impl(np, x, axes, keepdim)
    got = FAST_PATHS["sum"](np, x, axes, keepdim)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def _channels_last(a):
    return np.ascontiguousarray(np.moveaxis(a, 1, -1)).transpose(0, 3, 1, 2) if a.ndim == 4 else a


@pytest.mark.parametrize("shape", [(8, 16, 5, 6), (32, 3), (4, 5, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_batch_norm_fast_paths_match_the_primitives(shape, layout):
    arrays = [RNG.standard_normal(shape) * 3 + 1 for _ in range(3)]
    if layout == "channels_last":
        arrays = [_channels_last(a) for a in arrays]
    x, g, xhat = arrays
    for name, args, attrs in (("batch_norm", (x,), {"eps": 1e-5}),
                              ("batch_norm_backward", (g, xhat, x), {"eps": 1e-5}),
                              ("batch_stats", (x,), {})):
        want = PRIMITIVES[name].impl(np, *args, **attrs)
        got = FAST_PATHS[name](np, *args, **attrs)
        assert got.shape == want.shape, name
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12, err_msg=name)


def _image_layouts(a):
    """An (N, C, H, W) array as NCHW, channels-last, a window into a larger image, flipped."""
    big = np.zeros(a.shape[:2] + (a.shape[2] + 3, a.shape[3] + 2), a.dtype)
    big[:, :, 1:-2, 2:] = a
    return [a, _channels_last(a), big[:, :, 1:-2, 2:], a[:, ::-1, ::-1]]


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
@pytest.mark.parametrize("kernels", ["c", "numpy"])      # the backend's C kernels on, or off
@pytest.mark.parametrize("shape,kernel,stride,dilation", [
    ((2, 5, 11, 10), (3, 2), (2, 3), (2, 1)), ((4, 16, 9, 9), (3, 3), (1, 1), (1, 1))])
def test_unfold_and_fold_fast_paths_give_the_definitions_bits(shape, kernel, stride, dilation,
                                                               dtype, kernels, monkeypatch):
    if kernels == "numpy":
        monkeypatch.setattr(conv_cpu, "_functions", lambda: None)
    monkeypatch.setattr(gemm_cpu, "wide_vectors", lambda: True)     # taken on any CPU
    for x in _image_layouts(RNG.standard_normal(shape).astype(dtype)):
        want = PRIMITIVES["unfold"].impl(np, x, kernel, stride, dilation)
        got = FAST_PATHS["unfold"](np, x, kernel, stride, dilation)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        # fold sums the windows of every pixel in one order on every route: the same bits
        cols = RNG.standard_normal(want.shape).astype(dtype)
        want = PRIMITIVES["fold"].impl(np, cols, shape[2:], kernel, stride, dilation)
        got = FAST_PATHS["fold"](np, cols, shape[2:], kernel, stride, dilation)
        assert got.shape == want.shape and got.dtype == want.dtype
        assert np.array_equal(_bits(got), _bits(want))


def _bits(a):
    return np.ascontiguousarray(a).view(np.uint8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernels", ["c", "numpy"])      # the backend's C kernels on, or off
@pytest.mark.parametrize("chunk_images", [1, 2, 5])     # 5: all at once
@pytest.mark.parametrize("shape,kernel,stride,dilation,out_ch", [
    ((5, 3, 11, 10), (3, 2), (2, 3), (2, 1), 4), ((5, 16, 9, 9), (3, 3), (1, 1), (1, 1), 8),
    ((5, 1, 12, 12), (3, 3), (1, 1), (1, 1), 16),      # weight gradient taller than wide
    # forward products on gemm_cpu's kernel in float32 (64 and 128 outputs, 72 and 144 inner)
    ((5, 8, 9, 7), (3, 3), (2, 1), (1, 2), 128), ((5, 16, 9, 9), (3, 3), (1, 1), (1, 1), 64)])
def test_conv_product_fast_paths_give_the_definitions(shape, kernel, stride, dilation, out_ch,
                                                      chunk_images, kernels, dtype,
                                                      monkeypatch):
    # the images in chunks (the last one short when 2 do not divide 5), from every input layout;
    # the weight gradient sums its chunks' products one after another: equal up to rounding
    if kernels == "numpy":
        monkeypatch.setattr(conv_cpu, "_functions", lambda: None)
    monkeypatch.setattr(gemm_cpu, "wide_vectors", lambda: True)     # taken on any CPU
    windows = PRIMITIVES["unfold"].impl(np, np.zeros(shape, dtype), kernel, stride, dilation)
    rows, k = np.prod(windows.shape[:3]), np.prod(windows.shape[3:])
    monkeypatch.setattr(numpy_backend, "_CHUNK_BYTES",
                        chunk_images * windows[0].size * windows.itemsize)
    monkeypatch.setattr(numpy_backend, "_threads", lambda: 1)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    w = RNG.standard_normal((out_ch, k)).astype(dtype)
    g = RNG.standard_normal((rows, out_ch)).astype(dtype)
    for x in _image_layouts(RNG.standard_normal(shape).astype(dtype)):
        for name, args, attrs in [("unfold_matmul", (x, w.T), {}),
                                  ("matmul_unfold", (g.T, x), {}),
                                  ("matmul_fold", (g, w), {"size": shape[2:]}),
                                  ("matmul_fold", (g, w), {"size": shape[2:],
                                                           "channels_last": True})]:
            want = PRIMITIVES[name].impl(np, *args, kernel=kernel, stride=stride,
                                         dilation=dilation, **attrs)
            got = FAST_PATHS[name](np, *args, kernel=kernel, stride=stride, dilation=dilation,
                                   **attrs)
            assert got.shape == want.shape and got.dtype == want.dtype, name
            # sums of up to 144 products, in another order than the definition's (the gemm
            # kernels' vector width is the CPU's): rounding grows with the result's scale
            scale = max(1.0, float(np.abs(want).max()))
            np.testing.assert_allclose(got, want, rtol=tol, atol=tol * scale, err_msg=name)
            if attrs.get("channels_last"):      # (N, H, W, C): the NCHW result, transposed
                nchw = PRIMITIVES[name].impl(np, *args, kernel=kernel, stride=stride,
                                             dilation=dilation, size=shape[2:])
                np.testing.assert_array_equal(want, nchw.transpose(0, 2, 3, 1))
                assert got.flags.c_contiguous


@pytest.mark.parametrize("shape,starts,stops,steps", [
    ((16,), (1,), (15,), (1,)), ((16,), (3,), (16,), (4,)), ((5, 6), (1, 0), (4, 6), (2, 1)),
    ((5, 6), (0, 2), (5, 2), (1, 3)), ((3, 4, 5), (1, 0, 2), (3, 4, 5), (1, 2, 2))])
def test_slice_matches_the_primitive(shape, starts, stops, steps):
    x = RNG.standard_normal(shape)
    got = FAST_PATHS["slice"](np, x, starts, stops, steps)
    want = PRIMITIVES["slice"].impl(np, x, starts, stops, steps)
    np.testing.assert_array_equal(got, want)
    assert got.shape == want.shape and got.strides == want.strides and got.base is x


@pytest.mark.parametrize("threads,used", [(1, True), (2, False)])
def test_conv_products_on_gemm_cpu_kernels(threads, used, monkeypatch):
    """A float32 forward product by a weight of 64 outputs, and its weight gradient, run on
    gemm_cpu's kernels chunk by chunk on one thread (BLAS with its threads otherwise), equal
    to the definitions."""
    kernel, transposed = gemm_cpu.kernel(), gemm_cpu.transposed_kernel()
    if kernel is None:
        pytest.skip("no C compiler")
    calls = []
    monkeypatch.setattr(gemm_cpu, "wide_vectors", lambda: True)     # taken on any CPU
    monkeypatch.setattr(gemm_cpu, "kernel", lambda: lambda *a: calls.append("nn") or kernel(*a))
    monkeypatch.setattr(gemm_cpu, "transposed_kernel",
                        lambda: lambda *a: calls.append("tn") or transposed(*a))
    monkeypatch.setattr(numpy_backend, "_threads", lambda: threads)
    monkeypatch.setattr(numpy_backend, "_CHUNK_BYTES", 2 * 13 * 9 * 72 * 4)   # two images
    rng = np.random.default_rng(178)       # (not the module's RNG: the same data in any order)
    x = rng.standard_normal((5, 8, 15, 11)).astype(np.float32)
    w = rng.standard_normal((64, 8 * 3 * 3)).astype(np.float32)
    g = rng.standard_normal((5 * 13 * 9, 64)).astype(np.float32)
    args = dict(kernel=(3, 3), stride=(1, 1), dilation=(1, 1))
    for name, operands, inner in [("unfold_matmul", (x, w.T), 72),
                                  ("matmul_unfold", (g.T, x), 585)]:
        # the definition in float64, and float32's rounding bound for a sum of `inner` products
        # in any order (4 sqrt(inner) ulps of the sum of their magnitudes: BLAS's blocked sums
        # and the kernel's in-order one differ by rounding only)
        want, size = (PRIMITIVES[name].impl(np, *[f(a).astype(np.float64) for a in operands],
                                            **args) for f in (np.asarray, np.abs))
        got = FAST_PATHS[name](np, *operands, **args)
        assert got.dtype == np.float32
        bound = 4 * np.sqrt(inner) * 2.0 ** -24 * size
        assert np.all(np.abs(got - want) <= bound), name
    assert calls == (["nn"] * 3 + ["tn"] * 3 if used else [])
