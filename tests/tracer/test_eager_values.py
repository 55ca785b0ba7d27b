"""Eager mode gives PyTorch's values or PyTorch's refusal, never a silent wrong value: float16
reductions accumulate in float32, out-of-range indices and classes raise instead of wrapping,
binary_cross_entropy checks its ranges, integer division by zero raises."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import kiln
import kiln.nn as nn
import kiln.nn.functional as KF
from tests.parity import assert_close

# float16 keeps 11 significant bits; results computed in float32 and rounded once agree with
# PyTorch's to about one half ulp, plus the ulp a differently ordered float32 sum may flip
F16_TOL = dict(atol=1e-3, rtol=2e-3)

NEAR_100 = np.random.default_rng(0).normal(100.0, 1.0, 4096).astype(np.float16)
TWOS = np.full(70_000, 2.0, np.float16)
TENTHS = np.full(70_000, 0.1, np.float16)


def _both(fn, *arrays):
    """fn(lib, *tensors) run by torch and by kiln on the same data."""
    t = fn(torch, *[torch.from_numpy(a.copy()) for a in arrays])
    k = fn(kiln, *[kiln.tensor(a.copy()) for a in arrays])
    return k, t


REDUCTIONS = {
    "mean": lambda L, x: L.mean(x),
    "mean_dim": lambda L, x: x.reshape(64, -1).mean(1),
    "nanmean": lambda L, x: L.nanmean(L.where(L.arange(x.numel()) % 3 == 0, float("nan"), x)),
    "var": lambda L, x: L.var(x),
    "var_dim": lambda L, x: x.reshape(64, -1).var(0),
    "std": lambda L, x: L.std(x),
    "std_mean": lambda L, x: L.std_mean(x),
    "norm": lambda L, x: L.norm(x),
    "norm_p1_dim": lambda L, x: L.norm(x.reshape(64, -1), 1, 1),
    "sum_tenths": lambda L, x: (x / 1000).sum(),
    "logsumexp": lambda L, x: L.logsumexp(x, 0),
    "softmax": lambda L, x: L.softmax(x, 0),
    "softmax_rows": lambda L, x: L.softmax(x.reshape(4, -1), 1),
    "log_softmax_rows": lambda L, x: L.log_softmax(x.reshape(4, -1), -1),
    "cumsum": lambda L, x: L.cumsum(x / 1000, 0),
    "prod": lambda L, x: L.prod((x / 100)[:64]),
}


# A few of PyTorch's CPU half reductions accumulate in half: logsumexp and log_softmax sum
# exp() in half (over 65,536 equal values the sum overflows and they give inf / -inf where the
# answer, 2 + log 65536 = 13.09, is well inside half's range), prod multiplies in half (64
# factors near 1: 1.0371 where the product is 1.0416), nanmean divides a half nansum (inf for
# 4096 values near 100). There the reference is PyTorch's float32 result, rounded to half.
TORCH_HALF_ACCUMULATES = {"logsumexp", "log_softmax_rows", "prod", "nanmean"}


@pytest.mark.parametrize("data", ["near_100", "twos"])
@pytest.mark.parametrize("name", sorted(REDUCTIONS))
def test_float16_reductions_accumulate_in_float32(name, data):
    x = NEAR_100 if data == "near_100" else TWOS[:4096 * 16]
    k, t = _both(REDUCTIONS[name], x)
    if name in TORCH_HALF_ACCUMULATES:
        t = REDUCTIONS[name](torch, torch.from_numpy(x).float()).half()
    for kk, tt in zip(k if isinstance(k, tuple) else (k,), t if isinstance(t, tuple) else (t,)):
        assert np.isfinite(kk.numpy()).all(), f"{name}: float16 overflow in kiln"
        assert_close(kk, tt, what=name, **F16_TOL)


def test_float16_mean_of_70000_twos_and_tenths():
    # the brief's examples: a half sum overflows (twos) or stalls at 256 (tenths)
    for data, want in ((TWOS, 2.0), (TENTHS, 0.1)):
        k, t = _both(lambda L, x: (L.mean(x), L.std(x), L.cumsum(x, 0)[-1]), data)
        assert_close(k[0], t[0], **F16_TOL)
        assert float(k[0]) == pytest.approx(want, rel=1e-3)
        assert float(k[1]) == float(t[1]) == 0.0
        # PyTorch's half cumsum rounds its float total once per step; kiln rounds it once
        assert float(k[2]) == pytest.approx(float(t[2]), rel=2e-3)


def test_float16_log_softmax_of_a_long_row_is_its_float32_value_rounded():
    # PyTorch's own half log_softmax gives -inf over 70,000 equal values (log(70000) is about
    # 11.16, well inside half's range); kiln gives the float32 answer rounded, as it should be
    k = kiln.log_softmax(kiln.tensor(TWOS), 0)
    want = torch.log_softmax(torch.from_numpy(TWOS).float(), 0).half()
    assert_close(k, want, **F16_TOL)


@pytest.mark.parametrize("layer", ["layer_norm", "group_norm", "batch_norm_train",
                                   "batch_norm_eval", "rms_norm"])
def test_float16_normalizations_compute_statistics_in_float32(layer):
    x = NEAR_100.reshape(8, 8, 64)

    def run(L, x):
        F = TF if L is torch else KF
        if layer == "layer_norm":
            return F.layer_norm(x, (64,))
        if layer == "rms_norm":
            return F.rms_norm(x / 4, (64,))
        if layer == "group_norm":
            return F.group_norm(x, 2)
        mean = L.zeros(8, dtype=x.dtype)
        var = L.ones(8, dtype=x.dtype)
        if layer == "batch_norm_train":
            out = F.batch_norm(x, mean, var, training=True)
            return out, mean, var
        return F.batch_norm(x, mean + 100, var, training=False)

    k, t = _both(run, x)
    if layer == "batch_norm_train":
        # PyTorch's CPU half batch norm rounds the batch mean to half before centering (an
        # input equal to that rounded mean normalizes to exactly 0): the reference is its
        # float32 result, rounded to half
        t = tuple(v.half() for v in run(torch, torch.from_numpy(x).float()))
    for kk, tt in zip(k if isinstance(k, tuple) else (k,), t if isinstance(t, tuple) else (t,)):
        # normalized values reach ~4: half spacing there is 2**-8
        assert_close(kk, tt, what=layer, atol=4e-3, rtol=4e-3)


def test_float16_reductions_trace_as_float32_reductions():
    # the casts are in the graph, so every backend reduces in float32 without knowing why
    from kiln.compiler import trace

    x = kiln.tensor(NEAR_100.reshape(8, 512))
    graph = trace(lambda x: (x.mean(), x.var(1), kiln.softmax(x, -1), x.cumsum(0),
                             KF.layer_norm(x, (512,))), x).graphs[0]
    reductions = [n for n in graph.nodes if n.op in ("sum", "max", "cumsum")]
    assert len(reductions) >= 5
    assert all(n.out.dtype is kiln.float32 for n in reductions), str(graph)
    assert [v.dtype for v in graph.outputs] == [kiln.float16] * 5


@pytest.mark.parametrize("backend", ["c", "numpy", "triton"])
def test_float16_reductions_compiled_accumulate_in_float32(backend):
    def fn(x):
        return (x.mean(), x.var(1), kiln.softmax(x, -1), KF.layer_norm(x, (512,)))

    x = kiln.tensor(NEAR_100.reshape(8, 512))
    compiled = kiln.compile(fn, backend=backend)
    for _ in range(2):                  # the tracing call, then a replay of the kernels
        got = compiled(x)
        want = fn(x)
        t = torch.from_numpy(NEAR_100.reshape(8, 512))
        ref = (t.mean(), t.var(1), torch.softmax(t, -1), TF.layer_norm(t, (512,)))
        for g, w, r in zip(got, want, ref):
            assert g.dtype is kiln.float16
            assert np.isfinite(g.numpy()).all()
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=4e-3, rtol=4e-3)
            assert_close(g, r, atol=4e-3, rtol=4e-3)
    assert all(not (e.eager_reason or "") for e in compiled.entries.values())


# ----------------------------------------------------------------------------- what still works
# The refusals (tests/tracer/test_error_messages.py) must not catch what PyTorch accepts.

X = np.arange(12, dtype=np.float32).reshape(3, 4)

ACCEPTED = {
    # plain tensor indexing and take count negative indices from the end, as Python does
    "getitem_negative": lambda L, F, x: x[L.tensor([-1, 0, -3])],
    "getitem_negative_dim1": lambda L, F, x: x[:, L.tensor([[-1], [-4]])],
    "getitem_two_tensors": lambda L, F, x: x[L.tensor([-1, 1]), L.tensor([-2, 0])],
    "take_negative": lambda L, F, x: L.take(x, L.tensor([-1, -12, 5])),
    "index_fill_negative": lambda L, F, x: x.index_fill(1, L.tensor([-1]), -5.0),
    "gather_in_range": lambda L, F, x: L.gather(x, 1, L.tensor([[3, 0], [1, 1], [0, 2]])),
    "scatter_add_in_range": lambda L, F, x: L.zeros(3, 4).scatter_add(
        0, L.tensor([[2, 0, 1, 2]]), x[:1]),
    "embedding_padding_idx_negative": lambda L, F, x: F.embedding(
        L.tensor([[0, 2], [1, 2]]), x, padding_idx=-1),
    "index_select_last": lambda L, F, x: L.index_select(x, 0, L.tensor([2, 0])),
    "nll_loss_ignored_out_of_range": lambda L, F, x: F.nll_loss(
        L.log_softmax(x, 1), L.tensor([1, -100, 3])),
    "cross_entropy_ignore_index": lambda L, F, x: F.cross_entropy(
        x, L.tensor([-5, 2, 3]), ignore_index=-5),
    "cross_entropy_ignore_index_weight": lambda L, F, x: F.cross_entropy(
        x, L.tensor([7, 2, 3]), weight=L.arange(1.0, 5.0), ignore_index=7),
    "cross_entropy_smoothing_ignored": lambda L, F, x: F.cross_entropy(
        x, L.tensor([0, -100, 3]), label_smoothing=0.2),
    "one_hot": lambda L, F, x: F.one_hot(L.tensor([0, 2, 1]), 4),
    "one_hot_inferred": lambda L, F, x: F.one_hot(L.tensor([[0, 2], [1, 0]])),
    "bce_at_zero_and_one": lambda L, F, x: F.binary_cross_entropy(
        L.tensor([0.0, 1.0, 0.25]), L.tensor([0.0, 1.0, 1.0]), reduction="none"),
    "bce_with_logits_any_range": lambda L, F, x: F.binary_cross_entropy_with_logits(
        x, x / 11 - 0.5),
    "int_floor_divide_signs": lambda L, F, x: L.tensor([7, -7, 7, -7]) // L.tensor([2, 2, -2, -2]),
    "int_remainder_signs": lambda L, F, x: L.tensor([7, -7, 7, -7]) % L.tensor([3, 3, -3, -3]),
    "int_fmod_signs": lambda L, F, x: L.fmod(L.tensor([7, -7, 7, -7]), L.tensor([3, 3, -3, -3])),
    "int_div_trunc": lambda L, F, x: L.div(L.tensor([7, -7]), L.tensor([2, 2]),
                                           rounding_mode="trunc"),
    "int_true_div_by_zero": lambda L, F, x: L.tensor([1, -1, 0]) / L.tensor([0, 0, 0]),
    "float_floor_divide_by_zero": lambda L, F, x: L.tensor([1.0, -1.0]) // 0,
    "float_remainder_by_int_tensor_zero": lambda L, F, x: L.tensor([1.5]) % L.tensor([0]),
    "empty_int_floor_divide_by_zero": lambda L, F, x: L.zeros(0, dtype=L.int64) // 0,
    "where_uint8_condition": lambda L, F, x: L.where(L.tensor([1, 0, 2], dtype=L.uint8),
                                                     L.ones(3), L.zeros(3)),
}


@pytest.mark.filterwarnings("ignore")      # torch's deprecation warning for a uint8 condition
@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_what_pytorch_accepts_still_gives_its_values(name):
    fn = ACCEPTED[name]
    t = fn(torch, TF, torch.from_numpy(X.copy()))
    k = fn(kiln, KF, kiln.tensor(X.copy()))
    assert_close(k, t, atol=1e-6, rtol=1e-6, what=name)


def test_negative_index_no_longer_wraps_in_gather_and_embedding():
    # the brief's silent wrong value: gather / embedding at -1 returned the last row
    table = kiln.tensor(X)
    with pytest.raises(RuntimeError):
        kiln.gather(table, 0, kiln.tensor([[-1, 0, 0, 0]]))
    with pytest.raises(IndexError):
        KF.embedding(kiln.tensor([-1]), table)
    with pytest.raises(IndexError):
        nn.Embedding(3, 4)(kiln.tensor([[0, -1]]))


def test_bounds_checks_are_eager_only_and_compiled_code_still_runs():
    # a traced gather records no value-dependent check (the compiled kernels own theirs)
    def fn(x, idx):
        return kiln.gather(x, 1, idx) * 2

    x = kiln.tensor(X)
    idx = kiln.tensor([[3, 0], [1, 1], [0, 2]])
    compiled = kiln.compile(fn, backend="numpy", fullgraph=True)
    for _ in range(2):
        np.testing.assert_array_equal(compiled(x, idx).numpy(), fn(x, idx).numpy())


@pytest.mark.parametrize("args,dtype", [
    ((10,), "int64"), ((16, 0, -1), "uint8"), ((0, 300, 7), "uint8"), ((5, -7, -3), "int32"),
    ((0,), "int64"), ((0, 1, 0.1), "float32"), ((3, 11, 2), "float64"), ((-5, 3), "uint8"),
    ((2**31 - 3, 2**31 + 2), "int64")])
def test_arange_values_and_dtypes_match_torch(args, dtype):
    # integer ranges are made in their dtype where they fit, the rest made wide and cast
    # (uint8 from negative starts wraps, as torch's does)
    want = torch.arange(*args, dtype=getattr(torch, "int64" if dtype == "uint8" else dtype))
    if dtype == "uint8":
        want = want.to(torch.uint8)
    got = kiln.arange(*args, dtype=getattr(kiln, dtype))
    assert str(got.dtype) == f"kiln.{dtype}" and got.shape == tuple(want.shape)
    np.testing.assert_array_equal(got.numpy(), want.numpy())
