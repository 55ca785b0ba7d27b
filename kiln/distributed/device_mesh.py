"""`kiln.distributed.device_mesh` (torch.distributed.device_mesh): `DeviceMesh` and
`init_device_mesh`, defined in kiln.distributed.tensor."""

from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh  # noqa: F401
