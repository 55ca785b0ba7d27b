"""Element types of tensors and IR values, and PyTorch's type-promotion rules."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True, eq=False)
class DType:
    """One element type. Instances are singletons, so `is` and `==` agree."""

    name: str          # PyTorch's spelling: "float32"
    short: str         # the IR listing's spelling: "f32"
    np: type           # the NumPy scalar type that stores it
    category: int      # 0 bool, 1 integer, 2 floating, 3 complex: promotion climbs categories
    # derived once, as plain attributes: the dispatcher reads them on every op
    np_dtype: np.dtype = field(init=False, repr=False)        # np.dtype(np)
    is_floating_point: bool = field(init=False, repr=False)   # category == FLOAT
    is_complex: bool = field(init=False, repr=False)          # category == COMPLEX

    def __post_init__(self):
        object.__setattr__(self, "np_dtype", np.dtype(self.np))
        object.__setattr__(self, "is_floating_point", self.category == FLOAT)
        object.__setattr__(self, "is_complex", self.category == COMPLEX)

    @property
    def is_signed(self) -> bool:
        return self.name not in ("bool", "uint8", "uint16", "uint32", "uint64")

    def to_real(self) -> "DType":
        """The real dtype of this dtype's parts (complex64 -> float32); a real dtype itself."""
        return _TO_REAL.get(self, self)

    def to_complex(self) -> "DType":
        """The complex dtype with parts of this dtype (float32 -> complex64)."""
        found = _TO_COMPLEX.get(self)
        if found is None:
            raise RuntimeError(f"to_complex: {self} has no complex counterpart (float16 would "
                               "need complex32, which kiln does not have)")
        return found

    @property
    def itemsize(self) -> int:
        return self.np_dtype.itemsize

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    def __reduce__(self):  # pickling by name keeps the singletons unique (DataLoader workers)
        return (from_name, (self.name,))

    is_quantized = False       # QuantizedDType's is True


# bfloat16's NumPy storage type is ml_dtypes' (optional: `pip install ml_dtypes`, or
# kiln[bfloat16]), imported when a bfloat16 value is first stored: importing ml_dtypes costs
# about 0.6 s of CPU, several times the rest of `import kiln`
def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):       # (ValueError: sys.modules[name] is None)
        return False


HAS_BFLOAT16 = _installed("ml_dtypes")
NO_CUDA_BFLOAT16 = ("kiln has no bfloat16 on CUDA devices (CuPy has no bfloat16 type): convert "
                    "the tensor first, e.g. x.float() or x.half(), or keep it on the CPU")
NO_ML_DTYPES = ("bfloat16 needs the ml_dtypes package, which stores its values in NumPy: "
                "pip install ml_dtypes (or pip install kiln[bfloat16])")


@dataclass(frozen=True, eq=False)
class _UnstoredDType(DType):
    """A dtype whose NumPy storage type is not installed (bfloat16 without ml_dtypes): the
    name exists, so scripts that only mention it run; storing a value raises the install
    hint."""

    def __post_init__(self):
        object.__setattr__(self, "is_floating_point", self.category == FLOAT)
        object.__setattr__(self, "is_complex", self.category == COMPLEX)

    def __repr__(self) -> str:
        return f"kiln.{self.name}"

    def __getattribute__(self, name):
        if name in ("np", "np_dtype", "itemsize"):
            raise RuntimeError(NO_COMPLEX32 if object.__getattribute__(self, "name") ==
                               "complex32" else NO_ML_DTYPES)
        return object.__getattribute__(self, name)


@dataclass(frozen=True, eq=False)
class _LateDType(DType):
    """A dtype whose NumPy storage type is imported on first use (bfloat16's, from ml_dtypes):
    `np` and `np_dtype` become plain attributes then, as every other dtype's are."""

    def __post_init__(self):
        object.__setattr__(self, "is_floating_point", self.category == FLOAT)
        object.__setattr__(self, "is_complex", self.category == COMPLEX)
        object.__delattr__(self, "np")          # (found by __getattr__ until imported)

    def __getattr__(self, name):
        if name not in ("np", "np_dtype"):
            raise AttributeError(name)
        from ml_dtypes import bfloat16 as storage
        object.__setattr__(self, "np", storage)
        object.__setattr__(self, "np_dtype", np.dtype(storage))
        _BY_NP[self.np_dtype] = self
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        return f"kiln.{self.name}"


BOOL, INT, FLOAT, COMPLEX = 0, 1, 2, 3

