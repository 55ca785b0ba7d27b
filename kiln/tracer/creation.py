"""Creating tensors: from Python data and NumPy arrays, constants, ranges and random numbers.

Random numbers come from the `rand` primitive, a pure function of a seed tensor; the seed is
drawn from a generator here, so a tracer can lift it to a graph input and replays match eager.
"""

from __future__ import annotations

import collections
import math
from typing import Sequence

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import P, PRIMITIVES
from kiln.runtime.device import CPU, DEFAULTS, Device, MetaArray, is_host_array, to_device
from kiln.runtime.layouts import in_layout, layout_recipe
from kiln.runtime.mt19937 import TorchStream
from kiln.tracer import layout as formats
from kiln.tracer.errors import op_error
from kiln.tracer.strides import converted, settle
from kiln.tracer.tensor import STATE, WRAPPERS, Size, Tensor, dispatches
from kiln.tracer.unsigned import LIMITED as _LIMITED_UNSIGNED
from kiln.tracer.unsigned import refusal as _unsigned_refusal


def _device(device) -> Device:
    return DEFAULTS.device if device is None else Device(device)


def set_default_device(device) -> None:
    """Where factory functions put tensors when no device is given (torch.set_default_device);
    None restores the CPU. As in PyTorch it holds for the calling thread only."""
    DEFAULTS.device = CPU if device is None else Device(device)


def get_default_device() -> Device:
    return DEFAULTS.device


def _dtype(dtype) -> dt.DType | None:
    if dtype is None or isinstance(dtype, dt.DType):
        return dtype
    if isinstance(dtype, str):
        return dt.from_name(dtype)
    if dtype in (float,):
        return dt.float64
    if dtype in (int,):
        return dt.int64
    if dtype in (bool,):
        return dt.bool_
    return dt.from_numpy(dtype)


def _size(size, keyword=None) -> tuple:
    """A factory's shape: its positional ints (or one sequence of them), or what it got as
    PyTorch's `size=` keyword."""
    if keyword is not None:
        if size:
            raise TypeError("the shape was given both as arguments and as size=")
        size = (keyword,)
    if len(size) == 1 and isinstance(size[0], (tuple, list)):
        size = tuple(size[0])
    out = []
    for s in size:
        if isinstance(s, Tensor):
            s = s.item()
        if not isinstance(s, (int, np.integer)):
            raise TypeError(f"size must be a sequence of ints, got {type(s).__name__} in "
                            f"{size!r}")
        out.append(int(s))
    return tuple(out)


def _infer_data_dtype(data) -> dt.DType:
    """The dtype PyTorch infers from nested Python data."""
    kinds = set()

    def walk(x):
        if isinstance(x, (list, tuple)):
            for v in x:
                walk(v)
        elif isinstance(x, Tensor):
            kinds.add(x.dtype)
        elif isinstance(x, (bool, np.bool_)):
            kinds.add(dt.bool_)
        elif isinstance(x, (int, np.integer)):
            kinds.add(dt.int64)
        elif isinstance(x, (float, np.floating)):
            kinds.add(dt.get_default_dtype())
        elif isinstance(x, (complex, np.complexfloating)):
            kinds.add(dt.default_complex())
        else:
            raise TypeError(f"Could not infer dtype of {type(x).__name__}")
    walk(data)
    if not kinds:
        return dt.get_default_dtype()
    result = kinds.pop()
    for k in kinds:
        result = dt.promote(result, k)
    return result


def _check_ragged(data, depth=0):
    if isinstance(data, (list, tuple)) and data:
        lengths = [len(x) if isinstance(x, (list, tuple)) else None for x in data]
        first = lengths[0]
        for n in lengths[1:]:
            if n != first:
                raise op_error("tensor", f"expected sequence of length {first} at dim "
                               f"{depth + 1} (got {n})", ValueError)
        for x in data:
            _check_ragged(x, depth + 1)


def _as_lists(data):
    """Nested Python sequences other than lists and tuples (deque, range, array.array) as
    lists, as torch.tensor reads any sequence; strings and mappings are not sequences of
    numbers."""
    if isinstance(data, (list, tuple)):
        return type(data)(_as_lists(x) for x in data)
    if isinstance(data, (str, bytes, dict, np.ndarray, Tensor)) or \
            hasattr(data, "__cuda_array_interface__"):
        return data
    if isinstance(data, Sequence) or isinstance(data, collections.deque) or \
            (hasattr(data, "__len__") and hasattr(data, "__getitem__")):
        return [_as_lists(x) for x in data]
    return data


