"""The tensor-parallel styles (torch.distributed.tensor.parallel's ParallelStyle classes): each
shards a module's parameters over a 1-D mesh into DTensor parameters and adds forward hooks
that lay its inputs and outputs out as the style says.

kiln's DTensor is its local piece to every tensor op, so a sharded Linear computes with its
local rows (colwise) or columns (rowwise) of the weight unchanged; what torch's sharding
propagation does implicitly (the all-reduce of a rowwise matmul's partial sums, the bias added
once, the gradient of a replicated input summed over ranks) is done explicitly here, with the
differentiable collectives of `redistribute.py`.
"""

from __future__ import annotations

import functools
from typing import Any

import kiln
import kiln.nn.functional as F
from kiln import Tensor
from kiln.distributed.tensor.api import DTensor, distribute_tensor
from kiln.distributed.tensor.device_mesh import DeviceMesh
from kiln.distributed.tensor.parallel.redistribute import (
    PARTIAL, all_reduce_grad, placement_of, redistribute, replicate_input, to_local, wrap)
from kiln.distributed.tensor.placement import Placement, Replicate, Shard, chunk_bounds
from kiln.nn import Embedding, Linear, Module
from kiln.nn.parameter import Parameter


class DTensorParameter(DTensor, Parameter):
    """A parameter that is a DTensor (torch's nn.Parameter(DTensor)): what a parallelized
    module registers; optimizers step on its local piece."""

    __slots__ = ()

    def __init__(self, *args, **kwargs):
        pass    # made by DTensor._wrap; `Parameter(dtensor)` returns one, and Python inits it

    def __repr__(self) -> str:
        return "Parameter containing:\n" + DTensor.__repr__(self)

    __str__ = __repr__


class ParallelStyle:
    """How one module is parallelized (torch.distributed.tensor.parallel.ParallelStyle)."""

    src_data_rank: int | None = 0

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        raise NotImplementedError(f"{type(self).__name__} must define _apply(module, mesh)")

    def _install(self, module: Module, mesh: DeviceMesh) -> Module:
        """Hook the style's `_prepare_input`/`_prepare_output` around `module`'s forward, and
        make its state_dict hold the DTensor parameters."""
        _register_state_dict_hook(module)
        module.register_forward_pre_hook(functools.partial(self._prepare_input, mesh))
        module.register_forward_hook(functools.partial(self._prepare_output, mesh))
        return module


# ----------------------------------------------------------------------------- parameters

def _distribute_param(module: Module, name: str, mesh: DeviceMesh, placement: Placement,
                      src_data_rank: int | None, grad_all_reduce: bool = False) -> None:
    """Replace `module.<name>` with its DTensor piece: Shard(d) keeps rank r's chunk (from
    `src_data_rank`'s values, as torch), Replicate keeps the local tensor (torch's
    SequenceParallel uses from_local). `grad_all_reduce`: each rank's gradient is its share
    only (a replicated parameter applied to sharded activations); sum them."""
    param = module._parameters.get(name)
    if param is None or isinstance(param, DTensor):
        return
    with kiln.no_grad():
        if placement.is_shard():
            piece = distribute_tensor(param.detach(), mesh, [placement],
                                      src_data_rank=src_data_rank)
            data, shape = piece._data, piece._global_shape
        else:
            data, shape = param.detach()._data, tuple(param.shape)
    new = DTensor._wrap(data, param.dtype, param.device, mesh, (placement,), shape,
                        DTensorParameter, param.requires_grad)
    if new.requires_grad:
        if grad_all_reduce:
            new.register_hook(functools.partial(all_reduce_grad, mesh=mesh))
        new.register_post_accumulate_grad_hook(_grad_as_dtensor)
    module.register_parameter(name, new)


def _grad_as_dtensor(param: DTensor) -> None:
    """The gradient laid out as its parameter (torch's is a DTensor too): clip_grad_norm_ then
    sums the sharded gradients' pieces over ranks and counts the replicated ones once."""
    grad = param.grad
    if grad is not None and not isinstance(grad, DTensor):
        view = DTensor._wrap(grad._data, grad.dtype, grad.device, param.device_mesh,
                             param.placements, param._global_shape)
        view._version = grad._version
        param.grad = view


