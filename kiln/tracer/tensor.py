"""The Tensor: an array on a device plus its autograd identity (and, while tracing, its IR value).

Operations are attached as methods by `kiln.tracer.methods`; everything here is storage,
metadata and conversion.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from kiln.ir import dtypes as dt
from kiln.runtime import pending_checks
from kiln.runtime.device import CPU, Device, MetaArray, device_of_array, to_device
from kiln.tracer import layout
from kiln.tracer.errors import named_dim_error, op_error
from kiln.tracer.storage import element_offset


class _State(threading.local):
    """Mode flags read by the dispatcher on every op, one set per thread (as PyTorch's grad
    mode is): a thread evaluating under `no_grad` leaves another thread's training alone, and
    only the thread that runs a traced function records into its trace. The class attributes
    are each new thread's starting values."""

    grad_enabled = True
    inference = False
    tracer = None        # the active kiln.tracer.trace.Tracer, or None
    saved_hooks = ()     # the thread's active saved_tensors_hooks (pack, unpack), innermost last
    hooks_disabled = ()  # messages of the thread's disable_saved_tensors_hooks blocks
    tf_modes = ()        # the thread's TorchFunctionModes, innermost last (torch_function.py)
    tf_off = 0           # DisableTorchFunction depth: no __torch_function__ at all
    tf_subclass_off = 0  # DisableTorchFunctionSubclass depth: modes only
    dispatch_modes = ()  # the thread's TorchDispatchModes, innermost last (dispatch_mode.py)
    no_dispatch = 0      # no_dispatch() depth: neither modes nor subclasses' __torch_dispatch__
    in_dispatch_mode = 0  # how many mode handlers this thread is inside


STATE = _State()

# How many threads have a trace active. The dispatcher reads this plain counter first and its
# own thread's STATE.tracer only when some thread traces: a thread-local read costs about 1% of
# a small eager op. Changed only through `set_tracer`.
TRACING = [0]
_TRACING_LOCK = threading.Lock()


# How many inference_mode blocks are open, in all threads: the dispatcher reads this plain
# counter before its thread's STATE.inference, as TRACING before STATE.tracer.
INFERENCE = [0]


class InferenceVersion(list):
    """The version counter of an inference tensor (one an op made under inference_mode), which
    its views share: `Tensor.is_inference()` is whether a tensor's counter is one."""

    __slots__ = ()


# Whether a profiler or an op observer (kiln.profiler) watches every primitive: the eager fast
# paths that skip the dispatcher (a full sum or mean, softmax) then take it, so they are seen.
OBSERVED = [False]

# Whether a Tensor subclass whose __torch_dispatch__ computes its ops has been defined
# (kiln.tracer.dispatch_subclass): the methods that read memory directly check this first.
WRAPPERS = [0]


def dispatches(t) -> bool:
    """Whether `t`'s ops go to its class's `__torch_dispatch__` (kiln.tracer.dispatch_subclass):
    the class has one that computes, and no `no_dispatch()` block is active."""
    return type(t)._dispatches and not STATE.no_dispatch


def set_tracer(tracer) -> None:
    """Make `tracer` (None: no trace) this thread's active trace."""
    with _TRACING_LOCK:
        TRACING[0] += (tracer is not None) - (STATE.tracer is not None)
        STATE.tracer = tracer


