"""DTensor factories (torch.distributed.tensor.zeros/ones/empty/full/rand/randn) and
`distribute_module`.

zeros, ones, empty and full make each rank's piece directly, without communication: the same
DTensor as `distribute_tensor` of the whole tensor. rand and randn draw the whole global tensor
on every rank from kiln's default generator (so every rank's generator advances alike) and lay
out rank 0's draw, as `distribute_tensor` does: the global tensor equals `kiln.rand(size)` on
rank 0 (after `kiln.manual_seed(s)`, torch.rand(size) after torch.manual_seed(s)), Replicate
pieces are identical on every rank and Shard pieces are its distinct slices. torch's own
factories use an offset-based RNG for this on GPUs, and have no RNG for CPU meshes.
"""

from __future__ import annotations

import inspect

import kiln
from kiln.distributed import process_group as pg
from kiln.distributed.tensor.api import (
    DTensor, _AsDTensor, _check_placements, _distribute, _dim, _split_order, distribute_tensor)
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh
from kiln.distributed.tensor.placement import Replicate, chunk_bounds
from kiln.tracer.tensor import Size


def _global_size(what: str, size: tuple) -> tuple[int, ...]:
    """`zeros(2, 3)`, `zeros((2, 3))` and `zeros(kiln.Size([2, 3]))` alike."""
    if len(size) == 1 and isinstance(size[0], (tuple, list, Size)):
        size = tuple(size[0])
    if not all(isinstance(s, int) and s >= 0 for s in size):
        raise ValueError(f"kiln.distributed.tensor.{what}: size must be non-negative ints, got "
                         f"{size}")
    return tuple(size)


def _layout(what: str, size: tuple, device_mesh: DeviceMesh | None, placements):
    """(mesh, placements, local shape) of a factory's DTensor."""
    mesh = device_mesh or init_device_mesh("cpu", (pg.get_world_size(),))
    placements = _check_placements(f"kiln.distributed.tensor.{what}",
                                   placements or (Replicate(),) * mesh.ndim, mesh)
    local = list(size)
    for i in _split_order(placements):
        if placements[i].is_shard():
            dim = _dim(placements[i].dim, len(size))
            start, stop, _ = chunk_bounds(local[dim], mesh.size(i), mesh.get_local_rank(i))
            local[dim] = stop - start
    return mesh, placements, tuple(local)


def _filled(what: str, size, make, dtype, requires_grad: bool, device_mesh, placements,
            layout=None) -> DTensor:
    if layout is not None and layout is not kiln.strided:
        raise NotImplementedError(f"kiln.distributed.tensor.{what}: only layout=kiln.strided")
    size = _global_size(what, size)
    mesh, placements, local = _layout(what, size, device_mesh, placements)
    if any(p.is_partial() for p in placements):
        raise NotImplementedError(f"kiln.distributed.tensor.{what}: a factory makes Shard or "
                                  "Replicate pieces; build a Partial DTensor with "
                                  "DTensor.from_local")
    piece = make(local, dtype, mesh.device_type)
    return DTensor._wrap(piece._data, piece.dtype, piece.device, mesh, placements, size,
                         requires_grad=requires_grad)


