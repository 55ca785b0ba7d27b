"""The implicit-GEMM convolution kernels (kiln/codegen/conv_triton.py) in Triton's interpreter
against torch.nn.functional.conv2d and its gradients, over strides, padding and dilation, with
NCHW arrays and with the (rows, channels) layouts of the unfold route; and each kernel kind
built ahead of time for sm_90, as it would be for an H100/H200."""

import numpy as np
import pytest
import torch

from kiln.codegen.conv_triton import (BLOCK_CANDIDATES, ConvGeometry, kernel_source,
                                      render_conv_kernel)
from kiln.codegen.kernel import contiguous_strides
from kiln.ir import dtypes as dt
from kiln.runtime import triton_launch
from kiln.runtime.triton_launch import KernelCache, build_one_for_gpu

# (n, c, h, w, o, kh, kw, stride, padding, dilation): kept small, the interpreter is slow
SHAPES = [
    (2, 3, 7, 6, 5, 3, 3, (1, 1), (0, 0), (1, 1)),
    (2, 4, 9, 8, 6, 3, 2, (2, 1), (1, 2), (2, 1)),
    (1, 1, 5, 5, 3, 1, 1, (1, 1), (0, 0), (1, 1)),
    (3, 2, 8, 7, 4, 2, 3, (3, 2), (1, 0), (1, 2)),
]
RTOL, ATOL = 1e-4, 1e-5     # float32 kernels against float64 references


def _case(shape, seed=0):
    n, c, h, w, o, kh, kw, stride, padding, dilation = shape
    g = ConvGeometry(n, c, h, w, o, kh, kw, stride, padding, dilation)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    weight = rng.standard_normal((o, c, kh, kw)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32)
    grad = rng.standard_normal((n, o) + g.out_size).astype(np.float32)
    return g, x, weight, bias, grad


def _torch_reference(g, x, weight, bias, grad):
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    tw = torch.tensor(weight, dtype=torch.float64, requires_grad=True)
    out = torch.nn.functional.conv2d(tx, tw, torch.tensor(bias, dtype=torch.float64),
                                     g.stride, g.padding, g.dilation)
    out.backward(torch.tensor(grad, dtype=torch.float64))
    return out.detach().numpy(), tw.grad.numpy(), tx.grad.numpy()


def _launch(tk, inputs, outputs):
    # looked up at each call: conftest wraps it to catch writes outside the buffers
    triton_launch.launch(tk, inputs, outputs)


def _strides(*shapes):
    return tuple(contiguous_strides(s) for s in shapes)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s[:7])) +
                         f"_s{s[7][0]}{s[7][1]}p{s[8][0]}{s[8][1]}d{s[9][0]}{s[9][1]}")
def test_kernels_match_torch_conv2d_and_its_gradients(shape):
    g, x, weight, bias, grad = _case(shape)
    want_out, want_dw, want_dx = _torch_reference(g, x, weight, bias, grad)
    out_shape = grad.shape
    # forward with the bias and ReLU epilogue, and plain
    tk = render_conv_kernel("forward", g, dt.float32, _strides(x.shape, weight.shape, out_shape),
                            bias=True, relu=True)
    out = np.full(out_shape, np.nan, np.float32)
    _launch(tk, [x, weight, bias], [out])
    np.testing.assert_allclose(out, np.maximum(want_out, 0), rtol=RTOL, atol=ATOL)
    tk = render_conv_kernel("forward", g, dt.float32, _strides(x.shape, weight.shape, out_shape))
    _launch(tk, [x, weight], [out])
    np.testing.assert_allclose(out, want_out - bias.reshape(1, -1, 1, 1), rtol=RTOL, atol=ATOL)
    # weight gradient
    tk = render_conv_kernel("weight_grad", g, dt.float32,
                            _strides(x.shape, grad.shape, weight.shape))
    dw = np.full(weight.shape, np.nan, np.float32)
    _launch(tk, [x, grad], [dw])
    np.testing.assert_allclose(dw, want_dw, rtol=RTOL, atol=ATOL)
    # input gradient: every pixel written, those no window reads with 0
    tk = render_conv_kernel("input_grad", g, dt.float32,
                            _strides(grad.shape, weight.shape, x.shape))
    dx = np.full(x.shape, np.nan, np.float32)
    _launch(tk, [grad, weight], [dx])
    np.testing.assert_allclose(dx, want_dx, rtol=RTOL, atol=ATOL)


