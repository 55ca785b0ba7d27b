"""kiln.distributions against torch.distributions: log_prob, entropy, mean, variance, stddev,
cdf and KL values with float64 gradients in the parameters; shapes; argument validation; and
the moments of 20,000 seeded samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kiln
from tests.parity import check_op

R = np.random.default_rng(5)


def pos(*shape):
    return R.uniform(0.5, 2.5, size=shape)


def real(*shape):
    return R.uniform(-1.5, 1.5, size=shape)


def unit(*shape):
    return R.uniform(0.1, 0.9, size=shape)


def simplex(*shape):
    x = R.uniform(0.1, 1.0, size=shape)
    return x / x.sum(-1, keepdims=True)


def spd(lib, b):
    return b @ b.mT + 3 * lib.eye(b.shape[-1], dtype=b.dtype)


def summary(d, value, moments=True, entropy=True):
    out = [d.log_prob(value)]
    if entropy:
        out.append(d.entropy())
    if moments:
        out += [d.mean, d.variance, d.stddev]
    return tuple(out)


CASES = [
    ("Normal", lambda t, m, s, v: summary(t.distributions.Normal(m, s), v) + (
        t.distributions.Normal(m, s).cdf(v),), [real(3), pos(3), real(2, 3)]),
    ("Normal icdf", lambda t, m, s, u: t.distributions.Normal(m, s).icdf(u),
     [real(3), pos(3), unit(3)]),
    ("LogNormal", lambda t, m, s, v: summary(t.distributions.LogNormal(m, s), v),
     [real(3), pos(3), pos(3)]),
    ("Uniform", lambda t, lo, w, u: summary(t.distributions.Uniform(lo, lo + w), lo + w * u) + (
        t.distributions.Uniform(lo, lo + w).cdf(lo + w * u),), [real(4), pos(4), unit(4)]),
    ("Exponential", lambda t, r, v: summary(t.distributions.Exponential(r), v) + (
        t.distributions.Exponential(r).cdf(v),), [pos(4), pos(4)]),
    ("Laplace", lambda t, m, s, v: summary(t.distributions.Laplace(m, s), v) + (
        t.distributions.Laplace(m, s).cdf(v),), [real(4), pos(4), real(4)]),
    ("Gamma", lambda t, a, b, v: summary(t.distributions.Gamma(a, b), v), [pos(4), pos(4),
                                                                           pos(4)]),
    ("Beta", lambda t, a, b, v: summary(t.distributions.Beta(a, b), v), [pos(4), pos(4),
                                                                         unit(4)]),
    ("Dirichlet", lambda t, c, v: summary(t.distributions.Dirichlet(c), v), [pos(2, 3),
                                                                             simplex(2, 3)]),
    ("MultivariateNormal cov", lambda t, m, b, v: summary(
        t.distributions.MultivariateNormal(m, covariance_matrix=spd(t, b)), v),
     [real(2, 3), real(3, 3), real(4, 2, 3)]),
    ("MultivariateNormal scale_tril", lambda t, m, b, v: summary(
        t.distributions.MultivariateNormal(m, scale_tril=t.linalg.cholesky(spd(t, b))), v),
     [real(3), real(3, 3), real(3)]),
    ("MultivariateNormal precision", lambda t, m, b, v: summary(
        t.distributions.MultivariateNormal(m, precision_matrix=spd(t, b)), v),
     [real(3), real(3, 3), real(3)]),
    ("Bernoulli probs", lambda t, p, v: summary(t.distributions.Bernoulli(probs=p), v),
     [unit(4), np.array([0.0, 1.0, 1.0, 0.0])]),
    ("Bernoulli logits", lambda t, lg, v: summary(t.distributions.Bernoulli(logits=lg), v),
     [real(4), np.array([0.0, 1.0, 1.0, 0.0])]),
    ("Categorical probs", lambda t, p, v: summary(t.distributions.Categorical(probs=p), v,
                                                  moments=False),
     [simplex(2, 4), np.array([[3, 0], [1, 2]])]),
    ("Categorical logits", lambda t, lg, v: summary(t.distributions.Categorical(logits=lg), v,
                                                    moments=False) + (
        t.distributions.Categorical(logits=lg).probs,), [real(2, 4), np.array([3, 0])]),
    ("OneHotCategorical", lambda t, lg, v: summary(t.distributions.OneHotCategorical(logits=lg),
                                                   v), [real(2, 3), np.eye(3)[[2, 0]]]),
    ("Poisson", lambda t, r, v: summary(t.distributions.Poisson(r), v, entropy=False),
     [pos(4), np.array([0.0, 1.0, 3.0, 2.0])]),
    ("Binomial", lambda t, p, v: summary(t.distributions.Binomial(10, probs=p), v),
     [unit(3), np.array([0.0, 4.0, 10.0])]),
    ("Binomial logits", lambda t, lg, v: summary(t.distributions.Binomial(
        t.tensor([5.0, 7.0, 9.0], dtype=t.float64), logits=lg), v, entropy=False),
     [real(3), np.array([1.0, 7.0, 3.0])]),
    ("Independent", lambda t, m, s, v: summary(t.distributions.Independent(
        t.distributions.Normal(m, s), 1), v), [real(2, 3), pos(2, 3), real(2, 3)]),
    ("TransformedDistribution", lambda t, m, s, v: t.distributions.TransformedDistribution(
        t.distributions.Normal(m, s), [t.distributions.ExpTransform(),
                                       t.distributions.AffineTransform(1.0, 2.0)]).log_prob(v),
     [real(3), pos(3), pos(3) + 1.0]),
    ("TransformedDistribution sigmoid tanh", lambda t, m, s, v, w: (
        t.distributions.TransformedDistribution(t.distributions.Normal(m, s),
                                                t.distributions.SigmoidTransform()).log_prob(v),
        t.distributions.TransformedDistribution(t.distributions.Normal(m, s),
                                                t.distributions.TanhTransform()).log_prob(w)),
     [real(3), pos(3), unit(3), unit(3) - 0.5]),
    ("expand", lambda t, m, s, v: t.distributions.Normal(m, s).expand((2, 3)).log_prob(v),
     [real(3), pos(3), real(2, 3)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in CASES])
def test_distribution_matches_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.float64, atol=1e-9, rtol=1e-9)


KL_CASES = [
    ("Normal", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.Normal(a, b), t.distributions.Normal(c, d)),
     [real(3), pos(3), real(3), pos(3)]),
    ("LogNormal", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.LogNormal(a, b), t.distributions.LogNormal(c, d)),
     [real(3), pos(3), real(3), pos(3)]),
    ("Categorical", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.Categorical(logits=a), t.distributions.Categorical(probs=b)),
     [real(2, 4), simplex(2, 4)]),
    ("OneHotCategorical", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.OneHotCategorical(logits=a), t.distributions.OneHotCategorical(logits=b)),
     [real(2, 4), real(2, 4)]),
    ("Bernoulli", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.Bernoulli(probs=a), t.distributions.Bernoulli(logits=b)),
     [unit(4), real(4)]),
    ("MultivariateNormal", lambda t, m1, b1, m2, b2: t.distributions.kl_divergence(
        t.distributions.MultivariateNormal(m1, spd(t, b1)),
        t.distributions.MultivariateNormal(m2, scale_tril=t.linalg.cholesky(spd(t, b2)))),
     [real(2, 3), real(3, 3), real(3), real(2, 3, 3)]),
    ("Independent", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.Independent(t.distributions.Normal(a, b), 1),
        t.distributions.Independent(t.distributions.Normal(c, d), 1)),
     [real(2, 3), pos(2, 3), real(2, 3), pos(2, 3)]),
    ("Uniform", lambda t, a, w, b, v: t.distributions.kl_divergence(
        t.distributions.Uniform(a, a + w), t.distributions.Uniform(a - b, a + w + v)),
     [real(3), pos(3), pos(3), pos(3)]),
    ("Exponential", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.Exponential(a), t.distributions.Exponential(b)), [pos(3), pos(3)]),
    ("Gamma", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.Gamma(a, b), t.distributions.Gamma(c, d)),
     [pos(3), pos(3), pos(3), pos(3)]),
    ("Beta", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.Beta(a, b), t.distributions.Beta(c, d)),
     [pos(3), pos(3), pos(3), pos(3)]),
    ("Dirichlet", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.Dirichlet(a), t.distributions.Dirichlet(b)), [pos(2, 3), pos(2, 3)]),
    ("Laplace", lambda t, a, b, c, d: t.distributions.kl_divergence(
        t.distributions.Laplace(a, b), t.distributions.Laplace(c, d)),
     [real(3), pos(3), real(3), pos(3)]),
    ("Poisson", lambda t, a, b: t.distributions.kl_divergence(
        t.distributions.Poisson(a), t.distributions.Poisson(b)), [pos(3), pos(3)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in KL_CASES])
def test_kl_divergence_matches_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.float64, atol=1e-9, rtol=1e-9)


def test_shapes_match_torch() -> None:
    for lib in (torch, kiln):
        D = lib.distributions
        loc = lib.zeros(4, 3, dtype=lib.float64)
        cases = [D.Normal(loc, 1.0), D.Independent(D.Normal(loc, 1.0), 1),
                 D.MultivariateNormal(loc, lib.eye(3, dtype=lib.float64)),
                 D.Dirichlet(loc + 1), D.Categorical(logits=loc), D.OneHotCategorical(logits=loc)]
        shapes = [(tuple(d.batch_shape), tuple(d.event_shape), tuple(d.sample((2,)).shape))
                  for d in cases]
        if lib is torch:
            expected = shapes
    assert shapes == expected


@pytest.fixture
def torch_validating():
    """PyTorch's default validation on: torch.compile turns it off for the whole process when
    TorchDynamo first loads (`torch/_dynamo/eval_frame.py`), so after a test in this worker
    compiled with torch, Normal(0, -1) no longer raises there."""
    was = torch.distributions.Distribution._validate_args
    torch.distributions.Distribution.set_default_validate_args(True)
    yield
    torch.distributions.Distribution.set_default_validate_args(was)


def test_validation_raises_like_torch(torch_validating) -> None:
    for lib in (torch, kiln):
        D = lib.distributions
        with pytest.raises(ValueError):
            D.Normal(lib.tensor([0.0]), lib.tensor([-1.0]))
        with pytest.raises(ValueError):
            D.Exponential(lib.tensor([1.0])).log_prob(lib.tensor([-1.0]))
        with pytest.raises(ValueError):
            D.Bernoulli(probs=lib.tensor([0.5]), logits=lib.tensor([0.0]))
        # validate_args=False lets the same values through
        D.Normal(lib.tensor([0.0]), lib.tensor([-1.0]), validate_args=False)
    for name in ("Normal", "Gamma", "Beta", "Dirichlet", "StudentT", "Bernoulli", "Poisson",
                 "Categorical", "InverseGamma", "Chi2"):
        args = {"Dirichlet": (torch.ones(3),), "Categorical": (torch.ones(3) / 3,),
                "Bernoulli": (0.5,), "Poisson": (1.0,), "StudentT": (3.0,),
                "Chi2": (2.0,)}.get(name, (1.0, 1.0))
        kargs = tuple(kiln.tensor(a.numpy()) if isinstance(a, torch.Tensor) else a for a in args)
        assert getattr(kiln.distributions, name)(*kargs).has_rsample == \
            getattr(torch.distributions, name)(*args).has_rsample, name


SAMPLED = [
    ("Normal", lambda D: D.Normal(kiln.tensor(1.5), kiln.tensor(0.7)), 1.5, 0.49),
    ("LogNormal", lambda D: D.LogNormal(kiln.tensor(0.1), kiln.tensor(0.4)),
     math.exp(0.1 + 0.08), (math.exp(0.16) - 1) * math.exp(0.2 + 0.16)),
    ("Uniform", lambda D: D.Uniform(kiln.tensor(-1.0), kiln.tensor(3.0)), 1.0, 16 / 12),
    ("Exponential", lambda D: D.Exponential(kiln.tensor(2.0)), 0.5, 0.25),
    ("Laplace", lambda D: D.Laplace(kiln.tensor(0.5), kiln.tensor(1.5)), 0.5, 4.5),
    ("Gamma", lambda D: D.Gamma(kiln.tensor(3.0), kiln.tensor(2.0)), 1.5, 0.75),
    ("Beta", lambda D: D.Beta(kiln.tensor(2.0), kiln.tensor(5.0)), 2 / 7, 10 / (49 * 8)),
    ("Bernoulli", lambda D: D.Bernoulli(kiln.tensor(0.3)), 0.3, 0.21),
    ("Poisson", lambda D: D.Poisson(kiln.tensor(4.0)), 4.0, 4.0),
    ("Binomial", lambda D: D.Binomial(10, kiln.tensor(0.3)), 3.0, 2.1),
    ("Categorical", lambda D: D.Categorical(kiln.tensor([0.2, 0.5, 0.3])), 1.1, 0.49),
]


@pytest.mark.parametrize("make,mean,var", [pytest.param(m, a, b, id=n)
                                           for n, m, a, b in SAMPLED])
def test_sample_moments(make, mean, var) -> None:
    kiln.manual_seed(0)
    x = make(kiln.distributions).sample((20000,)).double().numpy()
    # 20k samples: the sample mean is within 5 standard errors; the variance within 5%
    assert abs(x.mean() - mean) < 5 * math.sqrt(var / 20000)
    assert abs(x.var() - var) < 0.05 * var


def test_vector_sample_moments() -> None:
    kiln.manual_seed(1)
    D = kiln.distributions
    cov = np.array([[2.0, 0.6], [0.6, 1.0]])
    x = D.MultivariateNormal(kiln.tensor([1.0, -1.0], dtype=kiln.float64),
                             kiln.tensor(cov)).sample((20000,)).numpy()
    np.testing.assert_allclose(x.mean(0), [1.0, -1.0], atol=0.05)
    np.testing.assert_allclose(np.cov(x.T), cov, atol=0.08)
    c = np.array([2.0, 3.0, 5.0])
    y = D.Dirichlet(kiln.tensor(c)).sample((20000,)).double().numpy()
    np.testing.assert_allclose(y.mean(0), c / c.sum(), atol=0.01)
    z = D.OneHotCategorical(kiln.tensor([0.2, 0.8])).sample((20000,)).numpy()
    np.testing.assert_allclose(z.mean(0), [0.2, 0.8], atol=0.02)


@pytest.mark.parametrize("alpha", [0.3, 1.0, 4.5])
def test_gamma_rsample_gradient_is_the_implicit_reparameterization(alpha) -> None:
    # the sample is P^-1(alpha, u) for a u fixed by the seed: its derivative in alpha must be
    # the finite difference of scipy's inverse at the same u
    import scipy.special as sc
    kiln.manual_seed(6)
    a = kiln.tensor([alpha] * 5, dtype=kiln.float64, requires_grad=True)
    x = kiln.distributions.Gamma(a, kiln.tensor(2.0, dtype=kiln.float64)).rsample()
    x.sum().backward()
    u = sc.gammainc(alpha, 2.0 * x.detach().numpy())
    h = 1e-6
    fd = (sc.gammaincinv(alpha + h, u) - sc.gammaincinv(alpha - h, u)) / (2 * h) / 2.0
    np.testing.assert_allclose(a.grad.numpy(), fd, rtol=1e-5)


def test_gamma_rsample_mean_gradient_matches_torch_in_expectation() -> None:
    # d/d alpha E[x] = 1/rate for Gamma(alpha, rate); both libraries' estimators average to it
    kiln.manual_seed(7)
    torch.manual_seed(7)
    for lib in (kiln, torch):
        a = lib.tensor(2.5, dtype=lib.float64, requires_grad=True)
        lib.distributions.Gamma(a, 2.0).rsample((20000,)).mean().backward()
        assert abs(float(a.grad) - 0.5) < 0.02, lib.__name__


def test_rsample_is_differentiable_in_the_parameters() -> None:
    kiln.manual_seed(2)
    loc = kiln.tensor([0.5], dtype=kiln.float64, requires_grad=True)
    scale = kiln.tensor([2.0], dtype=kiln.float64, requires_grad=True)
    x = kiln.distributions.Normal(loc, scale).rsample((1000,))
    x.mean().backward()
    assert float(loc.grad) == pytest.approx(1.0)
    eps = (x.detach() - 0.5) / 2.0
    assert float(scale.grad) == pytest.approx(float(eps.mean()))


MORE = [
    ("Cauchy", lambda t, m, s, v: (t.distributions.Cauchy(m, s).log_prob(v),
                                   t.distributions.Cauchy(m, s).entropy(),
                                   t.distributions.Cauchy(m, s).cdf(v)),
     [real(3), pos(3), real(3)]),
    ("Gumbel", lambda t, m, s, v: summary(t.distributions.Gumbel(m, s), v),
     [real(3), pos(3), real(3)]),
    ("HalfNormal", lambda t, s, v: summary(t.distributions.HalfNormal(s), v) + (
        t.distributions.HalfNormal(s).cdf(v),), [pos(3), pos(3)]),
    ("HalfCauchy", lambda t, s, v: (t.distributions.HalfCauchy(s).log_prob(v),
                                    t.distributions.HalfCauchy(s).entropy()), [pos(3), pos(3)]),
    ("Chi2", lambda t, df, v: summary(t.distributions.Chi2(df), v), [pos(3) + 1, pos(3)]),
    ("StudentT", lambda t, df, m, s, v: summary(t.distributions.StudentT(df, m, s), v),
     [pos(3) + 2.5, real(3), pos(3), real(3)]),
    ("Pareto", lambda t, s, a, u: summary(t.distributions.Pareto(s, a + 2), s + u),
     [pos(3), pos(3), pos(3)]),
    ("Weibull", lambda t, s, k, v: summary(t.distributions.Weibull(s, k), v),
     [pos(3), pos(3), pos(3)]),
    ("InverseGamma", lambda t, a, b, v: summary(t.distributions.InverseGamma(a + 2, b), v),
     [pos(3), pos(3), pos(3)]),
    ("Geometric", lambda t, p, v: summary(t.distributions.Geometric(probs=p), v),
     [unit(3), np.array([0.0, 2.0, 5.0])]),
    ("Multinomial", lambda t, p, v: summary(t.distributions.Multinomial(6, probs=p), v,
                                            entropy=False),
     [simplex(2, 3), np.array([[1.0, 2.0, 3.0], [6.0, 0.0, 0.0]])]),
    ("NegativeBinomial", lambda t, r, lg, v: summary(
        t.distributions.NegativeBinomial(r, logits=lg), v, entropy=False),
     [pos(3), real(3), np.array([0.0, 3.0, 1.0])]),
    ("MixtureSameFamily", lambda t, lg, m, s, v: (lambda d: (d.log_prob(v), d.mean, d.variance))(
        t.distributions.MixtureSameFamily(t.distributions.Categorical(logits=lg),
                                          t.distributions.Normal(m, s))),
     [real(2, 3), real(2, 3), pos(2, 3), real(4, 2)]),
    ("more transforms", lambda t, m, s, v: (
        t.distributions.TransformedDistribution(
            t.distributions.Normal(m, s), [t.distributions.SoftplusTransform(),
                                           t.distributions.PowerTransform(2.0)]).log_prob(v)),
     [real(3), pos(3), pos(3)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in MORE])
def test_more_distributions_match_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.float64, atol=1e-9, rtol=1e-9)


MORE_SAMPLED = [
    ("Gumbel", lambda D: D.Gumbel(kiln.tensor(1.0), kiln.tensor(2.0)), 1 + 2 * 0.5772156649,
     math.pi ** 2 / 6 * 4),
    ("HalfNormal", lambda D: D.HalfNormal(kiln.tensor(1.5)), 1.5 * math.sqrt(2 / math.pi),
     2.25 * (1 - 2 / math.pi)),
    ("Chi2", lambda D: D.Chi2(kiln.tensor(4.0)), 4.0, 8.0),
    ("StudentT", lambda D: D.StudentT(kiln.tensor(8.0), kiln.tensor(1.0), kiln.tensor(2.0)),
     1.0, 4 * 8 / 6),
    ("Weibull", lambda D: D.Weibull(kiln.tensor(2.0), kiln.tensor(3.0)),
     2 * math.gamma(1 + 1 / 3), 4 * (math.gamma(1 + 2 / 3) - math.gamma(1 + 1 / 3) ** 2)),
    ("Pareto", lambda D: D.Pareto(kiln.tensor(1.0), kiln.tensor(5.0)), 1.25, 5 / (16 * 3)),
    ("InverseGamma", lambda D: D.InverseGamma(kiln.tensor(6.0), kiln.tensor(2.0)), 0.4,
     4 / (25 * 4)),
    ("Geometric", lambda D: D.Geometric(kiln.tensor(0.3)), 1 / 0.3 - 1, (1 / 0.3 - 1) / 0.3),
    ("NegativeBinomial", lambda D: D.NegativeBinomial(kiln.tensor(5.0), kiln.tensor(0.4)),
     5 * 0.4 / 0.6, 5 * 0.4 / 0.36),
]


@pytest.mark.parametrize("make,mean,var", [pytest.param(m, a, b, id=n)
                                           for n, m, a, b in MORE_SAMPLED])
def test_more_sample_moments(make, mean, var) -> None:
    test_sample_moments(make, mean, var)


RELAXED = [
    ("RelaxedBernoulli", lambda t, lg, v: t.distributions.RelaxedBernoulli(
        t.tensor(0.7, dtype=t.float64), logits=lg).log_prob(v), [real(3), unit(3)]),
    ("RelaxedOneHotCategorical", lambda t, lg, v: t.distributions.RelaxedOneHotCategorical(
        t.tensor(0.5, dtype=t.float64), logits=lg).log_prob(v), [real(2, 3), simplex(2, 3)]),
    ("LowRankMultivariateNormal", lambda t, m, w, d, v: summary(
        t.distributions.LowRankMultivariateNormal(m, w, d), v),
     [real(2, 3), real(2, 3, 2), pos(2, 3), real(2, 3)]),
    ("VonMises", lambda t, m, k, v: (t.distributions.VonMises(m, k).log_prob(v),
                                     t.distributions.VonMises(m, k).variance),
     [real(3), pos(3), real(3)]),
    ("Kumaraswamy", lambda t, a, b, v: summary(t.distributions.Kumaraswamy(a, b), v),
     [pos(3), pos(3), unit(3)]),
    ("ContinuousBernoulli", lambda t, p, v: summary(t.distributions.ContinuousBernoulli(p), v)
     + (t.distributions.ContinuousBernoulli(p).cdf(v), t.distributions.ContinuousBernoulli(p)
        .icdf(v)), [np.array([0.1, 0.3, 0.4995, 0.5003, 0.7, 0.95]), unit(6)]),
    ("ContinuousBernoulli logits", lambda t, lg, v: summary(
        t.distributions.ContinuousBernoulli(logits=lg), v), [real(4), unit(4)]),
    ("FisherSnedecor", lambda t, a, b, v: summary(t.distributions.FisherSnedecor(a, b + 4), v,
                                                  entropy=False), [pos(3), pos(3), pos(3)]),
]


def test_generalized_pareto_matches_torch_in_float32() -> None:
    # float32: torch's own GeneralizedPareto compares float64 parameters with a float32 zero
    check_op(lambda t, m, s, c, u: (lambda d: (d.log_prob(m + u), d.entropy(), d.mean,
                                               d.variance, d.icdf(u / 3)))(
        t.distributions.GeneralizedPareto(m, s, c * 0.3)),
        [x.astype(np.float32) for x in (real(3), pos(3), unit(3), pos(3))],
        dtype=np.float32, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in RELAXED])
def test_relaxed_and_other_distributions_match_torch(fn, inputs) -> None:
    # VonMises: torch's log I0 is a polynomial approximation, kiln's is exact
    check_op(fn, inputs, dtype=np.float64, atol=1e-6, rtol=1e-6)


def test_straight_through_and_relaxed_samples() -> None:
    kiln.manual_seed(3)
    logits = kiln.tensor([0.2, -0.4, 1.0], dtype=kiln.float64, requires_grad=True)
    d = kiln.distributions.OneHotCategoricalStraightThrough(logits=logits)
    s = d.rsample((5,))
    assert bool(((s == 0) | (s == 1)).all()) and bool((s.sum(-1) == 1).all())
    (s * kiln.tensor([1.0, 2.0, 3.0], dtype=kiln.float64)).sum().backward()
    probs = np.exp([0.2, -0.4, 1.0]) / np.exp([0.2, -0.4, 1.0]).sum()
    w = np.array([1.0, 2.0, 3.0]) * 5
    np.testing.assert_allclose(logits.grad.numpy(), probs * (w - (probs * w).sum()), rtol=1e-10)
    r = kiln.distributions.RelaxedOneHotCategorical(kiln.tensor(0.3), logits=kiln.zeros(4))
    x = r.rsample((2000,)).numpy()
    np.testing.assert_allclose(x.sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(x.mean(0), 0.25, atol=0.03)
    b = kiln.distributions.RelaxedBernoulli(kiln.tensor(0.5), probs=kiln.tensor(0.8))
    y = b.rsample((4000,)).numpy()
    # float32 samples at a low temperature saturate to 0 or 1, as torch's do
    assert 0 <= y.min() and y.max() <= 1 and abs((y > 0.5).mean() - 0.8) < 0.03


MORE_SAMPLED_2 = [
    ("VonMises", lambda D: D.VonMises(kiln.tensor(0.5), kiln.tensor(4.0)), 0.5, None),
    ("Kumaraswamy", lambda D: D.Kumaraswamy(kiln.tensor(2.0), kiln.tensor(3.0)),
     3 * math.gamma(1.5) * math.gamma(3) / math.gamma(4.5), None),
    ("FisherSnedecor", lambda D: D.FisherSnedecor(kiln.tensor(5.0), kiln.tensor(10.0)),
     10 / 8, 2 * 100 * 13 / (5 * 64 * 6)),
    ("LowRankMultivariateNormal", lambda D: D.LowRankMultivariateNormal(
        kiln.tensor([1.0]), kiln.tensor([[0.5]]), kiln.tensor([0.75])), 1.0, 1.0),
]


@pytest.mark.parametrize("make,mean,var", [pytest.param(m, a, b, id=n)
                                           for n, m, a, b in MORE_SAMPLED_2])
def test_more_sample_means(make, mean, var) -> None:
    kiln.manual_seed(4)
    d = make(kiln.distributions)
    x = (d.rsample((20000,)) if d.has_rsample else d.sample((20000,))).double().numpy()
    v = var if var is not None else float(d.variance.double()) if d.variance.numel() == 1 \
        else x.var()
    assert abs(x.mean() - mean) < 5 * math.sqrt(v / 20000)
    if var is not None:
        # 5 standard errors of the sample variance (heavy tails, e.g. F(5, 14), make it wide)
        se = math.sqrt(max(((x - x.mean()) ** 4).mean() - x.var() ** 2, 0.0) / x.size)
        assert abs(x.var() - var) < max(0.06 * var, 5 * se)


def _transform_summary(t, T, x):
    y = T(x)
    return y, T.inv(y), T.log_abs_det_jacobian(x, y)


TRANSFORMS = [
    ("StickBreaking", lambda t, x: _transform_summary(
        t, t.distributions.StickBreakingTransform(), x), [real(2, 3)]),
    ("LowerCholesky", lambda t, x: (lambda T: (T(x), T.inv(T(x))))(
        t.distributions.LowerCholeskyTransform()), [real(2, 3, 3)]),
    ("PositiveDefinite", lambda t, x: (lambda T: (T(x), T.inv(T(x))))(
        t.distributions.PositiveDefiniteTransform()), [real(3, 3)]),
    ("CumulativeDistribution", lambda t, m, s, x: _transform_summary(
        t, t.distributions.CumulativeDistributionTransform(t.distributions.Normal(m, s)), x),
     [real(3), pos(3), real(3)]),
    ("Independent", lambda t, x: _transform_summary(
        t, t.distributions.IndependentTransform(t.distributions.ExpTransform(), 1), x),
     [real(2, 3)]),
    ("Reshape", lambda t, x: _transform_summary(
        t, t.distributions.ReshapeTransform((2, 3), (3, 2)), x), [real(4, 2, 3)]),
    ("Cat", lambda t, x: _transform_summary(
        t, t.distributions.CatTransform([t.distributions.ExpTransform(),
                                         t.distributions.SigmoidTransform()], 0, [2, 1]), x),
     [real(3, 2)]),
    ("Stack", lambda t, x: _transform_summary(
        t, t.distributions.StackTransform([t.distributions.ExpTransform(),
                                           t.distributions.TanhTransform()], 1), x),
     [real(3, 2)]),
    ("biject_to", lambda t, x: [t.distributions.biject_to(c)(x) for c in (
        t.distributions.constraints.positive, t.distributions.constraints.unit_interval,
        t.distributions.constraints.real, t.distributions.constraints.greater_than(1.5),
        t.distributions.constraints.interval(-1.0, 3.0))]
     + [t.distributions.transform_to(t.distributions.constraints.simplex)(x)], [real(2, 3)]),
    ("CorrCholesky", lambda t, x: _transform_summary(
        t, t.distributions.CorrCholeskyTransform(), x), [real(2, 6)]),
    ("LKJCholesky", lambda t, c, x: t.distributions.LKJCholesky(4, c).log_prob(
        t.distributions.CorrCholeskyTransform()(x)), [pos(2) + 0.5, real(2, 6)]),
    ("Wishart", lambda t, df, b, x: summary(t.distributions.Wishart(
        df + 3, covariance_matrix=spd(t, b)), spd(t, x)), [pos(2), real(3, 3), real(2, 3, 3)]),
    ("Wishart scale_tril", lambda t, df, b, x: t.distributions.Wishart(
        df + 3, scale_tril=t.linalg.cholesky(spd(t, b))).log_prob(spd(t, x)),
     [pos(1), real(3, 3), real(3, 3)]),
    ("LogisticNormal", lambda t, m, s, v: (lambda d: (d.log_prob(v), tuple(d.batch_shape),
                                                      tuple(d.event_shape)))(
        t.distributions.LogisticNormal(m, s)), [real(2, 3), pos(2, 3), simplex(2, 4)]),
]


@pytest.mark.parametrize("fn,inputs", [pytest.param(f, i, id=n) for n, f, i in TRANSFORMS])
def test_transforms_match_torch(fn, inputs) -> None:
    check_op(fn, inputs, dtype=np.float64, atol=1e-9, rtol=1e-9)


def test_compiled_log_prob_without_validation_is_one_graph_and_matches_eager() -> None:
    # validation reads values into Python (a graph break per check); without it the whole
    # loss is one compiled graph
    D = kiln.distributions
    mu0 = real(3)

    def loss(x, mu):
        return -(D.Normal(mu, 2.0, validate_args=False).log_prob(x).sum()
                 + D.Gamma(mu.exp(), 1.5, validate_args=False).log_prob(x.abs() + 0.1).sum())
    compiled = kiln.compile(loss, fullgraph=True)
    x = kiln.tensor(real(3))
    results = []
    for fn in (loss, compiled, compiled):
        mu = kiln.tensor(mu0, requires_grad=True)
        out = fn(x, mu)
        out.backward()
        results.append((out.item(), mu.grad.numpy().copy()))
    for value, grad in results[1:]:
        assert value == pytest.approx(results[0][0], rel=1e-12)
        np.testing.assert_allclose(grad, results[0][1], rtol=1e-10)


def test_compiled_policy_loss_with_validation_is_one_graph_as_torch_compile() -> None:
    # a PPO update builds Categorical(logits=...) with validation on (the default) and asks
    # log_prob and entropy: torch.compile skips the value checks and so does kiln.compile (they
    # read tensors into Python: the update ran eagerly); eager still checks
    data = np.random.default_rng(3)
    logits0, actions = data.standard_normal((6, 4)), data.integers(0, 4, 6)
    scale = data.uniform(0.5, 1.5, 6)

    def loss(lib, logits, action, sigma):
        D = lib.distributions
        policy = D.Categorical(logits=logits)
        noise = D.Normal(logits[:, 0], sigma)
        return (-policy.log_prob(action).mean() - 0.01 * policy.entropy().mean()
                + noise.log_prob(logits[:, 1]).mean()
                + D.Uniform(logits[:, 2] - 1, logits[:, 2] + sigma).entropy().mean())
    theirs = torch.tensor(logits0, requires_grad=True)
    want = loss(torch, theirs, torch.tensor(actions), torch.tensor(scale))
    want.backward()
    compiled = kiln.compile(lambda *a: loss(kiln, *a), fullgraph=True)
    for _ in range(2):
        logits = kiln.tensor(logits0, requires_grad=True)
        got = compiled(logits, kiln.tensor(actions), kiln.tensor(scale))
        got.backward()
        assert got.item() == pytest.approx(want.item(), rel=1e-12)
        np.testing.assert_allclose(logits.grad.numpy(), theirs.grad.numpy(), rtol=1e-10)
    with pytest.raises(ValueError, match="support"):
        kiln.distributions.Categorical(logits=kiln.tensor(logits0)).log_prob(kiln.tensor(7))


def test_torchs_file_names_import_the_distributions() -> None:
    # `from torch.distributions.categorical import Categorical`, as CleanRL writes it
    from kiln.distributions.beta import Beta
    from kiln.distributions.categorical import Categorical
    from kiln.distributions.normal import Normal
    from kiln.distributions.one_hot_categorical import OneHotCategoricalStraightThrough
    from kiln.distributions.transforms import AffineTransform
    assert (Categorical, Normal, Beta) == (kiln.distributions.Categorical,
                                            kiln.distributions.Normal, kiln.distributions.Beta)
    assert OneHotCategoricalStraightThrough is kiln.distributions.OneHotCategoricalStraightThrough
    assert AffineTransform is kiln.distributions.AffineTransform
    import torch.distributions.categorical as theirs
    import kiln.distributions.categorical as ours
    assert ours.Categorical.__name__ == theirs.Categorical.__name__
    assert kiln.distributions.distribution.Distribution is kiln.distributions.Distribution


def test_lkj_samples_are_correlation_factors_with_the_lkj_marginal() -> None:
    # off-diagonal correlations r of LKJ(eta) in D dims: (r + 1) / 2 ~ Beta(b, b) with
    # b = eta - 1 + D / 2, so Var r = 1 / (2 eta + D - 1)
    kiln.manual_seed(9)
    L = kiln.distributions.LKJCholesky(3, kiln.tensor(1.5, dtype=kiln.float64)).sample((20000,))
    C = (L @ L.mT).numpy()
    np.testing.assert_allclose(np.diagonal(C, axis1=-2, axis2=-1), 1.0, rtol=1e-10)
    assert np.all(np.triu(L.numpy(), 1) == 0)
    r = C[:, 1, 0]
    assert abs(r.mean()) < 5 * math.sqrt(0.2 / 20000)
    assert abs(r.var() - 0.2) < 0.05 * 0.2


def test_wishart_samples_have_its_mean_and_a_gradient() -> None:
    kiln.manual_seed(10)
    cov = np.array([[2.0, 0.5], [0.5, 1.0]])
    df = kiln.tensor(5.0, dtype=kiln.float64, requires_grad=True)
    X = kiln.distributions.Wishart(df, kiln.tensor(cov)).rsample((20000,))
    np.testing.assert_allclose(X.detach().numpy().mean(0), 5.0 * cov, rtol=0.03, atol=0.03)
    X.mean(0)[0, 0].backward()          # d E[X_00] / d df = cov_00
    assert abs(float(df.grad) - 2.0) < 0.1


EXPANDED = {"Normal": (0., 1.), "Beta": (2., 3.), "Exponential": (2.,), "Gamma": (2., 3.),
            "Laplace": (0., 1.), "LogNormal": (0., 1.), "Uniform": (0., 1.), "Poisson": (3.,),
            "Chi2": (3.,), "HalfCauchy": (1.,), "HalfNormal": (1.,), "InverseGamma": (2., 3.),
            "StudentT": (3., 0., 1.), "Weibull": (1., 2.), "Cauchy": (0., 1.),
            "Gumbel": (0., 1.)}


@pytest.mark.parametrize("name", sorted(EXPANDED))
def test_expand_rebuilds_from_the_parameters_as_torch(name):
    """Distribution.expand, shared by the classes that set `expands_params`."""
    args = EXPANDED[name]
    k = getattr(kiln.distributions, name)(*[kiln.tensor(v) for v in args]).expand((4,))
    t = getattr(torch.distributions, name)(*[torch.tensor(v) for v in args]).expand((4,))
    x = 2.0 if name == "Poisson" else 0.5
    assert tuple(k.batch_shape) == tuple(t.batch_shape) == (4,)
    np.testing.assert_allclose(k.log_prob(kiln.full((4,), x)).numpy(),
                               t.log_prob(torch.full((4,), x)).numpy(), rtol=1e-5)


def _squashed_normal(lib, builtin: bool):
    """pytorch_sac's SquashedNormal (a TanhTransform subclass asking for cache_size=1), or the
    built-in TanhTransform(cache_size=1): rsample, then log_prob of that very sample."""
    D = lib.distributions

    class TanhTransform(D.transforms.Transform):
        domain = D.constraints.real
        codomain = D.constraints.interval(-1.0, 1.0)
        bijective = True
        sign = +1

        def __init__(self, cache_size=1):
            super().__init__(cache_size=cache_size)

        def _call(self, x):
            return x.tanh()

        def _inverse(self, y):
            return 0.5 * (y.log1p() - (-y).log1p())

        def log_abs_det_jacobian(self, x, y):
            return 2. * (math.log(2.) - x - lib.nn.functional.softplus(-2. * x))

    tanh = D.transforms.TanhTransform(cache_size=1) if builtin else TanhTransform()
    # the first action saturates: tanh rounds it to 1.0 in float32, where atanh is infinite
    loc = lib.tensor([[9.5, 0.3], [-0.4, 1.2]], requires_grad=True)
    log_std = lib.tensor([[-3.0, -0.5], [0.2, -1.0]], requires_grad=True)
    lib.manual_seed(0)
    dist = D.TransformedDistribution(D.Normal(loc, log_std.exp()), [tanh])
    action = dist.rsample()
    log_prob = dist.log_prob(action).sum(-1)
    (action.sum() + log_prob.sum()).backward()
    return action.detach(), log_prob.detach(), loc.grad, log_std.grad


@pytest.mark.parametrize("builtin", [True, False])
def test_tanh_transform_cache_inverts_its_own_sample_as_torch(builtin) -> None:
    # kiln's Transform took no cache_size (a TypeError) and inverted by atanh: -inf log_prob
    k = _squashed_normal(kiln, builtin)
    t = _squashed_normal(torch, builtin)
    assert np.isfinite(k[1].numpy()).all()
    for kv, tv in zip(k, t):
        np.testing.assert_allclose(kv.numpy(), tv.numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="cache_size"):
        kiln.distributions.transforms.TanhTransform(cache_size=2)
