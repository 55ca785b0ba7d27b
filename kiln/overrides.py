"""`torch.overrides`: `__torch_function__` for Tensor subclasses, tensor-likes and modes.

The protocol itself (dispatch, modes, the default `Tensor.__torch_function__`) lives in
`kiln.tracer.torch_function`. This module is its public face, as PyTorch's, and the installer
that, once the protocol is first needed, swaps the public API (kiln.*, kiln.nn.functional,
kiln.nn.init, kiln.linalg, kiln.fft, kiln.special, torch.functional, and Tensor's methods,
operators and properties) for dispatching twins.

A class that is not a Tensor but defines `__torch_function__` (a "tensor-like") takes part once
the protocol is on: after a Tensor subclass is defined, a mode is entered, or `has_torch_function`
/ `handle_torch_function` is first called.
"""

from __future__ import annotations

import functools
import sys
import types as _types

from kiln.tracer import torch_function as _tf
from kiln.tracer.tensor import STATE, Tensor

__all__ = ["BaseTorchFunctionMode", "TorchFunctionMode", "enable_reentrant_dispatch",
           "get_default_nowrap_functions", "get_ignored_functions", "get_overridable_functions",
           "handle_torch_function", "has_torch_function", "has_torch_function_unary",
           "has_torch_function_variadic", "is_tensor_like", "is_tensor_method_or_property",
           "resolve_name", "wrap_torch_function"]

# the namespaces whose functions dispatch, besides Tensor
_NAMESPACES = ("kiln", "kiln.functional", "kiln.nn.functional", "kiln.nn.init", "kiln.linalg",
               "kiln.fft", "kiln.special")

# functions that take no part, as in PyTorch: settings, seeds, predicates on types, compile
_IGNORED = frozenset("""
manual_seed seed initial_seed get_rng_state set_rng_state set_default_dtype get_default_dtype
set_default_device get_default_device set_default_tensor_type is_grad_enabled
is_inference_mode_enabled is_tensor is_storage promote_types can_cast typename result_type
compile cond while_loop set_num_threads get_num_threads set_num_interop_threads
get_num_interop_threads use_deterministic_algorithms are_deterministic_algorithms_enabled
is_deterministic_algorithms_warn_only_enabled set_deterministic_debug_mode
get_deterministic_debug_mode set_float32_matmul_precision get_float32_matmul_precision
set_warn_always is_warn_always_enabled set_flush_denormal set_printoptions is_anomaly_enabled
is_anomaly_check_nan_enabled set_anomaly_enabled is_autocast_enabled set_autocast_enabled
get_autocast_dtype set_autocast_dtype is_autocast_cache_enabled set_autocast_cache_enabled
clear_autocast_cache get_autocast_cpu_dtype get_autocast_gpu_dtype set_autocast_cpu_dtype
set_autocast_gpu_dtype is_autocast_cpu_enabled set_autocast_cpu_enabled broadcast_shapes
from_numpy frombuffer from_dlpack calculate_gain handle_torch_function has_torch_function
has_torch_function_unary has_torch_function_variadic is_tensor_like
""".split())

# Tensor operators whose `func` is the named method, as PyTorch hands them (`x + y` is
# Tensor.add); the rest are handed as themselves (Tensor.__rsub__)
_OPERATOR_METHOD = {
    "__add__": "add", "__radd__": "add", "__sub__": "sub", "__mul__": "mul", "__rmul__": "mul",
    "__truediv__": "div", "__mod__": "remainder", "__pow__": "pow", "__matmul__": "matmul",
    "__neg__": "neg", "__pos__": "positive", "__abs__": "abs", "__rand__": "bitwise_and",
    "__ror__": "bitwise_or", "__rxor__": "bitwise_xor", "__ne__": "ne", "__lt__": "lt",
    "__le__": "le", "__gt__": "gt", "__ge__": "ge"}

