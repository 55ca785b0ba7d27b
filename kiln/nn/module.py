"""`Module`: the base class of layers, holding parameters, buffers and submodules by name."""

from __future__ import annotations

import warnings
from collections import OrderedDict, namedtuple
from typing import Callable, Iterator

import kiln
from kiln import Tensor
from kiln.__future__ import (get_overwrite_module_params_on_conversion,
                             get_swap_module_params_on_conversion)
from kiln.compiler import active_traces, note_flag_read, note_grad_cleared
from kiln.compiler import reset as reset_compiled
from kiln.nn.backward_hooks import BackwardHookCall
from kiln.nn.parameter import Buffer, Parameter
from kiln.utils.hooks import RemovableHandle

class _IncompatibleKeys(namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])):
    """What load_state_dict returns; prints as PyTorch's (`_IncompatibleKeys(missing_keys=...`
    or `<All keys matched successfully>`)."""

    def __repr__(self) -> str:
        if not self.missing_keys and not self.unexpected_keys:
            return "<All keys matched successfully>"
        return super().__repr__()

    __str__ = __repr__


def _addindent(text: str, spaces: int) -> str:
    lines = text.split("\n")
    if len(lines) == 1:
        return text
    return lines[0] + "\n" + "\n".join(" " * spaces + line for line in lines[1:])


