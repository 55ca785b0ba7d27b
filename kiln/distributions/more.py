"""More distributions: Cauchy, HalfNormal, HalfCauchy, Gumbel, Geometric, Chi2, StudentT,
Pareto, Weibull, InverseGamma, Multinomial, NegativeBinomial, MixtureSameFamily.

The continuous ones are reparameterized (rsample), StudentT and InverseGamma through Gamma's
implicit reparameterization; the discrete ones draw with NumPy and have no rsample.
"""

from __future__ import annotations

import math

import kiln
import kiln.nn.functional as F
from kiln.distributions import constraints
from kiln.distributions.continuous import Gamma, Normal
from kiln.distributions.discrete import Categorical, _one_of, _probs_to_logits
from kiln.distributions.distribution import Distribution, _numpy_rng, broadcast_all

EULER = 0.57721566490153286060


def _uniform(d, sample_shape, like):
    shape = tuple(sample_shape) + tuple(d.batch_shape)
    eps = float(kiln.finfo(like.dtype).eps)
    return kiln.rand(shape, dtype=like.dtype, device=like.device).clamp(eps, 1 - eps)


def _where_cond(cond, value, other):
    """`value` where cond holds, else the Python number `other`."""
    return kiln.where(cond, value, kiln.full_like(value, other))