# Tensor's special methods that dispatch (those PyTorch dispatches, where kiln has them)
_DUNDERS = frozenset(_OPERATOR_METHOD) | frozenset("""
__rsub__ __rtruediv__ __floordiv__ __rfloordiv__ __rmod__ __rpow__ __rmatmul__ __invert__
__and__ __or__ __xor__ __lshift__ __rshift__ __rlshift__ __rrshift__ __eq__ __getitem__
__setitem__ __len__ __bool__ __float__ __int__ __index__ __complex__ __contains__ __repr__
__format__ __reversed__ __iadd__ __isub__ __imul__ __itruediv__ __ifloordiv__ __imod__
__iand__ __ior__ __ixor__ __ilshift__ __irshift__ __array__ __dlpack__ __dlpack_device__
""".split())     # (pickling and copying are not dispatched: a subclass pickles as itself)

# modules whose functions the namespaces import for their own use (error messages, checks)
_HELPER_MODULES = frozenset({"kiln.tracer.errors", "kiln.compiler.hooks", "kiln.nn.sparse_grad",
                             "kiln.overrides"})

_TENSOR_SKIP = frozenset({"as_subclass", "__torch_function__"})

_OVERRIDABLE: dict = {}       # namespace -> the twins installed there (get_overridable_functions)


# ----------------------------------------------------------------------------- the installer

def _install() -> None:
    """Swap the public API for dispatching twins (once, from `activate()`)."""
    import importlib
    for name in _NAMESPACES:
        importlib.import_module(name)
    twins: dict = {}                      # one twin per function, whichever namespace shows it
    for name in _NAMESPACES:
        module = sys.modules[name]
        installed = _OVERRIDABLE.setdefault(module, [])
        for attr, value in list(vars(module).items()):
            if attr.startswith("__") or attr in _IGNORED or not _is_function(value):
                continue
            if not (attr.startswith("_foreach_") or not attr.startswith("_")):
                continue
            home = getattr(value, "__module__", None) or ""
            if not home.startswith("kiln") or home in _HELPER_MODULES:
                continue
            twin = twins.get(id(value))
            if twin is None:
                twin = twins[id(value)] = _tf.dispatching(value)
                twin.__name__ = twin.__qualname__ = attr    # kiln.lu, whatever it is called inside
            setattr(module, attr, twin)
            if twin not in installed:
                installed.append(twin)
    _install_tensor()


def _is_function(value) -> bool:
    return (isinstance(value, (_types.FunctionType, _types.BuiltinFunctionType,
                               functools.partial)) and not hasattr(value, "__kiln_dispatching__"))


def _install_tensor() -> None:
    installed = _OVERRIDABLE.setdefault(Tensor, [])
    for attr, value in list(vars(Tensor).items()):
        if attr in _TENSOR_SKIP or attr.startswith("_") and attr not in _DUNDERS:
            continue
        if isinstance(value, property):
            twin = _property_twin(attr, value)
            setattr(Tensor, attr, twin)
            installed.append(twin.__get__)
        elif _is_function(value):
            method = _OPERATOR_METHOD.get(attr)
            func_of = (lambda name=method: vars(Tensor)[name]) if method else None
            twin = _tf.dispatching(value, func_of)
            twin.__name__, twin.__qualname__ = attr, f"Tensor.{attr}"
            setattr(Tensor, attr, twin)
            installed.append(twin)


def _property_twin(name: str, prop: property) -> property:
    get = _tf.dispatching(prop.fget, lambda: vars(Tensor)[name].__get__)
    return property(get, prop.fset, prop.fdel, prop.__doc__)


_tf.INSTALLERS.append(_install)


# ----------------------------------------------------------------------------- modes

