"""`Parameter`: a tensor that a Module registers as a trainable weight."""

from __future__ import annotations

import kiln
from kiln import Tensor


class _ParameterMeta(type):
    """`isinstance(x, Parameter)` also holds for a tensor subclass instance made a parameter
    (`Parameter(MyTensor(...))` stays a MyTensor, marked `_is_param`, as in PyTorch)."""

    def __instancecheck__(cls, instance) -> bool:
        if cls is Parameter and isinstance(instance, Tensor) and \
                getattr(instance, "_is_param", False) is True:
            return True
        return super().__instancecheck__(instance)


class Parameter(Tensor, metaclass=_ParameterMeta):
    """A kiln.Tensor (sharing the given tensor's memory) that requires grad by default.

    Assigning one as a Module attribute registers it in `module.parameters()`. A tensor
    subclass that takes part in `__torch_function__` (or computes its ops in
    `__torch_dispatch__`) stays its own class: the parameter is
    `data.detach()` requiring grad and marked `_is_param`, so `isinstance(p, Parameter)`.
    """
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = kiln._C._disabled_torch_function_impl

    __slots__ = ()

    def __new__(cls, data: Tensor | None = None, requires_grad: bool = True) -> "Parameter":
        if data is None:
            data = kiln.empty(0)
        if cls is Parameter and hasattr(type(data), "_as_parameter"):
            return data._as_parameter(requires_grad)    # Parameter(DTensor) stays a DTensor
        if cls is Parameter and type(data) is not Tensor and not isinstance(data, Parameter):
            if type(data)._dispatches or kiln.overrides.is_tensor_like(data) and \
                    type(data).__torch_function__ is not kiln._C._disabled_torch_function_impl:
                return _subclass_parameter(data, requires_grad)
        param = Tensor._make(data._data, data.dtype, data.device, cls)
        param._version = data._version      # same memory, same version counter
        if requires_grad and not data.dtype.is_floating_point and not data.dtype.is_complex:
            raise RuntimeError("Only Tensors of floating point and complex dtype can require "
                               "gradients")
        param.requires_grad = requires_grad
        return param

    def __init__(self, data: Tensor | None = None, requires_grad: bool = True):
        pass      # all set up in __new__; Tensor.__init__ would wrap the data again

    def __repr__(self) -> str:
        return "Parameter containing:\n" + super().__repr__()

    __str__ = __repr__          # print(param) shows the prefix too, as PyTorch's does

    def __reduce_ex__(self, protocol):
        # (the user's own attributes as the state: copy.copy and pickle keep them, as torch's)
        return (_rebuild_parameter, (Tensor._make(self._data, self.dtype, self.device),
                                     self.requires_grad), dict(vars(self)) or None)

    def __deepcopy__(self, memo) -> "Parameter":
        if id(self) in memo:
            return memo[id(self)]
        # the data alone, as PyTorch's Parameter.__deepcopy__: a copied model has no .grad
        copy = Parameter(Tensor._make(self._data.copy(), self.dtype, self.device),
                         self.requires_grad)
        memo[id(self)] = copy
        return copy


def _subclass_parameter(data: Tensor, requires_grad: bool) -> Tensor:
    param = data.detach().requires_grad_(requires_grad)
    if type(param) is not type(data):
        raise RuntimeError(f"nn.Parameter: {type(data).__name__}.detach() returned a "
                           f"{type(param).__name__}; a tensor subclass made a Parameter must "
                           "return its own class from detach()")
    param._is_param = True
    return param


def _rebuild_parameter(data: Tensor, requires_grad: bool) -> Parameter:
    return Parameter(data, requires_grad)


class Buffer(Tensor):
    """Marks a tensor to be registered as a module buffer when assigned as an attribute."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = kiln._C._disabled_torch_function_impl

    __slots__ = ("persistent",)

    def __new__(cls, data: Tensor | None = None, *, persistent: bool = True) -> "Buffer":
        if data is None:
            data = kiln.empty(0)
        buf = Tensor._make(data._data, data.dtype, data.device, cls)
        buf.persistent = persistent
        return buf

    def __init__(self, data: Tensor | None = None, *, persistent: bool = True):
        pass


class UninitializedParameter(Parameter):
    """A parameter whose shape is not known yet (lazy modules); `materialize` gives it one."""

    __slots__ = ()
    cls_to_become = Parameter

    def __new__(cls, requires_grad: bool = True, device=None, dtype=None):
        param = Parameter.__new__(cls, kiln.empty(0, device=device, dtype=dtype),
                                  requires_grad)
        return param

    def __init__(self, requires_grad: bool = True, device=None, dtype=None):
        pass

    def materialize(self, shape, device=None, dtype=None) -> None:
        """Become a real parameter of `shape` (uninitialized values), in place."""
        data = kiln.empty(*shape, device=device or self.device, dtype=dtype or self.dtype)
        self._data = data._data
        self.dtype, self.device = data.dtype, data.device
        self.__class__ = self.cls_to_become

    def __repr__(self) -> str:
        return "<UninitializedParameter>"


class UninitializedBuffer(Tensor):
    """A buffer whose shape is not known yet (lazy modules); `materialize` gives it one."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = kiln._C._disabled_torch_function_impl

    __slots__ = ()
    cls_to_become = Tensor

    def __new__(cls, requires_grad: bool = False, device=None, dtype=None):
        data = kiln.empty(0, device=device, dtype=dtype)
        return Tensor._make(data._data, data.dtype, data.device, cls)

    def __init__(self, requires_grad: bool = False, device=None, dtype=None):
        pass

    def materialize(self, shape, device=None, dtype=None) -> None:
        data = kiln.empty(*shape, device=device or self.device, dtype=dtype or self.dtype)
        self._data = data._data
        self.dtype, self.device = data.dtype, data.device
        self.__class__ = self.cls_to_become

    def __repr__(self) -> str:
        return "<UninitializedBuffer>"


def is_lazy(param) -> bool:
    return isinstance(param, (UninitializedParameter, UninitializedBuffer))