def _state_dict_hook(module: Module, destination: dict, prefix: str, _meta) -> None:
    """`state_dict()` holds DTensors for the distributed parameters (views, not copies)."""
    for name, param in module._parameters.items():
        key = prefix + name
        if isinstance(param, DTensor) and key in destination and destination[key] is not param:
            view = DTensor._wrap(param._data, param.dtype, param.device, param.device_mesh,
                                 param.placements, param._global_shape)
            view._version = param._version
            destination[key] = view


def _register_state_dict_hook(module: Module) -> None:
    if not getattr(module, "_tp_state_dict_hook", False):
        module.register_state_dict_post_hook(_state_dict_hook)
        object.__setattr__(module, "_tp_state_dict_hook", True)


def _one_tensor_input(style: str, module: Module, inputs: tuple) -> Tensor:
    if not inputs or not isinstance(inputs[0], Tensor):
        raise ValueError(f"{style}: {type(module).__name__}'s first input must be a tensor, "
                         f"got {type(inputs[0]).__name__ if inputs else 'no input'}")
    return inputs[0]


def _output(x: Tensor, layout: Placement, use_local_output: bool, mesh: DeviceMesh,
            size: int | None = None) -> Tensor:
    return to_local(x) if use_local_output else wrap(x, layout, mesh, size)


def _check_layout(style: str, what: str, layout) -> Placement | None:
    if layout is None:
        return None
    if isinstance(layout, tuple) and len(layout) == 1:
        layout = layout[0]
    if not isinstance(layout, (Shard, Replicate)):
        raise ValueError(f"{style}: {what} must be Shard(dim) or Replicate(), got {layout!r}")
    return layout


# ----------------------------------------------------------------------------- Colwise

class ColwiseParallel(ParallelStyle):
    """Linear: the weight's rows (output features) and the bias sharded, Shard(0); the input
    replicated; the output Shard(-1), each rank's columns. Embedding: the embedding dim
    sharded, Shard(1), output Shard(-1)."""

    def __init__(self, *, input_layouts: Placement | None = None,
                 output_layouts: Placement | None = None, use_local_output: bool = True):
        self.input_layouts = (_check_layout("ColwiseParallel", "input_layouts", input_layouts)
                              or Replicate(),)
        self.output_layouts = (_check_layout("ColwiseParallel", "output_layouts",
                                             output_layouts) or Shard(-1),)
        self.desired_input_layouts = (Replicate(),)
        self.use_local_output = use_local_output

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        if isinstance(module, Linear):
            for name in ("weight", "bias"):
                _distribute_param(module, name, device_mesh, Shard(0), self.src_data_rank)
        elif isinstance(module, Embedding):
            _distribute_param(module, "weight", device_mesh, Shard(1), self.src_data_rank)
        else:
            raise NotImplementedError(f"ColwiseParallel supports nn.Linear and nn.Embedding, "
                                      f"got {type(module).__name__}")
        return self._install(module, device_mesh)

    def _prepare_input(self, mesh: DeviceMesh, module: Module, inputs: tuple):
        x = _one_tensor_input("ColwiseParallel", module, inputs)
        return (replicate_input(x, placement_of(x, self.input_layouts[0]), mesh),) + \
            tuple(inputs[1:])

    def _prepare_output(self, mesh: DeviceMesh, module: Module, inputs: tuple, out: Tensor):
        layout = self.output_layouts[0]
        out = redistribute(out, Shard(-1), layout, mesh)
        size = None
        if layout.is_shard() and layout.dim % max(out.ndim, 1) == out.ndim - 1:
            # the output features' global count: the pieces may be uneven (torch.chunk)
            weight = module.weight
            shape = getattr(weight, "global_shape", weight.shape)
            size = shape[0] if isinstance(module, Linear) else shape[1]
        return _output(out, layout, self.use_local_output, mesh, size)

    def __repr__(self) -> str:
        return (f"ColwiseParallel(input_layouts={self.input_layouts}, output_layouts="
                f"{self.output_layouts}, use_local_output={self.use_local_output})")