def _to_array(data, dtype: dt.DType | None):
    data = _as_lists(data)
    if isinstance(data, Tensor):
        arr = to_device(data._data, CPU)
        return arr, dtype or data.dtype
    if isinstance(data, np.ndarray) or hasattr(data, "__cuda_array_interface__"):
        return data, dtype or dt.from_numpy(data.dtype)
    if isinstance(data, np.generic):
        return np.asarray(data), dtype or dt.from_numpy(data.dtype)
    if isinstance(data, (list, tuple)):
        _check_ragged(data)
        inferred = _infer_data_dtype(data)
        flat = _unwrap_tensors(data)
        return _numbers_array(flat, dtype or inferred, inferred), dtype or inferred
    if isinstance(data, (bool, int, float, complex)):
        inferred = dt.scalar_dtype(data)
        return _numbers_array(data, dtype or inferred, inferred), dtype or inferred
    raise TypeError(f"tensor(): could not convert data of type {type(data).__name__}")


def _numbers_array(data, kind: dt.DType, inferred: dt.DType) -> np.ndarray:
    """Python numbers (nested lists, of dtype `inferred`) as an array of `kind`. NumPy refuses
    an int out of an integer dtype's range and casts floats blindly; PyTorch wraps an unsigned
    dtype's small int negatives (uint8's -1 is 255) and refuses the rest, and floats out of
    range, with a RuntimeError, an int beyond 64 bits with a ValueError."""
    if kind.category == dt.INT and inferred.is_floating_point:
        values = np.array(data, dtype=np.float64)       # floats: in range, or refused
        return np.frompyfunc(lambda v: _int_element(v, kind), 1, 1)(values).astype(kind.np)
    try:
        return np.array(data, dtype=_parsed_as(kind))
    except OverflowError:
        if kind.category != dt.INT:
            raise
    values = np.array(data, dtype=object)
    return np.frompyfunc(lambda v: _int_element(v, kind), 1, 1)(values).astype(kind.np)


def _int_element(value, kind: dt.DType) -> int:
    if isinstance(value, float):
        return int_fill_value("tensor", value, kind)
    value = int(value)
    if not -2 ** 63 <= value < 2 ** 63:
        raise op_error("tensor", f"Overflow when unpacking long long: {value} does not fit in "
                       "64 bits", ValueError)
    return int_fill_value("tensor", value, kind)


def _parsed_as(kind: dt.DType):
    """The NumPy type Python numbers are read into for a tensor of `kind`: float32 for
    bfloat16, which `tensor` then rounds, as PyTorch converts (through float32)."""
    return np.float32 if kind is dt.bfloat16 else kind.np


def _unwrap_tensors(data):
    if isinstance(data, Tensor):
        return to_device(data._data, CPU)
    if isinstance(data, (list, tuple)):
        return [_unwrap_tensors(x) for x in data]
    return data


def legacy_new(args: tuple, dtype: dt.DType, device, name: str) -> Tensor:
    """What torch.Tensor(...) and torch.FloatTensor(...)-style constructors make: a tensor of
    the given shape (ints or a Size; zeros), a copy of data in `dtype`, or an empty one."""
    if not args:
        return zeros(0, dtype=dtype, device=device)
    if all(isinstance(a, (int, np.integer)) and not isinstance(a, bool) for a in args) or (
            len(args) == 1 and isinstance(args[0], Size)):
        return zeros(_size(args), dtype=dtype, device=device)
    if len(args) == 1:
        data = args[0]
        if isinstance(data, Tensor) and data.dtype is dtype and device is None:
            return data                  # PyTorch's legacy constructor aliases its tensor
        return tensor(data, dtype=dtype, device=device)
    raise TypeError(f"{name}(): takes a shape (ints or a kiln.Size) or one sequence of data, "
                    f"got {', '.join(type(a).__name__ for a in args)}")


class LegacyTensorType(type):
    """torch.FloatTensor, LongTensor, ...: calling one makes a tensor of its dtype
    (`legacy_new`); isinstance(x, kiln.FloatTensor) asks whether x is a float32 tensor (on
    the CPU; kiln.cuda.FloatTensor's on a GPU)."""

    def __call__(cls, *args, device=None):
        if cls.device_type == "cuda":
            from kiln.runtime.device import cuda_is_available
            if not cuda_is_available():
                raise TypeError(f"type kiln.cuda.{cls.__name__} not available: no CUDA GPU "
                                "(kiln.cuda.is_available() is False)")
            device = device or "cuda"
        return legacy_new(args, cls.dtype, device, cls.__name__)

    def __instancecheck__(cls, obj):
        return isinstance(obj, Tensor) and obj.dtype is cls.dtype and \
            obj.device.type == cls.device_type


def legacy_type(name: str, dtype: dt.DType, device_type: str = "cpu") -> type:
    return LegacyTensorType(name, (), {"dtype": dtype, "device_type": device_type,
                                       "__module__": "kiln.cuda" if device_type == "cuda"
                                       else "kiln"})


