"""Discrete distributions: Bernoulli, Categorical, OneHotCategorical, Poisson, Binomial.

Bernoulli, Categorical and OneHotCategorical take `probs` or `logits` (one of them), as in
PyTorch; the other is derived. None has rsample (discrete samples carry no gradient).
"""

from __future__ import annotations

import math

import kiln
import kiln.nn.functional as F
from kiln.distributions import constraints
from kiln.distributions.distribution import Distribution, _numpy_rng, broadcast_all


def _probs_to_logits(probs, is_binary=False):
    eps = float(kiln.finfo(probs.dtype).eps)
    p = probs.clamp(eps, 1 - eps)
    return (p.log() - kiln.log1p(-p)) if is_binary else p.log()


def _one_of(probs, logits):
    if (probs is None) == (logits is None):
        raise ValueError("Either `probs` or `logits` must be specified, but not both.")


class Bernoulli(Distribution):
    arg_constraints = {"probs": constraints.unit_interval, "logits": constraints.real}
    support = constraints.boolean
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        if probs is not None:
            (self.probs,) = broadcast_all(probs)
            shape = self.probs.shape
        else:
            (self.logits,) = broadcast_all(logits)
            shape = self.logits.shape
        super().__init__(shape, validate_args=validate_args)

    def __getattr__(self, name):
        # the parameter not given is derived on first use
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
        return self.probs

    @property
    def mode(self):
        return (self.probs >= 0.5).to(self.probs.dtype)

    @property
    def variance(self):
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=()):
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        with kiln.no_grad():
            u = kiln.rand(shape, dtype=self.probs.dtype, device=self.probs.device)
            return (u < self.probs).to(self.probs.dtype)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        logits, value = kiln.broadcast_tensors(self.logits, value)
        return -F.binary_cross_entropy_with_logits(logits, value, reduction="none")

    def entropy(self):
        return F.binary_cross_entropy_with_logits(self.logits, self.probs, reduction="none")

    def enumerate_support(self, expand=True):
        values = kiln.arange(2, dtype=self.probs.dtype).reshape(
            (2,) + (1,) * len(self.batch_shape))
        return values.expand(2, *self.batch_shape) if expand else values


class Categorical(Distribution):
    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        if probs is not None:
            if probs.ndim < 1:
                raise ValueError("`probs` parameter must be at least one-dimensional.")
            self.probs = probs / probs.sum(-1, keepdim=True)
            param = self.probs
        else:
            if logits.ndim < 1:
                raise ValueError("`logits` parameter must be at least one-dimensional.")
            self.logits = logits - logits.logsumexp(-1, keepdim=True)
            param = self.logits
        self._num_events = param.shape[-1]
        super().__init__(param.shape[:-1], validate_args=validate_args)

    def __getattr__(self, name):
        if name == "probs":
            self.__dict__["probs"] = kiln.softmax(self.__dict__["logits"], -1)
            return self.__dict__["probs"]
        if name == "logits":
            self.__dict__["logits"] = _probs_to_logits(self.__dict__["probs"])
            return self.__dict__["logits"]
        raise AttributeError(name)

    @property
    def support(self):
        return constraints.integer_interval(0, self._num_events - 1)

    @property
    def param_shape(self):
        return kiln.Size(tuple(self.batch_shape) + (self._num_events,))

    def expand(self, batch_shape, _instance=None):
        shape = tuple(batch_shape) + (self._num_events,)
        if "probs" in self.__dict__:
            return type(self)(probs=self.probs.expand(*shape), validate_args=False)
        return type(self)(logits=self.logits.expand(*shape), validate_args=False)

    @property
    def mean(self):
        return kiln.full(tuple(self.batch_shape), math.nan, dtype=self.probs.dtype)

    @property
    def mode(self):
        return self.probs.argmax(-1)

    @property
    def variance(self):
        return kiln.full(tuple(self.batch_shape), math.nan, dtype=self.probs.dtype)

    def sample(self, sample_shape=()):
        n = int(math.prod(sample_shape)) if sample_shape else 1
        probs_2d = self.probs.detach().reshape(-1, self._num_events)
        draws = kiln.multinomial(probs_2d, n, True).mT       # (n, batch)
        return draws.reshape(*tuple(sample_shape), *tuple(self.batch_shape))

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        value = value.long().unsqueeze(-1)
        value, log_pmf = kiln.broadcast_tensors(value, self.logits)
        return log_pmf.gather(-1, value[..., :1]).squeeze(-1)

    def entropy(self):
        min_real = float(kiln.finfo(self.logits.dtype).min)
        logits = self.logits.clamp(min=min_real)
        return -(logits * self.probs).sum(-1)

    def enumerate_support(self, expand=True):
        values = kiln.arange(self._num_events).reshape(
            (self._num_events,) + (1,) * len(self.batch_shape))
        return values.expand(self._num_events, *self.batch_shape) if expand else values


