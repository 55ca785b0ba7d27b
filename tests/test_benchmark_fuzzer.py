"""kiln.utils.benchmark's Fuzzer and collect_callgrind against torch.utils.benchmark's.

The parameters are drawn from NumPy's legacy RandomState (a stream NumPy keeps fixed), in the
order torch draws them, so the same Fuzzer definition and seed give torch's parameters, sizes,
layouts and steps; the tensors are made by kiln.rand / kiln.randint after the same manual_seed,
which follow PyTorch's CPU streams, so their values are torch's too. torch 2.13 rejects every
normalized dict distribution (its check is inverted), so its op fuzzers are built here with
that check bypassed."""

import math
import shutil

import numpy as np
import pytest
import torch
from torch.utils import benchmark as tb

import kiln
from kiln.utils import benchmark as kb
from kiln.utils.benchmark import callgrind as kcallgrind
from kiln.utils.benchmark.op_fuzzers import (binary, sparse_binary, sparse_unary, spectral,
                                             unary)


def recipe_fuzzer(b, seed=0, probability_contiguous=0.6):
    """The fuzzer of the PyTorch Benchmark recipe, built from module `b`'s classes."""
    return b.Fuzzer(
        parameters=[b.FuzzedParameter("k0", minval=1, maxval=10000, distribution="loguniform"),
                    b.FuzzedParameter("k1", minval=1, maxval=10000, distribution="loguniform")],
        tensors=[b.FuzzedTensor("x", size=("k0", "k1"), min_elements=128,
                                max_elements=10000000,
                                probability_contiguous=probability_contiguous)],
        seed=seed)


@pytest.fixture
def torch_dict_distributions(monkeypatch):
    """torch 2.13's FuzzedParameter with its (inverted) dict check skipped."""
    monkeypatch.setattr(tb.FuzzedParameter, "_check_distribution", lambda self, d: d)


@pytest.mark.parametrize("minval,maxval,distribution", [
    (3, 9, "uniform"), (0.5, 2.5, "uniform"), (1, 10000, "loguniform"), (16, 2 ** 24,
                                                                           "loguniform")])
def test_parameter_draws_are_torchs_within_bounds(minval, maxval, distribution):
    k = kb.FuzzedParameter("p", minval, maxval, distribution=distribution)
    t = tb.FuzzedParameter("p", minval, maxval, distribution=distribution)
    ks, ts = np.random.RandomState(7), np.random.RandomState(7)
    draws = [k.sample(ks) for _ in range(4000)]
    assert draws == [t.sample(ts) for _ in range(4000)]
    assert all(minval <= d <= maxval for d in draws)
    if isinstance(minval, int):
        assert all(isinstance(d, int) for d in draws)
    if distribution == "loguniform":
        # uniform in log space: each half of [log minval, log maxval] holds about half
        middle = math.sqrt(minval * maxval)
        assert abs(np.mean([d < middle for d in draws]) - 0.5) < 0.05
    elif isinstance(minval, int):
        counts = np.bincount(draws, minlength=maxval + 1)[minval:]
        assert np.all(np.abs(counts / len(draws) - 1 / len(counts)) < 0.03)
    else:
        assert abs(np.mean(draws) - (minval + maxval) / 2) < 0.05


def test_dict_distribution_and_alias_frequencies():
    fuzzer = kb.Fuzzer(parameters=[
        kb.FuzzedParameter("a", minval=2, maxval=50, distribution="uniform"),
        kb.FuzzedParameter("b", distribution={kb.ParameterAlias("a"): 0.3, 1: 0.7}),
        kb.FuzzedParameter("c", distribution={"x": 0.25, "y": 0.75})], tensors=[], seed=3)
    params = [p for _, _, p in fuzzer.take(2000)]
    assert all(p["b"] in (p["a"], 1) for p in params)
    assert abs(np.mean([p["b"] == p["a"] for p in params]) - 0.3) < 0.04
    assert abs(np.mean([p["c"] == "x" for p in params]) - 0.25) < 0.04


