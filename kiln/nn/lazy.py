"""Lazy modules: LazyLinear, LazyConv*, LazyConvTranspose*, LazyBatchNorm*, LazyInstanceNorm*.

They infer their input size from the first input. Until then their parameters are
`UninitializedParameter`s; the first forward builds the ordinary module with the inferred
size (drawing its initial weights then), moves the values into those same parameter objects
(so an optimizer made before the first call still holds them) and the module becomes an
instance of the ordinary class, as in PyTorch.
"""

from __future__ import annotations

from kiln.nn.conv import Conv1d, Conv2d, ConvTranspose1d, ConvTranspose2d
from kiln.nn.conv3d import Conv3d, ConvTranspose3d
from kiln.nn.instancenorm import InstanceNorm1d, InstanceNorm2d, InstanceNorm3d
from kiln.nn.linear import Linear
from kiln.nn.module import Module
from kiln.nn.normalization import BatchNorm1d, BatchNorm2d, BatchNorm3d
from kiln.nn.parameter import UninitializedBuffer, UninitializedParameter


class LazyModuleMixin:
    """Shared first-call logic; subclasses set `cls_to_become` and `_infer(input)`."""

    cls_to_become: type = Module
    _param_names: tuple = ("weight", "bias")
    _buffer_names: tuple = ()

    def _lazy_setup(self, args: tuple, kwargs: dict, bias: bool = True) -> None:
        Module.__init__(self)
        self._lazy_args, self._lazy_kwargs = args, kwargs
        factory = {k: kwargs[k] for k in ("device", "dtype") if kwargs.get(k) is not None}
        for name in self._param_names:
            if name == "bias" and not bias:
                self.register_parameter("bias", None)
            else:
                self.register_parameter(name, UninitializedParameter(**factory))
        for name in self._buffer_names:
            self.register_buffer(name, UninitializedBuffer(**factory))
        self._lazy_hook = self.register_forward_pre_hook(LazyModuleMixin._first_call)

    def extra_repr(self) -> str:
        """The ordinary module's, with an input size of 0 (as PyTorch prints a lazy module):
        built on the meta device, which draws no initial weights."""
        kwargs = dict(self._lazy_kwargs, device="meta")
        return self.cls_to_become(0, *self._lazy_args, **kwargs).extra_repr()

    def has_uninitialized_params(self) -> bool:
        return any(isinstance(t, (UninitializedParameter, UninitializedBuffer))
                   for t in list(self._parameters.values()) + list(self._buffers.values()))

    def initialize_parameters(self, input) -> None:
        kwargs = dict(self._lazy_kwargs)
        placeholders = [t for t in list(self._parameters.values()) + list(self._buffers.values())
                        if t is not None]
        if kwargs.get("dtype") is None and placeholders:
            # `.double()` before the first call converted the placeholders: build in that dtype
            kwargs["dtype"] = placeholders[0].dtype
        built = self.cls_to_become(self._infer(input), *self._lazy_args, **kwargs)
        for registry in ("_parameters", "_buffers"):
            mine, theirs = getattr(self, registry), getattr(built, registry)
            for name, value in theirs.items():
                lazy = mine.get(name)
                if isinstance(lazy, (UninitializedParameter, UninitializedBuffer)):
                    lazy.materialize(tuple(value.shape), value.device, value.dtype)
                    lazy._data = value._data
                    mine[name] = lazy
                else:
                    mine[name] = value
        for key, value in built.__dict__.items():
            if key not in ("_parameters", "_buffers", "_modules", "_forward_pre_hooks",
                           "_forward_hooks", "_forward_pre_hooks_with_kwargs",
                           "_forward_hooks_with_kwargs", "training"):
                self.__dict__[key] = value

    @staticmethod
    def _first_call(module, args) -> None:
        if module.has_uninitialized_params():
            module.initialize_parameters(args[0])
        module._lazy_hook.remove()
        for key in ("_lazy_hook", "_lazy_args", "_lazy_kwargs"):
            module.__dict__.pop(key, None)
        module.__class__ = module.cls_to_become


