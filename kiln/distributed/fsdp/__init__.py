"""`kiln.distributed.fsdp` (torch.distributed.fsdp, FSDP2): `fully_shard`, `FSDPModule`,
`MixedPrecisionPolicy`, `OffloadPolicy` / `CPUOffloadPolicy`."""

from kiln.distributed.fsdp.api import (  # noqa: F401
    CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy)
from kiln.distributed.fsdp.fully_shard import FSDPModule, UnshardHandle, fully_shard  # noqa: F401
from kiln.distributed.fsdp.api import (  # noqa: F401,E402
    BackwardPrefetch, CPUOffload, FullOptimStateDictConfig, FullStateDictConfig,
    LocalOptimStateDictConfig, LocalStateDictConfig, MixedPrecision, OptimStateDictConfig,
    ShardedOptimStateDictConfig, ShardedStateDictConfig, ShardingStrategy, StateDictConfig,
    StateDictSettings, StateDictType)
from kiln.distributed.fsdp.fully_sharded_data_parallel import (  # noqa: F401,E402
    FullyShardedDataParallel, OptimStateKeyType)
from kiln.distributed.fsdp import wrap  # noqa: F401,E402
