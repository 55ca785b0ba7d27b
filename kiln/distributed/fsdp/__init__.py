"""`kiln.distributed.fsdp` (torch.distributed.fsdp, FSDP2): `fully_shard`, `FSDPModule`,
`MixedPrecisionPolicy`, `OffloadPolicy` / `CPUOffloadPolicy`."""

from kiln.distributed.fsdp.api import (  # noqa: F401
    CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy)
from kiln.distributed.fsdp.fully_shard import FSDPModule, UnshardHandle, fully_shard  # noqa: F401
