"""Constraints on parameters and supports (torch.distributions.constraints): `check(value)`
gives a boolean tensor, used when a distribution validates its arguments."""

from __future__ import annotations

import kiln


class Constraint:
    is_discrete = False
    event_dim = 0

    def check(self, value):
        raise NotImplementedError

    def __repr__(self) -> str:
        return type(self).__name__.lstrip("_")


class _Real(Constraint):
    def check(self, value):
        return value == value          # not NaN


class _GreaterThan(Constraint):
    def __init__(self, lower_bound, strict=True):
        self.lower_bound, self.strict = lower_bound, strict

    def check(self, value):
        return value > self.lower_bound if self.strict else value >= self.lower_bound


class _Interval(Constraint):
    def __init__(self, lower_bound, upper_bound, half_open=False):
        self.lower_bound, self.upper_bound, self.half_open = lower_bound, upper_bound, half_open

    def check(self, value):
        upper = value < self.upper_bound if self.half_open else value <= self.upper_bound
        return (value >= self.lower_bound) & upper


class _Boolean(Constraint):
    is_discrete = True

    def check(self, value):
        return (value == 0) | (value == 1)


class _IntegerInterval(Constraint):
    is_discrete = True

    def __init__(self, lower_bound, upper_bound):
        self.lower_bound, self.upper_bound = lower_bound, upper_bound

    def check(self, value):
        return (value % 1 == 0) & (value >= self.lower_bound) & (value <= self.upper_bound)


class _NonnegativeInteger(Constraint):
    is_discrete = True

    def check(self, value):
        return (value % 1 == 0) & (value >= 0)


class _Simplex(Constraint):
    event_dim = 1

    def check(self, value):
        return kiln.all(value >= 0, dim=-1) & ((value.sum(-1) - 1).abs() < 1e-6)


class _OneHot(Constraint):
    is_discrete = True
    event_dim = 1

    def check(self, value):
        return kiln.all((value == 0) | (value == 1), dim=-1) & (value.sum(-1) == 1)


class _RealVector(Constraint):
    event_dim = 1

    def check(self, value):
        return kiln.all(value == value, dim=-1)


class _PositiveDefinite(Constraint):
    event_dim = 2

    def check(self, value):
        sym = kiln.all((value - value.mT).abs().reshape(*value.shape[:-2], -1) < 1e-6, dim=-1)
        return sym & kiln.all(kiln.linalg.eigvalsh(value) > 0, dim=-1)


class _LowerCholesky(Constraint):
    event_dim = 2

    def check(self, value):
        lower = kiln.all((value.triu(1) == 0).reshape(*value.shape[:-2], -1), dim=-1)
        return lower & kiln.all(kiln.diagonal(value, 0, -2, -1) > 0, dim=-1)


class _Dependent(Constraint):
    def check(self, value):
        raise ValueError("Cannot determine validity of a dependent constraint")


real = _Real()
real_vector = _RealVector()
positive = _GreaterThan(0.0)
nonnegative = _GreaterThan(0.0, strict=False)
unit_interval = _Interval(0.0, 1.0)
boolean = _Boolean()
nonnegative_integer = _NonnegativeInteger()
simplex = _Simplex()
one_hot = _OneHot()
positive_definite = _PositiveDefinite()
lower_cholesky = _LowerCholesky()
dependent = _Dependent()
greater_than = _GreaterThan
interval = _Interval
integer_interval = _IntegerInterval
half_open_interval = lambda lo, hi: _Interval(lo, hi, half_open=True)  # noqa: E731
