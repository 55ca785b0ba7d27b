"""`kiln.distributed.tensor` (torch.distributed.tensor, the part FSDP2 and tensor parallelism
need): `DTensor` on an n-D `DeviceMesh` with one `Shard(dim)` / `Replicate()` / `Partial()`
placement per mesh dimension, `distribute_tensor`, `init_device_mesh`, the factories (zeros,
ones, empty, full, rand, randn) and `distribute_module`."""

from kiln.distributed.tensor.api import DTensor, distribute_tensor  # noqa: F401
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh  # noqa: F401
from kiln.distributed.tensor.placement import Placement, Replicate, Shard  # noqa: F401
from kiln.distributed.tensor.placement import Partial  # noqa: F401,E402
from kiln.distributed.tensor.factories import (  # noqa: F401,E402
    distribute_module, empty, full, ones, rand, randn, zeros)


def __getattr__(name: str):
    """`torch.distributed.tensor.parallel` (and .placement_types) after `import
    torch.distributed.tensor`, as in torch: loaded on first use."""
    if name in ("parallel", "placement_types"):
        import importlib
        return importlib.import_module(f"kiln.distributed.tensor.{name}")
    raise AttributeError(f"module 'kiln.distributed.tensor' has no attribute '{name}'")
