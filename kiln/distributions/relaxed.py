"""Relaxed (Gumbel-softmax) distributions, the straight-through one-hot categorical, and
LowRankMultivariateNormal, VonMises, Kumaraswamy, FisherSnedecor, GeneralizedPareto."""

from __future__ import annotations

import math

import kiln
from kiln.distributions import constraints
from kiln.distributions.continuous import Beta as _Beta, MultivariateNormal, Uniform
from kiln.distributions.discrete import Categorical, OneHotCategorical, _one_of, _probs_to_logits
from kiln.distributions.distribution import Distribution, _check, _numpy_rng, broadcast_all
from kiln.distributions.transformed import (AffineTransform, ExpTransform, PowerTransform,
                                            SigmoidTransform, TransformedDistribution)

EULER = 0.57721566490153286060


def _clamped_uniform(shape, like):
    eps = float(kiln.finfo(like.dtype).eps)
    return kiln.rand(shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


class LogitRelaxedBernoulli(Distribution):
    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.real
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        self.temperature = temperature
        if probs is not None:
            (self.probs,) = broadcast_all(probs)
            self.logits = _probs_to_logits(self.probs, True)
        else:
            (self.logits,) = broadcast_all(logits)
            self.probs = kiln.sigmoid(self.logits)
        super().__init__(self.logits.shape, validate_args=validate_args)

    def rsample(self, sample_shape=()):
        u = _clamped_uniform(tuple(sample_shape) + tuple(self.batch_shape), self.logits)
        return (u.log() - kiln.log1p(-u) + self.logits) / self.temperature

    def log_prob(self, value):
        logits, value = kiln.broadcast_tensors(self.logits, value)
        diff = logits - value * self.temperature
        t = self.temperature
        log_t = t.log() if isinstance(t, kiln.Tensor) else math.log(t)
        return log_t + diff - 2 * kiln.log1p(diff.exp())


class RelaxedBernoulli(TransformedDistribution):
    """Bernoulli relaxed to (0, 1) at `temperature` (the sigmoid of a logistic sample)."""

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        base = LogitRelaxedBernoulli(temperature, probs, logits)
        super().__init__(base, SigmoidTransform(), validate_args=validate_args)

    @property
    def temperature(self):
        return self.base_dist.temperature

    @property
    def logits(self):
        return self.base_dist.logits

    @property
    def probs(self):
        return self.base_dist.probs


class ExpRelaxedCategorical(Distribution):
    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        self._categorical = Categorical(probs, logits)
        self.temperature = temperature
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=validate_args)

    @property
    def logits(self):
        return self._categorical.logits

    @property
    def probs(self):
        return self._categorical.probs

    def rsample(self, sample_shape=()):
        shape = tuple(sample_shape) + tuple(self.batch_shape) + tuple(self.event_shape)
        u = _clamped_uniform(shape, self.logits)
        gumbels = -((-(u.log())).log())
        scores = (self.logits + gumbels) / self.temperature
        return scores - scores.logsumexp(-1, keepdim=True)

    def log_prob(self, value):
        K = self.event_shape[0]
        t = self.temperature if isinstance(self.temperature, kiln.Tensor) else \
            kiln.tensor(float(self.temperature), dtype=self.logits.dtype)
        log_scale = kiln.lgamma(kiln.full_like(t, float(K))) - t.log() * (-(K - 1))
        logits, value = kiln.broadcast_tensors(self.logits, value)
        score = logits - value * t
        score = (score - score.logsumexp(-1, keepdim=True)).sum(-1)
        return score + log_scale


class RelaxedOneHotCategorical(TransformedDistribution):
    """OneHotCategorical relaxed to the simplex at `temperature` (Gumbel-softmax)."""

    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, temperature, probs=None, logits=None, validate_args=None):
        base = ExpRelaxedCategorical(temperature, probs, logits)
        super().__init__(base, ExpTransform(), validate_args=validate_args)

    @property
    def temperature(self):
        return self.base_dist.temperature

    @property
    def logits(self):
        return self.base_dist.logits

    @property
    def probs(self):
        return self.base_dist.probs


class OneHotCategoricalStraightThrough(OneHotCategorical):
    """One-hot samples whose gradient is the probabilities' (the straight-through
    estimator)."""

    has_rsample = True

    def rsample(self, sample_shape=()):
        samples = self.sample(sample_shape)
        probs = self._categorical.probs
        return samples + (probs - probs.detach())


