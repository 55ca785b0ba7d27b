"""Checks a loss makes on its inputs' values (gaussian_nll_loss's `var >= 0`, binary_cross_entropy's
probabilities in [0, 1]) hold on every compiled replay as they do eagerly: a `check_values` node
in the graph, not a graph break (gaussian_nll_loss's step ran eagerly) or a check skipped (a
compiled binary_cross_entropy of an input outside [0, 1] returned a number). Valid inputs give
PyTorch's values and gradients."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln
import kiln.nn.functional as F

RNG = np.random.default_rng(7)
BACKENDS = ["c", "numpy", "triton"]


def _error(fn, *args):
    try:
        fn(*args)
    except (ValueError, RuntimeError) as e:
        return type(e), str(e).split(" (at ")[0]
    return None


@pytest.mark.parametrize("backend", BACKENDS)
def test_gaussian_nll_loss_compiles_whole_and_checks_the_variance_on_replays(backend):
    x, t = RNG.standard_normal((2, 8, 3)).astype(np.float32)
    var = RNG.uniform(0.1, 2.0, (8, 3)).astype(np.float32)

    def f(x, t, var):
        return F.gaussian_nll_loss(x, t, var, full=True)

    cf = kiln.compile(f, backend=backend, fullgraph=True)     # a graph break would raise
    kx = kiln.tensor(x, requires_grad=True)
    kv = kiln.tensor(var, requires_grad=True)
    cf(kx, kiln.tensor(t), kv)                                # traced
    loss = cf(kx, kiln.tensor(t), kv)                         # replayed
    loss.backward()
    tx = torch.tensor(x, requires_grad=True)
    tv = torch.tensor(var, requires_grad=True)
    ref = torch.nn.functional.gaussian_nll_loss(tx, torch.tensor(t), tv, full=True)
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(kx.grad.numpy(), tx.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(kv.grad.numpy(), tv.grad.numpy(), rtol=1e-5, atol=1e-7)

    bad = var.copy()
    bad[3, 1] = -0.5
    args = (kiln.tensor(x), kiln.tensor(t), kiln.tensor(bad))
    eager = _error(f, *args)
    assert eager == (ValueError, "gaussian_nll_loss: var has negative entry/entries")
    cf(*args[:2], kiln.tensor(var))                           # this key traced, then:
    assert _error(cf, *args) == eager                          # a replay raises it too
    # two keys (with and without grad), both compiled: the key that raised still replays
    assert len(cf.entries) == 2 and all(e.program is not None for e in cf.entries.values())
    np.testing.assert_allclose(cf(*args[:2], kiln.tensor(var)).item(),
                               f(*args[:2], kiln.tensor(var)).item(), rtol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_binary_cross_entropy_checks_its_probabilities_on_replays(backend):
    p = RNG.uniform(0.05, 0.95, 10).astype(np.float32)
    y = (RNG.uniform(size=10) > 0.5).astype(np.float32)
    kp = kiln.tensor(p, requires_grad=True)
    cf = kiln.compile(lambda p, y: F.binary_cross_entropy(p, y), backend=backend,
                      fullgraph=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        cf(kp, kiln.tensor(y))
        loss = cf(kp, kiln.tensor(y))
    loss.backward()
    tp = torch.tensor(p, requires_grad=True)
    ref = torch.nn.functional.binary_cross_entropy(tp, torch.tensor(y))
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-6)
    np.testing.assert_allclose(kp.grad.numpy(), tp.grad.numpy(), rtol=1e-5)

    above, nan = p.copy(), p.copy()
    above[4] = 1.25
    nan[7] = np.nan
    for probs, targets, name, value in [(above, y, "input", "1.25"), (nan, y, "input", "nan"),
                                        (p, 2 * y + 0.5, "target", "")]:
        args = (kiln.tensor(probs), kiln.tensor(targets))
        eager = _error(lambda a, b: F.binary_cross_entropy(a, b), *args)
        compiled = _error(cf, *args)                         # replays: the key is the same
        assert eager is not None and eager[0] is RuntimeError
        assert f"all elements of {name} should be between 0 and 1" in eager[1]
        assert compiled is not None and compiled[0] is RuntimeError, compiled
        assert f"binary_cross_entropy: all elements of {name} should be between 0 and 1; " \
            f"got {value}" in compiled[1], compiled
        with pytest.raises(RuntimeError, match=f"all elements of {name}"):
            torch.nn.functional.binary_cross_entropy(torch.tensor(probs), torch.tensor(targets))
    assert len(cf.entries) == 1 and next(iter(cf.entries.values())).program is not None


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_check_whose_output_nothing_reads_still_runs_on_replays(backend):
    def f(x):
        kiln.ops.check_values(x, x > 0, "f", "needs positive values, got {}")
        return x * 2

    cf = kiln.compile(f, backend=backend, fullgraph=True)
    for _ in range(2):
        np.testing.assert_array_equal(cf(kiln.ones(3)).numpy(), [2.0, 2.0, 2.0])
    bad = kiln.tensor([1.0, -3.0, 2.0])
    assert _error(f, bad) == (ValueError, "f: needs positive values, got -3.0")
    assert _error(cf, bad) == _error(f, bad)


def test_ctc_target_lengths_sum_is_checked_on_replays():
    log_probs = torch.randn(6, 2, 5).log_softmax(2).numpy()

    def f(lp, targets, tgt_lengths):
        return F.ctc_loss(lp, targets, kiln.tensor([6, 6]), tgt_lengths)

    cf = kiln.compile(f, fullgraph=True)
    args = (kiln.tensor(log_probs), kiln.tensor([1, 2, 3]))
    for _ in range(2):
        got = cf(*args, kiln.tensor([1, 2]))
    want = torch.nn.functional.ctc_loss(torch.tensor(log_probs), torch.tensor([1, 2, 3]),
                                        torch.tensor([6, 6]), torch.tensor([1, 2]))
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
    eager = _error(f, *args, kiln.tensor([1, 1]))
    assert eager == (RuntimeError, "ctc_loss: target_lengths sum to 2, but the concatenated "
                     "targets hold 3 labels (shape [3])")
    assert _error(cf, *args, kiln.tensor([1, 1])) == eager
