"""Tensor subclasses with their own `__torch_dispatch__`: the class computes every op on them.

PyTorch's "wrapper subclass" pattern: `Tensor._make_wrapper_subclass(cls, size, ...)` makes a
tensor of class `cls` with a shape, strides, dtype, device and requires_grad but no memory (its
`_data` is a `WrapperArray`, which answers what describes an array and refuses, naming the
class, whatever would read values); the instance keeps whatever it wraps (a LoggingTensor its
`elem`, a TwoTensor its `a` and `b`). Each primitive that meets one at `dispatch.apply` is
handed, below autograd, to `cls.__torch_dispatch__(func, types, args, kwargs)` with the same
`kiln.ops.aten` OpOverloads modes get: modes first, then subclasses (subclasses before their
bases, otherwise left to right, the next one tried when a handler returns NotImplemented).
The result gets the primitive's autograd node, as a mode's does, so a backward's primitives on
wrapper gradients reach the class too.

The Tensor methods that work on memory directly (detach, copy_, fill_, zero_, the in-place
ops, item, setitem, new_empty, ...) ask `tensor.dispatches(self)` and send such a tensor's
call here (`call`, `inplace`, `setitem`) under ATen's name for it (aten.detach.default,
aten.add_.Tensor, ...). Inside `no_dispatch()` neither modes nor classes are asked: a
subclass with data of its own computes there as a plain tensor.

Nothing is paid while no such class exists: the dispatcher's one check is the counter it
already reads for modes (`dispatch_mode.ACTIVE`, which counts one more once a class is
defined), and the methods read `tensor.WRAPPERS[0]` before anything else.
"""

from __future__ import annotations

import copy

from kiln.ir import dtypes as dt
from kiln.runtime.device import CPU, Device, MetaArray
from kiln.tracer import autograd as _autograd
from kiln.tracer import dispatch_mode as _modes
from kiln.tracer.tensor import STATE, WRAPPERS, Tensor

# whether a Tensor subclass with its own __torch_dispatch__ has been defined
SUBCLASSES = WRAPPERS
# `aten(key)`: the OpOverload named "op.overload" (kiln.op_overloads sets it, as OVERLOAD_OF)
ATEN: list = [None]
# what `dispatch.apply` gets back when neither a mode nor a subclass takes the call
PASS = object()


