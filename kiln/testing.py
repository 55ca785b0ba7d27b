"""torch.testing for kiln tensors: assert_close, make_tensor and the deprecated assert_allclose.

`assert_close` compares two inputs that may be kiln tensors, NumPy arrays, Python or NumPy
scalars, None, or sequences and mappings nesting them. It works in two steps, as PyTorch's
does: first the inputs are paired up leaf by leaf (a length, key or type that does not match
fails here, before any value is read), then each pair is compared and the first failing pair
raises. Values are always compared on the host, in NumPy, without autograd.
"""

from __future__ import annotations

import collections.abc
import math
import warnings
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

import kiln
from kiln import Tensor
from kiln.ir import dtypes as _dtypes

__all__ = ["assert_close", "make_tensor", "assert_allclose"]

# (rtol, atol) by NumPy dtype name (bfloat16: ml_dtypes'); integers and bool are compared
# exactly; complex types use their real type's tolerances.
DEFAULT_TOLERANCES = {
    "float16": (1e-3, 1e-5),
    "bfloat16": (1.6e-2, 1e-5),
    "float32": (1.3e-6, 1e-5),
    "float64": (1e-7, 1e-7),
    "complex64": (1.3e-6, 1e-5),
    "complex128": (1e-7, 1e-7),
}
# assert_allclose's own, looser table (PyTorch keeps it for that function only)
ALLCLOSE_TOLERANCES = {"float16": (1e-3, 1e-3), "float32": (1e-4, 1e-5), "float64": (1e-5, 1e-8)}

# The dtype each kind of Python number is compared as (it picks the default tolerances).
_NUMBER_DTYPES = {bool: "bool", int: "int64", float: "float64", complex: "complex128"}
_BOOLS = (bool, np.bool_)
_NUMBERS = (int, float, complex, np.number, np.bool_)
_TENSOR_LIKES = (Tensor, np.ndarray)
# promotion climbs these categories (torch.promote_types); within one, NumPy's rule agrees
_CATEGORY = {"b": 0, "u": 1, "i": 1, "f": 2, "c": 3}


@dataclass(frozen=True)
class _TensorLike:
    """What assert_close reads from a kiln tensor or a NumPy array."""

    values: np.ndarray      # dense, on the host
    dtype: object           # shown in messages: kiln.float32, or numpy.int16 for an array
    shape: kiln.Size
    device: kiln.device
    layout: object          # kiln.strided or kiln.sparse_coo
    stride: tuple | None    # None for a sparse tensor


@dataclass(frozen=True)
class _Pair:
    """One leaf of `actual` and the matching leaf of `expected`, ready to compare."""

    path: tuple             # the keys and indices leading here: (1, 'a')
    kind: str               # "none", "bool", "number" or "tensor"
    actual: Any             # for "tensor", a _TensorLike; for "number", a Python number
    expected: Any
    rtol: float = 0.0
    atol: float = 0.0


@dataclass(frozen=True)
class _Options:
    """assert_close's keyword arguments, except `msg` (see its docstring)."""

    allow_subclasses: bool
    rtol: float | None
    atol: float | None
    equal_nan: bool
    check_device: bool
    check_dtype: bool
    check_layout: bool
    check_stride: bool


