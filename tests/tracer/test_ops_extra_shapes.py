"""The shape-generic ops of `functional_extra` against PyTorch over hypothesis shapes: 0-d,
size-0 and size-1 dims, broadcasting, negative dims; values and float64 gradients.

Values are distinct (a permutation), so sort-based gradients are well defined.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kiln
from tests.parity import check_op
from tests.strategies import broadcastable, dim_of, seeds, shapes

EXAMPLES = settings(max_examples=15, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow])


def distinct(shape, seed):
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape))
    return (rng.permutation(n).reshape(shape).astype(np.float64) - n / 2) * 0.31


def smooth(shape, seed, low=-2.0, high=2.0):
    return np.random.default_rng(seed).uniform(low, high, size=shape)


@EXAMPLES
@given(st.data(), shapes(), seeds)
def test_sort_family(data, shape, seed) -> None:
    d = data.draw(dim_of(shape))
    x = distinct(shape, seed)
    descending = data.draw(st.booleans())
    check_op(lambda t, a: tuple(t.sort(a, dim=d, descending=descending)), [x], dtype=np.float64)
    check_op(lambda t, a: t.argsort(a, dim=d, descending=descending), [x], dtype=np.float64)
    size = shape[d] if shape else 1
    k = data.draw(st.integers(0, size))
    check_op(lambda t, a: tuple(t.topk(a, k, dim=d, largest=descending)), [x],
             dtype=np.float64)
    if size:
        kth = data.draw(st.integers(1, size))
        keep = data.draw(st.booleans())
        check_op(lambda t, a: tuple(t.kthvalue(a, kth, d, keep)), [x], dtype=np.float64)
        check_op(lambda t, a: tuple(t.median(a, d, keep)), [x], dtype=np.float64)


@EXAMPLES
@given(st.data(), shapes(min_dims=1), seeds)
def test_cumulative_and_differences(data, shape, seed) -> None:
    d = data.draw(dim_of(shape))
    x = distinct(shape, seed)
    check_op(lambda t, a: tuple(t.cummax(a, d)) + tuple(t.cummin(a, d)), [x], dtype=np.float64)
    check_op(lambda t, a: t.logcumsumexp(a, d), [smooth(shape, seed)], dtype=np.float64)
    n = data.draw(st.integers(1, 3))
    check_op(lambda t, a: t.diff(a, n=n, dim=d), [smooth(shape, seed)], dtype=np.float64)


@EXAMPLES
@given(st.data(), shapes(min_dims=1, min_side=1), seeds)
def test_quantile(data, shape, seed) -> None:
    d = data.draw(dim_of(shape))
    q = data.draw(st.floats(0, 1))
    keep = data.draw(st.booleans())
    check_op(lambda t, a: t.quantile(a, q, dim=d, keepdim=keep), [distinct(shape, seed)],
             dtype=np.float64)


@EXAMPLES
@given(broadcastable(2), seeds)
def test_binary_elementwise(ss, seed) -> None:
    a, b = smooth(ss[0], seed), smooth(ss[1], seed + 1)
    check_op(lambda t, x, y: (t.atan2(x, y), t.logaddexp(x, y), t.copysign(x, y),
                              t.hypot(x, y), t.fmax(x, y)), [a, b], dtype=np.float64)
    check_op(lambda t, x, y: t.xlogy(x, y), [a, np.abs(b) + 0.1], dtype=np.float64)


@EXAMPLES
@given(shapes(), seeds)
def test_unary_elementwise(shape, seed) -> None:
    x = smooth(shape, seed)
    check_op(lambda t, a: (t.sinh(a), t.cosh(a), t.asinh(a), t.atan(a), t.sinc(a),
                           t.erfc(a), t.deg2rad(a)), [x], dtype=np.float64)
    u = smooth(shape, seed, -0.9, 0.9)
    check_op(lambda t, a: (t.asin(a), t.acos(a), t.atanh(a), t.erfinv(a)), [u],
             dtype=np.float64)
    p = smooth(shape, seed, 0.2, 3.0)
    check_op(lambda t, a: (t.lgamma(a), t.digamma(a), t.acosh(a + 1), t.i0(a)), [p],
             dtype=np.float64)


@EXAMPLES
@given(st.data(), shapes(min_dims=2), seeds)
def test_matrix_shape_helpers(data, shape, seed) -> None:
    x = smooth(shape, seed)
    k = data.draw(st.integers(-2, 5))
    check_op(lambda t, a: (t.rot90(a, k, (-2, -1)), t.ravel(a), t.atleast_3d(a)), [x],
             dtype=np.float64)
    off = data.draw(st.integers(-2, 2))
    check_op(lambda t, a: t.diag_embed(a, off), [x], dtype=np.float64)


@EXAMPLES
@given(st.data(), shapes(min_dims=1), seeds)
def test_scatters_and_windows(data, shape, seed) -> None:
    d = data.draw(dim_of(shape))
    x = smooth(shape, seed)
    n = shape[d]
    if n:
        i = data.draw(st.integers(-n, n - 1))
        src_shape = shape[:d % len(shape)] + shape[d % len(shape) + 1:]
        check_op(lambda t, a, s: t.select_scatter(a, s, d, i), [x, smooth(src_shape, seed + 1)],
                 dtype=np.float64)
        size = data.draw(st.integers(1, n))
        step = data.draw(st.integers(1, 3))
        check_op(lambda t, a: a.unfold(d, size, step), [x], dtype=np.float64)
        index = np.random.default_rng(seed).integers(0, n, size=shape)
        reduce = data.draw(st.sampled_from(["sum", "prod", "mean", "amax", "amin"]))
        include = data.draw(st.booleans())
        check_op(lambda t, a, s: t.scatter_reduce(a, d, t.tensor(index), s, reduce,
                                                  include_self=include),
                 [x, smooth(shape, seed + 2)], dtype=np.float64, grad=reduce in ("sum", "mean"))
    check_op(lambda t, a: tuple(t.aminmax(a, dim=d)) if n else t.ravel(a), [x], dtype=np.float64,
             grad=False)


@EXAMPLES
@given(st.data(), seeds)
def test_small_matrix_builders(data, seed) -> None:
    # sides >= 1: torch's own block_diag backward sends an empty block's neighbour the wrong
    # gradient (block_diag(zeros(0), b): b's gradient is taken from row 0, b sits in row 1)
    a = smooth(data.draw(shapes(min_dims=0, max_dims=2, min_side=1)), seed)
    b = smooth(data.draw(shapes(min_dims=0, max_dims=2, min_side=1)), seed + 1)
    check_op(lambda t, x, y: t.block_diag(x, y), [a, b], dtype=np.float64)
    v = smooth(data.draw(shapes(min_dims=1, max_dims=1)), seed + 2)
    w = smooth(data.draw(shapes(min_dims=1, max_dims=1)), seed + 3)
    check_op(lambda t, x, y: (t.cartesian_prod(x, y),) + t.meshgrid(x, y, indexing="xy"),
             [v, w], dtype=np.float64)
    m = smooth(data.draw(shapes(min_dims=1, max_dims=2)), seed + 4)
    k = smooth(data.draw(shapes(min_dims=1, max_dims=2)), seed + 5)
    check_op(lambda t, x, y: t.kron(x, y), [m, k], dtype=np.float64)
    s = np.sort(smooth(data.draw(shapes(min_dims=1, max_dims=1)), seed + 6))
    q = smooth(data.draw(shapes(min_dims=0, max_dims=2)), seed + 7)
    right = data.draw(st.booleans())
    check_op(lambda t, x, y: (t.searchsorted(x, y, right=right), t.bucketize(y, x, right=right)),
             [s, q], dtype=np.float64)


ZERO_D_INDEX_CALLS = [
    # transforms tutorial's one-hot target: torch.zeros(10).scatter_(0, torch.tensor(y), value=1)
    lambda lib, x: lib.zeros(5, dtype=lib.float64).scatter_(0, lib.tensor(3), value=1),
    lambda lib, x: x.scatter(0, lib.tensor(2), 7.0),
    lambda lib, x: x.scatter(0, lib.tensor(1), x[3] * 2),
    lambda lib, x: x.scatter_add(0, lib.tensor(4), x[0]),
    lambda lib, x: x[0].scatter(0, lib.tensor(0), x[1]),
    lambda lib, x: x[0].scatter(0, lib.tensor([0]), x[2:3]),
    lambda lib, x: lib.gather(x, 0, lib.tensor(2)),
    lambda lib, x: lib.gather(x[1], 0, lib.tensor([0])),
]


def test_zero_d_index_and_input_count_as_one_d_in_scatter_and_gather() -> None:
    for call in ZERO_D_INDEX_CALLS:
        check_op(call, [(5,)], dtype=np.float64)


def _scatter_extreme_grads(lib, reduce, include_self):
    """scatter_reduce of src into self where self's row 2 ties two of src's values there."""
    sign = 1.0 if reduce == "amax" else -1.0
    src = lib.tensor(sign * np.array([[1., 2.], [1., 5.], [3., 7.], [0.5, 2.], [3., 7.]]),
                     requires_grad=True)
    base = lib.tensor(sign * np.array([[3., 0.], [9., 9.], [1., 7.], [0., 0.]]),
                      requires_grad=True)
    index = lib.tensor([[0, 0], [0, 0], [2, 2], [2, 2], [2, 2]])
    out = base.scatter_reduce(0, index, src, reduce=reduce, include_self=include_self)
    weights = lib.tensor(np.arange(1.0, 9.0).reshape(4, 2))
    (out * weights).sum().backward()
    return out.detach().numpy(), src.grad.numpy(), base.grad.numpy()


@pytest.mark.parametrize("reduce", ["amax", "amin"])
def test_scatter_reduce_extreme_shares_a_tie_with_self_evenly(reduce) -> None:
    # self's 7 ties src rows 2 and 4 at column 1 of row 2: each of the three takes a third of
    # the gradient, as torch's even rule gives (kiln gave self half and each src a quarter)
    k, t = (_scatter_extreme_grads(lib, reduce, True) for lib in (kiln, torch))
    for kv, tv in zip(k, t):
        np.testing.assert_allclose(kv, tv, rtol=1e-12)
    assert k[2][2, 1] == k[1][2, 1] == k[1][4, 1] == pytest.approx(6.0 / 3)
    # without self, src's tied values share the whole gradient (torch counts an equal self
    # in the divisor though self takes none: 6/3 each, a third lost; kiln keeps the sum)
    out, src_grad, base_grad = _scatter_extreme_grads(kiln, reduce, False)
    assert src_grad[2, 1] == src_grad[4, 1] == pytest.approx(6.0 / 2)
    assert src_grad[0, 0] == src_grad[1, 0] == pytest.approx(1.0 / 2)
    assert base_grad[2, 1] == 0 and base_grad[0, 0] == 0


COPY_FORMS = [
    lambda lib, x: lib.alias_copy(x),
    lambda lib, x: lib.as_strided_copy(x, (2, 2), (1, 3), 1),
    lambda lib, x: lib.diagonal_copy(x, 1),
    lambda lib, x: lib.expand_copy(x[:, :1], (4, 3)),
    lambda lib, x: lib.narrow_copy(x, 1, 1, 2),
    lambda lib, x: x.narrow_copy(0, 1, 2),
    lambda lib, x: lib.permute_copy(x, (1, 0)),
    lambda lib, x: lib.select_copy(x, 1, -1),
    lambda lib, x: lib.slice_copy(x, 0, 1, None, 2),
    lambda lib, x: lib.split_copy(x, 3),
    lambda lib, x: lib.split_with_sizes_copy(x, [1, 3]),
    lambda lib, x: lib.squeeze_copy(x[:1], 0),
    lambda lib, x: lib.t_copy(x),
    lambda lib, x: lib.transpose_copy(x, 0, 1),
    lambda lib, x: lib.unbind_copy(x, 1),
    lambda lib, x: lib.unfold_copy(x, 0, 2, 1),
    lambda lib, x: lib.unsqueeze_copy(x, 1),
    lambda lib, x: lib.view_copy(x.t(), [-1]),
]


def test_copy_forms_match_the_views_and_own_their_memory() -> None:
    for form in COPY_FORMS:
        check_op(form, [(4, 3)], dtype=np.float64)
        x = kiln.arange(12.0).reshape(4, 3)
        for out in form(kiln, x) if isinstance(form(kiln, x), tuple) else [form(kiln, x)]:
            assert out.is_contiguous()
            out.fill_(-1.0)
        assert x.tolist() == kiln.arange(12.0).reshape(4, 3).tolist()


def test_as_strided_scatter() -> None:
    cases = [((1,), (), (), 0), ((3, 3), (2, 2), (1, 2), 1), ((16,), (2, 1, 1, 2), (1, 2, 4, 8), 0)]
    for shape, size, stride, offset in cases:
        # values only: torch's own gradient wrt input fails torch's gradcheck
        check_op(lambda t, a, s: t.as_strided_scatter(a, s, size, stride, offset),
                 [shape, size], dtype=np.float64, grad=False)
        a = kiln.randn(*shape, dtype=kiln.float64, requires_grad=True)
        s = kiln.randn(*size, dtype=kiln.float64, requires_grad=True)
        assert kiln.autograd.gradcheck(
            lambda x, y: kiln.as_strided_scatter(x, y, size, stride, offset), (a, s))


# each once gave a wrong result: a shape, a value or a gradient torch does not give
ONCE_WRONG = [
    lambda lib, x: lib.take_along_dim(x, lib.tensor([[0, 2], [15, 1]])),        # no dim: flat
    lambda lib, x: lib.take_along_dim(x, lib.tensor([[-1], [-3], [0], [3]]), 1),  # wraps
    lambda lib, x: lib.squeeze(x[:1, :1], ()),                                  # no dims
    lambda lib, x: lib.index_select(x, 1, lib.tensor(2)),                       # 0-d index
    lambda lib, x: lib.tensor_split(x, [3, 1], 1),                              # overlapping
    lambda lib, x: lib.index_fill(x, 1, lib.tensor([1, 1, 0]), x[0, 0] * 3),    # twice named
    lambda lib, x: lib.quantile(x, x[0].sigmoid(), dim=1, keepdim=True),        # q's gradient
    lambda lib, x: lib.nanquantile(lib.where(x > 1, float("nan"), x), 0.3, dim=0),
]


def test_once_wrong_index_results() -> None:
    for call in ONCE_WRONG:
        check_op(call, [(4, 4)], dtype=np.float64)


def test_take_along_dim_takes_indices_modulo_the_dim_as_torch() -> None:
    # along a dim, any index is taken modulo the dim's size (values and gradients); flattened,
    # indices outside [0, numel) are refused by both
    wrapped = [[5, -4, 1, -1], [100, -100, 7, 0], [3, 3, -3, 2], [0, 1, 2, 3]]
    check_op(lambda lib, x: lib.take_along_dim(x, lib.tensor(wrapped), 1), [(4, 3)],
             dtype=np.float64)
    check_op(lambda lib, x: lib.take_along_dim(x, lib.tensor([[-5, 9, 4]]), 0), [(4, 3)],
             dtype=np.float64)
    for lib in (torch, kiln):
        x = lib.arange(12.0).reshape(4, 3)
        with pytest.raises(RuntimeError, match="out of bounds"):
            lib.take_along_dim(x, lib.tensor([12]))
        with pytest.raises(RuntimeError, match="out of bounds"):
            lib.take_along_dim(x, lib.tensor([-1]))
        with pytest.raises(RuntimeError, match="Long"):
            lib.take_along_dim(x, lib.tensor([[1]], dtype=lib.int32), 1)
        with pytest.raises(RuntimeError, match="ZeroDivisionError"):     # an empty dim
            lib.take_along_dim(lib.zeros(2, 0), lib.zeros(2, 1, dtype=lib.int64), 1)
        assert lib.take_along_dim(lib.zeros(2, 0), lib.zeros(2, 0, dtype=lib.int64),
                                  1).shape == (2, 0)


def test_segment_reduce() -> None:
    lengths = [[2, 0, 3, 0], [0, 1, 2, 2], [5, 0, 0, 0]]
    offsets = np.concatenate([np.zeros((3, 1), np.int64), np.cumsum(lengths, 1)], 1)
    for reduce in ("sum", "mean", "max", "min", "prod"):
        for initial in (None, 1.5):
            check_op(lambda t, x: t.segment_reduce(x, reduce, lengths=t.tensor(lengths), axis=1,
                                                   initial=initial), [(3, 5, 2)],
                     dtype=np.float64)
            check_op(lambda t, x: t.segment_reduce(x, reduce, offsets=t.tensor(offsets), axis=1,
                                                   initial=initial), [(3, 5, 2)],
                     dtype=np.float64)
        # unsafe: the lengths need not cover the dim
        check_op(lambda t, x: t.segment_reduce(x, reduce, lengths=t.tensor([1, 2]), unsafe=True),
                 [(6,)], dtype=np.float64)


def test_chunk_cat() -> None:
    # values only: torch has no derivative for it
    check_op(lambda t, a, b: t._chunk_cat([a, b], 0, 2), [(3, 2), (1, 3)], dtype=np.float64,
             grad=False)
    check_op(lambda t, a, b: t._chunk_cat([a, b], -1, 3), [(2, 2, 5), (2, 2, 1)],
             dtype=np.float64, grad=False)