def test_take_gives_torchs_params_properties_and_layouts():
    k_steps = list(recipe_fuzzer(kb).take(10))
    t_steps = list(recipe_fuzzer(tb).take(10))
    for (kt, kp_, kparams), (tt, tp_, tparams) in zip(k_steps, t_steps):
        assert kparams == tparams and kt.keys() == tt.keys() and kp_.keys() == tp_.keys()
        kx, tx, kprop, tprop = kt["x"], tt["x"], kp_["x"], tp_["x"]
        assert kprop.keys() == tprop.keys()
        for key in ("numel", "steps", "is_contiguous"):
            assert kprop[key] == tprop[key], key
        assert np.array_equal(kprop["order"], tprop["order"])
        assert kprop["dtype"] == str(kiln.float32)
        assert tuple(kx.shape) == tuple(tx.shape) == (kparams["k0"], kparams["k1"])
        assert kx.stride() == tx.stride() and kx.is_contiguous() == tx.is_contiguous()
        assert 128 <= kx.numel() <= 10000000 and kx.dtype == kiln.float32
        assert np.array_equal(kx.numpy(), tx.numpy())
    # one of these ten draws is laid out column-major, as in the recipe's table
    assert any(not p["x"]["is_contiguous"] for _, p, _ in k_steps)


def test_same_seed_same_draws_and_values():
    first, second = (list(recipe_fuzzer(kb, seed=5).take(3)) for _ in range(2))
    for (t1, p1, a1), (t2, p2, a2) in zip(first, second):
        assert a1 == a2 and p1["x"]["numel"] == p2["x"]["numel"]
        assert np.array_equal(t1["x"].numpy(), t2["x"].numpy())
    other = [p for _, _, p in recipe_fuzzer(kb, seed=6).take(3)]
    assert other != [a for _, _, a in first]


def test_sizes_steps_dims_and_element_bounds_follow_the_parameters():
    def make(b):
        return b.Fuzzer(
            parameters=[b.FuzzedParameter("n", minval=1, maxval=12, distribution="uniform"),
                        b.FuzzedParameter("m", minval=1, maxval=12, distribution="uniform"),
                        b.FuzzedParameter("s", minval=1, maxval=3, distribution="uniform"),
                        b.FuzzedParameter("d", minval=1, maxval=3, distribution="uniform")],
            tensors=[b.FuzzedTensor("x", size=("n", 4, "m"), steps=(1, "s", 1),
                                    min_elements=8, max_elements=200, dim_parameter="d",
                                    probability_contiguous=0.5, dtype=b_dtype(b))],
            constraints=[lambda p: p["n"] != 7], seed=11)

    def b_dtype(b):
        return kiln.float64 if b is kb else torch.float64

    k_fuzzer = make(kb)
    for (kt, kp, params), (tt, tp, _) in zip(k_fuzzer.take(60), make(tb).take(60)):
        x, d = kt["x"], params["d"]
        size = ((params["n"], 4, params["m"]) + (1, 1))[:d]
        assert tuple(x.shape) == size == tuple(tt["x"].shape) and params["n"] != 7
        assert 8 <= x.numel() <= 200 and x.stride() == tt["x"].stride()
        assert kp["x"]["steps"] == ((1, params["s"], 1) + (1, 1))[:d] == tp["x"]["steps"]
        assert x.dtype == kiln.float64
        if not kp["x"]["is_contiguous"]:
            # a non-contiguous tensor computes as its contiguous copy does, as in torch
            assert not x.is_contiguous()
            ref = torch.from_numpy(x.numpy().copy())
            assert np.allclose((x * 2 + 1).sum(0).numpy(), (ref * 2 + 1).sum(0).numpy())
            assert np.array_equal(x.contiguous().numpy(), x.numpy())
    assert 0 < k_fuzzer.rejection_rate < 1


def test_integer_tensors_hold_torchs_values_in_1_to_126():
    def make(b, dtype):
        return b.Fuzzer([b.FuzzedParameter("n", minval=50, maxval=300, distribution="uniform")],
                        [b.FuzzedTensor("x", size=("n", 3), dtype=dtype)], seed=2)
    for (kt, kp, _), (tt, tp, _) in zip(make(kb, kiln.int32).take(5),
                                        make(tb, torch.int32).take(5)):
        x = kt["x"].numpy()
        assert np.array_equal(x, tt["x"].numpy()) and x.min() >= 1 and x.max() <= 126
        assert kt["x"].dtype == kiln.int32 and kp["x"]["dtype"] == str(kiln.int32)


def test_contiguity_frequency_follows_probability_contiguous():
    fuzzer = kb.Fuzzer(
        parameters=[kb.FuzzedParameter("a", minval=2, maxval=6, distribution="uniform"),
                    kb.FuzzedParameter("b", minval=2, maxval=6, distribution="uniform")],
        tensors=[kb.FuzzedTensor("x", size=("a", "b", 3), probability_contiguous=0.3)],
        seed=1)
    flags = [p["x"]["is_contiguous"] for _, p, _ in fuzzer.take(600)]
    assert abs(np.mean(flags) - 0.3) < 0.07


