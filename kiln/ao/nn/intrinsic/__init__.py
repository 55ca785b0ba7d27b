"""torch.ao.nn.intrinsic: float modules that stand for several fused ones (conv then ReLU,
linear then ReLU), made by `fuse_modules` so that `convert` swaps in one quantized kernel."""

from __future__ import annotations

from kiln import nn

__all__ = ["ConvReLU2d", "LinearReLU"]


class _FusedModule(nn.Sequential):
    """A Sequential of the fused float modules; it computes as they do in order."""

    _PARTS: tuple = ()

    def __init__(self, *modules):
        kinds = tuple(type(m) for m in modules)
        if kinds != self._PARTS:
            names = ", ".join(k.__name__ for k in self._PARTS)
            got = ", ".join(k.__name__ for k in kinds)
            raise AssertionError(f"Incorrect types for input modules of {type(self).__name__}: "
                                 f"expected {names}, got {got}")
        super().__init__(*modules)


class ConvReLU2d(_FusedModule):
    """Conv2d followed by ReLU."""

    _PARTS = (nn.Conv2d, nn.ReLU)


class LinearReLU(_FusedModule):
    """Linear followed by ReLU."""

    _PARTS = (nn.Linear, nn.ReLU)