bool_ = DType("bool", "b8", np.bool_, BOOL)
uint8 = DType("uint8", "u8", np.uint8, INT)
int8 = DType("int8", "i8", np.int8, INT)
int16 = DType("int16", "i16", np.int16, INT)
int32 = DType("int32", "i32", np.int32, INT)
int64 = DType("int64", "i64", np.int64, INT)
float16 = DType("float16", "f16", np.float16, FLOAT)
float32 = DType("float32", "f32", np.float32, FLOAT)
float64 = DType("float64", "f64", np.float64, FLOAT)
# bfloat16: float32's exponent with an 8-bit significand, stored as ml_dtypes' NumPy type.
# Arithmetic on it runs in float32 and rounds each result once (kiln.tracer.dispatch).
bfloat16 = _LateDType("bfloat16", "bf16", None, FLOAT) if HAS_BFLOAT16 else \
    _UnstoredDType("bfloat16", "bf16", None, FLOAT)
# The floating types too narrow to compute in: reductions and normalizations widen them to
# float32 and round the result once, as PyTorch's CPU kernels do.
HALF = (float16, bfloat16)
# complex: a pair of float32 (float64) parts, stored as NumPy's complex64 (complex128)
complex64 = DType("complex64", "c64", np.complex64, COMPLEX)
complex128 = DType("complex128", "c128", np.complex128, COMPLEX)
_TO_REAL = {complex64: float32, complex128: float64}
_TO_COMPLEX = {float32: complex64, float64: complex128, complex64: complex64,
               complex128: complex128}
NO_COMPLEX32 = ("kiln has no complex32 (chalf): NumPy has no half-precision complex type; use "
                "complex64 (kiln.cfloat) instead")
# the name exists (scripts that mention it import); making a tensor of it raises NO_COMPLEX32
complex32 = _UnstoredDType("complex32", "c32", None, COMPLEX)

# PyTorch's "limited support" unsigned types: they store, copy, view and convert, but PyTorch
# 2.13's CPU kernels compute only a few ops on them (mul, div, sum, eq, bitwise and/or/xor,
# ...), and they promote only with a floating type (`promote`); the dispatcher refuses the rest
# (`refuse_unsigned` in kiln.tracer.dispatch), as PyTorch does.
uint16 = DType("uint16", "u16", np.uint16, INT)
uint32 = DType("uint32", "u32", np.uint32, INT)
uint64 = DType("uint64", "u64", np.uint64, INT)
LIMITED_UNSIGNED = (uint16, uint32, uint64)

ALL = (bool_, uint8, int8, int16, int32, int64, float16, bfloat16, float32, float64, complex64,
       complex128, uint16, uint32, uint64)
# PyTorch's C++ names of the scalar types, which its promotion errors print
SCALAR_TYPE_NAMES = {bool_: "Bool", uint8: "Byte", int8: "Char", int16: "Short", int32: "Int",
                     int64: "Long", float16: "Half", bfloat16: "BFloat16", float32: "Float",
                     float64: "Double", complex64: "ComplexFloat", complex128: "ComplexDouble",
                     uint16: "UInt16", uint32: "UInt32", uint64: "UInt64"}
_BY_NAME = {d.name: d for d in ALL}
_BY_NAME.update({"bool_": bool_, "half": float16, "float": float32, "double": float64,
                 "short": int16, "int": int32, "long": int64, "cfloat": complex64,
                 "cdouble": complex128, "complex32": complex32, "chalf": complex32})
_BY_NP = {np.dtype(d.np): d for d in ALL if d is not bfloat16}     # (bfloat16: once imported)

# Within a category the wider type wins; float16 < float32 < float64, uint8 < int8 < int16 <
# int32 < int64; float16 and bfloat16 (same width, neither holds the other) meet at float32, and
# uint8 and int8 (neither holds the other) at int16 (`promote`).
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
    if dtype.name == "bfloat16" and HAS_BFLOAT16 and dtype == bfloat16.np_dtype:
        return bfloat16         # (an array of ml_dtypes' type made before kiln stored one)
    if dtype.kind == "f":
        return float64
    if dtype.kind in "iu":
        return int64
    if dtype.kind == "b":
        return bool_
    if dtype.kind == "c":
        return complex128
    raise TypeError(f"kiln has no dtype for NumPy dtype {dtype}")


def cast_array(x, dtype: DType):
    """Array `x` (NumPy or CuPy) in `dtype`'s storage type. A value reaches bfloat16 through
    float32, as PyTorch converts it: a float64 or an int64 rounds to float32 first, then to
    bfloat16 (to nearest, ties to even)."""
    if x.dtype.kind == "c" and dtype.category != COMPLEX:
        if dtype is bool_:
            return x != 0
        x = x.real                 # PyTorch drops the imaginary parts (NumPy would warn)
    if dtype is bfloat16 and x.dtype.kind in "biuf" and x.dtype != np.float32:
        x = x.astype(np.float32)
    return x.astype(dtype.np)


def bfloat16_value(number) -> float:
    """A Python number rounded to bfloat16 (through float32, as PyTorch converts it); beyond
    float32's range, an infinity, as in PyTorch, without NumPy's overflow warning."""
    return half_value(number, bfloat16)


