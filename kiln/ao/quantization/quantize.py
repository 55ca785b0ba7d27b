"""Eager-mode quantization (torch.ao.quantization.quantize): give modules their qconfig,
insert observers (`prepare`), swap observed float modules for quantized ones (`convert`), and
the one-call dynamic form (`quantize_dynamic`)."""

from __future__ import annotations

import copy
import warnings

import kiln
from kiln import nn
from kiln.ao.nn import intrinsic as nni
from kiln.ao.quantization import mappings
from kiln.ao.quantization.qconfig import default_dynamic_qconfig
from kiln.ao.quantization.stubs import DeQuantStub

__all__ = ["propagate_qconfig_", "prepare", "convert", "quantize", "quantize_dynamic",
           "swap_module", "add_quant_dequant", "prepare_qat", "quantize_qat",
           "fuse_modules_qat", "get_default_qat_qconfig"]


def propagate_qconfig_(module, qconfig_dict: dict | None = None, prepare_custom_config_dict=None
                       ) -> None:
    """Give every submodule a `qconfig`: its own if set, else its entry in `qconfig_dict` (by
    qualified name, then by type), else its parent's."""
    _propagate(module, qconfig_dict or {}, None, "")


def _propagate(module, qconfig_dict: dict, parent, prefix: str) -> None:
    qconfig = qconfig_dict.get(type(module), parent)
    qconfig = qconfig_dict.get(prefix, qconfig)
    qconfig = getattr(module, "qconfig", qconfig)
    module.qconfig = qconfig
    for name, child in module.named_children():
        _propagate(child, qconfig_dict, qconfig, f"{prefix}.{name}" if prefix else name)


def quantize_dynamic(model, qconfig_spec=None, dtype=kiln.qint8, mapping=None,
                     inplace: bool = False):
    """`model` (a copy unless `inplace`) with its Linear and LSTM layers (or the types or
    names in `qconfig_spec`) swapped for dynamically quantized ones: int8 weights, activations
    quantized on the fly. A type kiln has no dynamic module for raises NotImplementedError."""
    if dtype is not kiln.qint8:
        raise NotImplementedError(f"quantize_dynamic: kiln quantizes to qint8 only, got {dtype} "
                                  "(float16 dynamic quantization and quint8 embeddings are not "
                                  "in kiln)")
    if qconfig_spec is None:
        qconfig_spec = {nn.Linear, nn.LSTM, nn.GRU, nn.LSTMCell, nn.RNNCell, nn.GRUCell}
    if isinstance(qconfig_spec, set):
        qconfig_spec = dict.fromkeys(qconfig_spec, default_dynamic_qconfig)
    if mapping is None:
        mapping = mappings.get_default_dynamic_quant_module_mappings()
    for key in qconfig_spec:
        if isinstance(key, type) and key not in mapping and _used_in(model, key):
            raise NotImplementedError(f"quantize_dynamic: kiln has no dynamically quantized "
                                      f"{key.__name__} (it has: "
                                      f"{', '.join(t.__name__ for t in mapping)})")
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    propagate_qconfig_(model, qconfig_spec)
    convert(model, mapping, inplace=True)
    return model


def _used_in(model, kind: type) -> bool:
    return any(type(m) is kind for m in model.modules())


def prepare(model, inplace: bool = False, allow_list=None, observer_non_leaf_module_list=None,
            prepare_custom_config_dict=None):
    """`model` (a copy unless `inplace`) with an observer after every leaf module that has a
    qconfig and a quantized counterpart (and inside QuantStubs): run calibration data through
    it, then `convert`."""
    if prepare_custom_config_dict or observer_non_leaf_module_list:
        raise NotImplementedError("prepare: kiln has no custom module classes "
                                  "(prepare_custom_config_dict) and observes leaf modules only "
                                  "(observer_non_leaf_module_list)")
    if not inplace:
        model = copy.deepcopy(model)
    kinds = mappings.get_default_qconfig_propagation_list() if allow_list is None \
        else set(allow_list)
    propagate_qconfig_(model)
    if not any(getattr(m, "qconfig", None) for m in model.modules()):
        warnings.warn("None of the submodule got qconfig applied. Make sure you passed correct "
                      "configuration through `qconfig_dict` or by assigning the `.qconfig` "
                      "attribute directly on submodules", stacklevel=2)
    _add_observers(model, kinds)
    return model


