"""`parallelize_module`: apply tensor-parallel styles to a module and its submodules by name
(torch.distributed.tensor.parallel.parallelize_module)."""

from __future__ import annotations

import warnings
from fnmatch import fnmatch

from kiln.distributed import process_group as pg
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh
from kiln.distributed.tensor.parallel.style import ParallelStyle
from kiln.nn import Module


def parallelize_module(module: Module, device_mesh: DeviceMesh | None = None,
                       parallelize_plan: ParallelStyle | dict | None = None, *,
                       src_data_rank: int | None = 0) -> Module:
    """Shard `module` over `device_mesh` as `parallelize_plan` says: one ParallelStyle for
    `module` itself, or a dict from submodule paths ("layers.0.attention.wq"; each dotted part
    may hold fnmatch wildcards, "layers.*.w1") to styles. Sharded parameters take rank
    `src_data_rank`'s values (None: each rank keeps its own). Returns `module`, changed in
    place."""
    if device_mesh is None:
        device_mesh = init_device_mesh("cpu", (pg.get_world_size(),))
    if not isinstance(device_mesh, DeviceMesh):
        raise TypeError(f"parallelize_module: device_mesh must be a DeviceMesh "
                        f"(init_device_mesh(...)), got {type(device_mesh).__name__}")
    if device_mesh.ndim != 1:
        raise ValueError(f"parallelize_module: tensor parallelism runs on a 1-D mesh; got a "
                         f"{device_mesh.ndim}-d one {device_mesh!r}. Pass its tp dimension, "
                         f"mesh['tp']")
    if parallelize_plan is None:
        warnings.warn("No parallelize_plan is provided and auto-parallel is not supported "
                      "at the moment, so this parallelize_module call will do nothing.",
                      stacklevel=2)
        return module
    if isinstance(parallelize_plan, ParallelStyle):
        parallelize_plan.src_data_rank = src_data_rank
        return parallelize_plan._apply(module, device_mesh)
    if not isinstance(parallelize_plan, dict):
        raise TypeError(f"parallelize_module: parallelize_plan must be a ParallelStyle or a "
                        f"dict of submodule paths to ParallelStyles, got "
                        f"{type(parallelize_plan).__name__}")
    for path, style in parallelize_plan.items():
        if path == "":
            parallelize_module(module, device_mesh, style, src_data_rank=src_data_rank)
            continue
        token, _, rest = path.partition(".")
        matched = [child for name, child in module.named_children() if fnmatch(name, token)]
        if not matched:
            warnings.warn(f"Parallelize plan key '{path}' could not be resolved: no submodule "
                          f"matching token '{token}' in module {type(module).__name__}, "
                          f"skipping this plan entry.", stacklevel=2)
            continue
        for child in matched:
            parallelize_module(child, device_mesh, {rest: style} if rest else style,
                               src_data_rank=src_data_rank)
    return module