class LowRankMultivariateNormal(MultivariateNormal):
    """Normal with covariance cov_factor @ cov_factor.T + diag(cov_diag)."""

    arg_constraints = {"loc": constraints.real_vector, "cov_factor": constraints.real,
                       "cov_diag": constraints.positive}

    def __init__(self, loc, cov_factor, cov_diag, validate_args=None):
        self.cov_factor, self.cov_diag = cov_factor, cov_diag
        cov = cov_factor @ cov_factor.mT + kiln.diag_embed(cov_diag)
        super().__init__(loc, covariance_matrix=cov, validate_args=False)
        if validate_args is not None:
            self._validate_args = validate_args

    @property
    def variance(self):
        return (self.cov_factor ** 2).sum(-1) + self.cov_diag

    def rsample(self, sample_shape=()):
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        W = self.cov_factor
        eps_w = kiln.randn(shape + (W.shape[-1],), dtype=W.dtype, device=W.device)
        eps_d = kiln.randn(shape + tuple(self.event_shape), dtype=W.dtype, device=W.device)
        return self.loc + (W @ eps_w.unsqueeze(-1)).squeeze(-1) + self.cov_diag.sqrt() * eps_d


class VonMises(Distribution):
    arg_constraints = {"loc": constraints.real, "concentration": constraints.positive}
    support = constraints.real

    def __init__(self, loc, concentration, validate_args=None):
        self.loc, self.concentration = broadcast_all(loc, concentration)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        k = self.concentration
        return 1 - kiln.special.i1e(k) / kiln.special.i0e(k)

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        draws = rng.vonmises(self.loc.detach().cpu().numpy(),
                             self.concentration.detach().cpu().numpy(), size=shape or None)
        return kiln.tensor(draws, dtype=self.loc.dtype, device=self.loc.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k = self.concentration
        # log I0(k) = log(i0e(k)) + k, exact where torch uses a polynomial approximation
        return k * kiln.cos(value - self.loc) - math.log(2 * math.pi) - \
            (kiln.special.i0e(k).log() + k)


class Kumaraswamy(TransformedDistribution):
    arg_constraints = {"concentration1": constraints.positive,
                       "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1, concentration0, validate_args=None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        base = Uniform(kiln.zeros_like(self.concentration0),
                       kiln.ones_like(self.concentration0), validate_args=False)
        transforms = [PowerTransform(self.concentration0.reciprocal()),
                      AffineTransform(1.0, -1.0),
                      PowerTransform(self.concentration1.reciprocal())]
        super().__init__(base, transforms, validate_args=validate_args)

    def _moment(self, n):
        a, b = self.concentration1, self.concentration0
        return (b.log() + kiln.lgamma(1 + n / a) + kiln.lgamma(b)
                - kiln.lgamma(1 + n / a + b)).exp()

    @property
    def mean(self):
        return self._moment(1)

    @property
    def variance(self):
        return self._moment(2) - self._moment(1) ** 2

    def log_prob(self, value):
        a, b = self.concentration1, self.concentration0
        return a.log() + b.log() + (a - 1) * value.log() + (b - 1) * kiln.log1p(-value.pow(a))

    def entropy(self):
        t1 = 1 - self.concentration1.reciprocal()
        t0 = 1 - self.concentration0.reciprocal()
        H0 = kiln.digamma(self.concentration0 + 1) + EULER
        return t0 + t1 * H0 - self.concentration1.log() - self.concentration0.log()


class FisherSnedecor(Distribution):
    arg_constraints = {"df1": constraints.positive, "df2": constraints.positive}
    support = constraints.positive

    def __init__(self, df1, df2, validate_args=None):
        self.df1, self.df2 = broadcast_all(df1, df2)
        super().__init__(self.df1.shape, validate_args=validate_args)

    @property
    def mean(self):
        df2 = self.df2
        return kiln.where(df2 > 2, df2 / kiln.where(df2 > 2, df2 - 2, kiln.ones_like(df2)),
                          kiln.full_like(df2, math.nan))

    @property
    def variance(self):
        d1, d2 = self.df1, self.df2
        safe = kiln.where(d2 > 4, d2, kiln.full_like(d2, 5.0))
        v = 2 * safe ** 2 * (d1 + safe - 2) / (d1 * (safe - 2) ** 2 * (safe - 4))
        return kiln.where(d2 > 4, v, kiln.full_like(v, math.nan))

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        draws = rng.f(self.df1.detach().cpu().numpy(), self.df2.detach().cpu().numpy(),
                      size=shape or None)
        return kiln.tensor(draws, dtype=self.df1.dtype, device=self.df1.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        ct1, ct2 = self.df1 * 0.5, self.df2 * 0.5
        ct3 = self.df1 / self.df2
        t1 = kiln.lgamma(ct1 + ct2) - kiln.lgamma(ct1) - kiln.lgamma(ct2)
        t2 = ct1 * ct3.log() + (ct1 - 1) * value.log()
        t3 = (ct1 + ct2) * kiln.log1p(ct3 * value)
        return t1 + t2 - t3


class GeneralizedPareto(Distribution):
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive,
                       "concentration": constraints.real}
    has_rsample = True

    def __init__(self, loc, scale, concentration, validate_args=None):
        self.loc, self.scale, self.concentration = broadcast_all(loc, scale, concentration)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.greater_than(self.loc, strict=False)

    def _safe_conc(self):
        c = self.concentration
        zero = c.abs() < 1e-8
        return zero, kiln.where(zero, kiln.ones_like(c), c)

    def rsample(self, sample_shape=()):
        u = _clamped_uniform(tuple(sample_shape) + tuple(self.batch_shape), self.loc)
        return self.icdf(u)

    def icdf(self, value):
        zero, c = self._safe_conc()
        log1m = kiln.log1p(-value)
        z = kiln.where(zero, -log1m, kiln.expm1(-c * log1m) / c)
        return self.loc + self.scale * z

    def log_prob(self, value):
        z = (value - self.loc) / self.scale
        zero, c = self._safe_conc()
        y = 1 / c + 1
        nonzero = kiln.where(y == 0, y, y * kiln.log1p(c * z))
        return -self.scale.log() - kiln.where(zero, z, nonzero)

    @property
    def mean(self):
        c = self.concentration
        safe = kiln.where(c < 1, c, kiln.zeros_like(c))
        return kiln.where(c < 1, self.loc + self.scale / (1 - safe),
                          kiln.full_like(c, math.nan))

    @property
    def variance(self):
        c = self.concentration
        safe = kiln.where(c < 0.5, c, kiln.zeros_like(c))
        v = self.scale ** 2 / ((1 - safe) ** 2 * (1 - 2 * safe))
        return kiln.where(c < 0.5, v, kiln.full_like(c, math.nan))

    def entropy(self):
        return self.scale.log() + self.concentration + 1


class ContinuousBernoulli(Distribution):
    """The density C(p) p^x (1-p)^(1-x) on [0, 1], C(p) = 2 atanh(1-2p) / (1-2p).

    Near p = 1/2 the closed forms divide 0 by 0, so inside (0.499, 0.501] the normalizer, mean
    and variance use their Taylor expansions in (p - 1/2)^2, as torch does there.
    """

    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.unit_interval
    has_rsample = True
    _lims = (0.499, 0.501)

    def __init__(self, probs=None, logits=None, lims=(0.499, 0.501), validate_args=None):
        _one_of(probs, logits)
        self._lims = lims
        if probs is not None:
            (self.probs,) = broadcast_all(probs)
            self.logits = _probs_to_logits(self.probs, True)
        else:
            (self.logits,) = broadcast_all(logits)
            eps = float(kiln.finfo(self.logits.dtype).eps)
            self.probs = kiln.sigmoid(self.logits).clamp(eps, 1 - eps)
        super().__init__(self.probs.shape, validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(probs=self.probs.expand(*batch_shape), lims=self._lims,
                          validate_args=False)

    def _stable(self):
        return (self.probs <= self._lims[0]) | (self.probs > self._lims[1])

    def _cut_probs(self):
        return kiln.where(self._stable(), self.probs, kiln.full_like(self.probs, self._lims[0]))

    def _log_normalizer(self):
        p = self._cut_probs()
        below = kiln.where(p <= 0.5, p, kiln.zeros_like(p))
        above = kiln.where(p >= 0.5, p, kiln.ones_like(p))
        # log C = log|log(1-p) - log p| - log|1 - 2p|
        exact = (kiln.log1p(-p) - p.log()).abs().log() - kiln.where(
            p <= 0.5, kiln.log1p(-2.0 * below), (2.0 * above - 1.0).log())
        x = (self.probs - 0.5) ** 2
        taylor = math.log(2.0) + (4.0 / 3.0 + 104.0 / 45.0 * x) * x
        return kiln.where(self._stable(), exact, taylor)

    @property
    def mean(self):
        p = self._cut_probs()
        exact = p / (2.0 * p - 1.0) + 1.0 / (kiln.log1p(-p) - p.log())
        d = self.probs - 0.5
        taylor = 0.5 + (1.0 / 3.0 + 16.0 / 45.0 * d ** 2) * d
        return kiln.where(self._stable(), exact, taylor)

    @property
    def variance(self):
        p = self._cut_probs()
        exact = p * (p - 1.0) / (1.0 - 2.0 * p) ** 2 + 1.0 / (kiln.log1p(-p) - p.log()) ** 2
        x = (self.probs - 0.5) ** 2
        taylor = 1.0 / 12.0 - (1.0 / 15.0 - 128.0 / 945.0 * x) * x
        return kiln.where(self._stable(), exact, taylor)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = kiln.broadcast_tensors(self.logits, value)
        return -kiln.nn.functional.binary_cross_entropy_with_logits(
            logits, value, reduction="none") + self._log_normalizer()

    def cdf(self, value):
        p = self._cut_probs()
        exact = (p.pow(value) * (1.0 - p).pow(1.0 - value) + p - 1.0) / (2.0 * p - 1.0)
        inner = kiln.where(self._stable(), exact, value)
        return kiln.where(value <= 0, kiln.zeros_like(inner),
                          kiln.where(value >= 1, kiln.ones_like(inner), inner))

    def icdf(self, value):
        p = self._cut_probs()
        exact = (kiln.log1p(-p + value * (2.0 * p - 1.0)) - kiln.log1p(-p)) / (
            p.log() - kiln.log1p(-p))
        return kiln.where(self._stable(), exact, value)

    def rsample(self, sample_shape=()):
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        u = kiln.rand(shape, dtype=self.probs.dtype, device=self.probs.device)
        return self.icdf(u)

    def entropy(self):
        log0, log1 = kiln.log1p(-self.probs), self.probs.log()
        return self.mean * (log0 - log1) - self._log_normalizer() - log0


class LKJCholesky(Distribution):
    """Cholesky factors L of D x D correlation matrices with density proportional to
    det(L L^T)^(concentration - 1) (Lewandowski, Kurowicka and Joe, 2009); sampled by the onion
    method: row i is a uniform direction scaled by the square root of a Beta draw."""

    arg_constraints = {"concentration": constraints.positive}
    support = constraints.lower_cholesky

    def __init__(self, dim, concentration=1.0, validate_args=None):
        if dim < 2:
            raise ValueError(f"Expected dim to be an integer greater than or equal to 2. "
                             f"Found dim={dim}.")
        self.dim = dim
        (self.concentration,) = broadcast_all(concentration)
        batch = tuple(self.concentration.shape)
        super().__init__(batch, (dim, dim), validate_args=validate_args)
        marginal = self.concentration + 0.5 * (dim - 2)
        offset = kiln.cat([kiln.zeros(1, dtype=marginal.dtype),
                           kiln.arange(dim - 1, dtype=marginal.dtype)])
        self._beta = _Beta(offset + 0.5, marginal.unsqueeze(-1) - 0.5 * offset,
                          validate_args=False)

    def sample(self, sample_shape=()):
        with kiln.no_grad():
            shape = tuple(sample_shape) + tuple(self.batch_shape) + (self.dim, self.dim)
            y = self._beta.sample(sample_shape).unsqueeze(-1)
            u = kiln.randn(shape, dtype=y.dtype).tril(-1)
            norm = kiln.linalg.vector_norm(u, dim=-1, keepdim=False).unsqueeze(-1)
            u = u / kiln.where(norm > 0, norm, kiln.ones_like(norm))
            w = y.sqrt() * u
            diag = (1 - (w * w).sum(-1)).clamp(min=float(kiln.finfo(y.dtype).tiny)).sqrt()
            return w + kiln.diag_embed(diag)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        d = self.dim
        diag = kiln.diagonal(value, 0, -2, -1)[..., 1:]
        order = 2 * (self.concentration - 1).unsqueeze(-1) + d - kiln.arange(
            2, d + 1, dtype=value.dtype)
        unnormalized = (order * diag.log()).sum(-1)
        alpha = self.concentration + 0.5 * (d - 1)
        normalizer = (0.5 * (d - 1) * math.log(math.pi) + kiln.mvlgamma(alpha - 0.5, d - 1)
                      - kiln.lgamma(alpha) * (d - 1))
        return unnormalized - normalizer


class Wishart(Distribution):
    """Positive-definite p x p matrices X = sum of df outer products of N(0, Sigma) vectors
    (for integer df), given Sigma as covariance_matrix, precision_matrix or scale_tril.
    rsample by the Bartlett decomposition X = L A A^T L^T, A lower-triangular with chi
    diagonals (Gamma draws, reparameterized) and standard normals below."""

    arg_constraints = {"df": constraints.positive,
                       "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite,
                       "scale_tril": constraints.lower_cholesky}
    support = constraints.positive_definite
    has_rsample = True

    def __init__(self, df, covariance_matrix=None, precision_matrix=None, scale_tril=None,
                 validate_args=None):
        if (covariance_matrix is not None) + (precision_matrix is not None) + \
                (scale_tril is not None) != 1:
            raise ValueError("Exactly one of covariance_matrix or precision_matrix or "
                             "scale_tril may be specified.")
        if scale_tril is not None:
            L = scale_tril
        elif covariance_matrix is not None:
            L = kiln.linalg.cholesky(covariance_matrix)
        else:
            L = kiln.linalg.cholesky(kiln.linalg.inv(precision_matrix))
        p = L.shape[-1]
        (df,) = broadcast_all(df)
        batch = kiln.broadcast_shapes(tuple(L.shape[:-2]), tuple(df.shape))
        self.df = df.expand(*batch)
        self.scale_tril = L.expand(*batch, p, p)
        super().__init__(batch, (p, p), validate_args=validate_args)
        if self._validate_args:
            _check(self.df > p - 1, "Wishart", lambda: (
                f"Value of df expected to be greater than ndim - 1 = {p - 1}, but found"),
                self.df)

    @property
    def covariance_matrix(self):
        return self.scale_tril @ self.scale_tril.mT

    @property
    def precision_matrix(self):
        return kiln.linalg.inv(self.covariance_matrix)

    def expand(self, batch_shape, _instance=None):
        p = self.event_shape[0]
        return type(self)(self.df.expand(*batch_shape),
                          scale_tril=self.scale_tril.expand(*batch_shape, p, p),
                          validate_args=False)

    @property
    def mean(self):
        return self.df.unsqueeze(-1).unsqueeze(-1) * self.covariance_matrix

    @property
    def mode(self):
        p = self.event_shape[0]
        factor = (self.df - p - 1).unsqueeze(-1).unsqueeze(-1)
        return factor * self.covariance_matrix

    @property
    def variance(self):
        S = self.covariance_matrix
        d = kiln.diagonal(S, 0, -2, -1)
        return self.df.unsqueeze(-1).unsqueeze(-1) * (S * S + d.unsqueeze(-1) * d.unsqueeze(-2))

    def rsample(self, sample_shape=()):
        p = self.event_shape[0]
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        # chi^2(df - i) = 2 Gamma((df - i) / 2) for the i-th diagonal entry
        dof = self.df.unsqueeze(-1) - kiln.arange(p, dtype=self.df.dtype)
        chi2 = 2 * kiln._standard_gamma((0.5 * dof).expand(*shape, p))
        noise = kiln.randn(shape + (p, p), dtype=self.df.dtype).tril(-1)
        A = noise + kiln.diag_embed(chi2.sqrt())
        LA = self.scale_tril @ A
        return LA @ LA.mT

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        nu, p = self.df, self.event_shape[0]
        L = self.scale_tril
        log_det_L = kiln.diagonal(L, 0, -2, -1).log().sum(-1)
        trace = kiln.diagonal(kiln.cholesky_solve(value, L), 0, -2, -1).sum(-1)
        return (-nu * (p * math.log(2.0) / 2 + log_det_L) - kiln.mvlgamma(nu / 2, p)
                + (nu - p - 1) / 2 * kiln.linalg.slogdet(value).logabsdet - trace / 2)

    def entropy(self):
        nu, p = self.df, self.event_shape[0]
        log_det_L = kiln.diagonal(self.scale_tril, 0, -2, -1).log().sum(-1)
        mv_digamma = kiln.digamma(nu.unsqueeze(-1) / 2 - kiln.arange(p, dtype=nu.dtype) / 2
                                  ).sum(-1)
        return ((p + 1) * (p * math.log(2.0) / 2 + log_det_L) + kiln.mvlgamma(nu / 2, p)
                - (nu - p - 1) / 2 * mv_digamma + nu * p / 2)