def test_binary_op_fuzzer_gives_torchs_draws(torch_dict_distributions):
    k_steps = list(binary.BinaryOpFuzzer(seed=0).take(3))
    from torch.utils.benchmark.op_fuzzers import binary as torch_binary
    t_steps = list(torch_binary.BinaryOpFuzzer(seed=0).take(3))
    for (kt, kp, kparams), (tt, tp, tparams) in zip(k_steps, t_steps):
        assert kparams == tparams
        for name in ("x", "y"):
            assert tuple(kt[name].shape) == tuple(tt[name].shape)
            assert kt[name].stride() == tt[name].stride()
            assert kp[name]["is_contiguous"] == tp[name]["is_contiguous"]
            assert np.array_equal(kt[name].numpy(), tt[name].numpy())
        assert 4 * 1024 <= kt["x"].numel() <= 32 * 1024 ** 2
        for i in range(kparams["dim"]):
            assert kt["y"].shape[i] in (kt["x"].shape[i], 1)


def test_unary_and_spectral_fuzzers_draw_torchs_parameters(torch_dict_distributions):
    from torch.utils.benchmark.op_fuzzers import spectral as torch_spectral
    from torch.utils.benchmark.op_fuzzers import unary as torch_unary
    pairs = [(unary.UnaryOpFuzzer(seed=4), torch_unary.UnaryOpFuzzer(seed=4)),
             (spectral.SpectralOpFuzzer(seed=4), torch_spectral.SpectralOpFuzzer(seed=4))]
    for k, t in pairs:
        # parameters only: spectral tensors reach 256 MB, too large for a unit test
        ks, ts = np.random.RandomState(4), np.random.RandomState(4)
        for _ in range(20):
            params = k._generate(ks)
            assert params == t._generate(ts)
    assert spectral.REGULAR_SIZES == torch_spectral.REGULAR_SIZES
    ks = np.random.RandomState(0)
    for _ in range(20):
        params = pairs[1][0]._generate(ks)
        assert all(params[f"k{i}"] in spectral.REGULAR_SIZES for i in range(3))


@pytest.mark.filterwarnings("ignore:Sparse invariant checks")
def test_sparse_op_fuzzers_give_torchs_coo_tensors(torch_dict_distributions):
    """Shapes, sparse and dense dims, coalescing, indices and values are torch's; an
    uncoalesced tensor holds each index twice, ceil(sum(size) * density) of them."""
    from torch.utils.benchmark.op_fuzzers import sparse_binary as torch_sparse_binary
    from torch.utils.benchmark.op_fuzzers import sparse_unary as torch_sparse_unary
    pairs = [(sparse_unary.UnaryOpSparseFuzzer(seed=0),
              torch_sparse_unary.UnaryOpSparseFuzzer(seed=0)),
             (sparse_binary.BinaryOpSparseFuzzer(seed=1),
              torch_sparse_binary.BinaryOpSparseFuzzer(seed=1))]
    seen_coalesced = set()
    for k, t in pairs:
        for (kt, kp, kparams), (tt, tp, tparams) in zip(k.take(4), t.take(4)):
            assert kparams == tparams and kt.keys() == tt.keys()
            for name in kt:
                kx, tx, kprop = kt[name], tt[name], kp[name]
                assert kprop.keys() == tp[name].keys()
                for key in ("numel", "is_coalesced", "density", "sparsity", "sparse_dim",
                            "dense_dim", "is_hybrid"):
                    assert kprop[key] == tp[name][key], key
                assert tuple(kprop["shape"]) == tuple(tp[name]["shape"]) == tuple(kx.shape)
                assert np.array_equal(kx._indices().numpy(), tx._indices().numpy())
                # uniform draws are equal; the normal ones (uncoalesced) to float32 rounding
                np.testing.assert_allclose(kx._values().numpy(), tx._values().numpy(),
                                           rtol=1e-6, atol=1e-6)
                nnz = math.ceil(sum(kx.shape) * kparams["density"])
                if kprop["is_coalesced"]:
                    assert kx._indices().shape[1] <= nnz
                else:
                    assert kx._indices().shape[1] == 2 * nnz
                seen_coalesced.add(kprop["is_coalesced"])
    assert seen_coalesced == {True, False}