def tensor(data, *, dtype=None, device=None, requires_grad=False) -> Tensor:
    """A new tensor holding a copy of `data` (nested lists, numbers, arrays or tensors)."""
    dtype = _dtype(dtype)
    arr, kind = _to_array(data, dtype)
    dev = _device(device) if device is not None else (
        data.device if isinstance(data, Tensor) else _device(None))
    if kind is dt.bfloat16 and arr.dtype != kind.np_dtype:
        arr = dt.cast_array(arr, kind)          # a copy, rounded through float32
    source = arr
    arr = np.array(arr, dtype=kind.np, copy=True) if isinstance(arr, np.ndarray) else \
        arr.astype(kind.np, copy=True)
    if arr.ndim > 1 and arr.size and hasattr(source, "strides"):
        # torch.tensor copies an array as `.to` does: a dense one's strides, size-1 dims' too
        strides = converted(source, arr.itemsize)
        if arr.strides != strides:
            arr = in_layout(arr, layout_recipe(arr.shape, strides, arr.itemsize), np)
    out = Tensor._make(to_device(arr, dev), kind, dev)
    if STATE.tracer is not None:
        STATE.tracer.constant(out)
    if requires_grad:
        out.requires_grad_(True)
    return out


def as_tensor(data, dtype=None, device=None) -> Tensor:
    """Like `tensor`, but shares memory with a NumPy array or tensor when it can."""
    dtype = _dtype(dtype)
    if isinstance(data, Tensor):
        out = data if dtype is None else data.to(dtype)
        return out if device is None else out.to(device)
    if is_host_array(data) and (dtype is None or np.dtype(dtype.np) == data.dtype) \
            and dt.from_numpy(data.dtype).np == data.dtype.type and device in (None, "cpu", CPU):
        return Tensor._make(data, dt.from_numpy(data.dtype), CPU)
    return tensor(data, dtype=dtype, device=device)


asarray = as_tensor


def from_numpy(array: np.ndarray) -> Tensor:
    """A tensor sharing memory with `array` (changes to one show in the other)."""
    if not is_host_array(array):
        raise TypeError(f"expected np.ndarray (got {type(array).__name__})")
    kind = dt.from_numpy(array.dtype)
    if np.dtype(kind.np) != array.dtype:
        raise TypeError(f"can't convert np.ndarray of type numpy.{array.dtype}. The only "
                        "supported types are: float64, float32, float16, int64, int32, int16, "
                        "int8, uint8, and bool.")
    return Tensor._make(array, kind, CPU)


def _creation(prim, device, requires_grad, **attrs) -> Tensor:
    out = P.dispatch(prim, (), attrs, device=_device(device))
    if requires_grad:
        out.requires_grad_(True)
    return out


def full(*shape, size=None, fill_value=None, dtype=None, layout=None, device=None,
         requires_grad=False) -> Tensor:
    check_dense_layout("full", layout)
    if fill_value is None:               # full(size, value) positional form
        shape, fill_value = shape[:-1], shape[-1]
    if isinstance(fill_value, Tensor):
        fill_value = fill_value.item()
    shape = _size(shape, size)
    kind = _dtype(dtype) or dt.scalar_dtype(fill_value)
    return _creation(PRIMITIVES["full"], device, requires_grad, shape=shape,
                     value=_cast_value(fill_value, kind), dtype=kind)


def int_fill_value(op: str, value: int | float, kind: dt.DType) -> int:
    """`value` as it fills an integer tensor of dtype `kind`: PyTorch's range check (an
    unsigned dtype takes int negatives down to -max, wrapped: uint8 -1 is 255, -1.0 refused)."""
    out = dt.checked_int(value, kind)
    if out is None:
        raise op_error(op, f"value cannot be converted to type {kind.name} without overflow: "
                       f"{value} is outside {kind.name}'s range")
    return out


def _cast_value(value, kind: dt.DType, op: str = "full"):
    if kind is dt.bool_:
        return bool(value)
    if kind.is_floating_point:
        return float(value)
    if kind.is_complex:
        return complex(value)
    if isinstance(value, complex):
        raise TypeError(f"full: cannot fill a {kind.name} tensor with the complex value "
                        f"{value!r}; give dtype=kiln.complex64 (or complex128)")
    return int_fill_value(op, value if type(value) is float else int(value), kind)


def check_dense_layout(op: str, layout) -> None:
    """A factory's `layout=`: PyTorch's default, strided, is what kiln's factories make."""
    if layout is not None and getattr(layout, "name", None) != "strided":
        raise op_error(op, f"makes dense (strided) tensors only, got layout={layout}; make a "
                       f"sparse tensor with .to_sparse(), .to_sparse_csr() or "
                       f"sparse_coo_tensor()", NotImplementedError)