# ----------------------------------------------------------------------------- Rowwise

class RowwiseParallel(ParallelStyle):
    """Linear: the weight's columns (input features) sharded, Shard(1), the bias replicated;
    the input Shard(-1); the partial products all-reduced to a Replicate output (or
    reduce-scattered to `output_layouts=Shard(d)`), the bias added once. Embedding: the
    vocabulary sharded, Shard(0); ids outside a rank's rows look up zeros; then all-reduce."""

    def __init__(self, *, input_layouts: Placement | None = None,
                 output_layouts: Placement | None = None, use_local_output: bool = True):
        self.input_layouts = (_check_layout("RowwiseParallel", "input_layouts", input_layouts)
                              or Shard(-1),)
        self.output_layouts = (_check_layout("RowwiseParallel", "output_layouts",
                                             output_layouts) or Replicate(),)
        self.use_local_output = use_local_output

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        layout = self.output_layouts[0]
        if isinstance(module, Linear):
            self.desired_input_layouts = (Shard(-1),)
            _distribute_param(module, "weight", device_mesh, Shard(1), self.src_data_rank)
            # a bias added to a sharded output is used on each rank's rows only
            _distribute_param(module, "bias", device_mesh, Replicate(), self.src_data_rank,
                              grad_all_reduce=layout.is_shard())
            forward = functools.partial(_rowwise_linear_forward, module, layout, device_mesh)
        elif isinstance(module, Embedding):
            self.desired_input_layouts = (Replicate(),)
            if module.max_norm is not None:
                raise NotImplementedError("RowwiseParallel: an Embedding with max_norm is not "
                                          "supported (its renormalization needs whole rows)")
            start, stop, _ = chunk_bounds(module.num_embeddings, device_mesh.size(),
                                          device_mesh.get_local_rank())
            _distribute_param(module, "weight", device_mesh, Shard(0), self.src_data_rank)
            pad = module.padding_idx
            module.padding_idx = pad - start if pad is not None and start <= pad < stop else None
            forward = functools.partial(_rowwise_embedding_forward, module, start, stop, layout,
                                        device_mesh)
        else:
            raise NotImplementedError(f"RowwiseParallel supports nn.Linear and nn.Embedding, "
                                      f"got {type(module).__name__}")
        # the partial sums must be reduced before the bias (and before any forward hook)
        object.__setattr__(module, "forward", forward)
        return self._install(module, device_mesh)

    def _prepare_input(self, mesh: DeviceMesh, module: Module, inputs: tuple):
        x = _one_tensor_input("RowwiseParallel", module, inputs)
        x = redistribute(x, placement_of(x, self.input_layouts[0]),
                         self.desired_input_layouts[0], mesh)
        return (x,) + tuple(inputs[1:])

    def _prepare_output(self, mesh: DeviceMesh, module: Module, inputs: tuple, out: Tensor):
        return _output(out, self.output_layouts[0], self.use_local_output, mesh)

    def __repr__(self) -> str:
        return (f"RowwiseParallel(input_layouts={self.input_layouts}, output_layouts="
                f"{self.output_layouts}, use_local_output={self.use_local_output})")


def _rowwise_linear_forward(module: Linear, layout: Placement, mesh: DeviceMesh,
                            x: Tensor) -> Tensor:
    out = redistribute(F.linear(x, module.weight), PARTIAL, layout, mesh)
    return out if module.bias is None else out + module.bias


def _rowwise_embedding_forward(module: Embedding, start: int, stop: int, layout: Placement,
                               mesh: DeviceMesh, ids: Tensor) -> Tensor:
    outside = (ids < start) | (ids >= stop)
    local = (ids - start).masked_fill(outside, 0)
    rows = F.embedding(local, module.weight, module.padding_idx, None, module.norm_type,
                       module.scale_grad_by_freq, module.sparse)
    rows = rows.masked_fill(outside.unsqueeze(-1), 0.0)
    return redistribute(rows, PARTIAL, layout, mesh)


# ----------------------------------------------------------------------------- Sequence

