"""`kiln.distributed.tensor.parallel` (torch.distributed.tensor.parallel): tensor and sequence
parallelism on a 1-D mesh (all ranks, or the tp dimension of a 2-D mesh).
`parallelize_module(model, mesh, {"w1": ColwiseParallel(), "w2": RowwiseParallel()})` shards
Linear and Embedding weights over ranks; `loss_parallel()` computes cross-entropy on
class-sharded logits."""

from kiln.distributed.tensor.parallel.api import parallelize_module  # noqa: F401
from kiln.distributed.tensor.parallel.loss import loss_parallel  # noqa: F401
from kiln.distributed.tensor.parallel.style import (  # noqa: F401
    ColwiseParallel, DTensorParameter, ParallelStyle, PrepareModuleInput,
    PrepareModuleInputOutput, PrepareModuleOutput, RowwiseParallel, SequenceParallel)

__all__ = ["ColwiseParallel", "ParallelStyle", "PrepareModuleInput", "PrepareModuleInputOutput",
           "PrepareModuleOutput", "RowwiseParallel", "SequenceParallel", "loss_parallel",
           "parallelize_module"]