def _in_layout(out: Tensor, layout) -> Tensor:
    """zeros/empty in a sparse layout, as PyTorch makes them: no stored entries."""
    name = getattr(layout, "name", None)
    if name == "sparse_coo":
        return out.to_sparse()
    if name == "sparse_csr":
        return out.to_sparse_csr()
    check_dense_layout("zeros", layout)
    return out


def zeros(*shape, size=None, dtype=None, layout=None, device=None,
          requires_grad=False) -> Tensor:
    out = full(_size(shape, size), 0, dtype=_dtype(dtype) or dt.get_default_dtype(),
               device=device, requires_grad=requires_grad and layout is None)
    if layout is None:
        return out
    out = _in_layout(out, layout)
    return out.requires_grad_(True) if requires_grad else out


def ones(*shape, size=None, dtype=None, layout=None, device=None, requires_grad=False) -> Tensor:
    check_dense_layout("ones", layout)
    return full(_size(shape, size), 1, dtype=_dtype(dtype) or dt.get_default_dtype(),
                device=device, requires_grad=requires_grad)


def empty(*shape, size=None, dtype=None, layout=None, device=None, requires_grad=False,
          memory_format=None) -> Tensor:
    out = zeros(_size(shape, size), dtype=dtype, layout=layout, device=device,
                requires_grad=requires_grad)
    if memory_format is not None:
        formats.check(memory_format, "empty", out.ndim)
        if memory_format is formats.preserve_format:
            raise op_error("empty", "preserve memory format is unsupported by the empty "
                           "factory; give torch.contiguous_format or torch.channels_last")
    return _in_format(out, memory_format)


def _in_format(out: Tensor, fmt) -> Tensor:
    """`out` (fresh) laid out in memory as a channels-last `fmt` says; other formats as it is."""
    if fmt in (formats.channels_last, formats.channels_last_3d) and out.device.type != "meta":
        out._data = formats.arrange(out.device.xp, out._data, fmt)
    return out


def _like_layout(out: Tensor, input, fmt) -> Tensor:
    """`out` (fresh, shaped as `input`) laid out as a `*_like` factory lays it out: in an
    explicit format, or under preserve_format (the default) as PyTorch's empty_like: with a
    dense input's strides, else dense in the input's order of dims."""
    if fmt is not None and fmt is not formats.preserve_format:
        formats.check(fmt, "empty_like", input.ndim)
        return _in_format(out, fmt)
    if isinstance(input, Tensor):
        settle(out, "preserve", input)
    return out


def _wrapper_like(key: str, input: Tensor, args: tuple, dtype, device, requires_grad,
                  memory_format) -> Tensor:
    """`kiln.zeros_like(w)` and its kin on a wrapper subclass: ATen's op, which its class
    computes (the keywords given are passed on)."""
    from kiln.tracer.dispatch_subclass import call
    kwargs = {k: v for k, v in (("dtype", dtype), ("device", device),
                                ("memory_format", memory_format)) if v is not None}
    out = call(key, (input,) + args, kwargs)
    return out.requires_grad_(True) if requires_grad else out


def _like(input: Tensor, dtype, device):
    return (_dtype(dtype) or input.dtype, device if device is not None else input.device)


def zeros_like(input, *, dtype=None, layout=None, device=None, requires_grad=False,
               memory_format=None) -> Tensor:
    check_dense_layout("zeros_like", layout)
    if WRAPPERS[0] and dispatches(input):
        return _wrapper_like("zeros_like.default", input, (), dtype, device, requires_grad,
                             memory_format)
    return full_like(input, 0, dtype=dtype, device=device, requires_grad=requires_grad,
                     memory_format=memory_format)


def ones_like(input, *, dtype=None, layout=None, device=None, requires_grad=False,
              memory_format=None) -> Tensor:
    check_dense_layout("ones_like", layout)
    if WRAPPERS[0] and dispatches(input):
        return _wrapper_like("ones_like.default", input, (), dtype, device, requires_grad,
                             memory_format)
    return full_like(input, 1, dtype=dtype, device=device, requires_grad=requires_grad,
                     memory_format=memory_format)


def full_like(input, fill_value, *, dtype=None, layout=None, device=None, requires_grad=False,
              memory_format=None) -> Tensor:
    check_dense_layout("full_like", layout)
    if WRAPPERS[0] and dispatches(input):
        return _wrapper_like("full_like.default", input, (fill_value,), dtype, device,
                             requires_grad, memory_format)
    kind, dev = _like(input, dtype, device)
    out = full(tuple(input.shape), fill_value, dtype=kind, device=dev,
               requires_grad=requires_grad)
    return _like_layout(out, input, memory_format)


def empty_like(input, *, dtype=None, layout=None, device=None, requires_grad=False,
               memory_format=None) -> Tensor:
    check_dense_layout("empty_like", layout)
    if WRAPPERS[0] and dispatches(input):
        return _wrapper_like("empty_like.default", input, (), dtype, device, requires_grad,
                             memory_format)
    return zeros_like(input, dtype=dtype, device=device, requires_grad=requires_grad,
                      memory_format=memory_format)