class Tensor:
    # `_base`: None, or for a view (a movement op whose result shares its input's memory)
    # (the input, the primitive and its attrs, the shared version counter's value when the
    # view's grad_fn was last right, False if it was taken of a tensor requiring grad with grad
    # mode off); see kiln.tracer.autograd's "views" section. `__dict__`: a user's own
    # attributes (`p.no_weight_decay = True`), as on PyTorch's tensors (the dict itself is made
    # on first use)
    __slots__ = ("_data", "dtype", "device", "_requires_grad", "_grad", "_grad_fn", "_version",
                 "_hooks", "_retains_grad", "_trace", "_base", "__weakref__", "_name",
                 "__dict__")
    __array_priority__ = 1000   # numpy_scalar * tensor dispatches to Tensor.__rmul__
    # the public name, as PyTorch's class is `torch.Tensor`: print(type(x)) shows <class
    # 'kiln.Tensor'> (and `torch.Tensor` under kiln run's printouts), pickles name kiln.Tensor
    __module__ = "kiln"
    _dispatches = False     # True on a subclass whose __torch_dispatch__ computes its ops

    def __init__(self, *args, device=None):
        """`torch.Tensor(...)`, PyTorch's legacy constructor: Tensor(2, 3) or Tensor(size) is a
        float32 tensor of that shape (zeros: PyTorch leaves the memory uninitialized),
        Tensor(data) a float32 copy of a list or array (a float32 tensor itself), Tensor() an
        empty one. Prefer kiln.tensor / kiln.zeros."""
        if type(self) is not Tensor and hasattr(self, "_data"):
            return              # a subclass made by Tensor.__new__ (see torch_function.py)
        from kiln.tracer.creation import legacy_new
        made = legacy_new(args, dt.float32, device, "Tensor")
        self._data, self.dtype, self.device = made._data, made.dtype, made.device
        self._requires_grad = False
        self._grad = None
        self._grad_fn = None
        self._version = [0]
        self._hooks = None
        self._retains_grad = False
        self._trace = None
        self._base = None

    @staticmethod
    def _make(data, dtype: dt.DType, device: Device, cls: type | None = None) -> "Tensor":
        """The dispatcher's fast constructor: no checks, no copies; `cls` for subclasses. A
        static method, so the dispatcher holds it as a plain function (a classmethod would be
        bound again on every call)."""
        t = object.__new__(Tensor if cls is None else cls)
        t._data = data
        t.dtype = dtype
        t.device = device
        t._requires_grad = False
        t._grad = None
        t._grad_fn = None
        t._version = [0]
        t._hooks = None
        t._retains_grad = False
        t._trace = None
        t._base = None
        return t

    # ------------------------------------------------------------------ metadata
    # `requires_grad` and `grad_fn` are read through properties, as PyTorch's: a view whose
    # memory was written through another view (or its base) since its history was set takes a
    # fresh one first, and the setter refuses what PyTorch refuses. kiln's own code sets the
    # slots behind them (`_requires_grad`, `_grad_fn`).
    @property
    def requires_grad(self) -> bool:
        view = self._base
        if view is not None and view[3] != self._version[0]:
            _refresh_view(self)
        return self._requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if type(value) is not bool:
            raise RuntimeError(f"requires_grad must be a bool, got {type(value).__name__}")
        if self.grad_fn is not None:
            hint = ("" if value else " If you want to use a computed variable in a subgraph "
                    "that doesn't require differentiation use var_no_grad = var.detach().")
            raise RuntimeError("you can only change requires_grad flags of leaf variables." +
                               hint)
        if value and not (self.dtype.is_floating_point or self.dtype.is_complex):
            raise RuntimeError(f"only Tensors of floating point and complex dtype can require "
                               f"gradients (this one is {self.dtype.name})")
        self._requires_grad = value

    @property
    def grad_fn(self):
        """The node that made this tensor (None for a leaf); read-only, as PyTorch's."""
        view = self._base
        if view is not None and view[3] != self._version[0]:
            _refresh_view(self)
        return self._grad_fn

    @property
    def grad(self) -> "Tensor | None":
        """The gradient accumulated by backward, or None. Under a trace a read is noted: code
        that branches on `p.grad is None` depends on how the call began, and a replay must
        check that again (the compiler's guard)."""
        if TRACING[0] and STATE.tracer is not None:
            STATE.tracer.grad_read(self)
        return self._grad

    @grad.setter
    def grad(self, value: "Tensor | None") -> None:
        # the user's own zero_grad (`p.grad = None`) clears it for a trace as kiln's does
        if value is None and TRACING[0] and STATE.tracer is not None:
            STATE.tracer.grad_cleared(self)
        self._grad = value

    @property
    def shape(self) -> "Size":
        return Size(self._data.shape)

    def size(self, dim: int | None = None):
        if dim is None:
            return Size(self._data.shape)
        return self._data.shape[_dim(dim, self._data.ndim)]

    def dim(self) -> int:
        return self._data.ndim

    @property
    def ndim(self) -> int:
        return self._data.ndim

    def numel(self) -> int:
        return int(self._data.size)

    def nelement(self) -> int:
        return int(self._data.size)

    def element_size(self) -> int:
        return self.dtype.itemsize

    @property
    def is_leaf(self) -> bool:
        return self.grad_fn is None

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def is_meta(self) -> bool:
        return self.device.type == "meta"

    @property
    def data(self) -> "Tensor":
        """A tensor sharing this one's memory, outside autograd (PyTorch's `.data`). Unlike
        `detach()` it has a version counter of its own, as PyTorch's: a write through it does
        not flag this tensor as modified for the backward of ops that saved it."""
        if WRAPPERS[0] and dispatches(self):
            return self.detach()            # a wrapper's: aten.detach, as PyTorch's
        out = Tensor._make(self._data, self.dtype, self.device)
        if STATE.tracer is not None:
            STATE.tracer.alias(out, self)
        return out

    @data.setter
    def data(self, other: "Tensor") -> None:
        # between two __torch_dispatch__ wrappers only the tensor's metadata moves, as in
        # PyTorch: the Python attributes (a payload, a scale) stay those of `self`
        if WRAPPERS[0] and type(self)._dispatches != type(other)._dispatches:
            raise RuntimeError(f"setting .data: {type(self).__name__} and "
                               f"{type(other).__name__} have incompatible tensor types (one is a "
                               "__torch_dispatch__ wrapper subclass, the other is not)")
        if STATE.tracer is not None:
            STATE.tracer.replace_data(self, other)
        self._data, self.dtype, self.device = other._data, other.dtype, other.device

    @property
    def _version_number(self) -> int:
        return self._version[0]

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def is_contiguous(self, memory_format=None) -> bool:
        if memory_format is None:
            return bool(self._data.flags.c_contiguous)
        layout.check(memory_format, "is_contiguous", self.ndim)
        return layout.is_contiguous_as(self._data.shape, self.stride(), memory_format)

    def data_ptr(self) -> int:
        if self.device.type == "meta":
            return 0
        if isinstance(self._data, MetaArray):      # a wrapper subclass's: no memory
            raise self._data._refuse("Tensor.data_ptr()")
        if self.device.type == "cpu":
            return self._data.__array_interface__["data"][0]
        return self._data.data.ptr

    def storage_offset(self) -> int:
        """Elements from the start of the memory this tensor views to its first element (a
        view's `_data` is an array view whose `.base` chain ends at the memory's array)."""
        if isinstance(self._data, MetaArray):         # meta, or a wrapper subclass's
            return 0
        return element_offset(self._data)

    def stride(self, dim: int | None = None):
        data = self._data
        strides = tuple(s // data.itemsize for s in data.strides)
        if data.size == 0 and not any(strides):
            # NumPy makes an empty array with zero strides; torch, with a dense tensor's
            strides = layout.strides_of(data.shape, layout.contiguous_format)
        return strides if dim is None else strides[_dim(dim, self.ndim)]

    def get_device(self) -> int:
        return -1 if self.device.type == "cpu" else self.device.index

    def __len__(self) -> int:
        if self._data.ndim == 0:
            raise TypeError("len() of a 0-d tensor")
        return self._data.shape[0]

    def __hash__(self) -> int:
        return id(self)

    # ------------------------------------------------------------------ conversion
    def _read(self, what: str):
        """Every read of values into Python passes here, so a tracer can report it, and a
        GPU's queued index checks are read first (the host waits for the GPU here anyway)."""
        if STATE.tracer is not None:
            STATE.tracer.value_read(self, what)
        if WRAPPERS[0] and type(self)._dispatches:
            refuse = getattr(self._data, "_refuse", None)      # a wrapper has no data
            if refuse is not None:
                raise refuse(f"Tensor.{what}")
        if self.device.type != "cpu":
            if self.device.type == "meta":
                raise RuntimeError(f"Tensor.{what} cannot be called on meta tensors: a meta "
                                   "tensor has a shape and dtype but no data")
            pending_checks.host_read(what)
        return self._data

    def _host(self, what: str) -> np.ndarray:
        """The values as a NumPy array, read as `_read` reads them: a cuda tensor's are copied
        to the host (NumPy cannot take device memory, and CuPy refuses `np.asarray` of it)."""
        return to_device(self._read(what), CPU)

    def numpy(self, *, force: bool = False) -> np.ndarray:
        if WRAPPERS[0] and dispatches(self) and not force:
            raise RuntimeError(f".numpy() is not supported for tensor subclasses (a "
                               f"{type(self).__name__} computes its ops in __torch_dispatch__; "
                               "convert what it holds)")
        # as in PyTorch, refused only while grad mode is on: under no_grad (and so inside a
        # custom Function's forward) a tensor that requires grad converts
        if self.requires_grad and STATE.grad_enabled and not force:
            raise RuntimeError("Can't call numpy() on Tensor that requires grad. "
                               "Use tensor.detach().numpy() instead.")
        if self.device.type != "cpu" and not force:
            raise TypeError(f"can't convert {self.device} device type tensor to numpy. "
                            "Use Tensor.cpu() to copy the tensor to host memory first.")
        if self.dtype is dt.bfloat16 and not force:
            # PyTorch's message: NumPy has no bfloat16 of its own (force=True, kiln's own
            # reads, gets the ml_dtypes array that stores it)
            raise TypeError("Got unsupported ScalarType BFloat16: convert the tensor first, "
                            "e.g. x.float().numpy()")
        data = self._read("numpy()")
        return data if self.device.type == "cpu" else to_device(data, CPU)

    def __array__(self, dtype=None, copy=None):
        if self.dtype is dt.bfloat16 and dtype is None:
            self.numpy()                     # raises PyTorch's TypeError
        data = self._host("__array__")
        return data if dtype is None else data.astype(dtype)

    def item(self):
        if WRAPPERS[0] and dispatches(self):
            return self._wrapper_scalar()
        if self._data.size != 1:
            raise op_error("item", f"a Tensor with {self._data.size} elements cannot be "
                           "converted to Scalar")
        tracer = STATE.tracer
        if tracer is not None and self.dtype.is_floating_point and tracer.returns_read():
            # `return loss.item()`: nothing in the function sees the number, so no graph
            # break; the compiled program outputs the tensor and a replay reads it
            if self.device.type != "cpu":
                pending_checks.host_read("item()")
            value = float(to_device(self._data, CPU).reshape(()).item())
            tracer.returned_items[id(value)] = (value, self)
            return value
        return _python(self._host("item()").reshape(())).item()

    def tolist(self):
        if WRAPPERS[0] and dispatches(self):
            raise RuntimeError(f".tolist() is not supported for tensor subclasses, got "
                               f"{type(self).__name__}")
        return _python(self._host("tolist()")).tolist()

    def __bool__(self) -> bool:
        if WRAPPERS[0] and dispatches(self):
            return bool(self._wrapper_scalar())
        if self._data.size != 1:
            raise RuntimeError(f"Boolean value of Tensor with {self._data.size} values is "
                               "ambiguous")
        return bool(self._host("bool()").reshape(()))

    def __float__(self) -> float:
        return float(self._scalar("float()"))

    def __complex__(self) -> complex:
        return complex(self._scalar("complex()"))

    def __int__(self) -> int:
        return int(self._scalar("int()"))

    def __index__(self) -> int:
        if self.dtype.category > dt.INT or self._data.size != 1:     # a bool counts, as there
            raise TypeError("only integer tensors of a single element can be converted to an "
                            "index")
        return int(self._scalar("__index__"))

    def _wrapper_scalar(self):
        """A wrapper's one value: aten._local_scalar_dense, computed by its class."""
        if self._data.size != 1:
            raise op_error("item", f"a Tensor with {self._data.size} elements cannot be "
                           "converted to Scalar")
        from kiln.tracer.dispatch_subclass import call
        return call("_local_scalar_dense.default", (self,))

    def _scalar(self, what: str):
        if WRAPPERS[0] and dispatches(self):
            return self._wrapper_scalar()
        if self._data.size != 1:
            raise ValueError(f"only one element tensors can be converted to Python scalars "
                             f"(got {self._data.size} elements)")
        return _python(self._host(what).reshape(())).item()

    def __format__(self, spec: str) -> str:
        if self._data.ndim == 0 and spec:
            return format(self.item(), spec)
        return repr(self)

    # ------------------------------------------------------------------ repr
    def __repr__(self, *, tensor_contents: str | None = None) -> str:
        if WRAPPERS[0] and dispatches(self):
            from kiln.tracer.dispatch_subclass import wrapper_repr
            return wrapper_repr(self, tensor_contents)
        if self.device.type == "meta":      # no values to show: PyTorch prints the size
            extras = ["device='meta'", f"size={tuple(self._data.shape)}"]
            if self.dtype is not dt.get_default_dtype():
                extras.append(f"dtype=kiln.{self.dtype.name}")
            if self.grad_fn is not None:
                extras.append(f"grad_fn=<{self.grad_fn.name()}>")
            elif self.requires_grad:
                extras.append("requires_grad=True")
            return "tensor(..., " + ", ".join(extras) + ")"
        if self.device.type != "cpu":
            pending_checks.host_read("printing a tensor")
        data = to_device(self._data, CPU)
        prefix = "tensor("
        if type(self) is not Tensor and _shows_own_name(type(self)):
            prefix = type(self).__name__ + "("      # as PyTorch prints a subclass: S([1., 2.])
        body = _format_array(data, self.dtype, len(prefix))
        extras = []
        if self.device.type != "cpu":
            extras.append(f"device='{self.device}'")
        if data.size == 0 and data.ndim != 1:
            extras.append(f"size={tuple(data.shape)}")
        default = dt.get_default_dtype()     # as PyTorch: the default dtype goes unnamed
        if self.dtype.is_complex:
            default = dt.default_complex()
        if self.dtype not in (default, dt.int64, dt.bool_) or data.size == 0 and (
                self.dtype is not default):
            extras.append(f"dtype=kiln.{self.dtype.name}")
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{self.grad_fn.name()}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        return _with_suffixes(prefix + body, extras, len(prefix))

    __str__ = __repr__


def _refresh_view(view: Tensor) -> None:
    from kiln.tracer.autograd import refresh_view
    refresh_view(view)


def _shows_own_name(cls: type) -> bool:
    """A subclass that takes part in __torch_function__ prints under its own name."""
    from kiln.tracer.torch_function import takes_part
    return takes_part(cls)


class Size(tuple):
    """A tensor's shape: a tuple that prints like PyTorch's `torch.Size([2, 3])`."""

    def __repr__(self) -> str:
        return f"kiln.Size({list(self)})"

    def numel(self) -> int:
        return math.prod(self)


def _dim(dim: int, ndim: int) -> int:
    lo, hi = -max(ndim, 1), max(ndim, 1) - 1
    if isinstance(dim, str):
        raise named_dim_error(dim)
    if not lo <= dim <= hi:
        raise IndexError(f"Dimension out of range (expected to be in range of [{lo}, {hi}], "
                         f"but got {dim})")
    return dim % max(ndim, 1)


def _python(data: np.ndarray) -> np.ndarray:
    """A host array whose item()/tolist() give Python numbers: bfloat16 as float32 (exact)."""
    return data.astype(np.float32) if data.dtype.name == "bfloat16" else data


class _PrintOptions:
    """How tensors print (`kiln.set_printoptions`, PyTorch's defaults)."""
    precision, threshold, edgeitems, linewidth = 4, 1000, 3, 80
    sci_mode = None         # None: scientific notation when the values call for it


PRINT_OPTS = _PrintOptions()


def _with_suffixes(text: str, suffixes: list, indent: int) -> str:
    """`text` closed with `, dtype=...` and the like, each on a new line where it would pass
    the line width (PyTorch's layout)."""
    last = len(text) - text.rfind("\n") + 1
    for suffix in suffixes:
        if last + len(suffix) + 2 > PRINT_OPTS.linewidth:
            text += ",\n" + " " * indent + suffix
            last = indent + len(suffix)
        else:
            text += ", " + suffix
            last += len(suffix) + 2
    return text + ")"


def _format_array(data: np.ndarray, dtype: dt.DType, indent: int = len("tensor(")) -> str:
    """The body of a tensor's repr, laid out by PyTorch's rules (`PRINT_OPTS`): one width for
    every element, chosen from the values shown; a row wrapped at the line width; past
    `threshold` elements only `edgeitems` at each end of every dimension."""
    data = _python(data)                 # NumPy formats float32 (bfloat16's values exactly)
    if data.size == 0:
        return "[]"
    summarize = data.size > PRINT_OPTS.threshold
    shown = _summarized(data) if summarize else data
    if data.dtype.kind == "c":          # a real and an imaginary column per element
        formats = (_Formatter(shown.real), _Formatter(shown.imag))
    else:
        formats = (_Formatter(shown),)
    return _nested_str(data, indent, summarize, formats)


class _Formatter:
    """One element's text, padded to the widest of the values shown: integers as they are,
    floats whole (`3.`), fixed (`precision` digits) or scientific when their magnitudes span
    more than 1000x, pass 1e8 or fall under 1e-4 (or as `sci_mode` says)."""

    def __init__(self, values: np.ndarray):
        self.floating = values.dtype.kind in "fc"
        self.whole, self.sci, self.width = True, False, 1
        flat = values.reshape(-1)
        if not self.floating:
            self.width = max([len(self._plain(v)) for v in flat.tolist()] + [1])
            return
        flat = flat.astype(np.float64)
        nonzero = flat[np.isfinite(flat) & (flat != 0)]
        if nonzero.size == 0:
            return
        mags = np.abs(nonzero)
        lo, hi = mags.min(), mags.max()
        self.whole = bool(np.all(nonzero == np.ceil(nonzero)))
        sci = PRINT_OPTS.sci_mode
        self.sci = (hi / lo > 1000.0 or hi > 1.0e8 or lo < 1.0e-4) if sci is None else sci
        self.width = max(len(self._text(v)) + (self.whole and not self.sci)
                         for v in nonzero.tolist())

    @staticmethod
    def _plain(v) -> str:
        return str(v)

    def _text(self, v: float) -> str:
        p = PRINT_OPTS.precision
        if self.sci:
            return f"{v:.{p}e}"
        return f"{v:.0f}" if self.whole else f"{v:.{p}f}"

    def format(self, v) -> str:
        if not self.floating:
            text = self._plain(v)
        else:
            text = self._text(v)
            if self.whole and not self.sci and math.isfinite(v):
                text += "."
        return text.rjust(self.width)


def _summarized(data: np.ndarray) -> np.ndarray:
    """The values a summarized repr shows: `edgeitems` at each end of every dimension."""
    e = PRINT_OPTS.edgeitems
    if data.ndim == 0:
        return data
    if data.ndim > 1 and not e:
        return data[(slice(0, 0),) * data.ndim]
    if data.shape[0] > 2 * e:
        data = np.concatenate([data[:e], data[-e:]])
    return data if data.ndim == 1 else np.stack([_summarized(x) for x in data])


def _element(v, formats: tuple) -> str:
    if len(formats) == 1:
        return formats[0].format(v)
    real, imag = formats[0].format(v.real), (formats[1].format(v.imag) + "j").lstrip()
    return real + imag if imag[0] in "+-" else real + "+" + imag


def _nested_str(data: np.ndarray, indent: int, summarize: bool, formats: tuple) -> str:
    e = PRINT_OPTS.edgeitems
    cut = summarize and data.ndim and data.shape[0] > 2 * e
    if data.ndim == 0:
        return _element(data.item(), formats)
    if data.ndim == 1:
        width = formats[0].width + 2 + (formats[1].width + 1 if len(formats) > 1 else 0)
        per_line = max(1, (PRINT_OPTS.linewidth - indent) // width)
        if summarize and not e:
            items = ["..."]
        elif cut:
            items = ([_element(v, formats) for v in data[:e].tolist()] + [" ..."] +
                     [_element(v, formats) for v in data[-e:].tolist()])
        else:
            items = [_element(v, formats) for v in data.tolist()]
        lines = [", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]
        return "[" + (",\n" + " " * (indent + 1)).join(lines) + "]"
    rows = range(data.shape[0])
    if cut:
        parts = ([_nested_str(data[i], indent + 1, summarize, formats) for i in rows[:e]] +
                 ["..."] +
                 [_nested_str(data[i], indent + 1, summarize, formats) for i in rows[-e:]])
    else:
        parts = [_nested_str(data[i], indent + 1, summarize, formats) for i in rows]
    return "[" + ("," + "\n" * (data.ndim - 1) + " " * (indent + 1)).join(parts) + "]"
