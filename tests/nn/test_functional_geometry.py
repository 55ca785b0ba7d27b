"""Convolution and pooling over hypothesis-drawn geometries (kernel, stride, padding, dilation,
groups, ceil_mode), against PyTorch's functional ops."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from tests.parity import check_op

SETTINGS = settings(max_examples=25, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])


@st.composite
def conv_geometry(draw):
    groups = draw(st.sampled_from([1, 1, 2]))
    cin = groups * draw(st.integers(1, 2))
    cout = groups * draw(st.integers(1, 2))
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    dilation = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    padding = (draw(st.integers(0, 2)), draw(st.integers(0, 2)))
    span = [d * (kk - 1) + 1 for d, kk in zip(dilation, k)]
    h = draw(st.integers(max(1, span[0] - 2 * padding[0]), 9))
    w = draw(st.integers(max(1, span[1] - 2 * padding[1]), 9))
    n = draw(st.integers(1, 2))
    return n, cin, cout, h, w, k, stride, padding, dilation, groups


@SETTINGS
@given(conv_geometry(), st.booleans())
def test_conv2d_any_geometry(geometry, bias):
    n, cin, cout, h, w, k, stride, padding, dilation, groups = geometry
    shapes = [(n, cin, h, w), (cout, cin // groups) + k] + ([(cout,)] if bias else [])
    check_op(lambda lib, x, wt, *b: lib.nn.functional.conv2d(
        x, wt, *b, stride=stride, padding=padding, dilation=dilation, groups=groups),
        shapes, dtype=np.float64)


@SETTINGS
@given(conv_geometry(), st.data())
def test_conv_transpose2d_any_geometry(geometry, data):
    n, cin, cout, h, w, k, stride, padding, dilation, groups = geometry
    # PyTorch needs output_padding < stride or dilation, and a positive output size
    output_padding = tuple(data.draw(st.integers(0, max(s, d) - 1))
                           for s, d in zip(stride, dilation))
    padding = tuple(min(p, d * (kk - 1)) for p, d, kk in zip(padding, dilation, k))
    for size, s, p, d, kk, op in zip((h, w), stride, padding, dilation, k, output_padding):
        assume((size - 1) * s - 2 * p + d * (kk - 1) + op + 1 > 0)
    check_op(lambda lib, x, wt: lib.nn.functional.conv_transpose2d(
        x, wt, stride=stride, padding=padding, output_padding=output_padding, groups=groups,
        dilation=dilation), [(n, cin, h, w), (cin, cout // groups) + k], dtype=np.float64)


@st.composite
def pool_geometry(draw):
    k = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    stride = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    padding = tuple(draw(st.integers(0, kk // 2)) for kk in k)
    h, w = draw(st.integers(k[0], 9)), draw(st.integers(k[1], 9))
    return (2, 2, h, w), k, stride, padding, draw(st.booleans())


@SETTINGS
@given(pool_geometry(), st.integers(1, 2))
def test_max_pool2d_any_geometry(geometry, dilation):
    shape, k, stride, padding, ceil_mode = geometry
    if dilation * (max(k) - 1) + 1 > min(shape[2:]) + 2 * min(padding):
        dilation = 1
    check_op(lambda lib, x: lib.nn.functional.max_pool2d(
        x, k, stride, padding, dilation=dilation, ceil_mode=ceil_mode), [shape],
        dtype=np.float64)


@SETTINGS
@given(pool_geometry(), st.booleans())
def test_avg_pool2d_any_geometry(geometry, count_include_pad):
    shape, k, stride, padding, ceil_mode = geometry
    check_op(lambda lib, x: lib.nn.functional.avg_pool2d(
        x, k, stride, padding, ceil_mode=ceil_mode, count_include_pad=count_include_pad),
        [shape], dtype=np.float64)


@SETTINGS
@given(st.integers(1, 9), st.integers(1, 9), st.integers(1, 5), st.integers(1, 5))
def test_adaptive_avg_pool2d_any_size(h, w, oh, ow):
    check_op(lambda lib, x: lib.nn.functional.adaptive_avg_pool2d(x, (oh, ow)),
             [(2, 3, h, w)], dtype=np.float64)
