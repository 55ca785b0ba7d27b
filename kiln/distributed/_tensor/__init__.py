"""`kiln.distributed._tensor`: torch's old import path of DTensor (torch.distributed._tensor),
still used by pytorch/examples' tensor-parallel scripts; it points at
kiln.distributed.tensor."""

import sys
from importlib import import_module

from kiln.distributed.tensor import (  # noqa: F401
    DeviceMesh, DTensor, Placement, Replicate, Shard, distribute_tensor, init_device_mesh)

for _name, _target in (("device_mesh", "device_mesh"), ("api", "api"),
                       ("placement_types", "placement")):
    sys.modules[f"{__name__}.{_name}"] = import_module(f"kiln.distributed.tensor.{_target}")
