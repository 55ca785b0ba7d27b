"""Continuous distributions: Normal, LogNormal, Uniform, Exponential, Laplace, Gamma, Beta,
Dirichlet, MultivariateNormal.

All of them sample by reparameterization (rsample, differentiable in the parameters): Gamma,
Beta and Dirichlet through `kiln._standard_gamma`, an inverse-CDF sampler whose gradient in the
concentration is the implicit-reparameterization one, as PyTorch's.
"""

from __future__ import annotations

import math

import kiln
from kiln.distributions import constraints
from kiln.distributions.distribution import Distribution, _check, broadcast_all

_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def _shape(sample_shape, batch):
    return tuple(sample_shape) + tuple(batch)


class Normal(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def stddev(self):
        return self.scale

    @property
    def variance(self):
        return self.scale * self.scale

    def rsample(self, sample_shape=()):
        eps = kiln.randn(_shape(sample_shape, self.batch_shape), dtype=self.loc.dtype,
                         device=self.loc.device)
        return self.loc + eps * self.scale

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return -((value - self.loc) ** 2) / (2 * self.scale ** 2) - self.scale.log() - \
            _LOG_SQRT_2PI

    def cdf(self, value):
        return 0.5 * (1 + kiln.erf((value - self.loc) / (self.scale * math.sqrt(2))))

    def icdf(self, value):
        return self.loc + self.scale * kiln.erfinv(2 * value - 1) * math.sqrt(2)

    def entropy(self):
        return 0.5 + _LOG_SQRT_2PI + self.scale.log()


class LogNormal(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.positive
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.base_dist = Normal(loc, scale, validate_args=validate_args)
        self.loc, self.scale = self.base_dist.loc, self.base_dist.scale
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self):
        return (self.loc + self.scale ** 2 / 2).exp()

    @property
    def mode(self):
        return (self.loc - self.scale ** 2).exp()

    @property
    def variance(self):
        s2 = self.scale ** 2
        return s2.expm1() * (2 * self.loc + s2).exp()

    def rsample(self, sample_shape=()):
        return self.base_dist.rsample(sample_shape).exp()

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        y = value.log()
        return self.base_dist.log_prob(y) - y

    def entropy(self):
        return self.base_dist.entropy() + self.loc


class Uniform(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"low": constraints.dependent, "high": constraints.dependent}
    has_rsample = True

    def __init__(self, low, high, validate_args=None):
        self.low, self.high = broadcast_all(low, high)
        super().__init__(self.low.shape, validate_args=validate_args)
        if self._validate_args:
            _check(self.low < self.high, "Uniform", lambda: "Uniform: expected low < high")

    @property
    def support(self):
        return constraints.interval(self.low, self.high)

    @property
    def mean(self):
        return (self.high + self.low) / 2

    @property
    def stddev(self):
        return (self.high - self.low) / 12 ** 0.5

    @property
    def variance(self):
        return (self.high - self.low) ** 2 / 12

    def rsample(self, sample_shape=()):
        u = kiln.rand(_shape(sample_shape, self.batch_shape), dtype=self.low.dtype,
                      device=self.low.device)
        return self.low + u * (self.high - self.low)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        inside = (self.low <= value) & (self.high > value)
        return kiln.where(inside, -(self.high - self.low).log(),
                          kiln.full_like(value * self.low, -math.inf))

    def cdf(self, value):
        return ((value - self.low) / (self.high - self.low)).clamp(0, 1)

    def icdf(self, value):
        return value * (self.high - self.low) + self.low

    def entropy(self):
        return (self.high - self.low).log()


class Exponential(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, rate, validate_args=None):
        (self.rate,) = broadcast_all(rate)
        super().__init__(self.rate.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.rate.reciprocal()

    @property
    def mode(self):
        return kiln.zeros_like(self.rate)

    @property
    def variance(self):
        return self.rate.pow(-2)

    def rsample(self, sample_shape=()):
        u = kiln.rand(_shape(sample_shape, self.batch_shape), dtype=self.rate.dtype,
                      device=self.rate.device)
        return -kiln.log1p(-u) / self.rate

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self.rate.log() - self.rate * value

    def cdf(self, value):
        return 1 - kiln.exp(-self.rate * value)

    def icdf(self, value):
        return -kiln.log1p(-value) / self.rate

    def entropy(self):
        return 1.0 - self.rate.log()


class Laplace(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"loc": constraints.real, "scale": constraints.positive}
    support = constraints.real
    has_rsample = True

    def __init__(self, loc, scale, validate_args=None):
        self.loc, self.scale = broadcast_all(loc, scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return 2 * self.scale ** 2

    @property
    def stddev(self):
        return math.sqrt(2) * self.scale

    def rsample(self, sample_shape=()):
        eps = float(kiln.finfo(self.loc.dtype).eps)
        u = kiln.rand(_shape(sample_shape, self.batch_shape), dtype=self.loc.dtype,
                      device=self.loc.device) * (2 - 2 * eps) - (1 - eps)
        return self.loc - self.scale * u.sign() * kiln.log1p(-u.abs())

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return -(2 * self.scale).log() - (value - self.loc).abs() / self.scale

    def cdf(self, value):
        z = (value - self.loc) / self.scale
        return 0.5 - 0.5 * z.sign() * kiln.expm1(-z.abs())

    def entropy(self):
        return 1 + (2 * self.scale).log()


class Gamma(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"concentration": constraints.positive, "rate": constraints.positive}
    support = constraints.nonnegative
    has_rsample = True

    def __init__(self, concentration, rate, validate_args=None):
        self.concentration, self.rate = broadcast_all(concentration, rate)
        super().__init__(self.concentration.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.concentration / self.rate

    @property
    def mode(self):
        return ((self.concentration - 1) / self.rate).clamp(min=0)

    @property
    def variance(self):
        return self.concentration / self.rate ** 2

    def rsample(self, sample_shape=()):
        shape = _shape(sample_shape, self.batch_shape)
        x = kiln._standard_gamma(self.concentration.expand(*shape))
        tiny = float(kiln.finfo(self.rate.dtype).tiny)
        return (x / self.rate).clamp(min=tiny)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        a, b = self.concentration, self.rate
        return kiln.xlogy(a, b) + kiln.xlogy(a - 1, value) - b * value - kiln.lgamma(a)

    def cdf(self, value):
        return kiln.special.gammainc(self.concentration, self.rate * value)

    def entropy(self):
        a = self.concentration
        return a - self.rate.log() + kiln.lgamma(a) + (1.0 - a) * kiln.digamma(a)


class Dirichlet(Distribution):
    arg_constraints = {"concentration": constraints.positive}
    support = constraints.simplex
    has_rsample = True

    def __init__(self, concentration, validate_args=None):
        if concentration.ndim < 1:
            raise ValueError("`concentration` parameter must be at least one-dimensional.")
        self.concentration = concentration
        super().__init__(concentration.shape[:-1], concentration.shape[-1:],
                         validate_args=validate_args)

    def expand(self, batch_shape, _instance=None):
        return type(self)(self.concentration.expand(*batch_shape, self.event_shape[0]),
                          validate_args=False)

    @property
    def mean(self):
        return self.concentration / self.concentration.sum(-1, keepdim=True)

    @property
    def variance(self):
        c = self.concentration
        c0 = c.sum(-1, keepdim=True)
        return c * (c0 - c) / (c0 ** 2 * (c0 + 1))

    def rsample(self, sample_shape=()):
        shape = _shape(sample_shape, self.batch_shape) + tuple(self.event_shape)
        g = kiln._standard_gamma(self.concentration.expand(*shape))
        return g / g.sum(-1, keepdim=True)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        c = self.concentration
        return (kiln.xlogy(c - 1.0, value).sum(-1) + kiln.lgamma(c.sum(-1))
                - kiln.lgamma(c).sum(-1))

    def entropy(self):
        c = self.concentration
        k = c.shape[-1]
        a0 = c.sum(-1)
        return (kiln.lgamma(c).sum(-1) - kiln.lgamma(a0) - (k - a0) * kiln.digamma(a0)
                - ((c - 1.0) * kiln.digamma(c)).sum(-1))


class Beta(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"concentration1": constraints.positive,
                       "concentration0": constraints.positive}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, concentration1, concentration0, validate_args=None):
        self.concentration1, self.concentration0 = broadcast_all(concentration1, concentration0)
        self._dirichlet = Dirichlet(kiln.stack([self.concentration1, self.concentration0], -1),
                                    validate_args=validate_args)
        super().__init__(self._dirichlet.batch_shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.concentration1 / (self.concentration1 + self.concentration0)

    @property
    def variance(self):
        total = self.concentration1 + self.concentration0
        return self.concentration1 * self.concentration0 / (total ** 2 * (total + 1))

    def rsample(self, sample_shape=()):
        return self._dirichlet.rsample(sample_shape).select(-1, 0)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self._dirichlet.log_prob(kiln.stack([value, 1.0 - value], -1))

    def entropy(self):
        return self._dirichlet.entropy()


class MultivariateNormal(Distribution):
    arg_constraints = {"loc": constraints.real_vector,
                       "covariance_matrix": constraints.positive_definite,
                       "precision_matrix": constraints.positive_definite,
                       "scale_tril": constraints.lower_cholesky}
    support = constraints.real_vector
    has_rsample = True

    def __init__(self, loc, covariance_matrix=None, precision_matrix=None, scale_tril=None,
                 validate_args=None):
        if loc.ndim < 1:
            raise ValueError("loc must be at least one-dimensional.")
        if (covariance_matrix is not None) + (scale_tril is not None) + \
                (precision_matrix is not None) != 1:
            raise ValueError("Exactly one of covariance_matrix or precision_matrix or "
                             "scale_tril may be specified.")
        if scale_tril is not None:
            self.scale_tril = scale_tril
            L = scale_tril
        elif covariance_matrix is not None:
            self.covariance_matrix = covariance_matrix
            L = kiln.linalg.cholesky(covariance_matrix)
        else:
            self.precision_matrix = precision_matrix
            L = kiln.linalg.cholesky(kiln.linalg.inv(precision_matrix))
        batch = kiln.broadcast_shapes(tuple(L.shape[:-2]), tuple(loc.shape[:-1]))
        k = loc.shape[-1]
        self.loc = loc.expand(*batch, k)
        self._unbroadcasted_scale_tril = L
        super().__init__(batch, (k,), validate_args=validate_args)
        if "scale_tril" not in self.__dict__:
            self.scale_tril = L.expand(*batch, k, k)

    def expand(self, batch_shape, _instance=None):
        k = self.event_shape[0]
        return type(self)(self.loc.expand(*batch_shape, k),
                          scale_tril=self.scale_tril.expand(*batch_shape, k, k),
                          validate_args=False)

    @property
    def mean(self):
        return self.loc

    @property
    def mode(self):
        return self.loc

    @property
    def variance(self):
        return (self.scale_tril ** 2).sum(-1)

    @property
    def covariance(self):
        L = self.scale_tril
        return L @ L.mT

    def rsample(self, sample_shape=()):
        shape = _shape(sample_shape, self.batch_shape) + tuple(self.event_shape)
        eps = kiln.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + (self.scale_tril @ eps.unsqueeze(-1)).squeeze(-1)

    def _half_log_det(self):
        return kiln.diagonal(self.scale_tril, 0, -2, -1).log().sum(-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        diff = value - self.loc
        L = self.scale_tril
        batch = kiln.broadcast_shapes(tuple(diff.shape[:-1]), tuple(L.shape[:-2]))
        k = self.event_shape[0]
        z = kiln.linalg.solve_triangular(L.expand(*batch, k, k),
                                         diff.expand(*batch, k).unsqueeze(-1), upper=False)
        maha = (z.squeeze(-1) ** 2).sum(-1)
        return -0.5 * (k * math.log(2 * math.pi) + maha) - self._half_log_det()

    def entropy(self):
        k = self.event_shape[0]
        return 0.5 * k * (1.0 + math.log(2 * math.pi)) + self._half_log_det()


def _given_or(name, derive):
    """A parameter given to the constructor, or derived from scale_tril when it was not."""
    def get(self):
        return self.__dict__[name] if name in self.__dict__ else derive(self)

    def set_(self, value):
        self.__dict__[name] = value
    return property(get, set_)


MultivariateNormal.covariance_matrix = _given_or("covariance_matrix",
                                                 lambda self: self.covariance)
MultivariateNormal.precision_matrix = _given_or("precision_matrix",
                                                lambda self: kiln.linalg.inv(self.covariance))