class TorchFunctionMode:
    """A context manager that sees every call of the public API while it is entered:
    `__torch_function__(self, func, types, args=(), kwargs=None)` decides what happens (calling
    `func(*args, **kwargs)` inside it reaches the modes below it, then the tensors' own)."""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__module__ != __name__:  # a user's mode class: from now on the public objects
            _tf.activate()              # it compares with (`func is kiln.Tensor.add`) dispatch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        raise NotImplementedError

    def __enter__(self):
        _tf.push_mode(self)
        return self

    def __exit__(self, *exc):
        _tf.pop_mode()

    @classmethod
    def push(cls, *args, **kwargs):
        """Enter a new mode of this class (torch's deprecated `Mode.push()`)."""
        return cls(*args, **kwargs)


class BaseTorchFunctionMode(TorchFunctionMode):
    """A mode that runs every call as it is; subclasses override what they change."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*args, **(kwargs or {}))


def _get_current_function_mode():
    modes = STATE.tf_modes
    return modes[-1] if modes else None


def _get_current_function_mode_stack() -> list:
    return list(STATE.tf_modes)


def _pop_mode():
    return _tf.pop_mode()


def _push_mode(mode) -> None:
    _tf.push_mode(mode)


# ----------------------------------------------------------------------------- functions

def has_torch_function(relevant_args) -> bool:
    """Whether a call with these arguments would be dispatched (an argument that takes part,
    or an active mode)."""
    _tf.activate()
    if STATE.tf_off:
        return False
    return bool(STATE.tf_modes) or bool(_tf.overloaded_args(tuple(relevant_args), {}))


def has_torch_function_unary(arg) -> bool:
    return has_torch_function((arg,))


def has_torch_function_variadic(*args) -> bool:
    return has_torch_function(args)


def handle_torch_function(public_api, relevant_args, *args, **kwargs):
    """Dispatch a call of `public_api` (the user's own function, which checked
    `has_torch_function` first) to the modes and the arguments' `__torch_function__`."""
    _tf.activate()
    overloaded = _tf.overloaded_args(tuple(relevant_args), {})
    return _tf.handle(public_api, overloaded, args, kwargs)


def wrap_torch_function(dispatcher):
    """Decorator: the function dispatches on the arguments `dispatcher(*args, **kwargs)`
    returns, as kiln's own functions do."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            relevant = dispatcher(*args, **kwargs)
            if has_torch_function(relevant):
                return handle_torch_function(wrapped, relevant, *args, **kwargs)
            return fn(*args, **kwargs)
        return wrapped
    return decorate


def is_tensor_like(inp) -> bool:
    """A Tensor, or an object whose type defines `__torch_function__`."""
    return type(inp) is Tensor or hasattr(inp, "__torch_function__")


def is_tensor_method_or_property(func) -> bool:
    """Whether `func` is one of Tensor's methods or a property's `__get__`."""
    _tf.activate()
    return func in _OVERRIDABLE.get(Tensor, ()) or getattr(func, "__name__", None) == "__get__"


def get_default_nowrap_functions() -> set:
    return _tf.nowrap()


def get_ignored_functions() -> set:
    """The public functions that never dispatch (settings, seeds, predicates on types)."""
    import kiln
    return {getattr(kiln, n) for n in _IGNORED if hasattr(kiln, n)} | {
        Tensor.as_subclass, Tensor._make_subclass, Tensor.__init_subclass__, Tensor.__new__}


def get_overridable_functions() -> dict:
    """{namespace: [functions that dispatch]}, the namespaces being the modules and Tensor."""
    _tf.activate()
    return {space: list(twins) for space, twins in _OVERRIDABLE.items()}


def resolve_name(f) -> str | None:
    """`f`'s public name, "kiln.add" or "kiln.Tensor.add" (None if it is not public API)."""
    for space, twins in _OVERRIDABLE.items():
        if f in twins:
            owner = "kiln.Tensor" if space is Tensor else space.__name__
            name = getattr(f, "__name__", None) or getattr(getattr(f, "__self__", None),
                                                          "fget", f).__name__
            return f"{owner}.{name}"
    return None


def enable_reentrant_dispatch():
    """A no-op context in kiln (PyTorch's guards re-entering its C++ dispatcher)."""
    import contextlib
    return contextlib.nullcontext()