def arange(start=0, end=None, step=1, *, dtype=None, layout=None, device=None, requires_grad=False):
    check_dense_layout("arange", layout)
    if end is None:
        start, end = 0, start
    start, end, step = (v.item() if isinstance(v, Tensor) else v for v in (start, end, step))
    floats = any(isinstance(v, float) for v in (start, end, step))
    kind = _dtype(dtype) or (dt.get_default_dtype() if floats else dt.int64)
    if floats and kind.category < dt.FLOAT and step != 0:
        start, end, step = _integer_range(start, end, step, kind)
    if step == 0:
        raise op_error("arange", "step must be nonzero")
    if (end - start) * step < 0:
        raise op_error("arange", "upper bound and larger bound inconsistent with step sign")
    if kind in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("arange", kind)
    if kind is dt.bool_:
        raise op_error("arange", "\"arange_cpu\" not implemented for 'Bool' (as PyTorch); "
                       "make an int64 range and compare it instead", NotImplementedError)
    return _creation(PRIMITIVES["arange"], device, requires_grad, start=start,
                     stop=end, step=step, dtype=kind)


def _integer_range(start, end, step, kind):
    """An integer arange of floating bounds, as ATen's kernel makes it: start, end and step
    truncated to int64; the length from the truncated ones for int64, from the given ones
    for the narrower types (so `arange(0., -8.000001, -4., dtype=int32)` has three values,
    int64's two). Returns int (start, end, step) whose plain range is that."""
    whole = [int(v) for v in (start, end, step)]        # C's conversion: toward zero
    if whole[2] == 0:
        raise op_error("arange", f"step must be nonzero (step {step} truncated to "
                       f"{kind.name})")
    if kind is dt.int64:
        return tuple(whole)
    n = max(0, math.ceil((end - start) / step))
    return whole[0], whole[0] + n * whole[2], whole[2]


def linspace(start, end, steps, *, dtype=None, layout=None, device=None, requires_grad=False) -> Tensor:
    check_dense_layout("linspace", layout)
    kind = _dtype(dtype) or dt.get_default_dtype()
    if kind in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("linspace", kind)
    if kind is dt.bool_:
        raise op_error("linspace", "\"linspace_cpu\" not implemented for 'Bool' (as "
                       "PyTorch); make a float range and compare it instead", NotImplementedError)
    start, end = _integral_ends(start, end, kind)
    if steps == 1:
        return full((1,), start, dtype=kind, device=device, requires_grad=requires_grad)
    i = position = arange(steps, dtype=dt.float64, device=device)
    step = (end - start) / (steps - 1)
    if kind is dt.float16:
        # ATen steps in float16 itself: the ends and the step rounded to it, each op rounded
        start, end = dt.half_value(start, kind), dt.half_value(end, kind)
        step = dt.half_value(np.float32(end - start) / np.float32(steps - 1), kind)
        i = i.to(kind)
    # PyTorch fills the second half from the end, which makes the last value exact
    half = steps // 2
    values = P.where(position < half, i * step + start, end - (steps - 1 - i) * step)
    out = values.to(kind)
    if requires_grad:
        out.requires_grad_(True)
    return out


def _integral_ends(start, end, kind):
    """linspace/logspace's ends as numbers (0-d tensors read as torch's overload reads them,
    in double); into an integer dtype, converted to it first (toward zero), as ATen steps
    between them."""
    ends = []
    for v in (start, end):
        if isinstance(v, Tensor):
            if v.ndim:
                raise op_error("linspace", f"linspace only supports 0-dimensional start and "
                               f"end tensors, but got a tensor of shape {tuple(v.shape)}")
            v = v.item()
        ends.append(v if kind.category >= dt.FLOAT else int(v))
    return tuple(ends)


def logspace(start, end, steps, base=10.0, *, dtype=None, layout=None, device=None) -> Tensor:
    check_dense_layout("logspace", layout)
    kind = _dtype(dtype) or dt.get_default_dtype()
    start, end = _integral_ends(start, end, kind)
    return (base ** linspace(start, end, steps, dtype=dt.float64, device=device)).to(kind)


def eye(n, m=None, *, dtype=None, layout=None, device=None, requires_grad=False) -> Tensor:
    check_dense_layout("eye", layout)
    m = n if m is None else m
    if _dtype(dtype) in _LIMITED_UNSIGNED:
        raise _unsigned_refusal("eye", _dtype(dtype))
    rows = arange(n, device=device).reshape(n, 1)
    cols = arange(m, device=device).reshape(1, m)
    out = (rows == cols).to(_dtype(dtype) or dt.get_default_dtype())
    if requires_grad:
        out.requires_grad_(True)
    return out


# ----------------------------------------------------------------------------- randomness