class SequenceParallel(ParallelStyle):
    """LayerNorm / RMSNorm / Dropout run on the sequence shard, Shard(sequence_dim): their
    parameters replicated (Replicate DTensors), each rank's gradient share all-reduced."""

    def __init__(self, *, sequence_dim: int = 1, use_local_output: bool = False):
        self.sequence_sharding = (Shard(sequence_dim),)
        self.use_local_output = use_local_output

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        for name in list(module._parameters):
            _distribute_param(module, name, device_mesh, Replicate(), self.src_data_rank,
                              grad_all_reduce=True)
        return self._install(module, device_mesh)

    def _prepare_input(self, mesh: DeviceMesh, module: Module, inputs: tuple):
        x = _one_tensor_input("SequenceParallel", module, inputs)
        x = redistribute(x, placement_of(x, self.sequence_sharding[0]),
                         self.sequence_sharding[0], mesh)
        return (x,) + tuple(inputs[1:])

    def _prepare_output(self, mesh: DeviceMesh, module: Module, inputs: tuple, out: Tensor):
        return _output(out, self.sequence_sharding[0], self.use_local_output, mesh)

    def __repr__(self) -> str:
        return (f"SequenceParallel(sequence_dim={self.sequence_sharding[0].dim}, "
                f"use_local_output={self.use_local_output})")


# ----------------------------------------------------------------------------- Prepare*

def _as_layouts(style: str, what: str, layouts) -> tuple | None:
    if layouts is None:
        return None
    layouts = (layouts,) if isinstance(layouts, Placement) else tuple(layouts)
    for layout in layouts:
        if layout is not None:
            _check_layout(style, what, layout)
    return layouts


def _prepare_one(style: str, x: Any, layout, desired, use_local_output: bool,
                 mesh: DeviceMesh):
    if layout is None:
        return x
    if not isinstance(x, Tensor):
        raise ValueError(f"{style}: expected a tensor for layout {layout!r}, got "
                         f"{type(x).__name__}")
    if desired is not None:
        x = redistribute(x, placement_of(x, layout), desired, mesh)
        layout = desired
    else:
        layout = placement_of(x, layout)
    if use_local_output:
        return to_local(x)
    return x if isinstance(x, DTensor) else wrap(x, layout, mesh)


class PrepareModuleInput(ParallelStyle):
    """Lay a module's inputs out as `desired_input_layouts` (plain tensors are taken to be in
    `input_layouts`; a DTensor says its own), as DTensors unless `use_local_output`."""

    def __init__(self, *, input_layouts=None, desired_input_layouts=None,
                 input_kwarg_layouts: dict | None = None,
                 desired_input_kwarg_layouts: dict | None = None,
                 use_local_output: bool = False):
        name = "PrepareModuleInput"
        self.input_layouts = _as_layouts(name, "input_layouts", input_layouts)
        self.desired_input_layouts = _as_layouts(name, "desired_input_layouts",
                                                 desired_input_layouts)
        self.use_local_output = use_local_output
        if self.input_layouts is not None:
            if self.desired_input_layouts is None:
                raise ValueError("PrepareModuleInput: desired_input_layouts must be given with "
                                 "input_layouts")
            if len(self.input_layouts) != len(self.desired_input_layouts):
                raise ValueError(f"PrepareModuleInput: input_layouts ({len(self.input_layouts)}"
                                 f") and desired_input_layouts "
                                 f"({len(self.desired_input_layouts)}) must have one entry "
                                 f"per input")
        self.with_kwargs = input_kwarg_layouts is not None
        self.input_kwarg_layouts = dict(input_kwarg_layouts or {})
        self.desired_input_kwarg_layouts = dict(desired_input_kwarg_layouts or {})

    def _prepare_inputs(self, mesh: DeviceMesh, inputs: tuple) -> tuple:
        if self.input_layouts is None:
            return inputs
        if len(inputs) != len(self.input_layouts):
            raise ValueError(f"PrepareModuleInput: the module got {len(inputs)} input(s) but "
                             f"input_layouts has {len(self.input_layouts)}")
        return tuple(_prepare_one("PrepareModuleInput", x, layout, desired,
                                  self.use_local_output, mesh)
                     for x, layout, desired in zip(inputs, self.input_layouts,
                                                   self.desired_input_layouts))

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        if self.with_kwargs:
            def hook(_module, args, kwargs):
                kwargs = {k: _prepare_one("PrepareModuleInput", v,
                                          self.input_kwarg_layouts.get(k),
                                          self.desired_input_kwarg_layouts.get(k),
                                          self.use_local_output, device_mesh)
                          for k, v in kwargs.items()}
                return self._prepare_inputs(device_mesh, args), kwargs
            module.register_forward_pre_hook(hook, with_kwargs=True)
        else:
            module.register_forward_pre_hook(
                lambda _module, args: self._prepare_inputs(device_mesh, args))
        return module

    def __repr__(self) -> str:
        return (f"PrepareModuleInput(input_layouts={self.input_layouts}, "
                f"desired_input_layouts={self.desired_input_layouts}, "
                f"input_kwarg_layouts={self.input_kwarg_layouts}, "
                f"desired_input_kwarg_layouts={self.desired_input_kwarg_layouts}, "
                f"use_local_output={self.use_local_output})")


