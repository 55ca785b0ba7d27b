"""What the families of `kiln.tracer.functional_extra` share: `_f` (an operand as a float
tensor), `_full_like`, the `values_indices` result type, builtins the torch names shadow."""

from __future__ import annotations

import builtins

from kiln.tracer import functional as F
from kiln.tracer.creation import full_like
from kiln.tracer.functional import _as_tensor, _floating
from kiln.tracer.tensor import Tensor


_py_max, _py_min, _py_sum, _py_abs = builtins.max, builtins.min, builtins.sum, builtins.abs
values_indices = F.ReturnTypes


def _f(x):
    return _floating(x if isinstance(x, Tensor) else _as_tensor(x))


def _full_like(input, value):
    return full_like(input, value)
