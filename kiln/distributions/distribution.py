"""The Distribution base class: shapes, argument validation, sample/rsample and expand."""

from __future__ import annotations

import kiln
from kiln.distributions import constraints


def _compiling() -> bool:
    """Whether a trace for kiln.compile runs (a check then becomes a graph node, `_check`)."""
    return kiln.compiler.is_compiling()


def _check(valid, owner: str, message, value=None) -> None:
    """Raise ValueError with `message()` (then the offending tensor `value`, if given) unless
    `valid`, a bool tensor, holds everywhere. Under a trace it is a check node instead
    (kiln.ops.check_values, kept by the compiled program though nothing reads it): every replay
    raises where eager code raises, and the call does not break the graph to read `valid`."""
    if _compiling():
        escaped = message().replace("{", "{{").replace("}", "}}")
        kiln.ops.check_values(valid, valid, owner, escaped)
    elif not bool(valid.all()):
        raise ValueError(message() if value is None else f"{message()}:\n{value}")


def broadcast_all(*values):
    """Tensors and Python numbers broadcast to one shape (numbers become tensors of the
    tensors' dtype, or the default float dtype)."""
    like = next((v for v in values if isinstance(v, kiln.Tensor)), None)
    dtype = like.dtype if like is not None and like.dtype.is_floating_point else \
        kiln.get_default_dtype()
    device = like.device if like is not None else None
    tensors = [v if isinstance(v, kiln.Tensor) else kiln.tensor(float(v), dtype=dtype,
                                                                 device=device)
               for v in values]
    return kiln.broadcast_tensors(*tensors)


class Distribution:
    """Base class of probability distributions (torch.distributions.Distribution)."""

    has_rsample = False
    has_enumerate_support = False
    arg_constraints: dict = {}
    support = None
    _validate_args = True

    @staticmethod
    def set_default_validate_args(value: bool) -> None:
        Distribution._validate_args = bool(value)

    def __init__(self, batch_shape=(), event_shape=(), validate_args=None):
        self._batch_shape = kiln.Size(tuple(batch_shape))
        self._event_shape = kiln.Size(tuple(event_shape))
        if validate_args is not None:
            self._validate_args = validate_args
        if self._validate_args:
            for name, constraint in self.arg_constraints.items():
                # only the parameters given (a lazily derived one, like probs from logits,
                # is valid by construction)
                if constraint is constraints.dependent or name not in self.__dict__:
                    continue
                value = self.__dict__[name]
                if not isinstance(value, kiln.Tensor):
                    continue
                _check(constraint.check(value), type(self).__name__, lambda: (
                       f"Expected parameter {name} ({type(value).__name__} of shape "
                       f"{tuple(value.shape)}) of distribution {type(self).__name__} to "
                       f"satisfy the constraint {constraint!r}, but found invalid values"), value)

    @property
    def batch_shape(self):
        return self._batch_shape

    @property
    def event_shape(self):
        return self._event_shape

    def _extended_shape(self, sample_shape=()):
        return kiln.Size(tuple(sample_shape) + tuple(self._batch_shape) +
                         tuple(self._event_shape))

    def _validate_sample(self, value) -> None:
        if not isinstance(value, kiln.Tensor):
            raise ValueError("The value argument to log_prob must be a Tensor")
        support = self.support
        if support is None or support is constraints.dependent:
            return
        _check(support.check(value), type(self).__name__, lambda: (
               f"Expected value argument ({type(value).__name__} of shape "
               f"{tuple(value.shape)}) to be within the support ({support!r}) of the "
               f"distribution {type(self).__name__}, but found invalid values"), value)

    def sample(self, sample_shape=()):
        with kiln.no_grad():
            return self.rsample(sample_shape)

    def rsample(self, sample_shape=()):
        raise NotImplementedError(f"{type(self).__name__} has no reparameterized sampler "
                                  "(has_rsample is False): use sample()")

    def sample_n(self, n):
        return self.sample((n,))

    def log_prob(self, value):
        raise NotImplementedError

    def cdf(self, value):
        raise NotImplementedError

    def icdf(self, value):
        raise NotImplementedError

    def entropy(self):
        raise NotImplementedError

    def perplexity(self):
        return kiln.exp(self.entropy())

    @property
    def mean(self):
        raise NotImplementedError

    @property
    def mode(self):
        raise NotImplementedError

    @property
    def variance(self):
        raise NotImplementedError

    @property
    def stddev(self):
        return self.variance.sqrt()

    def expand(self, batch_shape, _instance=None):
        """The same distribution over a larger batch. A class whose constructor takes exactly
        the tensors named in `arg_constraints`, in that order, sets `expands_params` and is
        rebuilt from them expanded to `batch_shape`; others define their own."""
        batch_shape = tuple(batch_shape)
        params = [getattr(self, k) for k in self.arg_constraints]
        if not getattr(self, "expands_params", False):
            raise NotImplementedError(f"{type(self).__name__}.expand")
        return type(self)(*(p.expand(*batch_shape, *p.shape[len(self.batch_shape):])
                            for p in params), validate_args=False)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}: {tuple(getattr(self, k).shape)}"
                           for k in self.arg_constraints if isinstance(
                               getattr(self, k, None), kiln.Tensor))
        return f"{type(self).__name__}({params})"


def _numpy_rng(generator=None):
    """A NumPy generator seeded from kiln's generator (for samplers NumPy has and kiln's random
    primitive has not: gamma, poisson, binomial)."""
    import numpy as np
    return np.random.default_rng((generator or kiln.default_generator).next_seed())