class Generator:
    """A random stream (`torch.Generator`): PyTorch's CPU Mersenne Twister, so that
    `manual_seed(s)` gives PyTorch's numbers (`kiln.runtime.mt19937`). Values are drawn on the
    host for every device and copied there."""

    DEFAULT_SEED = 67280421310721            # PyTorch's default seed

    def __init__(self, device="cpu"):
        self.device = _device(device)
        self._initial = self.DEFAULT_SEED
        self._stream = TorchStream(self._initial)

    def manual_seed(self, seed: int) -> "Generator":
        self._initial = int(seed) % (2 ** 64)
        self._stream.seed(self._initial)
        return self

    def seed(self) -> int:
        self.manual_seed(int(np.random.SeedSequence().entropy % (2 ** 63)))
        return self._initial

    def initial_seed(self) -> int:
        return self._initial

    def next_seed(self) -> int:
        """A seed for a sampler kiln keeps outside PyTorch's stream (Poisson, binomial,
        gamma), drawn from this stream."""
        return int(self._stream.words64(1)[0] >> np.uint64(2))

    def get_state(self) -> Tensor:
        return Tensor._make(self._stream.get_state(), dt.uint8, CPU)

    def set_state(self, new_state: Tensor) -> "Generator":
        if not isinstance(new_state, Tensor) or new_state.dtype is not dt.uint8:
            raise TypeError("set_state: expected a kiln.uint8 tensor from get_state()")
        self._stream.set_state(np.asarray(new_state.detach().cpu().numpy()))
        return self


default_generator = Generator()


def manual_seed(seed: int) -> Generator:
    """Seed the global generator (`torch.manual_seed`)."""
    return default_generator.manual_seed(seed)


def seed() -> int:
    return default_generator.seed()


def initial_seed() -> int:
    return default_generator.initial_seed()


def get_rng_state() -> Tensor:
    return default_generator.get_state()


def set_rng_state(state: Tensor) -> None:
    default_generator.set_state(state)


