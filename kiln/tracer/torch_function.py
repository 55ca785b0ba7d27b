"""PyTorch's `__torch_function__` protocol: Tensor subclasses and function modes see every call.

A Tensor subclass (or any class with a `__torch_function__` classmethod) passed to a public
function or method, or a `TorchFunctionMode` entered with `with`, gets the call first:
`__torch_function__(func, types, args, kwargs)`, where `func` is the public object the user
called (`kiln.add`, `kiln.Tensor.add` for `x + y`, `kiln.nn.functional.relu`, a property's
`__get__`). The default implementation, `Tensor.__torch_function__`, runs `func` with subclass
dispatch disabled and hands back results as the subclass (`as_subclass`), so `S(x) + 1` is an S.

Nothing is paid until the protocol is needed. Public functions are plain until the first
Tensor subclass that takes part is defined or the first mode is entered; `activate()` then
swaps every public function, method, operator and property for a `dispatching` twin (the
installer lives in `kiln.overrides`, which knows the namespaces). Subclasses that kiln itself
defines (Parameter, DTensor, sparse and quantized tensors) opt out with
`disabled_torch_function_impl`, as torch.nn.Parameter does.

The thread's mode stack and the two disable switches live on the dispatcher's thread-local
STATE, as grad mode does.
"""

from __future__ import annotations

import functools

from kiln.tracer import dispatch_mode, dispatch_subclass
from kiln.tracer.tensor import STATE, Tensor

# what `activate()` runs once: kiln.overrides' installer, set when kiln is imported
INSTALLERS: list = []
ACTIVE = [False]


def disabled_torch_function_impl(cls, func, types, args=(), kwargs=None):
    """`__torch_function__ = disabled_torch_function_impl` in a subclass's body: it takes no
    part in dispatch (torch._C._disabled_torch_function_impl; nn.Parameter uses it)."""
    with DisableTorchFunctionSubclass():
        return func(*args, **(kwargs or {}))


def activate() -> None:
    """Wrap the public API for dispatch (once; the first subclass or mode asks for it)."""
    if not ACTIVE[0]:
        ACTIVE[0] = True
        for install in INSTALLERS:
            install()


# ----------------------------------------------------------------------------- switches

class DisableTorchFunctionSubclass:
    """`with`: subclasses' `__torch_function__` is not called (modes still are)."""

    def __enter__(self):
        STATE.tf_subclass_off += 1
        return self

    def __exit__(self, *exc):
        STATE.tf_subclass_off -= 1


class DisableTorchFunction:
    """`with`: neither subclasses nor modes are called."""

    def __enter__(self):
        STATE.tf_off += 1
        return self

    def __exit__(self, *exc):
        STATE.tf_off -= 1


def push_mode(mode) -> None:
    activate()
    STATE.tf_modes = STATE.tf_modes + (mode,)


def pop_mode():
    modes = STATE.tf_modes
    if not modes:
        raise RuntimeError("no TorchFunctionMode is active to pop")
    STATE.tf_modes = modes[:-1]
    return modes[-1]


def enabled() -> bool:
    return not STATE.tf_off and not STATE.tf_subclass_off


def takes_part(cls: type) -> bool:
    """Whether instances of `cls` have their `__torch_function__` called."""
    impl = getattr(cls, "__torch_function__", None)
    return impl is not None and getattr(impl, "__func__", impl) is not \
        disabled_torch_function_impl and cls is not Tensor


# ----------------------------------------------------------------------------- dispatch

_PLAIN = frozenset({int, float, bool, complex, str, type(None), slice, type(Ellipsis)})


def overloaded_args(args, kwargs) -> list:
    """The arguments whose types take part, one per type, subclasses before their bases and
    otherwise left to right (one level into lists and tuples, as `cat` and `stack` take)."""
    found: list = []
    subclass_off = STATE.tf_subclass_off
    for a in args:
        _note(a, found, subclass_off, True)
    for a in kwargs.values():
        _note(a, found, subclass_off, True)
    return found


def _note(a, found: list, subclass_off: int, descend: bool) -> None:
    t = type(a)
    if t is Tensor or t in _PLAIN:
        return
    if t is list or t is tuple:
        if descend:
            for e in a:
                _note(e, found, subclass_off, False)
        return
    if not takes_part(t) or subclass_off and isinstance(a, Tensor):
        return
    if any(type(f) is t for f in found):
        return
    for i, f in enumerate(found):
        if issubclass(t, type(f)):
            found.insert(i, a)
            return
    found.append(a)