class WrapperArray(MetaArray):
    """The `_data` of a wrapper subclass tensor: its shape, dtype and strides, and no memory.
    Whatever would read or write values raises, naming the class: they are reachable only
    through its `__torch_dispatch__`."""

    __slots__ = ("_strides", "owner")

    def __init__(self, shape: tuple, dtype, strides: tuple | None, owner: str):
        super().__init__(shape, dtype)
        self._strides = None if strides is None else tuple(int(s) for s in strides)
        self.owner = owner

    @property
    def strides(self) -> tuple:
        if self._strides is None:
            return MetaArray.strides.fget(self)
        return tuple(s * self.dtype.itemsize for s in self._strides)

    @property
    def flags(self):
        return _Flags(self._strides is None or self._strides == tuple(
            s // self.dtype.itemsize for s in MetaArray.strides.fget(self)))

    def _refuse(self, what: str):
        return RuntimeError(
            f"{what}: this {self.owner} was made by Tensor._make_wrapper_subclass and has no "
            f"data of its own; its values are reachable only through "
            f"{self.owner}.__torch_dispatch__ (read what it wraps instead)")

    def copy(self) -> "WrapperArray":
        raise self._refuse("copying its memory")

    def astype(self, dtype, copy: bool = True):
        raise self._refuse("casting its memory")

    def __deepcopy__(self, memo):
        raise self._refuse("deepcopy of its memory")

    def __reduce__(self):
        raise self._refuse("pickling its memory")

    def __array__(self, dtype=None, copy=None):
        raise self._refuse("reading its values")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        raise self._refuse(f"numpy.{ufunc.__name__} on its memory")

    def __array_function__(self, func, types, args, kwargs):
        raise self._refuse(f"numpy.{func.__name__} on its memory")

    def __getitem__(self, key):
        raise self._refuse("indexing its memory")

    def __setitem__(self, key, value) -> None:
        raise self._refuse("writing into its memory")

    def __repr__(self) -> str:
        return f"WrapperArray({self.owner}, shape={self.shape}, dtype={self.dtype})"

    def __getattr__(self, name: str):
        # an array method (reshape, sum, fill, ...): an AttributeError, so hasattr() still
        # answers, that says why
        if name.startswith("__") or name in WrapperArray.__slots__ or name in MetaArray.__slots__:
            raise AttributeError(name)          # (a slot not set yet)
        raise AttributeError(str(self._refuse(f"{name}() of its memory")))


def _refusing(name: str):
    def op(self, *args):
        raise self._refuse(f"the operator {name} on its memory")
    return op


for _name in ("add sub mul truediv floordiv mod pow matmul and or xor lshift rshift".split()):
    setattr(WrapperArray, f"__{_name}__", _refusing(_name))
    setattr(WrapperArray, f"__r{_name}__", _refusing(_name))
for _name in ("neg pos abs invert lt le gt ge".split()):
    setattr(WrapperArray, f"__{_name}__", _refusing(_name))


class _Flags:
    __slots__ = ("c_contiguous",)
    writeable = owndata = False

    def __init__(self, contiguous: bool):
        self.c_contiguous = contiguous


# ----------------------------------------------------------------------------- classes

def register(cls: type) -> None:
    """A Tensor subclass was defined: if its `__torch_dispatch__` computes (is not
    `disabled_torch_dispatch_impl`), its instances' ops go to it from now on."""
    impl = getattr(cls, "__torch_dispatch__", None)
    if impl is None or getattr(impl, "__func__", impl) is _modes.disabled_torch_dispatch_impl:
        cls._dispatches = False
        return
    if not hasattr(impl, "__self__"):
        raise TypeError(f"{cls.__name__}.__torch_dispatch__ must be a classmethod "
                        "(@classmethod def __torch_dispatch__(cls, func, types, args=(), "
                        "kwargs=None)), as PyTorch calls it on the class")
    cls._dispatches = True
    if "__deepcopy__" not in vars(cls):
        cls.__deepcopy__ = _deepcopy
    if not SUBCLASSES[0]:
        with _modes._LOCK:
            SUBCLASSES[0] = 1
            _modes.ACTIVE[0] += 1         # the dispatcher's one check now sends calls here


def _deepcopy(self: Tensor, memo: dict) -> Tensor:
    """`copy.deepcopy` of such a tensor, as PyTorch's: its class's clone (aten.clone), given
    a deep copy of the instance's attributes (what it wraps) and its requires_grad."""
    with _autograd.no_grad():
        new = self.clone()
    if type(new) is not type(self):
        raise RuntimeError(f"deepcopy of a {type(self).__name__}: its clone() returned a "
                           f"{type(new).__name__}; __torch_dispatch__ must return its own class")
    memo[id(self)] = new
    state = getattr(self, "__dict__", None)
    if state:
        new.__dict__.update(copy.deepcopy(state, memo))
    new.requires_grad = self.requires_grad
    return new


def wraps(t) -> bool:
    """Whether `t` is an instance of a class whose `__torch_dispatch__` computes its ops."""
    return isinstance(t, Tensor) and type(t)._dispatches


def make_wrapper_subclass(cls, size, strides=None, storage_offset=None, memory_format=None,
                          dtype=None, layout=None, device=None, pin_memory=False,
                          requires_grad=False, dispatch_sizes_strides_policy=None,
                          dispatch_device=False, dispatch_layout=False,
                          _extra_dispatch_keys=None, storage_size=None):
    """`Tensor._make_wrapper_subclass` (PyTorch's arguments, in its order): a `cls` with this
    metadata and no data (see above). Without `strides` the strides are row-major's, whatever
    `memory_format` says (as PyTorch's)."""
    name = getattr(cls, "__name__", repr(cls))
    if not (isinstance(cls, type) and issubclass(cls, Tensor)) or cls is Tensor:
        raise TypeError(f"Tensor._make_wrapper_subclass: expected a subclass of kiln.Tensor, "
                        f"got {name}")
    if not cls._dispatches:
        raise TypeError(f"Tensor._make_wrapper_subclass({name}, ...): {name} has no "
                        "__torch_dispatch__ of its own, and a wrapper tensor without one "
                        "could compute nothing")
    if dispatch_sizes_strides_policy is not None or dispatch_device or dispatch_layout or \
            _extra_dispatch_keys is not None:
        raise NotImplementedError(
            f"Tensor._make_wrapper_subclass({name}, ...): kiln keeps a wrapper's sizes, "
            "strides, device and layout on the tensor; dispatching them to __torch_dispatch__ "
            "(dispatch_sizes_strides_policy, dispatch_device, dispatch_layout) and extra "
            "dispatch keys are not supported")
    if storage_offset not in (None, 0):
        raise NotImplementedError(f"Tensor._make_wrapper_subclass({name}, ...): a wrapper has "
                                  "no storage, so no storage_offset but 0")
    if layout is not None and str(layout) != "torch.strided" and \
            getattr(layout, "name", "strided") != "strided":
        raise NotImplementedError(f"Tensor._make_wrapper_subclass({name}, ...): only the "
                                  f"strided layout, not {layout}")
    shape = tuple(int(n) for n in size)
    if any(n < 0 for n in shape):
        raise ValueError(f"Tensor._make_wrapper_subclass({name}, ...): negative size {shape}")
    if strides is not None and len(tuple(strides)) != len(shape):
        raise ValueError(f"Tensor._make_wrapper_subclass({name}, ...): {len(tuple(strides))} "
                         f"strides for a size of {len(shape)} dimensions")
    from kiln.tracer.creation import _dtype
    kind = dt.get_default_dtype() if dtype is None else _dtype(dtype)
    dev = CPU if device is None else Device(device)
    out = Tensor._make(WrapperArray(shape, kind.np_dtype, strides, name), kind, dev, cls)
    if requires_grad:
        if not (kind.is_floating_point or kind.is_complex):
            raise RuntimeError(f"Tensor._make_wrapper_subclass({name}, ...): only Tensors of "
                               f"floating point dtype can require gradients, got {kind.name}")
        out.requires_grad = True
    return out


def check_has_data(t: Tensor, what: str) -> None:
    """`as_subclass` and `_make_subclass` share memory, which a wrapper has none of."""
    if isinstance(t._data, WrapperArray):
        raise TypeError(f"{what}: a {type(t).__name__} made by Tensor._make_wrapper_subclass "
                        "has no memory to share; pass what it wraps")


def alias(t: Tensor) -> Tensor:
    """A new wrapper object with `t`'s class, metadata and state (what it wraps), outside
    autograd: a node's output, or the fresh result when a handler gave back an input."""
    out = object.__new__(type(t))
    for name in _SLOTS:
        value = getattr(t, name, _UNSET)
        if value is not _UNSET:             # (`_name` is set only on named tensors)
            setattr(out, name, value)
    state = getattr(t, "__dict__", None)
    if state:
        out.__dict__.update(state)
    out._requires_grad, out._grad_fn, out._grad, out._hooks = False, None, None, None
    out._retains_grad, out._base = False, None
    return out


_SLOTS = tuple(s for s in Tensor.__slots__ if s not in ("__weakref__", "__dict__"))
_UNSET = object()


# ----------------------------------------------------------------------------- dispatch

def intercept(prim, args: tuple, attrs: dict, device):
    """`dispatch.apply`'s call while a mode or such a class exists: a mode's or a subclass's
    result, or PASS to compute the primitive as usual."""
    if STATE.no_dispatch:
        return PASS
    if STATE.dispatch_modes:
        return _modes.handle(prim, args, attrs, device)
    if SUBCLASSES[0]:
        for a in args:
            if isinstance(a, Tensor) and type(a)._dispatches:
                return _handle(prim, args, attrs)
    return PASS


def _handle(prim, args: tuple, attrs: dict):
    """One primitive with a wrapper among its inputs: the class's result, with the
    primitive's autograd node when its inputs require grad."""
    func = _modes.OVERLOAD_OF[0](prim, args, attrs)
    if STATE.tracer is not None:           # the class's Python would not run in a replay
        STATE.tracer.graph_break(f"{func} on a {_names(args, {})} (a Tensor subclass with "
                                 "__torch_dispatch__)")
    differentiable = prim.grad is not None and STATE.grad_enabled and any(
        isinstance(a, Tensor) and a.requires_grad for a in args)
    grad_was = STATE.grad_enabled
    STATE.grad_enabled = False
    try:
        out = _call_classes(func, *_modes.ARGUMENTS_OF[0](prim, args, attrs))
    finally:
        STATE.grad_enabled = grad_was
    if differentiable:
        out = _modes._record(prim, args, attrs, out, func)
        if wraps(out):
            out.grad_fn.out_data = alias(out)     # its backward reads the wrapper, not memory
    return out


def call(key: str, args: tuple, kwargs: dict | None = None):
    """A Tensor method's op on a wrapper, as ATen's `key` ("detach.default"): modes first,
    then the classes, below autograd (the methods that come here have no gradient or refuse
    one)."""
    func = ATEN[0](key)
    kwargs = {} if kwargs is None else kwargs
    if STATE.tracer is not None:
        STATE.tracer.graph_break(f"{func} on a {_names(args, kwargs)} (a Tensor subclass with "
                                 "__torch_dispatch__)")
    grad_was = STATE.grad_enabled
    STATE.grad_enabled = False
    try:
        stack = STATE.dispatch_modes
        if stack:
            return _modes.call_mode(func, args, kwargs)
        return _call_classes(func, args, kwargs)
    finally:
        STATE.grad_enabled = grad_was


def untraceable(args: tuple, kwargs: dict) -> str | None:
    """Why a compiled call with these arguments must run eagerly (a wrapper among them, one
    level into lists, tuples and dicts: its class's Python would not run in a replay), or
    None."""
    if not SUBCLASSES[0]:
        return None
    inside_dicts = tuple(v for a in args if isinstance(a, dict) for v in a.values())
    found = _modes.subclass_types(tuple(args) + inside_dicts, kwargs)
    return f"__torch_dispatch__ of {' and '.join(c.__name__ for c in found)}" if found else None


def _call_classes(func, args: tuple, kwargs: dict):
    types = _modes.subclass_types(args, kwargs)
    for cls in types:
        out = cls.__torch_dispatch__(func, types, args, kwargs)
        if out is not NotImplemented:
            return out
    raise TypeError(f"Multiple dispatch failed for {func}; all __torch_dispatch__ handlers "
                    f"returned NotImplemented: {', '.join(c.__name__ for c in types)}")


def _names(args: tuple, kwargs: dict) -> str:
    return "/".join(c.__name__ for c in _modes.subclass_types(args, kwargs))


def wrapper_repr(t: Tensor, contents: str | None) -> str:
    """A wrapper's repr: `Cls(<contents>, ...)` with what its class's `__repr__` passes as
    `tensor_contents` (PyTorch's keyword), else `...`: the values are behind its
    __torch_dispatch__."""
    if contents is None and not isinstance(t._data, WrapperArray):
        # a subclass with memory of its own (as_subclass, _make_subclass): its values
        from kiln.tracer.tensor import _format_array
        contents = _format_array(t._data, t.dtype, len(type(t).__name__) + 1)
    extras = [] if contents is not None else [f"size={tuple(t.shape)}"]
    if t.dtype is not dt.get_default_dtype():
        extras.append(f"dtype=kiln.{t.dtype.name}")
    if t.device is not CPU:
        extras.append(f"device='{t.device}'")
    if t.grad_fn is not None:
        extras.append(f"grad_fn=<{t.grad_fn.name()}>")
    elif t.requires_grad:
        extras.append("requires_grad=True")
    return f"{type(t).__name__}(" + ", ".join(
        [contents if contents is not None else "..."] + extras) + ")"


Tensor._make_wrapper_subclass = staticmethod(make_wrapper_subclass)


# ----------------------------------------------------------------------------- methods

# in-place ops whose ATen overload is `.Tensor` whatever the operand (ATen wraps a number),
# and those whose overload says whether the last operand is a tensor or a number
_TENSOR_OVERLOAD = frozenset("add_ sub_ mul_ div_ true_divide_ divide_ multiply_ subtract_ "
                             "floor_divide_ remainder_ fmod_".split())
_SCALAR_OR_TENSOR = frozenset("fill_ lerp_ pow_ masked_fill_ index_fill_ eq_ ne_ lt_ le_ gt_ "
                              "ge_ bitwise_and_ bitwise_or_ bitwise_xor_".split())


def takes(self: Tensor, args: tuple = (), kwargs: dict | None = None) -> bool:
    """Whether a Tensor method's op on `self` with these operands goes to a class's
    `__torch_dispatch__`: `self` or an operand is such a tensor (a plain running mean updated
    with a wrapper's batch mean goes to the wrapper's class, as in PyTorch)."""
    if STATE.no_dispatch:
        return False
    if type(self)._dispatches:
        return True
    for a in list(args) + list((kwargs or {}).values()):
        if isinstance(a, Tensor) and type(a)._dispatches:
            return True
    return False


def inplace_key(name: str, args: tuple, kwargs: dict) -> str:
    """ATen's overload for the in-place method `name` called with these operands."""
    if name in _TENSOR_OVERLOAD:
        return f"{name}.Tensor_mode" if kwargs.get("rounding_mode") else f"{name}.Tensor"
    if name in _SCALAR_OR_TENSOR:
        last = args[-1] if args else next(iter(kwargs.values()), None)
        return f"{name}.Tensor" if isinstance(last, Tensor) else f"{name}.Scalar"
    return f"{name}.default"


def inplace(self: Tensor, name: str, args: tuple, kwargs: dict) -> Tensor:
    """`self.name(*args, **kwargs)` on a wrapper: its class computes it (ATen's in-place op;
    the handler writes into what the wrapper holds), and `self` is returned."""
    if STATE.grad_enabled and any(isinstance(a, Tensor) and a.requires_grad
                                  for a in (self,) + tuple(args) + tuple(kwargs.values())):
        raise NotImplementedError(
            f"{name} on a {type(self).__name__} (a Tensor subclass with __torch_dispatch__) "
            "with an input that requires grad: kiln records no autograd history for an "
            "in-place op on a wrapper; use the out-of-place op, or run it under no_grad()")
    call(inplace_key(name, args, kwargs), (self,) + tuple(args), dict(kwargs))
    self._version[0] += 1
    return self


def setitem(self: Tensor, key, value) -> None:
    """`self[key] = value` on a wrapper: the indexed view (its class computes it), then
    aten.copy_ of a tensor or aten.fill_ of a number into it, as PyTorch writes it."""
    view = self[key]
    if isinstance(value, Tensor):
        inplace(view, "copy_", (value,), {})
    else:
        inplace(view, "fill_", (value,), {})
    self._version[0] += 1