def _observe_output(module) -> None:
    """An `activation_post_process` observer child and a forward hook feeding it the output."""
    if getattr(module, "qconfig", None) is None or isinstance(module, DeQuantStub):
        return
    module.add_module("activation_post_process", module.qconfig.activation())
    module.register_forward_hook(_observer_hook)


def _observer_hook(module, inputs, output):
    return module.activation_post_process(output)


def _add_observers(module, kinds: set) -> None:
    for child in module.children():
        if type(child) in mappings.FUNCTIONAL_TYPES:
            if getattr(child, "qconfig", None) is not None:
                child.activation_post_process = child.qconfig.activation()
        elif isinstance(child, nni._FusedModule):
            _observe_output(child)
        else:
            _add_observers(child, kinds)
    if not list(module.children()) and not isinstance(module, nn.Sequential) and \
            type(module) in kinds:
        _observe_output(module)


def convert(module, mapping=None, inplace: bool = False, remove_qconfig: bool = True,
            is_reference: bool = False, convert_custom_config_dict=None,
            use_precomputed_fake_quant: bool = False):
    """`module` (a copy unless `inplace`) with each submodule that has a qconfig and a type in
    `mapping` replaced by `mapping[type].from_float(submodule)`."""
    if is_reference or convert_custom_config_dict:
        raise NotImplementedError("convert: kiln has no reference quantized modules or custom "
                                  "module classes")
    if not inplace:
        module = copy.deepcopy(module)
    if mapping is None:
        mapping = mappings.get_default_static_quant_module_mappings()
    _convert(module, mapping)
    if remove_qconfig:
        for m in module.modules():
            if "qconfig" in vars(m):
                del m.qconfig
    return module


def _convert(module, mapping: dict) -> None:
    swapped = {}
    for name, child in module.named_children():
        if not isinstance(child, nni._FusedModule):
            _convert(child, mapping)
        swapped[name] = swap_module(child, mapping)
    for name, new in swapped.items():
        module._modules[name] = new


def swap_module(mod, mapping: dict, custom_module_class_mapping=None):
    """The quantized module for `mod` when it has a qconfig and its type is in `mapping`;
    `mod` itself otherwise."""
    if getattr(mod, "qconfig", None) is None or type(mod) not in mapping:
        return mod
    new = mapping[type(mod)].from_float(mod)
    for hook in mod._forward_pre_hooks.values():     # the user's hooks stay; observers go
        new.register_forward_pre_hook(hook)
    for hook in mod._forward_hooks.values():
        if hook is not _observer_hook:
            new.register_forward_hook(hook)
    return new


def quantize(model, run_fn, run_args, mapping=None, inplace: bool = False):
    """prepare, `run_fn(model, *run_args)` to calibrate, convert (static post-training
    quantization in one call)."""
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    prepare(model, inplace=True)
    run_fn(model, *run_args) if isinstance(run_args, (list, tuple)) else run_fn(model, run_args)
    convert(model, mapping, inplace=True)
    return model


def add_quant_dequant(module):
    """`module` wrapped in QuantWrapper where it is a leaf with a qconfig (torch's helper)."""
    from kiln.ao.quantization.stubs import QuantWrapper
    if not list(module.children()) and getattr(module, "qconfig", None):
        return QuantWrapper(module)
    for name, child in module.named_children():
        module._modules[name] = add_quant_dequant(child)
    return module



def _without_qat(name: str):
    """torch's quantization-aware-training entry points: kiln has no fake-quantized training
    modules (ConvBn2d, qat.Linear), so each says so when called."""
    def refuse(*args, **kwargs):
        raise NotImplementedError(f"{name}: kiln has no quantization-aware training; it has "
                                  "post-training quantization (prepare, calibrate, convert) "
                                  "and quantize_dynamic")
    refuse.__name__ = name
    return refuse


prepare_qat = _without_qat("prepare_qat")
quantize_qat = _without_qat("quantize_qat")
fuse_modules_qat = _without_qat("fuse_modules_qat")
get_default_qat_qconfig = _without_qat("get_default_qat_qconfig")