def handle(func, overloaded: list, args: tuple, kwargs: dict):
    """Call the innermost mode, then each overloaded argument's `__torch_function__`, until
    one does not answer NotImplemented (torch.overrides.handle_torch_function)."""
    types = tuple(type(a) for a in overloaded)
    modes = STATE.tf_modes
    if STATE.tracer is not None:        # Python the replay would skip: trace no further
        STATE.tracer.graph_break(f"__torch_function__ of {_who(modes, types)} runs here")
    if modes and not STATE.tf_off:
        STATE.tf_modes = modes[:-1]          # the mode's own calls go to the modes below it
        try:
            result = modes[-1].__torch_function__(func, types, args, kwargs)
        finally:
            STATE.tf_modes = modes
        if result is not NotImplemented:
            return result
    for a in overloaded:
        result = a.__torch_function__(func, types, args, kwargs)
        if result is not NotImplemented:
            return result
    name = getattr(func, "__qualname__", None) or getattr(func, "__name__", repr(func))
    tried = ([f"  - mode object {modes[-1]!r}"] if modes and not STATE.tf_off else []) + [
        f"  - tensor subclass {t}" for t in types]
    raise TypeError(f"Multiple dispatch failed for '{name}'; all __torch_function__ handlers "
                    "returned NotImplemented:\n\n" + "\n".join(tried))


def _who(modes: tuple, types: tuple) -> str:
    return (f"the mode {type(modes[-1]).__name__}" if modes else
            " and ".join(t.__name__ for t in types))


def untraceable(args: tuple, kwargs: dict) -> str | None:
    """Why a compiled call with these arguments must run eagerly, or None (kiln.compile
    replays kernels; a mode's or a subclass's Python would not run again)."""
    if not ACTIVE[0] or STATE.tf_off:
        return None
    overloaded = overloaded_args(args, kwargs)
    if STATE.tf_modes or overloaded:
        return f"__torch_function__ of {_who(STATE.tf_modes, tuple(map(type, overloaded)))}"
    return None


def dispatching(fn, func_of=None):
    """`fn` with the protocol in front: the twin `activate()` installs. `func_of()` gives the
    public object handed to `__torch_function__` (default: the twin itself)."""
    def dispatch(*args, **kwargs):
        state = STATE
        if state.tf_off:
            return fn(*args, **kwargs)
        if not kwargs and not state.tf_modes:
            for a in args:          # the common call: plain tensors and numbers only
                kind = type(a)
                if kind is not Tensor and kind not in _PLAIN:
                    break
            else:
                return fn(*args)
        overloaded = overloaded_args(args, kwargs)
        if overloaded or STATE.tf_modes:
            return handle(dispatch if func_of is None else func_of(), overloaded, args, kwargs)
        return fn(*args, **kwargs)
    functools.update_wrapper(dispatch, fn)
    dispatch.__kiln_dispatching__ = fn
    return dispatch


def modes_only(fn):
    """A factory's twin (`kiln.randn`): no tensor arguments to dispatch on, but modes see it,
    as PyTorch's modes see factories (torch.device's context is such a mode)."""
    def dispatch(*args, **kwargs):
        if STATE.tf_modes and not STATE.tf_off:
            return handle(dispatch, [], args, kwargs)
        return fn(*args, **kwargs)
    functools.update_wrapper(dispatch, fn)
    dispatch.__kiln_dispatching__ = fn
    return dispatch


# ----------------------------------------------------------------------------- subclasses

def nowrap() -> set:
    """Results the default `__torch_function__` hands back as they are (not as the subclass):
    `.grad` is the gradient autograd made (torch.overrides.get_default_nowrap_functions)."""
    return {Tensor.grad.__get__}


def default(cls, func, types, args=(), kwargs=None):
    """`Tensor.__torch_function__`: run `func` as for plain tensors, results as `cls`."""
    if kwargs is None:
        kwargs = {}
    if not all(issubclass(cls, t) for t in types):
        return NotImplemented
    with DisableTorchFunctionSubclass():
        result = func(*args, **kwargs)
        if func in nowrap():
            return result
        return convert(result, cls)