class PrepareModuleOutput(ParallelStyle):
    """Lay a module's outputs out as `desired_output_layouts`, as local tensors unless
    `use_local_output=False`."""

    def __init__(self, *, output_layouts, desired_output_layouts,
                 use_local_output: bool = True):
        name = "PrepareModuleOutput"
        self.output_layouts = _as_layouts(name, "output_layouts", output_layouts)
        self.desired_output_layouts = _as_layouts(name, "desired_output_layouts",
                                                  desired_output_layouts)
        self.use_local_output = use_local_output
        if len(self.output_layouts) != len(self.desired_output_layouts):
            raise ValueError(f"PrepareModuleOutput: output_layouts ({len(self.output_layouts)})"
                             f" and desired_output_layouts ({len(self.desired_output_layouts)})"
                             f" must have one entry per output")

    def _prepare_outputs(self, mesh: DeviceMesh, outputs):
        single = not isinstance(outputs, tuple)
        outputs = (outputs,) if single else outputs
        if len(outputs) != len(self.output_layouts):
            raise ValueError(f"PrepareModuleOutput: the module returned {len(outputs)} "
                             f"output(s) but output_layouts has {len(self.output_layouts)}")
        prepared = tuple(_prepare_one("PrepareModuleOutput", x, layout, desired,
                                      self.use_local_output, mesh)
                         for x, layout, desired in zip(outputs, self.output_layouts,
                                                       self.desired_output_layouts))
        return prepared[0] if len(prepared) == 1 else prepared

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        module.register_forward_hook(
            lambda _module, _inputs, outputs: self._prepare_outputs(device_mesh, outputs))
        return module

    def __repr__(self) -> str:
        return (f"PrepareModuleOutput(output_layouts={self.output_layouts}, "
                f"desired_output_layouts={self.desired_output_layouts}, "
                f"use_local_output={self.use_local_output})")


class PrepareModuleInputOutput(ParallelStyle):
    """PrepareModuleInput and PrepareModuleOutput on one module."""

    def __init__(self, *, input_layouts=None, desired_input_layouts=None,
                 input_kwarg_layouts: dict | None = None,
                 desired_input_kwarg_layouts: dict | None = None,
                 use_local_input: bool = False, output_layouts=None,
                 desired_output_layouts=None, use_local_output: bool = True):
        self.prepare_module_input = PrepareModuleInput(
            input_layouts=input_layouts, desired_input_layouts=desired_input_layouts,
            input_kwarg_layouts=input_kwarg_layouts,
            desired_input_kwarg_layouts=desired_input_kwarg_layouts,
            use_local_output=use_local_input)
        self.prepare_module_output = PrepareModuleOutput(
            output_layouts=output_layouts, desired_output_layouts=desired_output_layouts,
            use_local_output=use_local_output)

    def _apply(self, module: Module, device_mesh: DeviceMesh) -> Module:
        self.prepare_module_input._apply(module, device_mesh)
        self.prepare_module_output._apply(module, device_mesh)
        return module
