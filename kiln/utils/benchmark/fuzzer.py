"""Seeded generation of benchmark inputs, as torch.utils.benchmark's Fuzzer: parameters drawn
from stated distributions (redrawn until every constraint holds), and tensors whose sizes name
those parameters, sometimes laid out non-contiguously or strided, so one benchmark sees many
shapes and layouts."""

from __future__ import annotations

import itertools
import math
from typing import Any, Callable, Iterator

import numpy as np

import kiln

_DISTRIBUTIONS = ("loguniform", "uniform")
_MAX_ATTEMPTS = 1000          # draws of the parameters before a Fuzzer gives up


class ParameterAlias:
    """Stands for the value of another parameter: as a choice of a dict distribution it lets
    one parameter sometimes equal another (a size that sometimes broadcasts)."""

    def __init__(self, alias_to: str) -> None:
        self.alias_to = alias_to

    def __repr__(self) -> str:
        return f"ParameterAlias[alias_to: {self.alias_to}]"


class FuzzedParameter:
    """A named value drawn each step: "uniform" between `minval` and `maxval` inclusive
    (integers when both bounds are ints), "loguniform" (an integer, uniform in log2 space, so
    [1, 10) is as likely as [10, 100]), or a dict {choice: probability} summing to one.
    A `strict` parameter keeps its first draw while the Fuzzer redraws the others to meet
    the constraints, so the constraints do not skew its distribution."""

    def __init__(self, name: str, minval: int | float | None = None,
                 maxval: int | float | None = None,
                 distribution: str | dict[Any, float] | None = None,
                 strict: bool = False) -> None:
        if isinstance(distribution, dict):
            probabilities = list(distribution.values())
            if any(p < 0 for p in probabilities):
                raise ValueError(f"FuzzedParameter {name!r}: probabilities cannot be negative, "
                                 f"got {probabilities}")
            if abs(sum(probabilities) - 1) > 1e-5:
                raise ValueError(f"FuzzedParameter {name!r}: the probabilities of a dict "
                                 f"distribution must sum to 1, got {sum(probabilities)}")
            if minval is not None or maxval is not None:
                raise ValueError(f"FuzzedParameter {name!r}: a dict distribution takes no "
                                 "minval or maxval")
        elif distribution in _DISTRIBUTIONS:
            if minval is None or maxval is None or minval > maxval:
                raise ValueError(f"FuzzedParameter {name!r}: a {distribution} distribution "
                                 f"needs minval <= maxval, got {minval} and {maxval}")
            if distribution == "loguniform" and minval <= 0:
                raise ValueError(f"FuzzedParameter {name!r}: loguniform needs minval > 0, "
                                 f"got {minval}")
        else:
            raise ValueError(f"FuzzedParameter {name!r}: unknown distribution "
                             f"{distribution!r}; expected 'uniform', 'loguniform' or a dict")
        self._name, self._minval, self._maxval = name, minval, maxval
        self._distribution, self.strict = distribution, strict

    @property
    def name(self) -> str:
        return self._name

    def sample(self, state: np.random.RandomState):
        if isinstance(self._distribution, dict):
            choices = list(self._distribution)
            return choices[state.choice(len(choices), p=list(self._distribution.values()))]
        low, high = self._minval, self._maxval
        if self._distribution == "loguniform":
            value = int(2 ** state.uniform(math.log2(low), math.log2(high)))
            return min(max(value, low), high)
        if isinstance(low, int) and isinstance(high, int):
            return int(state.randint(low, high + 1))
        return float(state.uniform(low, high))