class OneHotCategorical(Distribution):
    arg_constraints = {"probs": constraints.simplex, "logits": constraints.real_vector}
    support = constraints.one_hot
    has_enumerate_support = True

    def __init__(self, probs=None, logits=None, validate_args=None):
        self._categorical = Categorical(probs, logits, validate_args=validate_args)
        super().__init__(self._categorical.batch_shape, self._categorical.param_shape[-1:],
                         validate_args=validate_args)

    @property
    def probs(self):
        return self._categorical.probs

    @property
    def logits(self):
        return self._categorical.logits

    def expand(self, batch_shape, _instance=None):
        shape = tuple(batch_shape) + tuple(self.event_shape)
        return type(self)(logits=self.logits.expand(*shape), validate_args=False)

    @property
    def mean(self):
        return self.probs

    @property
    def mode(self):
        return F.one_hot(self.probs.argmax(-1), self.event_shape[0]).to(self.probs.dtype)

    @property
    def variance(self):
        return self.probs * (1 - self.probs)

    def sample(self, sample_shape=()):
        idx = self._categorical.sample(sample_shape)
        return F.one_hot(idx, self.event_shape[0]).to(self.probs.dtype)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        return self._categorical.log_prob(value.max(-1).indices)

    def entropy(self):
        return self._categorical.entropy()


class Poisson(Distribution):
    expands_params = True        # Distribution.expand rebuilds it
    arg_constraints = {"rate": constraints.nonnegative}
    support = constraints.nonnegative_integer

    def __init__(self, rate, validate_args=None):
        (self.rate,) = broadcast_all(rate)
        super().__init__(self.rate.shape, validate_args=validate_args)

    @property
    def mean(self):
        return self.rate

    @property
    def mode(self):
        return self.rate.floor()

    @property
    def variance(self):
        return self.rate

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        lam = self.rate.detach().cpu().numpy()
        return kiln.tensor(rng.poisson(lam, size=shape) if shape else rng.poisson(lam),
                           dtype=self.rate.dtype, device=self.rate.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        rate, value = kiln.broadcast_tensors(self.rate, value)
        return kiln.xlogy(value, rate) - rate - kiln.lgamma(value + 1)


class Binomial(Distribution):
    arg_constraints = {"total_count": constraints.nonnegative_integer,
                       "probs": constraints.unit_interval, "logits": constraints.real}
    has_enumerate_support = True

    def __init__(self, total_count=1, probs=None, logits=None, validate_args=None):
        _one_of(probs, logits)
        if probs is not None:
            self.total_count, self.probs = broadcast_all(total_count, probs)
            self.total_count = self.total_count.to(self.probs.dtype)
        else:
            self.total_count, self.logits = broadcast_all(total_count, logits)
            self.total_count = self.total_count.to(self.logits.dtype)
        super().__init__(self.total_count.shape, validate_args=validate_args)

    def __getattr__(self, name):
        if name == "probs":
            self.__dict__["probs"] = kiln.sigmoid(self.__dict__["logits"])
            return self.__dict__["probs"]
        if name == "logits":
            self.__dict__["logits"] = _probs_to_logits(self.__dict__["probs"], True)
            return self.__dict__["logits"]
        raise AttributeError(name)

    @property
    def support(self):
        return constraints.integer_interval(0, self.total_count)

    def expand(self, batch_shape, _instance=None):
        n = self.total_count.expand(*batch_shape)
        if "probs" in self.__dict__:
            return type(self)(n, probs=self.probs.expand(*batch_shape), validate_args=False)
        return type(self)(n, logits=self.logits.expand(*batch_shape), validate_args=False)

    @property
    def mean(self):
        return self.total_count * self.probs

    @property
    def mode(self):
        return ((self.total_count + 1) * self.probs).floor().clamp(max=self.total_count)

    @property
    def variance(self):
        return self.total_count * self.probs * (1 - self.probs)

    def sample(self, sample_shape=()):
        rng = _numpy_rng()
        shape = tuple(sample_shape) + tuple(self.batch_shape)
        n = self.total_count.detach().cpu().numpy().astype("int64")
        p = self.probs.detach().cpu().numpy()
        return kiln.tensor(rng.binomial(n, p, size=shape) if shape else rng.binomial(n, p),
                           dtype=self.probs.dtype, device=self.probs.device)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        n, k = self.total_count, value
        log_choose = kiln.lgamma(n + 1) - kiln.lgamma(k + 1) - kiln.lgamma(n - k + 1)
        return log_choose + k * self.logits - n * F.softplus(self.logits)

    def entropy(self):
        n = int(self.total_count.max())
        if not bool((self.total_count == n).all()):
            raise NotImplementedError("Inhomogeneous total count not supported by "
                                      "`entropy`.")
        support = kiln.arange(n + 1, dtype=self.probs.dtype).reshape(
            (n + 1,) + (1,) * len(self.batch_shape))
        log_prob = self.log_prob(support.expand(n + 1, *self.batch_shape))
        return -(log_prob.exp() * log_prob).sum(0)