def zeros(*size, requires_grad: bool = False, dtype=None, layout=None,
          device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    return _filled("zeros", size, lambda s, d, dev: kiln.zeros(s, dtype=d, device=dev), dtype,
                   requires_grad, device_mesh, placements, layout)


def ones(*size, dtype=None, layout=None, requires_grad: bool = False,
         device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    return _filled("ones", size, lambda s, d, dev: kiln.ones(s, dtype=d, device=dev), dtype,
                   requires_grad, device_mesh, placements, layout)


def empty(*size, dtype=None, layout=None, requires_grad: bool = False,
          device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    return _filled("empty", size, lambda s, d, dev: kiln.empty(s, dtype=d, device=dev), dtype,
                   requires_grad, device_mesh, placements, layout)


def full(size, fill_value, *, dtype=None, layout=None, requires_grad: bool = False,
         device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    return _filled("full", (size,) if isinstance(size, int) else tuple(size),
                   lambda s, d, dev: kiln.full(s, fill_value, dtype=d, device=dev), dtype,
                   requires_grad, device_mesh, placements, layout)


def _random(what: str, draw, size, requires_grad: bool, dtype, device_mesh, placements,
            layout) -> DTensor:
    if layout is not None and layout is not kiln.strided:
        raise NotImplementedError(f"kiln.distributed.tensor.{what}: only layout=kiln.strided")
    size = _global_size(what, size)
    mesh, placements, _ = _layout(what, size, device_mesh, placements)
    whole = draw(size, dtype=dtype, device=mesh.device_type)
    out = _distribute(whole, mesh, placements, src_data_rank=0)
    out.requires_grad = requires_grad
    return out


def rand(*size, requires_grad: bool = False, dtype=None, layout=None,
         device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    """Uniform [0, 1) values; the global tensor is rank 0's `kiln.rand(size)`."""
    return _random("rand", kiln.rand, size, requires_grad, dtype, device_mesh, placements,
                   layout)


def randn(*size, requires_grad: bool = False, dtype=None, layout=None,
          device_mesh: DeviceMesh | None = None, placements=None) -> DTensor:
    """Standard normal values; the global tensor is rank 0's `kiln.randn(size)`."""
    return _random("randn", kiln.randn, size, requires_grad, dtype, device_mesh, placements,
                   layout)


def distribute_module(module, device_mesh: DeviceMesh | None = None, partition_fn=None,
                      input_fn=None, output_fn=None):
    """Spread `module`'s parameters over `device_mesh`: `partition_fn(name, submodule, mesh)`
    is called on every submodule to replace its parameters with DTensor ones; without it,
    every parameter and buffer becomes a Replicate DTensor (rank 0's values). `input_fn(module,
    inputs, mesh)` and `output_fn(module, outputs, mesh)` become forward pre-hook and hook.
    Returns `module`, changed in place."""
    mesh = device_mesh or init_device_mesh("cpu", (pg.get_world_size(),))
    if getattr(module, "_distribute_module_applied", False):
        raise RuntimeError("distribute_module: the module was already distributed; call it "
                           "once per module")
    for name, submodule in module.named_modules():
        if partition_fn is not None:
            partition_fn(name, submodule, mesh)
        _replicate_module(submodule, mesh)      # what partition_fn left plain is replicated
    for fn, what in ((input_fn, "input_fn"), (output_fn, "output_fn")):
        if fn is not None and len(inspect.signature(fn).parameters) != 3:
            raise ValueError(f"distribute_module: {what} must take (module, {what[:-3]}s, "
                             f"device_mesh), got {inspect.signature(fn)}")
    if input_fn is not None:
        module.register_forward_pre_hook(lambda mod, inputs: input_fn(mod, inputs, mesh))
    module.register_forward_pre_hook(_refuse_sharded_forward)
    module.register_forward_hook(lambda mod, inputs, outputs: _as_replicated(outputs, mesh))
    if output_fn is not None:
        module.register_forward_hook(
            lambda mod, inputs, outputs: output_fn(mod, outputs, mesh))
    module._distribute_module_applied = True
    return module


def _refuse_sharded_forward(module, inputs) -> None:
    """kiln's DTensors compute on their local pieces: with every parameter replicated that is
    the global computation, with a sharded one it is not (torch propagates shardings)."""
    for name, param in module.named_parameters():
        if isinstance(param, DTensor) and not all(p.is_replicate() for p in param.placements):
            raise NotImplementedError(
                f"distribute_module: the forward of a module whose parameter {name!r} is laid "
                f"out as {param.placements} needs torch's sharding propagation, which kiln's "
                "DTensor does not have (it computes on local pieces); parallelize it with "
                "kiln.distributed.tensor.parallel.parallelize_module, or replicate it")


def _as_replicated(outputs, mesh: DeviceMesh):
    """The outputs of a replicated module's forward, as Replicate DTensors (torch's are)."""
    if isinstance(outputs, (tuple, list)):
        return type(outputs)(_as_replicated(o, mesh) for o in outputs)
    if isinstance(outputs, kiln.Tensor) and not isinstance(outputs, DTensor):
        return _AsDTensor.apply(outputs, mesh, (Replicate(),) * mesh.ndim, tuple(outputs.shape))
    return outputs


def _replicate_module(module, mesh: DeviceMesh) -> None:
    """`module`'s own parameters and buffers that are not DTensors yet, as Replicate ones."""
    placements = (Replicate(),) * mesh.ndim
    for key, param in list(module._parameters.items()):
        if param is not None and not isinstance(param, DTensor):
            replicated = distribute_tensor(param.detach(), mesh, placements)
            module.register_parameter(key, kiln.nn.Parameter(replicated,
                                                             param.requires_grad))
    for key, buffer in list(module._buffers.items()):
        if buffer is not None and not isinstance(buffer, DTensor):
            module._buffers[key] = distribute_tensor(buffer, mesh, placements)