def test_kernels_read_and_write_the_unfold_routes_matrix_layouts():
    """The layouts of the compiled unfold route: the forward's output as a (rows, O) matrix
    (NHWC), the weight as (kh*kw*c, O) columns, the output gradient as an (O, rows) transpose
    of a (rows, O) matrix, the weight gradient as (O, kh*kw*c)."""
    g, x, weight, bias, grad = _case(SHAPES[1], seed=1)
    want_out, want_dw, want_dx = _torch_reference(g, x, weight, bias, grad)
    n, o, oh, ow = grad.shape
    c, kh, kw = weight.shape[1:]
    nhwc = lambda shape: tuple(contiguous_strides((shape[0], shape[2], shape[3], shape[1]))[i]
                               for i in (0, 3, 1, 2))
    w_cols = np.ascontiguousarray(weight.transpose(2, 3, 1, 0)).reshape(kh * kw * c, o)
    # w[o, c, i, j] at w_cols[(i, j, c), o]
    w_strides = (1, o, kw * c * o, c * o)
    tk = render_conv_kernel("forward", g, dt.float32, (contiguous_strides(x.shape), w_strides,
                                                       nhwc(grad.shape)), bias=True)
    out = np.full((n * oh * ow, o), np.nan, np.float32)
    _launch(tk, [x, w_cols, bias], [out])
    np.testing.assert_allclose(out.reshape(n, oh, ow, o).transpose(0, 3, 1, 2), want_out,
                               rtol=RTOL, atol=ATOL)
    g_rows = np.ascontiguousarray(grad.transpose(0, 2, 3, 1))        # (n, oh, ow, o)
    tk = render_conv_kernel("weight_grad", g, dt.float32, (
        contiguous_strides(x.shape), nhwc(grad.shape), (kh * kw * c, 1, kw * c, c)))
    dw = np.full((o, kh * kw * c), np.nan, np.float32)
    _launch(tk, [x, g_rows], [dw])
    np.testing.assert_allclose(dw.reshape(o, kh, kw, c).transpose(0, 3, 1, 2), want_dw,
                               rtol=RTOL, atol=ATOL)
    tk = render_conv_kernel("input_grad", g, dt.float32,
                            (nhwc(grad.shape), w_strides, contiguous_strides(x.shape)))
    dx = np.full(x.shape, np.nan, np.float32)
    _launch(tk, [g_rows, w_cols], [dx])
    np.testing.assert_allclose(dx, want_dx, rtol=RTOL, atol=ATOL)


def test_a_split_weight_gradient_adds_its_parts_into_zeroed_memory(monkeypatch):
    """The weight gradient's long sum split over programs (as on a GPU for a real batch): each
    part is added atomically, into an output the launch zeroes first."""
    from kiln.codegen import conv_triton
    monkeypatch.setattr(conv_triton, "MIN_SPLIT_ROWS", 16)
    g, x, weight, bias, grad = _case((4, 2, 9, 9, 3, 3, 3, (1, 1), (1, 1), (1, 1)), seed=2)
    _, want_dw, _ = _torch_reference(g, x, weight, bias, grad)
    tk = render_conv_kernel("weight_grad", g, dt.float32,
                            _strides(x.shape, grad.shape, weight.shape))
    assert tk.zero_outputs and tk.constexprs["SPLITS"] > 2 and tk.grid[2] == \
        tk.constexprs["SPLITS"]
    assert tk.constexprs["SPLITS"] * tk.constexprs["SPLIT_ROWS"] >= grad.size // grad.shape[1]
    dw = np.full(weight.shape, np.nan, np.float32)
    _launch(tk, [x, grad], [dw])
    np.testing.assert_allclose(dw, want_dw, rtol=RTOL, atol=ATOL)


