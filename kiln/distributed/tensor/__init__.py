"""`kiln.distributed.tensor` (torch.distributed.tensor, the part FSDP2 needs): `DTensor` on a
1-D `DeviceMesh` with `Shard(dim)` / `Replicate()` placements, `distribute_tensor`,
`init_device_mesh`."""

from kiln.distributed.tensor.api import DTensor, distribute_tensor  # noqa: F401
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh  # noqa: F401
from kiln.distributed.tensor.placement import Placement, Replicate, Shard  # noqa: F401