def assert_close(actual: Any, expected: Any, *, allow_subclasses: bool = True,
                 rtol: float | None = None, atol: float | None = None, equal_nan: bool = False,
                 check_device: bool = True, check_dtype: bool = True, check_layout: bool = True,
                 check_stride: bool = False,
                 msg: str | Callable[[str], str] | None = None) -> None:
    """Assert that `actual` and `expected` are close (torch.testing.assert_close).

    Numbers and tensor elements match when `|actual - expected| <= atol + rtol * |expected|`,
    when they are equal (so inf matches inf), or when both are NaN and `equal_nan` is set.

    Args:
        actual, expected: kiln tensors, NumPy arrays, Python/NumPy scalars, None, or sequences
            and mappings of them (compared item by item). A tensor pairs only with a tensor,
            an array with an array, a number with a number.
        allow_subclasses: if False, paired tensors (or arrays) must be of exactly one type.
        rtol, atol: the tolerances, given both or neither. Neither: chosen by dtype (the
            looser of the two dtypes'), 0 and 0 (exact) for integers and bool.
        equal_nan: whether two NaNs match.
        check_device, check_dtype, check_layout: whether these attributes must agree. Without
            the dtype check, both sides are promoted to a common dtype before comparing.
        check_stride: whether strided tensors must have the same strides.
        msg: replaces the message of a failed comparison; a callable receives the generated
            message and returns the one to raise.

    Raises:
        AssertionError: the inputs differ (structure, attributes or values).
        TypeError: a pair of inputs cannot be compared (a tensor and a list, say).
        ValueError: only one of rtol and atol was given.
    """
    options = _Options(allow_subclasses, rtol, atol, equal_nan, check_device, check_dtype,
                       check_layout, check_stride)
    for pair in _pair_up(actual, expected, (), options):
        problem = _compare(pair, options)
        if problem is None:
            continue
        problem = _with_path(problem, pair.path)
        if callable(msg):
            problem = msg(problem)
        elif msg is not None:
            problem = msg
        raise AssertionError(problem)


def assert_allclose(actual: Any, expected: Any, rtol: float | None = None,
                    atol: float | None = None, equal_nan: bool = True, msg: str = "") -> None:
    """The deprecated torch.testing.assert_allclose: assert_close with dtypes unchecked, NaNs
    equal by default, older default tolerances (float16 1e-3/1e-3, float32 1e-4/1e-5, float64
    1e-5/1e-8), and non-tensor inputs turned into tensors (`expected` of `actual`'s dtype)."""
    warnings.warn("kiln.testing.assert_allclose() is deprecated, as "
                  "torch.testing.assert_allclose() is since PyTorch 1.12; use "
                  "kiln.testing.assert_close() instead", FutureWarning, stacklevel=2)
    if not isinstance(actual, Tensor):
        actual = kiln.tensor(actual)
    if not isinstance(expected, Tensor):
        expected = kiln.tensor(expected, dtype=actual.dtype)
    if rtol is None and atol is None:
        rtol, atol = _loosest([actual.dtype.name, expected.dtype.name], ALLCLOSE_TOLERANCES)
    assert_close(actual, expected, rtol=rtol, atol=atol, equal_nan=equal_nan,
                 check_dtype=False, msg=msg or None)


# ----------------------------------------------------------------------------- pairing up
def _pair_up(actual: Any, expected: Any, path: tuple, options: _Options) -> list[_Pair]:
    """The leaves of `actual` and `expected`, paired; raises on a structure that differs."""
    if _is_sequence(actual) and _is_sequence(expected):
        if len(actual) != len(expected):
            raise AssertionError(_with_path(f"The length of the sequences mismatch: "
                                            f"{len(actual)} != {len(expected)}", path))
        pairs = []
        for i in range(len(actual)):
            pairs += _pair_up(actual[i], expected[i], path + (i,), options)
        return pairs
    if isinstance(actual, collections.abc.Mapping) and \
            isinstance(expected, collections.abc.Mapping):
        missing, extra = set(expected) - set(actual), set(actual) - set(expected)
        if missing or extra:
            raise AssertionError(_with_path(
                f"The keys of the mappings do not match:\n"
                f"Missing keys in the actual mapping: {sorted(missing)}\n"
                f"Additional keys in the actual mapping: {sorted(extra)}", path))
        pairs = []
        for key in _sorted_if_possible(actual):
            pairs += _pair_up(actual[key], expected[key], path + (key,), options)
        return pairs
    return [_leaf_pair(actual, expected, path, options)]