class Module:
    """Base class for all layers: assign Parameters, Modules and buffers as attributes and
    they are found by `parameters()`, `state_dict()`, `to()` and friends."""

    _version: int = 1

    @property
    def training(self) -> bool:
        """Whether the module is in training mode (`train()`, `eval()`). Kept in the instance's
        `__dict__`; a read is told to a trace in progress, so that kiln.compile guards the
        flags a call read, not every reachable module's."""
        if active_traces[0]:
            note_flag_read(self)
        try:
            return self.__dict__["training"]
        except KeyError:        # (Module.__init__ not run yet): `__getattr__` says so
            raise AttributeError("training") from None

    @training.setter
    def training(self, mode: bool) -> None:
        self.__dict__["training"] = mode

    training.fget.tells_reads = True        # (what guards look for: see `note_flag_read`)

    def __init__(self, *args, **kwargs) -> None:
        if args or kwargs:
            raise TypeError(f"{type(self).__name__}.__init__() got unexpected arguments")
        # object.__setattr__: our own __setattr__ needs these dicts to exist already
        object.__setattr__(self, "training", True)
        object.__setattr__(self, "_parameters", OrderedDict())
        object.__setattr__(self, "_buffers", OrderedDict())
        object.__setattr__(self, "_non_persistent_buffers_set", set())
        object.__setattr__(self, "_modules", OrderedDict())
        object.__setattr__(self, "_forward_hooks", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_forward_hooks_with_kwargs", OrderedDict())
        object.__setattr__(self, "_forward_pre_hooks_with_kwargs", OrderedDict())
        object.__setattr__(self, "_backward_hooks", OrderedDict())
        object.__setattr__(self, "_backward_pre_hooks", OrderedDict())
        object.__setattr__(self, "_state_dict_pre_hooks", OrderedDict())
        object.__setattr__(self, "_state_dict_hooks", OrderedDict())
        object.__setattr__(self, "_load_state_dict_pre_hooks", OrderedDict())
        object.__setattr__(self, "_load_state_dict_post_hooks", OrderedDict())

    def forward(self, *args, **kwargs):
        raise NotImplementedError(f'Module [{type(self).__name__}] is missing the required '
                                  f'"forward" function')

    # ------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        if self.__dict__.get("_forward_hooks_always_called") or \
                _global_forward_hooks_always_called:
            return self._call_always(args, kwargs)
        return self._call_impl(args, kwargs)

    def _call_always(self, args: tuple, kwargs: dict):
        """A call with forward hooks registered with always_call=True: when forward (or a
        hook) raises, those not yet run are run (with output None) before the error goes on;
        an error of theirs is only warned about, as in PyTorch."""
        called: set = set()
        try:
            return self._call_impl(args, kwargs, called)
        except Exception:
            own = self.__dict__.get("_forward_hooks_always_called") or {}
            pending = [(i, h, i in _global_forward_hooks_with_kwargs)
                       for i, h in _global_forward_hooks.items()
                       if i in _global_forward_hooks_always_called and i not in called]
            pending += [(i, h, i in self._forward_hooks_with_kwargs)
                        for i, h in self._forward_hooks.items() if i in own and i not in called]
            result = None
            for _, hook, with_kwargs in pending:
                try:
                    out = hook(self, args, kwargs, result) if with_kwargs else \
                        hook(self, args, result)
                    if out is not None:
                        result = out
                except Exception as e:
                    warnings.warn(f"module forward hook with ``always_call=True`` raised an "
                                  f"exception that was silenced as another error was raised "
                                  f"in forward: {e}", stacklevel=2)
            raise

    def _call_impl(self, args: tuple, kwargs: dict, called: set | None = None):
        # the global hooks (register_module_*_hook) run before the module's own, as in PyTorch
        pre_hooks = self._forward_pre_hooks.items()
        globals_apply = id(self) not in _GLOBAL_HOOKS_SKIPPED
        if _global_forward_pre_hooks and globals_apply:
            pre_hooks = (*_global_forward_pre_hooks.items(), *pre_hooks)
        for hook_id, hook in list(pre_hooks):
            if hook_id in self._forward_pre_hooks_with_kwargs:
                result = hook(self, args, kwargs)
                if result is not None:
                    args, kwargs = result
                continue
            result = hook(self, args)
            if result is not None:
                args = result if isinstance(result, tuple) else (result,)
        backward = None
        global_backward = (_global_backward_hooks or _global_backward_pre_hooks) and globals_apply
        if self.__dict__.get("_backward_hooks") or self.__dict__.get("_backward_pre_hooks") \
                or global_backward:
            backward = BackwardHookCall(
                self, len(args),
                [*(_global_backward_hooks.values() if globals_apply else ()),
                 *self._backward_hooks.values()],
                [*(_global_backward_pre_hooks.values() if globals_apply else ()),
                 *self._backward_pre_hooks.values()])
            args = backward.wrap_inputs(args)
        output = self.forward(*args, **kwargs)
        forward_hooks = self._forward_hooks.items()
        if _global_forward_hooks and globals_apply:
            forward_hooks = (*_global_forward_hooks.items(), *forward_hooks)
        for hook_id, hook in list(forward_hooks):
            if called is not None:
                called.add(hook_id)
            if hook_id in self._forward_hooks_with_kwargs or \
                    hook_id in _global_forward_hooks_with_kwargs:
                result = hook(self, args, kwargs, output)
            else:
                result = hook(self, args, output)
            if result is not None:
                output = result
        if backward is not None:
            output = backward.wrap_outputs(output)
        return output

    def register_full_backward_pre_hook(self, hook: Callable, prepend: bool = False
                                        ) -> RemovableHandle:
        """`hook(module, grad_output)` runs when the output gradients are known; a non-None
        result replaces them."""
        return _add_hook(self, "_backward_pre_hooks", hook, prepend)

    def register_full_backward_hook(self, hook: Callable, prepend: bool = False
                                    ) -> RemovableHandle:
        """`hook(module, grad_input, grad_output)` runs when the input gradients are known; a
        non-None result replaces grad_input."""
        return _add_hook(self, "_backward_hooks", hook, prepend)

    def register_backward_hook(self, hook: Callable) -> RemovableHandle:
        """The deprecated spelling; kiln gives it the full-hook semantics."""
        return _add_hook(self, "_backward_hooks", hook, False)

    def register_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, prefix, keep_vars)` runs before this module's state_dict entries."""
        return _add_hook(self, "_state_dict_pre_hooks", hook, False)

    def register_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, state_dict, prefix, local_metadata)` runs after them; may edit it."""
        return _add_hook(self, "_state_dict_hooks", hook, False)

    def register_load_state_dict_pre_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, state_dict, prefix, local_metadata, strict, missing_keys,
        unexpected_keys, error_msgs)` runs before this module loads; may edit state_dict."""
        return _add_hook(self, "_load_state_dict_pre_hooks", hook, False)

    def register_load_state_dict_post_hook(self, hook: Callable) -> RemovableHandle:
        """`hook(module, incompatible_keys)` runs after load_state_dict; may edit the keys."""
        return _add_hook(self, "_load_state_dict_post_hooks", hook, False)

    def get_extra_state(self):
        """Override (with set_extra_state) to save non-tensor state as `<prefix>_extra_state`."""
        raise RuntimeError("Reached a code path in Module.get_extra_state() that should never be "
                           "called.")

    def set_extra_state(self, state) -> None:
        raise RuntimeError("Reached a code path in Module.set_extra_state() that should never be "
                           "called.")

    def _has_extra_state(self) -> bool:
        return type(self).get_extra_state is not Module.get_extra_state

    def set_submodule(self, target: str, module: "Module", strict: bool = False) -> None:
        """Replace (or, unless strict, add) the submodule at dotted path `target`."""
        if not target:
            raise ValueError("Cannot set the submodule without a target name!")
        *path, name = target.split(".")
        parent = self.get_submodule(".".join(path)) if path else self
        if strict and not hasattr(parent, name):
            raise AttributeError(f"{parent._get_name()} has no attribute `{name}`")
        if not isinstance(module, Module):
            raise TypeError(f"`module` is not an nn.Module, found {type(module)}")
        setattr(parent, name, module)

    def share_memory(self) -> "Module":
        """A no-op returning self: kiln.multiprocessing shares tensors when they are sent."""
        return self

    def compile(self, *args, **kwargs) -> None:
        """Compile this module's forward in place with `kiln.compile`."""
        object.__setattr__(self, "forward", kiln.compile(self.forward, *args, **kwargs))

    def register_forward_pre_hook(self, hook: Callable, *, prepend: bool = False,
                                  with_kwargs: bool = False) -> RemovableHandle:
        """`hook(module, args)` runs before forward; a non-None result replaces the args."""
        handle = RemovableHandle(self._forward_pre_hooks,
                                 extra_dict=self._forward_pre_hooks_with_kwargs)
        self._forward_pre_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_pre_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_pre_hooks.move_to_end(handle.id, last=False)
        return handle

    def register_forward_hook(self, hook: Callable, *, prepend: bool = False,
                              with_kwargs: bool = False,
                              always_call: bool = False) -> RemovableHandle:
        """`hook(module, args, output)` runs after forward; a non-None result replaces it."""
        always = self.__dict__.get("_forward_hooks_always_called")
        if always is None:      # made on first use: a call checks it before anything else
            always = OrderedDict()
            object.__setattr__(self, "_forward_hooks_always_called", always)
        handle = RemovableHandle(self._forward_hooks,
                                 extra_dict=[self._forward_hooks_with_kwargs, always])
        self._forward_hooks[handle.id] = hook
        if with_kwargs:
            self._forward_hooks_with_kwargs[handle.id] = True
        if prepend:
            self._forward_hooks.move_to_end(handle.id, last=False)
        if always_call:
            always[handle.id] = True
        return handle

    # ------------------------------------------------------------------ registration
    def register_parameter(self, name: str, param: Parameter | None) -> None:
        _check_name(self, name, "parameter")
        if param is not None and not isinstance(param, Parameter):
            raise TypeError(f"cannot assign '{type(param).__name__}' object to parameter "
                            f"'{name}' (kiln.nn.Parameter or None required)")
        self._parameters[name] = param

    def register_buffer(self, name: str, tensor: Tensor | None,
                        persistent: bool = True) -> None:
        _check_name(self, name, "buffer")
        if tensor is not None and not isinstance(tensor, Tensor):
            raise TypeError(f"cannot assign '{type(tensor).__name__}' object to buffer "
                            f"'{name}' (kiln Tensor or None required)")
        if isinstance(tensor, (Buffer, Parameter)):
            tensor = Tensor._make(tensor._data, tensor.dtype, tensor.device)
        self._buffers[name] = tensor
        if persistent:
            self._non_persistent_buffers_set.discard(name)
        else:
            self._non_persistent_buffers_set.add(name)

    def add_module(self, name: str, module: "Module | None") -> None:
        if module is not None and not isinstance(module, Module):
            raise TypeError(f"{type(module).__name__} is not a Module subclass")
        if not isinstance(name, str):
            raise TypeError(f"module name should be a string. Got {type(name).__name__}")
        if "." in name or name == "":
            raise KeyError(f'module name can\'t contain ".", got: {name}' if name
                           else 'module name can\'t be empty string ""')
        if hasattr(self, name) and name not in self._modules:
            raise KeyError(f"attribute '{name}' already exists")
        self._modules[name] = module

    register_module = add_module

    def __setattr__(self, name: str, value) -> None:
        params = self.__dict__.get("_parameters")
        if isinstance(value, Parameter):
            if params is None:
                raise AttributeError("cannot assign parameters before Module.__init__() call")
            _forget(self, name, keep="_parameters")
            self.register_parameter(name, value)
        elif params is not None and name in params:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as parameter "
                                f"'{name}' (kiln.nn.Parameter or None expected)")
            params[name] = None
        elif isinstance(value, Module):
            if self.__dict__.get("_modules") is None:
                raise AttributeError("cannot assign module before Module.__init__() call")
            _forget(self, name, keep="_modules")
            self._modules[name] = value
        elif self.__dict__.get("_modules") is not None and name in self._modules:
            if value is not None:
                raise TypeError(f"cannot assign '{type(value).__name__}' as child module "
                                f"'{name}' (kiln.nn.Module or None expected)")
            self._modules[name] = None
        elif isinstance(value, Buffer):
            _forget(self, name, keep="_buffers")
            self.register_buffer(name, value, value.persistent)
        elif self.__dict__.get("_buffers") is not None and name in self._buffers:
            if value is not None and not isinstance(value, Tensor):
                raise TypeError(f"cannot assign '{type(value).__name__}' as buffer '{name}' "
                                f"(kiln Tensor or None expected)")
            self._buffers[name] = value
        else:
            object.__setattr__(self, name, value)

    def __getattr__(self, name: str):
        # only called when normal lookup fails: look in the registries
        d = self.__dict__
        for registry in ("_parameters", "_buffers", "_modules"):
            if registry in d and name in d[registry]:
                return d[registry][name]
        raise AttributeError(f"'{type(self).__name__}' object has no attribute '{name}'")

    def __delattr__(self, name: str) -> None:
        for registry in ("_parameters", "_buffers", "_modules"):
            if name in self.__dict__.get(registry, ()):
                del self.__dict__[registry][name]
                self._non_persistent_buffers_set.discard(name)
                return
        object.__delattr__(self, name)

    def __dir__(self):
        return sorted(set(super().__dir__()) | set(self._parameters) | set(self._buffers)
                      | set(self._modules))

    def get_submodule(self, target: str) -> "Module":
        module = self
        for part in target.split(".") if target else ():
            if part not in module._modules:
                raise AttributeError(f"{type(module).__name__} has no attribute `{part}`")
            module = module._modules[part]
        return module

    def get_parameter(self, target: str) -> Parameter:
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._parameters:
            raise AttributeError(f"{type(module).__name__} has no parameter `{name}`")
        return module._parameters[name]

    def get_buffer(self, target: str) -> Tensor:
        module_path, _, name = target.rpartition(".")
        module = self.get_submodule(module_path)
        if name not in module._buffers:
            raise AttributeError(f"{type(module).__name__} has no buffer `{name}`")
        return module._buffers[name]

    # ------------------------------------------------------------------ traversal
    def named_modules(self, memo: set | None = None, prefix: str = "",
                      remove_duplicate: bool = True) -> Iterator[tuple[str, "Module"]]:
        if memo is None:
            memo = set()
        if remove_duplicate:
            if id(self) in memo:
                return
            memo.add(id(self))
        yield prefix, self
        for name, module in self._modules.items():
            if module is None:
                continue
            yield from module.named_modules(memo, prefix + ("." if prefix else "") + name,
                                            remove_duplicate)

    def modules(self) -> Iterator["Module"]:
        for _, module in self.named_modules():
            yield module

    def named_children(self) -> Iterator[tuple[str, "Module"]]:
        seen = set()
        for name, module in self._modules.items():
            if module is not None and id(module) not in seen:
                seen.add(id(module))
                yield name, module

    def children(self) -> Iterator["Module"]:
        for _, module in self.named_children():
            yield module

    def _named_members(self, registry: str, prefix: str, recurse: bool,
                       remove_duplicate: bool = True):
        seen = set()
        modules = (self.named_modules(prefix=prefix, remove_duplicate=remove_duplicate)
                   if recurse else [(prefix, self)])
        for module_prefix, module in modules:
            for name, value in getattr(module, registry).items():
                if value is None or (remove_duplicate and id(value) in seen):
                    continue
                seen.add(id(value))
                yield module_prefix + ("." if module_prefix else "") + name, value

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        yield from self._named_members("_parameters", prefix, recurse, remove_duplicate)

    def parameters(self, recurse: bool = True) -> Iterator[Parameter]:
        for _, param in self.named_parameters(recurse=recurse):
            yield param

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        yield from self._named_members("_buffers", prefix, recurse, remove_duplicate)

    def buffers(self, recurse: bool = True) -> Iterator[Tensor]:
        for _, buf in self.named_buffers(recurse=recurse):
            yield buf

    # ------------------------------------------------------------------ modes
    def train(self, mode: bool = True) -> "Module":
        if not isinstance(mode, bool):
            raise ValueError("training mode is expected to be boolean")
        self.training = mode
        for module in self.children():
            module.train(mode)
        return self

    def eval(self) -> "Module":
        return self.train(False)

    def requires_grad_(self, requires_grad: bool = True) -> "Module":
        for param in self.parameters():
            param.requires_grad_(requires_grad)
        return self

    def zero_grad(self, set_to_none: bool = True) -> None:
        for param in self.parameters():
            if set_to_none:
                note_grad_cleared(param)
                param.grad = None
            elif param.grad is not None and param.grad.is_sparse:
                param.grad = param.grad.clone().zero_()     # no entries, as in PyTorch
            elif param.grad is not None:
                param.grad = kiln.zeros_like(param.grad)

    def share_memory(self) -> "Module":
        """Move parameters and buffers to shared memory (see Tensor.share_memory_)."""
        for t in list(self.parameters()) + [b for b in self.buffers() if b is not None]:
            t.share_memory_()
        return self

    def apply(self, fn: Callable[["Module"], None]) -> "Module":
        for module in self.children():
            module.apply(fn)
        fn(self)
        return self

    # ------------------------------------------------------------------ conversion
    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> "Module":
        """Convert every parameter, gradient and buffer in place (only this module's own with
        recurse=False), keeping Parameter identity (so an optimizer built before `.to()` still
        holds the same objects), unless
        `kiln.__future__.set_overwrite_module_params_on_conversion(True)` asks for new ones.
        With `set_swap_module_params_on_conversion(True)` the converted Parameter is swapped
        into the old object (`kiln.utils.swap_tensors`): its class and attributes come along,
        so a tensor subclass's payload is converted too, where setting `.data` keeps them."""
        overwrite = get_overwrite_module_params_on_conversion()
        swap = get_swap_module_params_on_conversion()
        for module in self.modules() if recurse else (self,):
            for name, param in list(module._parameters.items()):
                if param is None:
                    continue
                with kiln.no_grad():
                    converted = fn(param)
                grad = param.grad
                if overwrite:
                    param = Parameter(converted, param.requires_grad)
                    module._parameters[name] = param
                elif swap:
                    param.grad = None
                    kiln.utils.swap_tensors(param, Parameter(converted, param.requires_grad))
                else:
                    param.data = converted
                if grad is not None:
                    with kiln.no_grad():
                        param.grad = fn(grad)
            for name, buf in module._buffers.items():
                if buf is not None:
                    module._buffers[name] = fn(buf)
        return self

    def to(self, *args, **kwargs) -> "Module":
        dtype, device = kwargs.get("dtype"), kwargs.get("device")
        for a in args:
            if isinstance(a, kiln.dtype):
                dtype = a
            elif isinstance(a, Tensor):
                dtype, device = a.dtype, a.device
            elif a is not None:
                device = a
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"nn.Module.to only accepts floating point dtypes, but got desired "
                            f"dtype={dtype}")

        fmt = kwargs.get("memory_format")     # for 4-D (5-D) parameters and buffers

        def convert(t: Tensor) -> Tensor:
            out = t
            if device is not None:
                out = out.to(device)
            if dtype is not None and out.dtype.is_floating_point:
                out = out.to(dtype)
            if fmt is not None and out.dim() == {kiln.channels_last: 4,
                                                 kiln.channels_last_3d: 5}.get(fmt, out.dim()):
                out = out.to(memory_format=fmt)
            return out
        return self._apply(convert)

    def to_empty(self, *, device, recurse: bool = True) -> "Module":
        """Give every parameter and buffer new, uninitialized storage on `device` (zeros in
        kiln), keeping shapes and dtypes: how a module built on the meta device gets memory."""
        return self._apply(lambda t: kiln.empty_like(t, device=device), recurse=recurse)

    def cuda(self, device=None) -> "Module":
        return self.to(f"cuda:{device}" if isinstance(device, int) else (device or "cuda"))

    def cpu(self) -> "Module":
        return self.to("cpu")

    def type(self, dst_type) -> "Module":
        return self.to(dst_type)

    def float(self) -> "Module":
        return self.to(kiln.float32)

    def double(self) -> "Module":
        return self.to(kiln.float64)

    def half(self) -> "Module":
        return self.to(kiln.float16)

    def bfloat16(self) -> "Module":
        return self.to(kiln.bfloat16)

    # ------------------------------------------------------------------ state dict
    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        for name, param in self._parameters.items():
            if param is not None:
                destination[prefix + name] = param if keep_vars else param.detach()
        for name, buf in self._buffers.items():
            if buf is not None and name not in self._non_persistent_buffers_set:
                destination[prefix + name] = buf if keep_vars else buf.detach()

    def state_dict(self, *args, destination: dict | None = None, prefix: str = "",
                   keep_vars: bool = False) -> "OrderedDict[str, Tensor]":
        """Parameters and persistent buffers by dotted name, sharing memory with the module."""
        if args:    # the deprecated positional form state_dict(destination, prefix, keep_vars)
            destination = args[0]
            if len(args) > 1:
                prefix = args[1]
            if len(args) > 2:
                keep_vars = args[2]
        if destination is None:
            destination = OrderedDict()
        for hook in self.__dict__.get("_state_dict_pre_hooks", {}).values():
            hook(self, prefix, keep_vars)
        self._save_to_state_dict(destination, prefix, keep_vars)
        if self._has_extra_state():
            destination[prefix + "_extra_state"] = self.get_extra_state()
        for name, module in self._modules.items():
            if module is not None:
                module.state_dict(destination=destination, prefix=prefix + name + ".",
                                  keep_vars=keep_vars)
        for hook in self.__dict__.get("_state_dict_hooks", {}).values():
            result = hook(self, destination, prefix, {})
            if result is not None:
                destination = result
        return destination

    def _load_from_state_dict(self, state_dict: dict, prefix: str, missing: list,
                              errors: list, assign: bool) -> None:
        persistent = {k: v for k, v in self._buffers.items()
                      if k not in self._non_persistent_buffers_set}
        local = {**{k: v for k, v in self._parameters.items()}, **persistent}
        for name, current in local.items():
            key = prefix + name
            if current is None:
                continue
            if key not in state_dict:
                missing.append(key)
                continue
            value = state_dict[key]
            if not isinstance(value, Tensor):
                errors.append(f'While copying the parameter named "{key}", expected Tensor '
                              f'or Tensor-like object from checkpoint but received '
                              f'{type(value)}')
                continue
            if tuple(value.shape) != tuple(current.shape):
                errors.append(f"size mismatch for {key}: copying a param with shape "
                              f"{_size(value)} from checkpoint, the shape in current model is "
                              f"{_size(current)}.")
                continue
            if get_swap_module_params_on_conversion():
                self._swap_in(name, current, value, assign)
                continue
            if assign:
                if name in self._parameters:
                    self._parameters[name] = Parameter(value, current.requires_grad)
                else:
                    self._buffers[name] = value
                continue
            with kiln.no_grad():
                current.copy_(value.to(current.device).to(current.dtype))

    @staticmethod
    def _swap_in(name: str, current: Tensor, value: Tensor, assign: bool) -> None:
        """load_state_dict's path under `set_swap_module_params_on_conversion(True)`:
        `current.module_load(value)` (which a subclass may handle) swapped into `current`."""
        with kiln.no_grad():
            loaded = current.module_load(value, assign=assign)
        if loaded is current or loaded is value:
            raise RuntimeError(f"load_state_dict: module_load returned one of self or other for "
                               f"{name!r}; .detach() the result if returning one of the inputs")
        if isinstance(current, Parameter):
            if isinstance(loaded, Parameter):
                loaded.requires_grad_(current.requires_grad)
            else:
                loaded = Parameter(loaded, current.requires_grad)
        kiln.utils.swap_tensors(current, loaded)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Copy tensors into parameters and buffers; returns (missing_keys, unexpected_keys).

        With strict=True, any missing or unexpected key raises RuntimeError, as in PyTorch.
        """
        if not isinstance(state_dict, dict):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        missing, errors, expected = [], [], set()
        pre_unexpected: list = []
        if any(m.__dict__.get("_load_state_dict_pre_hooks") for m in self.modules()):
            state_dict = OrderedDict(state_dict)     # the hooks may edit it; keep the caller's
        for prefix_name, module in self.named_modules(remove_duplicate=False):
            prefix = prefix_name + "." if prefix_name else ""
            for hook in module.__dict__.get("_load_state_dict_pre_hooks", {}).values():
                hook(module, state_dict, prefix, {}, strict, missing, pre_unexpected, errors)
            module._load_from_state_dict(state_dict, prefix, missing, errors, assign)
            if module._has_extra_state():
                expected.add(prefix + "_extra_state")
                if prefix + "_extra_state" in state_dict:
                    module.set_extra_state(state_dict[prefix + "_extra_state"])
                elif strict:
                    missing.append(prefix + "_extra_state")
            own: dict = {}          # what the module saves is what it loads (its own keys too)
            module._save_to_state_dict(own, prefix, True)
            expected.update(own)
        unexpected = [k for k in state_dict if k not in expected]
        result = _IncompatibleKeys(missing, unexpected)
        for module in self.modules():
            for hook in module.__dict__.get("_load_state_dict_post_hooks", {}).values():
                hook(module, result)
        if strict:      # after the post hooks, which may have cleared keys (as PyTorch)
            if result.unexpected_keys:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in result.unexpected_keys)))
            if result.missing_keys:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in result.missing_keys)))
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for {}:\n\t{}".format(
                type(self).__name__, "\n\t".join(errors)))
        return result

    # ------------------------------------------------------------------ repr
    def extra_repr(self) -> str:
        return ""

    def _get_name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        extra = self.extra_repr()
        lines = extra.split("\n") if extra else []
        for name, module in self._modules.items():
            lines.append(f"({name}): " + _addindent(repr(module), 2))
        main = self._get_name() + "("
        if lines:
            if len(lines) == 1 and not self._modules:
                main += lines[0]
            else:
                main += "\n  " + "\n  ".join(lines) + "\n"
        return main + ")"

    def __getstate__(self) -> dict:
        note_flag_read(self)        # (copy and pickle read the flag here, not as `.training`)
        return self.__dict__.copy()

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)


def _size(t: Tensor) -> str:
    return f"kiln.Size({list(t.shape)})"


def _check_name(module: Module, name: str, kind: str) -> None:
    if "_parameters" not in module.__dict__:
        raise AttributeError(f"cannot assign {kind} before Module.__init__() call")
    if not isinstance(name, str):
        raise TypeError(f"{kind} name should be a string. Got {type(name).__name__}")
    if "." in name:
        raise KeyError(f'{kind} name can\'t contain "."')
    if name == "":
        raise KeyError(f'{kind} name can\'t be empty string ""')
    registry = "_parameters" if kind == "parameter" else "_buffers"
    if hasattr(module, name) and name not in getattr(module, registry):
        raise KeyError(f"attribute '{name}' already exists")


# hooks every module runs (torch.nn.modules.module.register_module_*_hook), before its own
_global_forward_pre_hooks: OrderedDict = OrderedDict()
# ids of modules whose call skips the global hooks: a compiled module's original while its
# OptimizedModule wrapper (which runs them) calls it, so they fire once, on the wrapper, as
# with torch.compile
_GLOBAL_HOOKS_SKIPPED: set = set()
_global_forward_hooks: OrderedDict = OrderedDict()
_global_forward_hooks_with_kwargs: OrderedDict = OrderedDict()
_global_forward_hooks_always_called: OrderedDict = OrderedDict()
_global_backward_pre_hooks: OrderedDict = OrderedDict()
_global_backward_hooks: OrderedDict = OrderedDict()


class _GlobalHookHandle(RemovableHandle):
    """A global hook's handle. Compiled functions replay without running hooks: registering or
    removing a global hook makes every compiled function trace again (kiln.compiler.reset), as
    torch.compile's guards on the global hook registries make it recompile."""

    def __init__(self, hooks: dict, *, extra_dict=None):
        super().__init__(hooks, extra_dict=extra_dict)
        reset_compiled()

    def remove(self) -> None:
        hooks = self.hooks_dict_ref()
        if hooks is not None and self.id in hooks:
            super().remove()
            reset_compiled()


