"""FSDP2's policies (torch.distributed.fsdp): mixed precision and offloading."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum, auto

from kiln.ir import dtypes as dt


@dataclass(frozen=True)
class MixedPrecisionPolicy:
    """Dtypes FSDP computes in. `param_dtype`: the all-gathered (unsharded) parameters are cast
    to it, and so are floating-point forward inputs when `cast_forward_inputs`; `reduce_dtype`:
    gradients are reduce-scattered in it (None: `param_dtype`); `output_dtype`: forward outputs
    are cast to it. The sharded parameters, their gradients and the optimizer keep the
    parameters' own dtype."""

    param_dtype: dt.DType | None = None
    reduce_dtype: dt.DType | None = None
    output_dtype: dt.DType | None = None
    cast_forward_inputs: bool = True


@dataclass(frozen=True)
class OffloadPolicy:
    """No offloading: the sharded parameters stay on their device."""


@dataclass(frozen=True)
class CPUOffloadPolicy(OffloadPolicy):
    """Sharded parameters, gradients and optimizer state kept in host memory. kiln accepts it
    for CPU parameters (where it changes nothing); offloading cuda parameters is not built."""

    pin_memory: bool = True


# ----------------------------------------------------------------------------- FSDP1
# The configuration names of `FullyShardedDataParallel` (torch.distributed.fsdp.api).

class ShardingStrategy(Enum):
    """What FSDP1 shards. FULL_SHARD: parameters, gradients and optimizer state, parameters
    freed after forward; SHARD_GRAD_OP: the same, parameters kept gathered from forward to
    backward; NO_SHARD: nothing (DDP: gradients all-reduced). The hybrid strategies shard
    within a node and replicate across nodes: on one node they are FULL_SHARD / SHARD_GRAD_OP;
    across nodes they need a 2-D mesh, which kiln does not have."""

    FULL_SHARD = auto()
    SHARD_GRAD_OP = auto()
    NO_SHARD = auto()
    HYBRID_SHARD = auto()
    _HYBRID_SHARD_ZERO2 = auto()


class BackwardPrefetch(Enum):
    """When backward prefetches the next all-gather. Accepted; kiln's collectives are blocking,
    so there is nothing to overlap and no prefetch happens."""

    BACKWARD_PRE = auto()
    BACKWARD_POST = auto()


@dataclass
class MixedPrecision:
    """FSDP1's mixed precision: gathered parameters in `param_dtype`, gradients reduced in
    `reduce_dtype` (None: `param_dtype`), buffers kept in `buffer_dtype`. The root casts its
    floating-point forward inputs to `param_dtype` (`cast_root_forward_inputs`); nested units
    only with `cast_forward_inputs`."""

    param_dtype: dt.DType | None = None
    reduce_dtype: dt.DType | None = None
    buffer_dtype: dt.DType | None = None
    keep_low_precision_grads: bool = False
    cast_forward_inputs: bool = False
    cast_root_forward_inputs: bool = True
    _module_classes_to_ignore: tuple = ()


@dataclass
class CPUOffload:
    """`offload_params=True`: keep the shards on the CPU. Accepted for CPU parameters (where it
    changes nothing); offloading cuda parameters is not built."""

    offload_params: bool = False


class StateDictType(Enum):
    """What `model.state_dict()` of an FSDP1 model returns: FULL_STATE_DICT whole tensors,
    SHARDED_STATE_DICT DTensors (this rank's rows), LOCAL_STATE_DICT this rank's rows as plain
    tensors; keys are the original module's in every case."""

    FULL_STATE_DICT = auto()
    LOCAL_STATE_DICT = auto()
    SHARDED_STATE_DICT = auto()


@dataclass
class StateDictConfig:
    offload_to_cpu: bool = False


@dataclass
class FullStateDictConfig(StateDictConfig):
    """`rank0_only=True`: only rank 0 gets the state dict (the other ranks get `{}`)."""

    rank0_only: bool = False


@dataclass
class LocalStateDictConfig(StateDictConfig):
    pass


@dataclass
class ShardedStateDictConfig(StateDictConfig):
    _use_dtensor: bool = False


@dataclass
class OptimStateDictConfig:
    offload_to_cpu: bool = True


@dataclass
class FullOptimStateDictConfig(OptimStateDictConfig):
    rank0_only: bool = False


@dataclass
class LocalOptimStateDictConfig(OptimStateDictConfig):
    offload_to_cpu: bool = False


@dataclass
class ShardedOptimStateDictConfig(OptimStateDictConfig):
    _use_dtensor: bool = False


@dataclass
class StateDictSettings:
    state_dict_type: StateDictType
    state_dict_config: StateDictConfig
    optim_state_dict_config: OptimStateDictConfig