def _leaf_pair(actual: Any, expected: Any, path: tuple, options: _Options) -> _Pair:
    """Two leaves as a pair of one kind, with their tolerances; a TypeError if no kind fits."""
    if actual is None or expected is None:
        return _Pair(path, "none", actual, expected)
    if isinstance(actual, _BOOLS) and isinstance(expected, _BOOLS):
        return _Pair(path, "bool", bool(actual), bool(expected))
    if isinstance(actual, _NUMBERS) and isinstance(expected, _NUMBERS):
        actual, expected = _python_number(actual), _python_number(expected)
        dtypes = [_NUMBER_DTYPES[type(actual)], _NUMBER_DTYPES[type(expected)]]
        return _Pair(path, "number", actual, expected, *_tolerances(dtypes, options, path))
    if _tensor_likes_pair(actual, expected, options.allow_subclasses):
        actual, expected = _tensor_like(actual), _tensor_like(expected)
        dtypes = [actual.values.dtype.name, expected.values.dtype.name]
        return _Pair(path, "tensor", actual, expected, *_tolerances(dtypes, options, path))
    raise TypeError(_with_path(f"No comparison pair was able to handle inputs of type "
                               f"{type(actual)} and {type(expected)}.", path))


def _is_sequence(x: Any) -> bool:
    # a string is a sequence of strings, all the way down
    return isinstance(x, collections.abc.Sequence) and not isinstance(x, str)


def _sorted_if_possible(keys) -> list:
    """Keys in sorted order, so the first failure reported does not depend on insertion order;
    in the mapping's order when they cannot be sorted (keys of mixed types)."""
    try:
        return sorted(keys)
    except TypeError:
        return list(keys)


def _python_number(x: Any) -> bool | int | float | complex:
    return x.item() if isinstance(x, np.generic) else x


def _tensor_likes_pair(actual: Any, expected: Any, allow_subclasses: bool) -> bool:
    """Whether two tensors (or two arrays) can be compared: one's type is the other's or a
    subclass of it (exactly the same type if `allow_subclasses` is False)."""
    if not (isinstance(actual, _TENSOR_LIKES) and isinstance(expected, _TENSOR_LIKES)):
        return False
    if not allow_subclasses:
        return type(actual) is type(expected)
    return isinstance(actual, type(expected)) or isinstance(expected, type(actual))


