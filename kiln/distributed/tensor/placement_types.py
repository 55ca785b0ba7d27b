"""`kiln.distributed.tensor.placement_types`: torch's module name for the placements
(`from torch.distributed.tensor.placement_types import Shard`); they live in placement.py."""

from kiln.distributed.tensor.placement import (  # noqa: F401
    Partial, Placement, Replicate, Shard, _StridedShard)