def convert(result, cls):
    """Tensors in `result` (also inside tuples and lists) as `cls`."""
    if cls is Tensor:
        return result
    if isinstance(result, Tensor):
        return result if isinstance(result, cls) else as_subclass(result, cls)
    if isinstance(result, (tuple, list)):
        items = [convert(r, cls) for r in result]
        if hasattr(result, "_fields"):             # return_types' named tuples
            return type(result)(*items)
        return type(result)(items)
    return result


def as_subclass(tensor: Tensor, cls: type) -> Tensor:
    """`tensor.as_subclass(cls)`: a `cls` on the same memory and version counter; its gradient
    flows back to `tensor` (an alias in its history, PyTorch's AliasBackward0)."""
    if not (isinstance(cls, type) and issubclass(cls, Tensor)):
        raise TypeError(f"as_subclass: expected a subclass of kiln.Tensor, got {cls!r}")
    dispatch_subclass.check_has_data(tensor, "as_subclass")
    from kiln.tracer import autograd
    out = Tensor._make(tensor._data, tensor.dtype, tensor.device, cls)
    out._version = tensor._version
    out._trace = tensor._trace
    if tensor.requires_grad and STATE.grad_enabled:
        autograd.link_alias(out, tensor)
    if STATE.tracer is not None:
        STATE.tracer.alias(out, tensor)
    return out


def make_subclass(cls: type, data: Tensor, require_grad: bool = False) -> Tensor:
    """`Tensor._make_subclass(cls, data, require_grad)`: a detached `cls` on `data`'s memory
    (nn.Parameter's constructor in PyTorch)."""
    if not (isinstance(cls, type) and issubclass(cls, Tensor)):
        raise TypeError(f"_make_subclass: expected a subclass of kiln.Tensor, got {cls!r}")
    if not isinstance(data, Tensor):
        raise TypeError(f"_make_subclass: data must be a kiln.Tensor, got "
                        f"{type(data).__name__}")
    dispatch_subclass.check_has_data(data, "_make_subclass")
    out = Tensor._make(data._data, data.dtype, data.device, cls)
    out._version = data._version
    if require_grad:
        out.requires_grad_(True)
    return out


# ----------------------------------------------------------------------------- on Tensor

def _new(cls, *args, **kwargs):
    """`Tensor.__new__`: for a subclass, `S(tensor)` is an alias of the tensor as an S (its
    history kept) and `S(data)` the legacy constructor's tensor as an S, as in PyTorch; plain
    `Tensor(...)` is built by `__init__`."""
    if cls is Tensor:
        return object.__new__(cls)
    if len(args) == 1 and not kwargs and isinstance(args[0], Tensor):
        return as_subclass(args[0], cls)
    from kiln.ir import dtypes as dt
    from kiln.tracer.creation import legacy_new
    made = legacy_new(args, dt.float32, kwargs.get("device"), cls.__name__)
    return as_subclass(made, cls)


def _on_subclass(cls, **kwargs):
    """A subclass that takes part turns the protocol on."""
    super(Tensor, cls).__init_subclass__(**kwargs)
    dispatch_subclass.register(cls)
    if takes_part(cls):
        activate()


Tensor.__new__ = staticmethod(_new)
Tensor.__init_subclass__ = classmethod(_on_subclass)
Tensor.__torch_function__ = classmethod(default)
Tensor.as_subclass = as_subclass
Tensor._make_subclass = staticmethod(make_subclass)


def _reduce_ex(self, protocol):
    """Pickling (copy, multiprocessing, kiln.save): a subclass that takes part is saved as
    (its class, its values as a plain tensor, its `__dict__`), rebuilt by `rebuild_subclass`;
    kiln.load with weights_only wants the class allowed with `add_safe_globals`, as PyTorch."""
    if not takes_part(type(self)):
        return object.__reduce_ex__(self, protocol)
    plain = Tensor._make(self._data, self.dtype, self.device)
    plain.requires_grad = self.requires_grad
    return (rebuild_subclass, (type(self), plain, dict(getattr(self, "__dict__", {}))))


def rebuild_subclass(cls: type, plain: Tensor, state: dict) -> Tensor:
    if not (isinstance(cls, type) and issubclass(cls, Tensor) and isinstance(plain, Tensor)):
        raise TypeError("rebuild_subclass: expected a Tensor subclass and a tensor")
    out = make_subclass(cls, plain, plain.requires_grad)
    if state:
        if "__setstate__" in vars(cls):
            out.__setstate__(state)
        else:
            out.__dict__.update(state)
    return out


Tensor.__reduce_ex__ = _reduce_ex