def _tensor_like(x: Tensor | np.ndarray) -> _TensorLike:
    if isinstance(x, np.ndarray):
        stride = tuple(s // x.itemsize for s in x.strides)
        return _TensorLike(x, f"numpy.{x.dtype.name}", kiln.Size(x.shape), kiln.device("cpu"),
                           kiln.strided, stride)
    if x.layout is not kiln.strided:      # compared by value: its dense form
        return _TensorLike(x.to_dense().numpy(force=True), x.dtype, x.shape, x.device,
                           x.layout, None)
    # numpy(force=True): the values whether or not x requires grad or sits on a GPU
    return _TensorLike(x.numpy(force=True), x.dtype, x.shape, x.device, x.layout, x.stride())


def _tolerances(dtypes: list[str], options: _Options, path: tuple) -> tuple[float, float]:
    """(rtol, atol): the caller's, or the loosest default among `dtypes`."""
    if (options.rtol is None) != (options.atol is None):
        missing = "rtol" if options.rtol is None else "atol"
        raise ValueError(_with_path(f"Both 'rtol' and 'atol' must be either specified or "
                                    f"omitted, but got no {missing}.", path))
    if options.rtol is not None:
        return options.rtol, options.atol
    return _loosest(dtypes, DEFAULT_TOLERANCES)


def _loosest(dtypes: list[str], table: dict) -> tuple[float, float]:
    tolerances = [table.get(name, (0.0, 0.0)) for name in dtypes]
    return max(rtol for rtol, _ in tolerances), max(atol for _, atol in tolerances)


def _with_path(message: str, path: tuple) -> str:
    if not path:
        return message
    where = "".join(str([key]) for key in path)     # [1]['a'], as Python prints the keys
    return f"{message}\n\nThe failure occurred for item {where}"


# ----------------------------------------------------------------------------- comparing
def _compare(pair: _Pair, options: _Options) -> str | None:
    """The message saying how the pair differs, or None if it matches."""
    a, e = pair.actual, pair.expected
    if pair.kind == "none":
        return None if a is None and e is None else f"None mismatch: {a} is not {e}"
    if pair.kind == "bool":
        return None if a is e else f"Booleans mismatch: {a} is not {e}"
    if pair.kind == "number":
        return _compare_numbers(a, e, pair.rtol, pair.atol, options)
    return _compare_tensor_likes(a, e, pair.rtol, pair.atol, options)


def _compare_numbers(a, e, rtol: float, atol: float, options: _Options) -> str | None:
    if options.check_dtype and type(a) is not type(e):
        return f"The (d)types do not match: {type(a)} != {type(e)}."
    if a == e or (options.equal_nan and _is_nan(a) and _is_nan(e)):
        return None
    difference = abs(a - e)
    if math.isfinite(difference) and difference <= atol + rtol * abs(e):
        return None
    return _scalar_mismatch(a, e, rtol, atol)


def _is_nan(x) -> bool:
    return x != x       # NaN is the one number unequal to itself (complex NaNs included)


def _compare_tensor_likes(a: _TensorLike, e: _TensorLike, rtol: float, atol: float,
                          options: _Options) -> str | None:
    mismatch = _attribute_mismatch(a, e, options)
    if mismatch is not None:
        return mismatch
    actual, expected = a.values, e.values
    if actual.dtype != expected.dtype:
        common = _promote(actual.dtype, expected.dtype)
        actual, expected = actual.astype(common), expected.astype(common)
    matches = _isclose(actual, expected, rtol, atol, options.equal_nan)
    if matches.all():
        return None
    if actual.ndim == 0:
        return _scalar_mismatch(actual.item(), expected.item(), rtol, atol)
    return _tensor_mismatch(actual, expected, matches, rtol, atol)


def _attribute_mismatch(a: _TensorLike, e: _TensorLike, options: _Options) -> str | None:
    """The first attribute that differs, checked in PyTorch's order."""
    checks = [("shape", a.shape, e.shape, True)]
    if a.layout is not e.layout:
        checks.append(("layout", a.layout, e.layout, options.check_layout))
    else:
        checks.append(("stride()", a.stride, e.stride,
                       options.check_stride and a.layout is kiln.strided))
    checks.append(("device", a.device, e.device, options.check_device))
    checks.append(("dtype", a.dtype, e.dtype, options.check_dtype))
    for name, ours, theirs, checked in checks:
        if checked and ours != theirs:
            return f"The values for attribute '{name}' do not match: {ours} != {theirs}."
    return None


def _promote(a: np.dtype, b: np.dtype) -> np.dtype:
    """torch.promote_types on NumPy dtypes: across categories (bool < integer < floating <
    complex) the higher category's type wins as it is (int64 and float16 give float16, where
    NumPy widens to float64); within a category, and from floating to complex, NumPy's rule
    agrees with PyTorch's."""
    if "bfloat16" in (a.name, b.name):      # ml_dtypes' type, unknown to NumPy's promotion
        return _dtypes.promote(_dtypes.from_numpy(a), _dtypes.from_numpy(b)).np_dtype
    low, high = sorted((a, b), key=lambda d: _CATEGORY[d.kind])
    if _CATEGORY[low.kind] < _CATEGORY[high.kind] and low.kind != "f":
        return high
    return np.promote_types(a, b)


def _isclose(actual: np.ndarray, expected: np.ndarray, rtol: float, atol: float,
             equal_nan: bool) -> np.ndarray:
    """Element-wise match: equal (inf == inf), within tolerance, or both NaN if `equal_nan`.
    Floating arrays are measured in their own dtype, as PyTorch does; integers in float64."""
    matches = actual == expected
    if rtol == 0 and atol == 0 and actual.dtype.kind in "biu":
        return matches
    if actual.dtype.kind in "biu":
        actual, expected = actual.astype(np.float64), expected.astype(np.float64)
    with np.errstate(all="ignore"):
        difference = np.abs(actual - expected)
        matches |= np.isfinite(difference) & (difference <= atol + rtol * np.abs(expected))
    if equal_nan:
        matches |= np.isnan(actual) & np.isnan(expected)
    return matches


def _scalar_mismatch(a, e, rtol: float, atol: float) -> str:
    """PyTorch's message for two numbers (or 0-d tensors, given as Python numbers)."""
    difference = abs(a - e)
    relative = math.inf if e == 0 else difference / abs(e)
    return _mismatch("Scalars", f"Expected {e} but got {a}.", f"Absolute difference: {difference}",
                     f"Relative difference: {relative}", rtol, atol)


def _tensor_mismatch(actual: np.ndarray, expected: np.ndarray, matches: np.ndarray,
                     rtol: float, atol: float) -> str:
    """PyTorch's message for two arrays: how many elements differ, and the greatest absolute
    and relative differences among them (NaN counts as greatest; the first of equals wins)."""
    total, bad = matches.size, matches.size - int(matches.sum())
    counts = f"Mismatched elements: {bad} / {total} ({bad / total:.1%})"
    if actual.dtype.kind in "biu":
        # int64 cannot wrap around as uint8 would; the relative difference of integers is a
        # true division, which PyTorch computes in its default float type, float32
        actual, expected = actual.astype(np.int64), expected.astype(np.int64)
    with np.errstate(all="ignore"):
        absolute = np.abs(actual - expected).ravel()
        absolute[matches.ravel()] = 0
        scale = np.abs(expected).ravel()
        if absolute.dtype.kind == "i":
            relative = absolute.astype(np.float32) / scale.astype(np.float32)
        else:
            relative = absolute / scale
        relative[matches.ravel()] = 0
    worst_abs, worst_rel = int(np.argmax(absolute)), int(np.argmax(relative))
    return _mismatch(
        "Tensor-likes", counts,
        f"Greatest absolute difference: {absolute[worst_abs].item()} at index "
        f"{_index(worst_abs, actual.shape)}",
        f"Greatest relative difference: {relative[worst_rel].item()} at index "
        f"{_index(worst_rel, actual.shape)}", rtol, atol)


def _index(flat: int, shape: tuple) -> tuple:
    return tuple(int(i) for i in np.unravel_index(flat, shape))


def _mismatch(what: str, detail: str, absolute: str, relative: str, rtol: float,
              atol: float) -> str:
    """'<what> are not close!' (or 'equal', when both tolerances are 0), the detail line and
    the two difference lines, each with its tolerance unless the comparison was exact."""
    exact = rtol == 0 and atol == 0
    if not exact:
        absolute += f" (up to {atol} allowed)"
        relative += f" (up to {rtol} allowed)"
    return f"{what} are not {'equal' if exact else 'close'}!\n\n{detail}\n{absolute}\n{relative}"


# ----------------------------------------------------------------------------- make_tensor
def make_tensor(*shape: int | tuple | list, dtype: kiln.dtype, device: str | kiln.device,
                low: float | None = None, high: float | None = None,
                requires_grad: bool = False, noncontiguous: bool = False,
                exclude_zero: bool = False, memory_format: Any = None) -> Tensor:
    """A tensor of random values drawn uniformly from [low, high) (torch.testing.make_tensor).

    Args:
        shape: the sizes, as integers or one sequence: make_tensor(2, 3) or make_tensor((2, 3)).
        dtype, device: the tensor's dtype and device (both required).
        low, high: the range, clamped to what `dtype` can hold. Defaults: bool [0, 2), uint8
            [0, 10), other integers [-9, 10), floating [-9, 9).
        requires_grad: make a leaf requiring grad (floating dtypes only).
        noncontiguous: return a strided view instead of a contiguous tensor (ignored for
            fewer than two elements).
        exclude_zero: replace zeros by 1 (bool, integers) or the dtype's smallest normal
            number (floating).
        memory_format: lay the result out so (`kiln.channels_last` for 4 dims), as
            `Tensor.to(memory_format=...)` does.

    Raises:
        ValueError: low >= high, low or high NaN, a range outside the dtype, requires_grad for
            a non-floating dtype, or both noncontiguous and memory_format.
        TypeError: `dtype` is not a kiln dtype.
    """
    if len(shape) == 1 and isinstance(shape[0], collections.abc.Sequence):
        shape = shape[0]
    shape = tuple(shape)
    if not isinstance(dtype, kiln.dtype):
        raise TypeError(f"make_tensor: dtype must be a kiln dtype (kiln.float32, ...), got "
                        f"{dtype!r}")
    if noncontiguous and memory_format is not None:
        raise ValueError(f"The parameters `noncontiguous` and `memory_format` are mutually "
                         f"exclusive, but got noncontiguous={noncontiguous} and "
                         f"memory_format={memory_format}")
    if requires_grad and not dtype.is_floating_point:
        raise ValueError(f"`requires_grad=True` is not supported for boolean and integral "
                         f"dtypes, but got dtype={dtype}")
    low, high = _sampling_range(dtype, low, high)
    noncontiguous = noncontiguous and math.prod(shape) > 1
    if noncontiguous:
        # draw twice as many columns and keep every other one, starting at the second: a
        # strided view whose values differ from its neighbours', at a nonzero offset
        shape = shape[:-1] + (2 * shape[-1],)
    if dtype.is_floating_point:
        result = _uniform(shape, dtype, device, low, high)
    else:
        result = kiln.randint(low, high, shape, dtype=dtype, device=device)
    if noncontiguous:
        result = result[..., 1::2]
    if memory_format is not None:
        result = result.to(memory_format=memory_format)
    if exclude_zero:
        result[result == 0] = kiln.finfo(dtype).tiny if dtype.is_floating_point else 1
    if requires_grad:
        result.requires_grad_(True)
    return result


def _sampling_range(dtype: kiln.dtype, low: float | None,
                    high: float | None) -> tuple[float, float]:
    """[low, high) for `dtype`: the defaults filled in, checked, clamped to the values the dtype
    holds; for bool and integers both ends are rounded up (high stays exclusive)."""
    if dtype is kiln.bool:
        lowest, highest, default_low, default_high = 0, 2, 0, 2
    elif dtype.is_floating_point:
        info = kiln.finfo(dtype)
        lowest, highest, default_low, default_high = info.min, info.max, -9, 9
    else:
        info = kiln.iinfo(dtype)
        # randint cannot draw int64's largest value: its exclusive end would overflow
        highest = info.max + (0 if dtype is kiln.int64 else 1)
        lowest, default_low, default_high = info.min, -9, 10
    low = default_low if low is None else low
    high = default_high if high is None else high
    if _is_nan(low) or _is_nan(high):
        raise ValueError(f"`low` and `high` cannot be NaN, but got low={low} and high={high}")
    if low == high and dtype.is_floating_point:
        warnings.warn("Passing `low==high` to make_tensor for floating types is deprecated "
                      "(as in PyTorch since 2.1); use kiln.full(...) instead", FutureWarning,
                      stacklevel=3)
    elif low >= high:
        raise ValueError(f"`low` must be less than `high`, but got {low} >= {high}")
    if high < lowest or low >= highest:
        raise ValueError(f"The value interval specified by `low` and `high` is [{low}, {high}), "
                         f"but {dtype} only supports [{lowest}, {highest})")
    low, high = min(max(low, lowest), highest), min(max(high, lowest), highest)
    if not dtype.is_floating_point:
        return math.ceil(low), math.ceil(high)
    return low, high


def _uniform(shape: tuple, dtype: kiln.dtype, device, low: float, high: float) -> Tensor:
    result = kiln.empty(shape, dtype=dtype, device=device)
    if high - low < kiln.finfo(dtype).max:
        return result.uniform_(low, high)
    # the width of the range would overflow the dtype: draw from half the range and double
    return result.uniform_(low / 2, high / 2).mul_(2)