class _MetaDraw:
    """What a stream method returns for a meta tensor: the shape of the draw, no numbers."""

    def __init__(self, shape: tuple, itemsize: int):
        self.shape, self.itemsize = shape, itemsize

    def reshape(self, *shape) -> "_MetaDraw":
        shape = shape[0] if len(shape) == 1 and not isinstance(shape[0], int) else shape
        return _MetaDraw(tuple(shape), self.itemsize)

    def view(self, dtype) -> "_MetaDraw":      # two float parts viewed as one complex number
        size = np.dtype(dtype).itemsize
        return _MetaDraw(self.shape[:-1] + (self.shape[-1] * self.itemsize // size,), size)


class _MetaStream:
    """Stands in for the generator's stream when the tensor is on the meta device: every draw
    method takes the count first, and a dtype, when it has one, second."""

    def __getattr__(self, name: str):
        def draw(n, dtype=np.float64, *args, **kwargs) -> _MetaDraw:
            size = np.dtype(dtype).itemsize if not isinstance(dtype, (int, float)) else 8
            return _MetaDraw((int(n),), size)
        return draw


def random_values(generator: Generator | None, device, kind: dt.DType, draw) -> Tensor:
    """The tensor `draw(stream)` makes from the generator's stream, on `device`.

    Draws happen on the host, in PyTorch's element order. Under a trace the tensor becomes a
    program input that each replay draws afresh with the same `draw`, in the order the eager
    code drew, so a compiled function's random numbers are eager's."""
    gen = generator or default_generator
    dev = _device(device)
    if dev.type == "meta":      # as in PyTorch, a meta tensor draws nothing: the stream stays
        shape = draw(_MetaStream()).shape
        return Tensor._make(MetaArray(shape, kind.np), kind, dev)
    out = Tensor._make(to_device(np.asarray(draw(gen._stream), dtype=kind.np), dev), kind, dev)
    if STATE.tracer is not None:
        STATE.tracer.random_input(out, gen, lambda g: np.asarray(draw(g._stream), kind.np))
    return out


def _seed_tensor(generator: Generator | None, device) -> Tensor:
    """A 0-d int64 seed from the generator, for kiln's own samplers (gamma)."""
    return random_values(generator, device, dt.int64,
                         lambda stream: np.array(int(stream.words64(1)[0] >> np.uint64(2))))


def _count(shape: tuple) -> int:
    return int(np.prod(shape, dtype=np.int64))


def rand(*shape, size=None, generator=None, dtype=None, layout=None, device=None,
         requires_grad=False) -> Tensor:
    check_dense_layout("rand", layout)
    kind = _dtype(dtype) or dt.get_default_dtype()
    if not kind.is_floating_point and not kind.is_complex:
        raise op_error("rand", f"\"check_uniform_bounds\" not implemented for '{kind.name}'",
                       TypeError)
    shape = _size(shape, size)
    if kind.is_complex:        # PyTorch draws the real and imaginary parts, interleaved
        part = kind.to_real().np
        out = random_values(generator, device, kind, lambda stream: stream.uniform(
            2 * _count(shape), part).view(kind.np).reshape(shape))
    else:
        out = random_values(generator, device, kind,
                            lambda stream: stream.uniform(_count(shape), kind.np).reshape(shape))
    if requires_grad:
        out.requires_grad_(True)
    return out


def randn(*shape, size=None, generator=None, dtype=None, layout=None, device=None,
          requires_grad=False) -> Tensor:
    check_dense_layout("randn", layout)
    kind = _dtype(dtype) or dt.get_default_dtype()
    shape = _size(shape, size)
    if kind.is_complex:
        # PyTorch's normal_ on a complex tensor: its real view (real and imaginary parts
        # interleaved) drawn with std 1/sqrt(2), so that E|z|^2 = 1
        part = kind.to_real().np
        out = random_values(generator, device, kind, lambda stream: stream.normal(
            2 * _count(shape), part, std=1 / math.sqrt(2)).view(kind.np).reshape(shape))
    else:
        out = random_values(generator, device, kind,
                            lambda stream: stream.normal(_count(shape), kind.np).reshape(shape))
    if requires_grad:
        out.requires_grad_(True)
    return out


def rand_like(input, *, dtype=None, layout=None, device=None, generator=None) -> Tensor:
    check_dense_layout("rand_like", layout)
    kind, dev = _like(input, dtype, device)
    return _like_layout(rand(tuple(input.shape), generator=generator, dtype=kind, device=dev),
                        input, None)


def randn_like(input, *, dtype=None, layout=None, device=None, generator=None) -> Tensor:
    check_dense_layout("randn_like", layout)
    kind, dev = _like(input, dtype, device)
    return _like_layout(randn(tuple(input.shape), generator=generator, dtype=kind, device=dev),
                        input, None)


def randint(low=0, high=None, size=None, *, generator=None, dtype=None, layout=None, device=None,
            requires_grad=False) -> Tensor:
    check_dense_layout("randint", layout)
    # torch's forms: randint(high, size), randint(low, high, size), and either with size=
    if size is None:                    # randint(high, size)
        if high is None:
            raise TypeError("randint() missing the required argument 'size' (forms: "
                            "randint(high, size), randint(low, high, size))")
        low, high, size = 0, low, high
    elif high is None:                  # randint(high, size=...)
        low, high = 0, low
    if isinstance(size, int) or not isinstance(size, (tuple, list, Size)):
        raise TypeError(f"randint(): size must be a tuple of ints, got {type(size).__name__}")
    if high <= low:
        raise op_error("randint", f"random_ expects 'from' to be less than 'to', but got "
                       f"from={low} >= to={high}")
    shape, kind = _size((size,)), _dtype(dtype) or dt.int64
    out = random_values(generator, device, kind, lambda stream: stream.integers(
        _count(shape), int(low), int(high)).reshape(shape))
    if requires_grad:
        out.requires_grad_(True)
    return out


def randint_like(input, low, high=None, *, dtype=None, layout=None, device=None) -> Tensor:
    check_dense_layout("randint_like", layout)
    kind, dev = _like(input, dtype, device)
    return _like_layout(randint(low, high, tuple(input.shape), dtype=kind, device=dev), input,
                        None)


def randperm(n, *, generator=None, dtype=None, layout=None, device=None) -> Tensor:
    check_dense_layout("randperm", layout)
    kind = _dtype(dtype) or dt.int64
    return random_values(generator, device, kind, lambda stream: stream.permutation(int(n)))


def multinomial(input, num_samples, replacement=False, *, generator=None) -> Tensor:
    """PyTorch's CPU sampler: one draw or none repeated picks the largest `p / q` for
    exponential `q` (top-k of them for several); draws with replacement search the normalized
    cumulative sums with one uniform double each, row by row."""
    gen = generator or default_generator
    if STATE.tracer is not None and num_samples == 1 and input.ndim in (1, 2):
        return _traced_single_draw(input, gen)
    probs = input.detach()._host("multinomial()")
    if probs.dtype.itemsize == 2 and probs.dtype != np.float16:     # bfloat16: as float32
        probs = probs.astype(np.float32)
    rows = probs.reshape(-1, probs.shape[-1])
    if np.any(rows < 0) or not np.all(np.isfinite(rows)) or np.any(rows.sum(-1) <= 0):
        raise op_error("multinomial", _BAD_DISTRIBUTION)
    if not replacement and num_samples > rows.shape[-1]:
        raise op_error("multinomial", "cannot sample n_sample > prob_dist.size(-1) samples "
                       "without replacement")
    if not replacement or num_samples == 1:
        q = gen._stream.exponential(rows.size, rows.dtype).reshape(rows.shape)
        scores = rows / q
        picked = np.argsort(-scores, axis=-1, kind="stable")[:, :num_samples]
    else:
        cum = np.cumsum(rows.astype(np.float64), axis=-1)
        cum /= cum[:, -1:]
        picked = np.stack([np.searchsorted(row, gen._stream.fraction(num_samples, np.float64),
                                           side="left") for row in cum])
    result = picked.astype(np.int64).reshape(probs.shape[:-1] + (num_samples,))
    return Tensor._make(to_device(result, input.device), dt.int64, input.device)


_BAD_DISTRIBUTION = ("probability tensor contains either `inf`, `nan` or element < 0, or its "
                     "rows sum to zero")


def _traced_single_draw(input: Tensor, gen: Generator) -> Tensor:
    """multinomial's one draw per row under a trace (a Categorical's sample in a compiled
    step), as eager's: the index of the largest `p / q` for exponential `q` drawn in
    `input`'s precision, the first among equals (argmax). The distribution's check is a graph
    node (check_index of whether any row is bad, which must be 0) that the draw passes
    through, so every replay checks its own probabilities; no value is read into Python."""
    x = input.detach()
    if x.dtype is dt.bfloat16:
        x = x.to(dt.float32)
    bad = ((x < 0) | ~x.isfinite()).any() | (x.sum(-1) <= 0).any()
    checked = P.check_index(bad.to(dt.int64), size=1, op="multinomial", kind="RuntimeError",
                            negative=False, ignore=None, message=_BAD_DISTRIBUTION)
    shape, kind = tuple(x.shape), x.dtype
    q = random_values(gen, input.device, kind, lambda stream: stream.exponential(
        _count(shape), kind.np).reshape(shape))
    return (x / q).argmax(-1, keepdim=True) + checked


def bernoulli(input, p=None, *, generator=None) -> Tensor:
    """1 where a uniform draw lies below the probability: a number `p` draws doubles, a
    tensor of probabilities draws in its own precision (PyTorch's CPU kernels)."""
    shape = tuple(input.shape)
    if p is not None:
        return random_values(generator, input.device, input.dtype, lambda stream:
                             stream.bernoulli_scalar(_count(shape), float(p), input.dtype.np)
                             .reshape(shape))
    precision = np.float64 if input.dtype is dt.float64 else np.float32
    u = random_values(generator, input.device, dt.from_numpy(precision),
                      lambda stream: stream.fraction(_count(shape), precision).reshape(shape))
    return zero_gradient((u < input.detach()).to(input.dtype), [input])


def normal(mean=0.0, std=1.0, size=None, *, generator=None, dtype=None, device=None,
           layout=None, pin_memory=False, requires_grad=False) -> Tensor:
    """Standard normals scaled by std and shifted by mean; tensor parameters broadcast, and
    their gradient is zero (PyTorch's: a draw is not reparameterized here)."""
    if layout is not None and getattr(layout, "name", None) != "strided":
        raise op_error("normal", f"draws dense (strided) tensors only, got layout={layout}",
                       NotImplementedError)
    params = [v for v in (mean, std) if isinstance(v, Tensor)]
    if params:
        shape = tuple(np.broadcast_shapes(*(tuple(v.shape) for v in params)))
        kind = dt.promote(*(v.dtype for v in params)) if len(params) == 2 else params[0].dtype
        z = randn(shape, generator=generator, dtype=kind, device=params[0].device)
        mean, std = (v.detach() if isinstance(v, Tensor) else v for v in (mean, std))
        return zero_gradient(z * std + mean, params)
    out = randn(_size((size,)) if isinstance(size, int) else _size(tuple(size)),
                generator=generator, dtype=dtype, device=device) * std + mean
    return out.requires_grad_(True) if requires_grad else out


def zero_gradient(out: Tensor, inputs) -> Tensor:
    """`out` with a zero gradient to each of `inputs` that requires one (a draw's derivative
    in PyTorch: `bernoulli(p)`, `normal(mean, std)`): selected from `out` everywhere, so its
    values are exactly out's."""
    for x in inputs:
        if x.requires_grad and STATE.grad_enabled:
            try:
                fits = np.broadcast_shapes(tuple(x.shape), tuple(out.shape)) == tuple(out.shape)
            except ValueError:
                fits = False
            never = full(tuple(out.shape), False, dtype=dt.bool_, device=out.device)
            out = P.where(never, (x if fits else x.sum()).to(out.dtype), out)
    return out


_ = Sequence


def standard_gamma(alpha: Tensor, generator=None) -> Tensor:
    """Gamma(alpha, 1) draws, differentiable in alpha by implicit reparameterization
    (torch._standard_gamma)."""
    return P.gamma_sample(alpha, _seed_tensor(generator, alpha.device))
