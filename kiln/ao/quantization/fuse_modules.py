"""fuse_modules (torch.ao.quantization.fuse_modules): replace runs of modules (conv, bn, relu;
linear, relu) by one module that computes the same, so that convert quantizes them as one
kernel. In eval mode a BatchNorm is folded into the conv before it, as PyTorch folds it."""

from __future__ import annotations

import copy

from kiln import nn
from kiln.ao.nn import intrinsic as nni
from kiln.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

__all__ = ["fuse_modules", "fuse_known_modules", "get_fuser_method"]


def _conv_bn(is_qat: bool, conv, bn):
    _same_mode(conv, bn)
    if conv.training:
        raise NotImplementedError("fuse_modules: fusing conv and bn in training mode makes "
                                  "ConvBn2d for quantization-aware training, which kiln does "
                                  "not have; call model.eval() first")
    return fuse_conv_bn_eval(conv, bn)


def _conv_bn_relu(is_qat: bool, conv, bn, relu):
    return nni.ConvReLU2d(_conv_bn(is_qat, conv, bn), relu)


def _linear_bn(is_qat: bool, linear, bn):
    _same_mode(linear, bn)
    if linear.training:
        raise NotImplementedError("fuse_modules: fusing linear and bn in training mode is for "
                                  "quantization-aware training, which kiln does not have")
    return fuse_linear_bn_eval(linear, bn)


def _same_mode(a, b) -> None:
    if a.training != b.training:
        raise AssertionError("Conv and BN both must be in the same mode (train or eval).")


# the module types in order -> the function making their fused module
_FUSERS = {
    (nn.Conv2d, nn.BatchNorm2d): _conv_bn,
    (nn.Conv2d, nn.BatchNorm2d, nn.ReLU): _conv_bn_relu,
    (nn.Conv2d, nn.ReLU): lambda is_qat, conv, relu: nni.ConvReLU2d(conv, relu),
    (nn.Linear, nn.ReLU): lambda is_qat, linear, relu: nni.LinearReLU(linear, relu),
    (nn.Linear, nn.BatchNorm1d): _linear_bn,
}


def get_fuser_method(op_list: tuple, additional_fuser_method_mapping=None):
    fusers = dict(_FUSERS, **(additional_fuser_method_mapping or {}))
    return fusers.get(tuple(op_list))


def fuse_known_modules(mod_list: list, is_qat: bool = False,
                       additional_fuser_method_mapping=None) -> list:
    """The fused module then an nn.Identity for each other module of `mod_list`; the first
    module's pre-hooks and the last one's hooks move to the fused module."""
    kinds = tuple(type(m) for m in mod_list)
    fuser = get_fuser_method(kinds, additional_fuser_method_mapping)
    if fuser is None:
        raise NotImplementedError(f"Cannot fuse modules: {kinds} (kiln fuses "
                                  f"{[tuple(k.__name__ for k in key) for key in _FUSERS]})")
    fused = fuser(is_qat, *mod_list)
    for hook in mod_list[0]._forward_pre_hooks.values():
        fused.register_forward_pre_hook(hook)
    for hook in mod_list[-1]._forward_hooks.values():
        fused.register_forward_hook(hook)
    rest = []
    for _ in mod_list[1:]:
        identity = nn.Identity()
        identity.training = fused.training
        rest.append(identity)
    return [fused] + rest


def fuse_modules(model, modules_to_fuse: list, inplace: bool = False,
                 fuser_func=fuse_known_modules, fuse_custom_config_dict=None):
    """`model` (a copy unless `inplace`) with each list of dotted submodule names in
    `modules_to_fuse` (or the one list) fused: fuse_modules(m, [["conv", "bn", "relu"]])."""
    if not inplace:
        model = copy.deepcopy(model)
    groups = modules_to_fuse if all(isinstance(g, (list, tuple)) for g in modules_to_fuse) \
        else [modules_to_fuse]
    extra = (fuse_custom_config_dict or {}).get("additional_fuser_method_mapping")
    for names in groups:
        mods = [model.get_submodule(name) for name in names]
        if fuser_func is fuse_known_modules:
            fused = fuse_known_modules(mods, False, extra)
        else:
            fused = fuser_func(mods, False, extra)
        for name, new in zip(names, fused):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, leaf, new)
    return model