def test_float16_kernels_accumulate_in_float32():
    """float16 in and out, float32 sums: each result within float16's rounding of float64's."""
    g, x, weight, bias, grad = _case(SHAPES[1], seed=3)
    x, weight, bias, grad = (a.astype(np.float16) for a in (x, weight, bias, grad))
    want_out, want_dw, want_dx = _torch_reference(g, x, weight, bias, grad)
    cases = [("forward", [x, weight, bias], want_out, (x.shape, weight.shape, grad.shape)),
             ("weight_grad", [x, grad], want_dw, (x.shape, grad.shape, weight.shape)),
             ("input_grad", [grad, weight], want_dx, (grad.shape, weight.shape, x.shape))]
    for kind, ins, want, shapes in cases:
        tk = render_conv_kernel(kind, g, dt.float16, _strides(*shapes), bias=kind == "forward")
        got = np.full(want.shape, np.nan, np.float16)
        _launch(tk, ins, [got])
        # float16 keeps 11 bits: 2^-10 of the largest value, with room for the final rounding
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-3 * np.abs(want).max(),
                                   err_msg=kind)


def test_geometry_output_size_is_torchs():
    for shape in SHAPES:
        g, x, weight, bias, grad = _case(shape)
        out = torch.nn.functional.conv2d(torch.tensor(x), torch.tensor(weight), None, g.stride,
                                         g.padding, g.dilation)
        assert g.out_size == tuple(out.shape[2:])


def test_unsupported_dtypes_and_kinds_are_refused_with_what_to_do():
    g = ConvGeometry(1, 1, 4, 4, 1, 3, 3)
    strides = _strides((1, 1, 4, 4), (1, 1, 3, 3), (1, 1, 2, 2))
    with pytest.raises(ValueError, match="float64 is not supported"):
        render_conv_kernel("forward", g, dt.float64, strides)
    with pytest.raises(ValueError, match="unknown convolution kernel kind 'backward'"):
        kernel_source("backward")
    with pytest.raises(ValueError, match=r"blocks \(8, 16, 16\) must be powers of 2, 16 or"):
        render_conv_kernel("forward", g, dt.float32, strides, blocks=(8, 16, 16))


@pytest.mark.parametrize("kind", ["forward", "weight_grad", "input_grad"])
def test_each_kernel_builds_ahead_of_time_for_sm90(kind, tmp_path):
    """The CNN's second convolution (32 -> 64 channels, 3x3, on 26x26, batch 64), as on a GPU;
    the forward also with its bias and ReLU epilogue, and in float16."""
    g = ConvGeometry(64, 32, 26, 26, 64, 3, 3)
    x, w, y = (64, 32, 26, 26), (64, 32, 3, 3), (64, 64) + g.out_size
    strides = {"forward": _strides(x, w, y), "weight_grad": _strides(x, y, w),
               "input_grad": _strides(y, w, x)}[kind]
    variants = [dict()] if kind != "forward" else [dict(bias=True, relu=True), dict()]
    cache = KernelCache(tmp_path)
    for options in variants:
        for dtype in (dt.float32, dt.float16) if options else (dt.float32,):
            tk = render_conv_kernel(kind, g, dtype, strides, **options)
            build = build_one_for_gpu(tk, 90, cache)
            assert build.cubin and f".entry {tk.name}" in build.ptx, tk.name
            if kind == "weight_grad":       # batch 64: the sum is split, parts added atomically
                assert tk.constexprs["SPLITS"] > 1 and "atom.global" in build.ptx
            # the products run on tensor cores (Hopper's wgmma or mma), not as scalar FMAs
            assert "wgmma" in build.ptx or "mma.sync" in build.ptx
    # the largest tiles a GPU run measures (`kiln.runtime.conv_gpu`) build too
    largest = max(BLOCK_CANDIDATES[kind], key=lambda b: b[0] * b[1] * b[2])
    tk = render_conv_kernel(kind, g, dt.float32, strides, blocks=largest)
    assert build_one_for_gpu(tk, 90, cache).cubin