class FuzzedTensor:
    """A tensor made each step: `size` (and `steps`) are ints or parameter names; with `steps`
    a larger tensor is made and sliced `[::step]` per dim; `dim_parameter` truncates (or pads
    with 1s) both to that parameter's value. With probability 1 - `probability_contiguous` the
    memory is laid out in a random other dim order (permute, copy, permute back). Parameters
    giving fewer than `min_elements`, more than `max_elements`, or an allocation over
    `max_allocation_bytes` are redrawn. `roll_parameter` is accepted and unused, as in torch."""

    def __init__(self, name: str, size: tuple, steps: tuple | None = None,
                 probability_contiguous: float = 0.5, min_elements: int | None = None,
                 max_elements: int | None = None, max_allocation_bytes: int | None = None,
                 dim_parameter: str | None = None, roll_parameter: str | None = None,
                 dtype=kiln.float32, cuda: bool = False,
                 tensor_constructor: Callable | None = None) -> None:
        if steps is not None and len(steps) != len(size):
            raise ValueError(f"FuzzedTensor {name!r}: steps {steps} must have one entry per "
                             f"dim of size {size}")
        self._name, self._size, self._steps = name, tuple(size), steps
        self._probability_contiguous = probability_contiguous
        self._min_elements, self._max_elements = min_elements, max_elements
        self._max_allocation_bytes, self._dim_parameter = max_allocation_bytes, dim_parameter
        self._dtype, self._cuda = dtype, cuda
        self._tensor_constructor = tensor_constructor

    @property
    def name(self) -> str:
        return self._name

    @staticmethod
    def default_tensor_constructor(size, dtype, **kwargs):
        """Uniform [0, 1) floats; integers in [1, 127) (no zeros to divide by)."""
        if dtype.is_floating_point or dtype.is_complex:
            return kiln.rand(size=size, dtype=dtype)
        if dtype == kiln.bool:
            return kiln.randint(0, 2, size=size).bool()
        return kiln.randint(1, 127, size=size, dtype=dtype)

    def _size_and_steps(self, params: dict) -> tuple[tuple, tuple, tuple]:
        dim = params[self._dim_parameter] if self._dim_parameter is not None else len(self._size)

        def resolve(values) -> tuple:
            values = tuple(int(params.get(v, v)) for v in values)[:dim]
            return values + (1,) * (dim - len(values))

        size, steps = resolve(self._size), resolve(self._steps or ())
        return size, steps, tuple(n * s for n, s in zip(size, steps))

    def satisfies_constraints(self, params: dict) -> bool:
        size, _, allocation = self._size_and_steps(params)
        numel = math.prod(size)              # Python ints: no overflow on huge draws
        nbytes = math.prod(allocation) * self._dtype.itemsize
        return not ((self._max_elements is not None and numel > self._max_elements)
                    or (self._min_elements is not None and numel < self._min_elements)
                    or (self._max_allocation_bytes is not None
                        and nbytes > self._max_allocation_bytes))

    def _make_tensor(self, params: dict, state: np.random.RandomState):
        size, steps, allocation = self._size_and_steps(params)
        constructor = self._tensor_constructor or self.default_tensor_constructor
        raw = constructor(size=allocation, dtype=self._dtype, **params)
        if self._cuda:
            raw = raw.cuda()
        dim = len(size)
        order = np.arange(dim)
        if state.rand() > self._probability_contiguous:
            while dim > 1 and (order == np.arange(dim)).all():
                order = state.permutation(dim)
            raw = raw.permute(tuple(int(i) for i in order)).contiguous()
            raw = raw.permute(tuple(int(i) for i in np.argsort(order)))
        tensor = raw[tuple(slice(0, n * s, s) for n, s in zip(size, steps))]
        properties = {"numel": int(tensor.numel()), "order": order, "steps": steps,
                      "is_contiguous": tensor.is_contiguous(), "dtype": str(self._dtype)}
        return tensor, properties


def _flatten(values: list, kind: type) -> tuple:
    """The items of `values`, lists among them unpacked one level."""
    return tuple(itertools.chain.from_iterable([v] if isinstance(v, kind) else v
                                               for v in values))


class Fuzzer:
    """Draws parameters and makes tensors from them, reproducibly for a `seed`: `take(n)`
    yields n triples `(tensors, tensor_properties, params)`, dicts keyed by name. `constraints`
    are callables given the dict of parameters (as torch calls them); a draw any of them
    rejects is redrawn."""

    def __init__(self, parameters: list, tensors: list,
                 constraints: list[Callable] | None = None, seed: int | None = None) -> None:
        if seed is None:
            seed = int(np.random.RandomState().randint(0, 2 ** 32 - 1, dtype=np.int64))
        self._seed = seed
        self._parameters = _flatten(parameters, FuzzedParameter)
        self._tensors = _flatten(tensors, FuzzedTensor)
        self._constraints = tuple(constraints or ())
        overlap = {p.name for p in self._parameters} & {t.name for t in self._tensors}
        if overlap:
            raise ValueError(f"Fuzzer: names used by both a parameter and a tensor: "
                             f"{sorted(overlap)}")
        self._rejections = self._total_generated = 0

    def take(self, n: int) -> Iterator[tuple[dict, dict, dict]]:
        state = np.random.RandomState(self._seed)
        kiln.manual_seed(int(state.randint(0, 2 ** 63, dtype=np.int64)))
        for _ in range(n):
            params = self._generate(state)
            tensors, properties = {}, {}
            for t in self._tensors:
                tensors[t.name], properties[t.name] = t._make_tensor(params, state)
            yield tensors, properties, params

    @property
    def rejection_rate(self) -> float:
        return self._rejections / self._total_generated if self._total_generated else 0.0

    def _generate(self, state: np.random.RandomState) -> dict:
        kept: dict = {}                       # strict parameters keep their first draw
        for _ in range(_MAX_ATTEMPTS):
            params = {}
            for p in self._parameters:
                if p.strict and p.name in kept:
                    params[p.name] = kept[p.name]
                else:
                    params[p.name] = p.sample(state)
                    if p.strict:
                        kept[p.name] = params[p.name]
            params = _resolve_aliases(params)
            self._total_generated += 1
            if (all(f(params) for f in self._constraints)
                    and all(t.satisfies_constraints(params) for t in self._tensors)):
                return params
            self._rejections += 1
        raise ValueError(f"Fuzzer: no parameters met the constraints in {_MAX_ATTEMPTS} draws")


def _resolve_aliases(params: dict) -> dict:
    """Each ParameterAlias replaced by the value it names, following chains."""
    params = dict(params)
    for name in params:
        seen = [name]
        while isinstance(params[name], ParameterAlias):
            target = params[name].alias_to
            if target in seen:
                raise ValueError(f"Fuzzer: ParameterAlias cycle {' -> '.join(seen + [target])}")
            if target not in params:
                raise ValueError(f"Fuzzer: parameter {name!r} aliases unknown parameter "
                                 f"{target!r}")
            seen.append(target)
            params[name] = params[target]
    return params
