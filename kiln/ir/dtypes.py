"""Element types of tensors and IR values, and PyTorch's type-promotion rules."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    """One element type. Instances are singletons, so `is` and `==` agree."""

    name: str          # PyTorch's spelling: "float32"
    short: str         # the IR listing's spelling: "f32"
    np: type           # the NumPy scalar type that stores it
    category: int      # 0 bool, 1 integer, 2 floating: promotion climbs categories
    # derived once, as plain attributes: the dispatcher reads them on every op
    np_dtype: np.dtype = field(init=False, repr=False)        # np.dtype(np)
    is_floating_point: bool = field(init=False, repr=False)   # category == FLOAT

    def __post_init__(self):
        object.__setattr__(self, "np_dtype", np.dtype(self.np))
        object.__setattr__(self, "is_floating_point", self.category == FLOAT)

    @property
    def itemsize(self) -> int:
        return self.np_dtype.itemsize

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    def __reduce__(self):  # pickling by name keeps the singletons unique (DataLoader workers)
        return (from_name, (self.name,))


BOOL, INT, FLOAT = 0, 1, 2

bool_ = DType("bool", "b8", np.bool_, BOOL)
uint8 = DType("uint8", "u8", np.uint8, INT)
int32 = DType("int32", "i32", np.int32, INT)
int64 = DType("int64", "i64", np.int64, INT)
float16 = DType("float16", "f16", np.float16, FLOAT)
float32 = DType("float32", "f32", np.float32, FLOAT)
float64 = DType("float64", "f64", np.float64, FLOAT)

ALL = (bool_, uint8, int32, int64, float16, float32, float64)
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"bool_": bool_, "half": float16, "float": float32, "double": float64,
                 "int": int32, "long": int64})
_BY_NP = {np.dtype(d.np): d for d in ALL}

# Within a category the wider type wins; float16 < float32 < float64, uint8 < int32 < int64.
_RANK = {d: i for i, d in enumerate(ALL)}

_default_float = float32


def from_name(name: str) -> DType:
    return _BY_NAME[name]


def from_numpy(dtype) -> DType:
    """The kiln dtype storing a NumPy dtype; other NumPy types map to their nearest kin."""
    dtype = np.dtype(dtype)
    found = _BY_NP.get(dtype)
    if found is not None:
        return found
    if dtype.kind == "f":
        return float64
    if dtype.kind in "iu":
        return int64
    if dtype.kind == "b":
        return bool_
    raise TypeError(f"kiln has no dtype for NumPy dtype {dtype}")


def get_default_dtype() -> DType:
    return _default_float


def set_default_dtype(dtype: DType) -> None:
    global _default_float
    if not isinstance(dtype, DType) or not dtype.is_floating_point:
        raise TypeError(f"set_default_dtype: only floating-point types are allowed, got {dtype}")
    _default_float = dtype


def scalar_dtype(value) -> DType:
    """The dtype PyTorch gives a Python number standing alone: bool, int64 or the default float."""
    if isinstance(value, (bool, np.bool_)):
        return bool_
    if isinstance(value, (int, np.integer)):
        return int64
    if isinstance(value, (float, np.floating)):
        return _default_float
    raise TypeError(f"expected a number, got {type(value).__name__}")


def promote(a: DType, b: DType) -> DType:
    """The smallest dtype both promote to (torch.promote_types)."""
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    return a if _RANK[a] > _RANK[b] else b


_RESULT_CACHE: dict = {}


def result_type(dims: tuple, zero_dims: tuple, scalars: tuple) -> DType:
    """PyTorch's result type of an operation.

    Operands come in three priority classes: tensors with dimensions, zero-dimensional tensors
    and Python numbers. A lower class only changes the result when its category (bool < integer
    < float) is higher; a Python number then contributes its category's default type.

    Args:
        dims: dtypes of the operands with at least one dimension.
        zero_dims: dtypes of zero-dimensional tensor operands.
        scalars: dtypes (from `scalar_dtype`) of Python-number operands.
    """
    key = (dims, zero_dims, scalars, _default_float)
    hit = _RESULT_CACHE.get(key)
    if hit is not None:
        return hit
    result = None
    for group, is_scalar in ((dims, False), (zero_dims, False), (scalars, True)):
        if not group:
            continue
        best = group[0]
        for d in group[1:]:
            best = promote(best, d)
        if result is None:
            result = best
        elif best.category > result.category:
            result = best if not is_scalar else {INT: int64, FLOAT: _default_float}[best.category]
    _RESULT_CACHE[key] = result
    return result