def register_module_forward_pre_hook(hook: Callable) -> RemovableHandle:
    """`hook(module, args)` runs before every module's forward (before the module's own
    pre-hooks); a non-None result replaces the positional arguments."""
    handle = _GlobalHookHandle(_global_forward_pre_hooks)
    _global_forward_pre_hooks[handle.id] = hook
    return handle


def register_module_forward_hook(hook: Callable, *, with_kwargs: bool = False,
                                 always_call: bool = False) -> RemovableHandle:
    """`hook(module, args, output)` (with_kwargs: `hook(module, args, kwargs, output)`) runs
    after every module's forward, before the module's own forward hooks; a non-None result
    replaces the output. With `always_call`, it runs (with output None) even when forward
    raises."""
    handle = _GlobalHookHandle(_global_forward_hooks, extra_dict=[
        _global_forward_hooks_with_kwargs, _global_forward_hooks_always_called])
    _global_forward_hooks[handle.id] = hook
    if with_kwargs:
        _global_forward_hooks_with_kwargs[handle.id] = True
    if always_call:
        _global_forward_hooks_always_called[handle.id] = True
    return handle


def register_module_full_backward_pre_hook(hook: Callable) -> RemovableHandle:
    """`hook(module, grad_output)` for every module, before the module's own."""
    handle = _GlobalHookHandle(_global_backward_pre_hooks)
    _global_backward_pre_hooks[handle.id] = hook
    return handle