def _channels(batched_ndim: int):
    """Channels are dim 1, or dim 0 of an unbatched input (one dim fewer)."""
    def infer(self, input) -> int:
        return input.shape[0] if input.ndim == batched_ndim - 1 else input.shape[1]
    return infer


class LazyLinear(LazyModuleMixin, Linear):
    cls_to_become = Linear

    def __init__(self, out_features: int, bias: bool = True, device=None, dtype=None) -> None:
        self._lazy_setup((out_features, bias), {"device": device, "dtype": dtype}, bias)
        self.in_features, self.out_features = 0, out_features

    def _infer(self, input) -> int:
        return input.shape[-1]


def _lazy_conv(base: type, batched_ndim: int, transposed: bool) -> type:
    def __init__(self, out_channels: int, kernel_size, stride=1, padding=0, *rest,
                 device=None, dtype=None, **kwargs) -> None:
        names = (("output_padding", "groups", "bias", "dilation", "padding_mode") if transposed
                 else ("dilation", "groups", "bias", "padding_mode"))
        options = dict(zip(names, rest), **kwargs)
        self._lazy_setup((out_channels, kernel_size, stride, padding),
                         dict(options, device=device, dtype=dtype), options.get("bias", True))
        self.out_channels = out_channels

    return type(f"Lazy{base.__name__}", (LazyModuleMixin, base),
                {"cls_to_become": base, "__init__": __init__,
                 "_infer": _channels(batched_ndim), "__module__": __name__})


LazyConv1d = _lazy_conv(Conv1d, 3, False)
LazyConv2d = _lazy_conv(Conv2d, 4, False)
LazyConv3d = _lazy_conv(Conv3d, 5, False)
LazyConvTranspose1d = _lazy_conv(ConvTranspose1d, 3, True)
LazyConvTranspose2d = _lazy_conv(ConvTranspose2d, 4, True)
LazyConvTranspose3d = _lazy_conv(ConvTranspose3d, 5, True)


def _lazy_norm(base: type, batched_ndim: int) -> type:
    def __init__(self, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        self._param_names = ("weight", "bias") if affine else ()
        self._buffer_names = ("running_mean", "running_var") if track_running_stats else ()
        self._lazy_setup((eps, momentum, affine, track_running_stats),
                         {"device": device, "dtype": dtype})
        if not affine:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if track_running_stats:
            import kiln
            self.register_buffer("num_batches_tracked", kiln.tensor(0, dtype=kiln.int64))
        self.affine, self.track_running_stats = affine, track_running_stats

    return type(f"Lazy{base.__name__}", (LazyModuleMixin, base),
                {"cls_to_become": base, "__init__": __init__,
                 "_infer": _channels(batched_ndim), "__module__": __name__})


LazyBatchNorm1d = _lazy_norm(BatchNorm1d, 0)      # batch norm's channels are always dim 1
LazyBatchNorm2d = _lazy_norm(BatchNorm2d, 4)
LazyBatchNorm3d = _lazy_norm(BatchNorm3d, 5)


def _lazy_instance_norm(base: type, batched_ndim: int) -> type:
    # PyTorch's lazy instance norms default to affine=True, track_running_stats=True
    def __init__(self, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 track_running_stats: bool = True, device=None, dtype=None) -> None:
        self._param_names = ("weight", "bias") if affine else ()
        self._buffer_names = ("running_mean", "running_var") if track_running_stats else ()
        self._lazy_setup((eps, momentum, affine, track_running_stats),
                         {"device": device, "dtype": dtype})
        if not affine:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        self.affine, self.track_running_stats = affine, track_running_stats

    return type(f"Lazy{base.__name__}", (LazyModuleMixin, base),
                {"cls_to_become": base, "__init__": __init__,
                 "_infer": _channels(batched_ndim), "__module__": __name__})


LazyInstanceNorm1d = _lazy_instance_norm(InstanceNorm1d, 3)
LazyInstanceNorm2d = _lazy_instance_norm(InstanceNorm2d, 4)
LazyInstanceNorm3d = _lazy_instance_norm(InstanceNorm3d, 5)
