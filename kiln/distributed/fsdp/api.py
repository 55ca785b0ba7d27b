"""FSDP2's policies (torch.distributed.fsdp): mixed precision and offloading."""

from __future__ import annotations

from dataclasses import dataclass

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