def test_bad_definitions_raise_naming_the_parameter():
    with pytest.raises(ValueError, match="'p'.*sum to 1"):
        kb.FuzzedParameter("p", distribution={1: 0.5, 2: 0.6})
    with pytest.raises(ValueError, match="'p'.*unknown distribution"):
        kb.FuzzedParameter("p", 1, 2, distribution="normal")
    with pytest.raises(ValueError, match="'p'.*minval <= maxval"):
        kb.FuzzedParameter("p", 5, 2, distribution="uniform")
    with pytest.raises(ValueError, match="both a parameter and a tensor"):
        kb.Fuzzer([kb.FuzzedParameter("x", 1, 2, distribution="uniform")],
                  [kb.FuzzedTensor("x", size=(2,))])
    cycle = kb.Fuzzer([kb.FuzzedParameter("a", distribution={kb.ParameterAlias("b"): 1.0}),
                       kb.FuzzedParameter("b", distribution={kb.ParameterAlias("a"): 1.0})],
                      [], seed=0)
    with pytest.raises(ValueError, match="cycle"):
        next(cycle.take(1))
    never = kb.Fuzzer([kb.FuzzedParameter("a", 1, 2, distribution="uniform")], [],
                      constraints=[lambda p: False], seed=0)
    with pytest.raises(ValueError, match="constraints"):
        next(never.take(1))


def test_function_counts_print_and_combine_as_torchs():
    data = [(5000, "Python/ceval.c:_PyEval_EvalFrameDefault"),
            (1200, "Objects/dictobject.c:lookdict_unicode"), (-40, "???:0x0000000000020d9e0"),
            (300, "x" * 150)] + [(i, f"f{i}") for i in range(1, 20)]
    for inclusive in (False, True):
        k = kb.FunctionCounts(tuple(kb.FunctionCount(c, f) for c, f in sorted(data,
                                                                               reverse=True)),
                              inclusive, _linewidth=80)
        t = tb.FunctionCounts(tuple(tb.FunctionCount(c, f) for c, f in sorted(data,
                                                                              reverse=True)),
                              inclusive, _linewidth=80)
        assert repr(k).splitlines()[1:] == repr(t).splitlines()[1:]
        assert k.sum() == t.sum() and len(k) == len(t) and tuple(k[0]) == tuple(t[0])
        assert [tuple(fc) for fc in k[2:5]] == [tuple(fc) for fc in t[2:5]]
        assert isinstance(k[2:5], kb.FunctionCounts) and not k[2:5].truncate_rows

        def rename(fn):
            return fn[:2]
        for kk, tt in ((k - k[:3], t - t[:3]), (k + k, t + t), (k * 0.5, t * 0.5),
                       (k.transform(rename), t.transform(rename)), (k.denoise(), t.denoise()),
                       (k.filter(lambda fn: "Py" in fn), t.filter(lambda fn: "Py" in fn))):
            assert [tuple(fc) for fc in kk] == [tuple(fc) for fc in tt]
    with pytest.raises(ValueError, match="inclusive and exclusive"):
        kb.FunctionCounts((), True) - kb.FunctionCounts((), False)


def test_collect_callgrind_without_valgrind_raises(monkeypatch):
    monkeypatch.setattr(kcallgrind.shutil, "which", lambda name: None)
    with pytest.raises(OSError, match="could not find `valgrind`"):
        kb.Timer("1 + 1").collect_callgrind(number=1)


@pytest.mark.skipif(shutil.which("valgrind") is None or shutil.which("callgrind_annotate")
                    is None, reason="valgrind (callgrind) is not installed")
def test_collect_callgrind_counts_instructions():
    """Two runs under callgrind (about 15 s each): repeats of one statement agree closely;
    a statement doing three adds costs clearly more than one doing one."""
    light = kb.Timer("x + x", setup="x = torch.randn(2, 2)")
    first, second = light.collect_callgrind(number=20, repeats=2)
    heavy = kb.Timer("x + x + x + x", setup="x = torch.randn(2, 2)").collect_callgrind(
        number=20, collect_baseline=False, retain_out_file=True)
    assert first.counts() > 0 and first.counts(denoise=True) <= first.counts()
    assert 0 < first.baseline_exclusive_stats.sum() < first.counts()
    assert heavy.baseline_exclusive_stats.sum() == 0
    assert heavy.counts() > 1.8 * first.counts()
    noise = abs(second.delta(first).sum())
    assert noise < 0.05 * first.counts() and noise < 0.05 * heavy.delta(first).sum()
    assert first.stats(inclusive=True)[0].count >= first.stats()[0].count
    text = repr(first)
    assert "x + x" in text and "Instructions:" in text and "20 runs per measurement" in text
    assert "Total:" in repr(first.stats()) and "setup:" in text
    standard = first.as_standardized().stats()
    assert standard.sum() == first.stats().sum()
    assert not any(fn.endswith("]") for _, fn in standard)
    assert heavy.stmt_callgrind_out.startswith("# callgrind format")
    assert first.stmt_callgrind_out is None