def register_module_full_backward_hook(hook: Callable) -> RemovableHandle:
    """`hook(module, grad_input, grad_output)` for every module, before the module's own."""
    handle = _GlobalHookHandle(_global_backward_hooks)
    _global_backward_hooks[handle.id] = hook
    return handle


def register_module_backward_hook(hook: Callable) -> RemovableHandle:
    """The deprecated spelling; kiln gives it the full-hook semantics (as the per-module
    register_backward_hook)."""
    return register_module_full_backward_hook(hook)


def _add_hook(module: Module, registry: str, hook: Callable, prepend: bool) -> RemovableHandle:
    hooks = module.__dict__.get(registry)
    if hooks is None:      # a module unpickled from before these registries existed
        hooks = OrderedDict()
        object.__setattr__(module, registry, hooks)
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


def _forget(module: Module, name: str, keep: str | None = None) -> None:
    """Drop `name` from the registries (but `keep`, where a re-assignment keeps its place, so
    state_dict order stays PyTorch's) and the instance dict before it is re-registered."""
    for registry in ("_parameters", "_buffers", "_modules"):
        if registry != keep:
            module.__dict__.get(registry, {}).pop(name, None)
    module.__dict__.pop(name, None)
    module.__dict__.get("_non_persistent_buffers_set", set()).discard(name)