class _LocScale(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def _checked(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return value


class Cauchy(_LocScale):
    @property
    def mean(self):
        return kiln.full_like(self.loc, math.nan)

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return kiln.full_like(self.loc, math.inf)

    def rsample(self, sample_shape=()):
        u = _uniform(self, sample_shape, self.loc)
        return self.loc + self.scale * kiln.tan(math.pi * (u - 0.5))

    def log_prob(self, value):
        z = (self._checked(value) - self.loc) / self.scale
        return -math.log(math.pi) - self.scale.log() - kiln.log1p(z * z)

    def cdf(self, value):
        return kiln.atan((value - self.loc) / self.scale) / math.pi + 0.5

    def entropy(self):
        return math.log(4 * math.pi) + self.scale.log()


class Gumbel(_LocScale):
    @property
    def mean(self):
        return self.loc + self.scale * EULER

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return (math.pi ** 2 / 6) * self.scale ** 2

    def rsample(self, sample_shape=()):
        u = _uniform(self, sample_shape, self.loc)
        return self.loc - self.scale * (-u.log()).log()

    def log_prob(self, value):
        z = (self._checked(value) - self.loc) / self.scale
        return -(z + kiln.exp(-z)) - self.scale.log()

    def cdf(self, value):
        return kiln.exp(-kiln.exp(-(value - self.loc) / self.scale))

    def entropy(self):
        return self.scale.log() + (1 + EULER)


class HalfNormal(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale, validate_args=None):
        (self.scale,) = broadcast_all(scale)
        self.base_dist = Normal(0.0 * self.scale, self.scale, validate_args=False)
        super().__init__(self.scale.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.scale * math.sqrt(2 / math.pi)

    @property
    def variance(self):
        return self.scale ** 2 * (1 - 2 / math.pi)

    def rsample(self, sample_shape=()):
        return self.base_dist.rsample(sample_shape).abs()

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        lp = self.base_dist.log_prob(value) + math.log(2)
        return _where_cond(value >= 0, lp, -math.inf)

    def cdf(self, value):
        return 2 * self.base_dist.cdf(value) - 1

    def entropy(self):
        return self.base_dist.entropy() - math.log(2)


class HalfCauchy(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"scale": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, scale, validate_args=None):
        (self.scale,) = broadcast_all(scale)
        self.base_dist = Cauchy(0.0 * self.scale, self.scale, validate_args=False)
        super().__init__(self.scale.shape, validate_args=validate_args)

    @property
    def mean(self):
        return kiln.full_like(self.scale, math.inf)

    @property
    def variance(self):
        return kiln.full_like(self.scale, math.inf)

    def rsample(self, sample_shape=()):
        return self.base_dist.rsample(sample_shape).abs()

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        lp = self.base_dist.log_prob(value) + math.log(2)
        return _where_cond(value >= 0, lp, -math.inf)

    def cdf(self, value):
        return 2 * self.base_dist.cdf(value) - 1

    def entropy(self):
        return self.base_dist.entropy() - math.log(2)


class Chi2(Gamma):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"df": constraints.positive}

    def __init__(self, df, validate_args=None):
        (df,) = broadcast_all(df)
        self.df = df
        super().__init__(0.5 * df, kiln.full_like(df, 0.5), validate_args=validate_args)


class StudentT(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"df": constraints.positive, "loc": constraints.real,
                       "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, df, loc=0.0, scale=1.0, validate_args=None):
        self.df, self.loc, self.scale = broadcast_all(df, loc, scale)
        super().__init__(self.df.shape, validate_args=validate_args)

    @property
    def mean(self):
        return _where_cond(self.df > 1, self.loc + 0.0 * self.df, math.nan)

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        df = self.df
        v = self.scale ** 2 * df / kiln.where(df > 2, df - 2, kiln.ones_like(df))
        v = _where_cond(df > 2, v, math.inf)
        return _where_cond(df > 1, v, math.nan)

    def rsample(self, sample_shape=()):
        # X / sqrt(Z / df) with X standard normal and Z ~ Chi2(df) (= Gamma(df/2, 1/2))
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        x = kiln.randn(shape, dtype=self.df.dtype, device=self.df.device)
        z = 2 * kiln._standard_gamma((0.5 * self.df).expand(*shape))
        return self.loc + self.scale * x * (z / self.df).rsqrt()

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        y = (value - self.loc) / self.scale
        df = self.df
        Z = (self.scale.log() + 0.5 * df.log() + 0.5 * math.log(math.pi)
             + kiln.lgamma(0.5 * df) - kiln.lgamma(0.5 * (df + 1.0)))
        return -0.5 * (df + 1.0) * kiln.log1p(y ** 2 / df) - Z

    def entropy(self):
        df = self.df
        lbeta = kiln.lgamma(0.5 * df) + math.lgamma(0.5) - kiln.lgamma(0.5 * (df + 1))
        return (self.scale.log() + 0.5 * (df + 1) * (kiln.digamma(0.5 * (df + 1))
                                                    - kiln.digamma(0.5 * df))
                + 0.5 * df.log() + lbeta)


class Pareto(Distribution):
    arg_constraints = {"alpha": constraints.positive, "scale": constraints.positive}
    has_rsample = True

    def __init__(self, scale, alpha, validate_args=None):
        self.scale, self.alpha = broadcast_all(scale, alpha)
        super().__init__(self.scale.shape, validate_args=validate_args)

    @property
    def support(self):
        return constraints.greater_than(self.scale, strict=False)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.scale.expand(*batch_shape), self.alpha.expand(*batch_shape),
                          validate_args=False)

    @property
    def mean(self):
        a = self.alpha.clamp(min=1)
        return _where_cond(self.alpha > 1, a * self.scale / (a - 1), math.inf)

    @property
    def mode(self):
        return self.scale

    @property
    def variance(self):
        a = self.alpha.clamp(min=2)
        return _where_cond(self.alpha > 2, self.scale ** 2 * a / ((a - 1) ** 2 * (a - 2)),
                           math.inf)

    def rsample(self, sample_shape=()):
        u = _uniform(self, sample_shape, self.scale)
        return self.scale * u.pow(-1 / self.alpha)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self.alpha.log() + self.alpha * self.scale.log() - (self.alpha + 1) * value.log()

    def cdf(self, value):
        return 1 - (self.scale / value).pow(self.alpha)

    def entropy(self):
        return (self.scale / self.alpha).log() + (1 + self.alpha.reciprocal())


class Weibull(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"scale": constraints.positive, "concentration": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, scale, concentration, validate_args=None):
        self.scale, self.concentration = broadcast_all(scale, concentration)
        super().__init__(self.scale.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.scale * kiln.lgamma(1 + self.concentration.reciprocal()).exp()

    @property
    def variance(self):
        k = self.concentration
        return self.scale ** 2 * (kiln.lgamma(1 + 2 / k).exp()
                                  - kiln.lgamma(1 + 1 / k).exp() ** 2)

    def rsample(self, sample_shape=()):
        u = _uniform(self, sample_shape, self.scale)
        return self.scale * (-kiln.log1p(-u)).pow(1 / self.concentration)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        k, lam = self.concentration, self.scale
        z = value / lam
        return (k / lam).log() + (k - 1) * z.log() - z.pow(k)

    def cdf(self, value):
        return 1 - kiln.exp(-(value / self.scale).pow(self.concentration))

    def entropy(self):
        k = self.concentration
        return EULER * (1 - 1 / k) + (self.scale / k).log() + 1


class InverseGamma(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, concentration, rate, validate_args=None):
        self.concentration, self.rate = broadcast_all(concentration, rate)
        self._gamma = Gamma(self.concentration, self.rate, validate_args=False)
        super().__init__(self.concentration.shape, validate_args=validate_args)

    @property
    def mean(self):
        a = self.concentration
        return _where_cond(a > 1, self.rate / (a - 1), math.inf)

    @property
    def mode(self):
        return self.rate / (self.concentration + 1)

    @property
    def variance(self):
        a = self.concentration
        return _where_cond(a > 2, self.rate ** 2 / ((a - 1) ** 2 * (a - 2)), math.inf)

    def rsample(self, sample_shape=()):
        return self._gamma.rsample(sample_shape).reciprocal()

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration, self.rate
        return kiln.xlogy(a, b) - kiln.lgamma(a) - (a + 1) * value.log() - b / value

    def entropy(self):
        a = self.concentration
        return a + self.rate.log() + kiln.lgamma(a) - (1 + a) * kiln.digamma(a)


class Geometric(Distribution):
    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        if probs is not None:
            (self.probs,) = broadcast_all(probs)
        else:
            (self.logits,) = broadcast_all(logits)
        shape = (self.__dict__.get("probs") if probs is not None else self.logits).shape
        super().__init__(shape, validate_args=validate_args)

    def __getattr__(self, name):
        if name == "probs":
            self.__dict__["probs"] = kiln.sigmoid(self.__dict__["logits"])
            return self.__dict__["probs"]
        if name == "logits":
            self.__dict__["logits"] = _probs_to_logits(self.__dict__["probs"], True)
            return self.__dict__["logits"]
        raise AttributeError(name)

    def expand(self, batch_shape, _instance=None):
        if "probs" in self.__dict__:
            return type(self)(probs=self.probs.expand(*batch_shape), validate_args=False)
        return type(self)(logits=self.logits.expand(*batch_shape), validate_args=False)

    @property
    def mean(self):
        return 1.0 / self.probs - 1.0

    @property
    def mode(self):
        return kiln.zeros_like(self.probs)

    @property
    def variance(self):
        return (1.0 / self.probs - 1.0) / self.probs

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        p = self.probs.detach().cpu().numpy()
        return kiln.tensor(rng.geometric(p, size=shape or None) - 1, dtype=self.probs.dtype,
                           device=self.probs.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value, probs = kiln.broadcast_tensors(value, self.probs)
        safe = kiln.where((probs == 1) & (value == 0), kiln.zeros_like(probs), probs)
        return value * kiln.log1p(-safe) + self.probs.log()

    def entropy(self):
        return F.binary_cross_entropy_with_logits(self.logits, self.probs,
                                                  reduction="none") / self.probs


class Multinomial(Distribution):
    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}

    def __init__(self, total_count=1, probs=None, logits=None, validate_args=None):
        if not isinstance(total_count, int):
            raise NotImplementedError("inhomogeneous total_count is not supported")
        self.total_count = total_count
        self._categorical = Categorical(probs=probs, logits=logits)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=validate_args)

    @property
    def support(self):
        return constraints.integer_interval(0, self.total_count)

    @property
    def probs(self):
        return self._categorical.probs

    @property
    def logits(self):
        return self._categorical.logits

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.total_count, logits=self.logits.expand(
            *batch_shape, self.event_shape[0]), validate_args=False)

    @property
    def mean(self):
        return self.probs * self.total_count

    @property
    def variance(self):
        return self.total_count * self.probs * (1 - self.probs)

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        p = self.probs.detach().cpu().double().numpy()
        p = p / p.sum(-1, keepdims=True)
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        draws = rng.multinomial(self.total_count, p, size=shape or None)
        return kiln.tensor(draws, dtype=self.probs.dtype, device=self.probs.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = kiln.broadcast_tensors(self.logits, value)
        logits = kiln.where((value == 0) & kiln.isinf(logits), kiln.zeros_like(logits), logits)
        # n! from the value's own count, as torch writes it (equal to total_count on the
        # support; it also fixes the gradient with respect to the value)
        log_factorial_n = kiln.lgamma(value.sum(-1) + 1)
        log_factorial_xs = kiln.lgamma(value + 1).sum(-1)
        return log_factorial_n - log_factorial_xs + (logits * value).sum(-1)


class NegativeBinomial(Distribution):
    arg_constraints = {"total_count": constraints.nonnegative,
                       "probs": constraints.half_open_interval(0.0, 1.0),
                       "logits": constraints.real}
    support = constraints.nonnegative_integer

    def __init__(self, total_count, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        if probs is not None:
            self.total_count, self.probs = broadcast_all(total_count, probs)
        else:
            self.total_count, self.logits = broadcast_all(total_count, logits)
        super().__init__(self.total_count.shape, validate_args=validate_args)

    def __getattr__(self, name):
        if name == "probs":
            self.__dict__["probs"] = kiln.sigmoid(self.__dict__["logits"])
            return self.__dict__["probs"]
        if name == "logits":
            self.__dict__["logits"] = _probs_to_logits(self.__dict__["probs"], True)
            return self.__dict__["logits"]
        raise AttributeError(name)

    def expand(self, batch_shape, _instance=None):
        n = self.total_count.expand(*batch_shape)
        if "probs" in self.__dict__:
            return type(self)(n, probs=self.probs.expand(*batch_shape), validate_args=False)
        return type(self)(n, logits=self.logits.expand(*batch_shape), validate_args=False)

    @property
    def mean(self):
        return self.total_count * self.logits.exp()

    @property
    def variance(self):
        return self.mean / kiln.sigmoid(-self.logits)

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        r = self.total_count.detach().cpu().numpy()
        rate = rng.standard_gamma(r, size=shape or None) * self.logits.exp().detach().numpy()
        return kiln.tensor(rng.poisson(rate), dtype=self.total_count.dtype,
                           device=self.total_count.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        r = self.total_count
        unnormalized = r * F.logsigmoid(-self.logits) + value * F.logsigmoid(self.logits)
        normalization = -kiln.lgamma(r + value) + kiln.lgamma(1.0 + value) + kiln.lgamma(r)
        normalization = kiln.where(r + value == 0, kiln.zeros_like(normalization),
                                   normalization)
        return unnormalized - normalization


class MixtureSameFamily(Distribution):
    """A mixture of `component_distribution`'s batch (its rightmost batch dim is the
    component), weighted by a Categorical."""

    arg_constraints: dict = {}

    def __init__(self, mixture_distribution, component_distribution, validate_args=None):
        self._mixture_distribution = mixture_distribution
        self._component_distribution = component_distribution
        k = component_distribution.batch_shape[-1]
        if mixture_distribution.logits.shape[-1] != k:
            raise ValueError(f"mixture_distribution has {mixture_distribution.logits.shape[-1]} "
                             f"components but component_distribution's last batch dim is {k}")
        self._event_ndims = len(component_distribution.event_shape)
        super().__init__(component_distribution.batch_shape[:-1],
                         component_distribution.event_shape, validate_args=validate_args)

    @property
    def mixture_distribution(self):
        return self._mixture_distribution

    @property
    def component_distribution(self):
        return self._component_distribution

    @property
    def support(self):
        return self._component_distribution.support

    def _pad_mixture(self, t):
        return t.reshape(*t.shape, *([1] * self._event_ndims))

    @property
    def mean(self):
        probs = self._pad_mixture(self._mixture_distribution.probs)
        return (probs * self._component_distribution.mean).sum(-1 - self._event_ndims)

    @property
    def variance(self):
        probs = self._pad_mixture(self._mixture_distribution.probs)
        dim = -1 - self._event_ndims
        mean_cond_var = (probs * self._component_distribution.variance).sum(dim)
        var_cond_mean = (probs * (self._component_distribution.mean
                                  - self.mean.unsqueeze(dim)) ** 2).sum(dim)
        return mean_cond_var + var_cond_mean

    def log_prob(self, value):
        x = value.unsqueeze(-1 - self._event_ndims)
        log_prob_x = self._component_distribution.log_prob(x)
        log_mix = kiln.log_softmax(self._mixture_distribution.logits, -1)
        return kiln.logsumexp(log_prob_x + log_mix, -1)

    def sample(self, sample_shape=()):
        with kiln.no_grad():
            idx = self._mixture_distribution.sample(sample_shape)          # S + B
            comps = self._component_distribution.sample(sample_shape)      # S + B + (K,) + E
            idx = idx.reshape(*idx.shape, 1, *([1] * self._event_ndims))
            idx = idx.expand(*comps.shape[:len(idx.shape) - 1 - self._event_ndims], 1,
                             *comps.shape[comps.ndim - self._event_ndims:])
            return comps.gather(comps.ndim - 1 - self._event_ndims, idx).squeeze(
                comps.ndim - 1 - self._event_ndims)