def half_value(number, dtype: DType) -> float:
    """A Python number rounded to float16 or bfloat16 (`HALF`) as PyTorch converts a scalar
    operand: through float32 first; beyond the range, an infinity, without NumPy's warning."""
    with np.errstate(over="ignore"):
        return float(np.float32(number).astype(dtype.np))


# (lowest, highest) value of each integer dtype, for the two conversions of a Python int below
_INT_RANGE = {d: (int(np.iinfo(d.np).min), int(np.iinfo(d.np).max)) for d in ALL
              if d.category == INT}
_ANY = (-math.inf, math.inf)


def wrapped_int(value: int, dtype: DType) -> int:
    """A Python int operand of an arithmetic op or comparison on an integer tensor, as PyTorch
    converts it: modulo 2**bits (int8 + 1000 adds -24). Beyond the 64-bit range, PyTorch's
    OverflowError. (Quantized dtypes, outside the table, take their own rules.)"""
    low, high = _INT_RANGE.get(dtype, _ANY)
    if low <= value <= high:
        return value
    if not -2 ** 63 <= value < 2 ** 64:
        raise OverflowError(f"int too big to convert: {value} does not fit in 64 bits")
    bits = 8 * np.dtype(dtype.np).itemsize
    value &= (1 << bits) - 1
    return value - (1 << bits) if low and value > high else value


def checked_int(value: int | float, dtype: DType) -> int | None:
    """A Python number that fills an integer tensor (tensor(), full, fill_, where, clamp), as
    PyTorch converts it, or None where PyTorch refuses it ("cannot be converted without
    overflow"): in range (a float truncated toward zero; NaN and inf refused), or for an
    unsigned dtype an int down to -highest, wrapped."""
    low, high = _INT_RANGE.get(dtype, _ANY)
    if low <= value <= high:
        return int(value)
    if type(value) is float:
        return None
    if not low and -high <= value < 0:
        return value + high + 1
    return None


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
    if isinstance(value, (complex, np.complexfloating)):
        return default_complex()
    raise TypeError(f"expected a number, got {type(value).__name__}")


def default_complex() -> DType:
    """The complex dtype of a Python complex number: the default float's complex counterpart."""
    return complex128 if _default_float is float64 else complex64


def promote(a: DType, b: DType) -> DType:
    """The smallest dtype both promote to (torch.promote_types)."""
    if a is b:
        return a
    if a in LIMITED_UNSIGNED or b in LIMITED_UNSIGNED:
        return _promote_limited(a, b)
    if a.is_complex or b.is_complex:
        # complex meets a float by its parts: float64 + complex64 gives complex128
        parts = promote(a.to_real(), b.to_real()) if a.category >= FLOAT and \
            b.category >= FLOAT else (a if a.is_complex else b).to_real()
        return complex128 if parts is float64 else complex64
    if a.category != b.category:
        return a if a.category > b.category else b
    if a in HALF and b in HALF:
        return float32
    if {a, b} == {uint8, int8}:
        return int16
    return a if _RANK[a] > _RANK[b] else b


def _promote_limited(a: DType, b: DType) -> DType:
    """PyTorch 2.13 promotes uint16/32/64 with a floating type only (to that type)."""
    if b.is_floating_point:
        return b
    if a.is_floating_point:
        return a
    raise RuntimeError("Promotion for uint16, uint32, uint64 types is not supported, attempted "
                       f"to promote {SCALAR_TYPE_NAMES[a]} and {SCALAR_TYPE_NAMES[b]}")


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
        elif result.is_complex:
            continue
        elif best.is_complex:
            # a lower class's complex keeps a float's precision: float64 tensor * 1j is
            # complex128, float32 tensor + a 0-d complex128 tensor is complex64 (as PyTorch)
            result = result.to_complex() if result.category == FLOAT else best
        elif best.category > result.category:
            result = best if not is_scalar else {INT: int64, FLOAT: _default_float}[best.category]
    _RESULT_CACHE[key] = result
    return result


@dataclass(frozen=True, eq=False, repr=False)
class QuantizedDType(DType):
    """A quantized element type (torch.quint8, qint8, qint32): integers that stand for
    `(q - zero_point) * scale`. Only kiln.tracer.quantized computes on them; they are kept out of
    `ALL` and promotion, and the dispatcher refuses them (`refuse_quantized`)."""

    is_quantized = True

    @property
    def is_signed(self) -> bool:
        raise RuntimeError("isSignedType not supported for quantized types")


quint8 = QuantizedDType("quint8", "qu8", np.uint8, INT)
qint8 = QuantizedDType("qint8", "qi8", np.int8, INT)
qint32 = QuantizedDType("qint32", "qi32", np.int32, INT)
_BY_NAME.update(quint8=quint8, qint8=qint8, qint32=qint32)
