"""A distribution's argument and sample checks (`validate_args`) hold on every compiled replay
as they do eagerly: check nodes in the graph, kept though nothing reads them, not a graph
break (which would run a policy's update eagerly) and not a check skipped (a compiled
log_prob of an action outside the support returned a number). Valid calls give PyTorch's
values and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln

RNG = np.random.default_rng(11)


def _error(fn, *args):
    try:
        fn(*args)
    except ValueError as e:
        return str(e).split(" (at ")[0]
    return None


def _gaussian_policy(lib):
    def log_prob(mu, log_std, action):
        dist = lib.distributions.Normal(mu, log_std.exp())
        return dist.log_prob(action).sum(-1).mean()
    return log_prob


@pytest.fixture
def torch_validating():
    before = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(before)


def test_normal_policy_compiles_whole_and_checks_its_scale(torch_validating):
    mu = RNG.standard_normal((4, 3)).astype(np.float32)
    log_std = RNG.uniform(-1, 0.5, 3).astype(np.float32)
    action = RNG.standard_normal((4, 3)).astype(np.float32)
    f = _gaussian_policy(kiln)
    cf = kiln.compile(f, fullgraph=True)                # a graph break would raise
    km = kiln.tensor(mu, requires_grad=True)
    ks = kiln.tensor(log_std, requires_grad=True)
    cf(km, ks, kiln.tensor(action))
    loss = cf(km, ks, kiln.tensor(action))              # replayed
    loss.backward()
    tm = torch.tensor(mu, requires_grad=True)
    ts = torch.tensor(log_std, requires_grad=True)
    ref = _gaussian_policy(torch)(tm, ts, torch.tensor(action))
    ref.backward()
    np.testing.assert_allclose(loss.item(), ref.item(), rtol=1e-5)
    np.testing.assert_allclose(km.grad.numpy(), tm.grad.numpy(), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ks.grad.numpy(), ts.grad.numpy(), rtol=1e-5, atol=1e-7)

    bad = log_std.copy()
    bad[1] = -np.inf                                    # scale exp(-inf) = 0: not positive
    args = (kiln.tensor(mu), kiln.tensor(bad), kiln.tensor(action))
    eager = _error(f, *args)
    assert eager is not None and eager.startswith("Expected parameter scale")
    with pytest.raises(ValueError, match="Expected parameter scale"):
        _gaussian_policy(torch)(*(torch.tensor(a) for a in (mu, bad, action)))
    cf(kiln.tensor(mu), kiln.tensor(log_std), kiln.tensor(action))   # the no-grad key traced
    compiled = _error(cf, *args)
    assert compiled is not None and compiled.startswith("Normal: Expected parameter scale")
    assert "but found invalid values" in compiled
    assert all(e.program is not None for e in cf.entries.values())


def test_categorical_log_prob_checks_actions_on_replays(torch_validating):
    logits = RNG.standard_normal((5, 4)).astype(np.float32)

    def f(lib):
        return lambda logits, actions: lib.distributions.Categorical(
            logits=logits).log_prob(actions).sum()

    cf = kiln.compile(f(kiln), fullgraph=True)
    good = np.array([0, 3, 1, 2, 3])
    for _ in range(2):
        got = cf(kiln.tensor(logits), kiln.tensor(good))
    want = f(torch)(torch.tensor(logits), torch.tensor(good))
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-6)

    bad = good.copy()
    bad[2] = 4                                          # 4 classes: 0..3
    with pytest.raises(ValueError, match="to be within the support"):
        f(torch)(torch.tensor(logits), torch.tensor(bad))
    eager = _error(f(kiln), kiln.tensor(logits), kiln.tensor(bad))
    compiled = _error(cf, kiln.tensor(logits), kiln.tensor(bad))
    assert eager is not None and "to be within the support" in eager
    assert compiled is not None and compiled.startswith("Categorical: Expected value argument")
    assert len(cf.entries) == 1


@pytest.mark.parametrize("case", ["bernoulli_value", "uniform_bounds", "beta_concentration"])
def test_other_checks_raise_compiled_as_eagerly(case, torch_validating):
    def f(lib):
        D = lib.distributions
        if case == "bernoulli_value":
            return lambda p, v: D.Bernoulli(probs=p).log_prob(v).sum()
        if case == "uniform_bounds":
            return lambda lo, hi: D.Uniform(lo, hi).log_prob((lo + hi) / 2).sum()
        return lambda a, b: D.Beta(a, b).log_prob(lib.full_like(a, 0.5)).sum()

    good = {"bernoulli_value": ([0.2, 0.7, 0.5], [0.0, 1.0, 1.0]),
            "uniform_bounds": ([0.0, -1.0, 2.0], [1.0, 0.5, 3.0]),
            "beta_concentration": ([0.5, 2.0, 1.0], [1.5, 0.3, 2.0])}[case]
    bad = {"bernoulli_value": ([0.2, 0.7, 0.5], [0.0, 2.0, 1.0]),
           "uniform_bounds": ([0.0, 1.0, 2.0], [1.0, 0.5, 3.0]),
           "beta_concentration": ([0.5, -2.0, 1.0], [1.5, 0.3, 2.0])}[case]
    cf = kiln.compile(f(kiln), fullgraph=True)
    for _ in range(2):
        got = cf(*(kiln.tensor(a) for a in good))
    want = f(torch)(*(torch.tensor(a) for a in good))
    np.testing.assert_allclose(got.item(), want.item(), rtol=1e-5)
    with pytest.raises(ValueError):
        f(torch)(*(torch.tensor(a) for a in bad))
    assert _error(f(kiln), *(kiln.tensor(a) for a in bad)) is not None
    assert _error(cf, *(kiln.tensor(a) for a in bad)) is not None
    # validate_args=False: neither checks
    off = kiln.compile(lambda p, v: kiln.distributions.Bernoulli(
        probs=p, validate_args=False).log_prob(v).sum())
    v = kiln.tensor([0.0, 2.0, 1.0])
    np.testing.assert_allclose(off(kiln.tensor([0.2, 0.7, 0.5]), v).item(),
                               kiln.distributions.Bernoulli(probs=kiln.tensor([0.2, 0.7, 0.5]),
                                                            validate_args=False)
                               .log_prob(v).sum().item(), rtol=1e-6)
