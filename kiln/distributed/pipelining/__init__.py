"""`kiln.distributed.pipelining` (torch.distributed.pipelining): pipeline parallelism with one
stage per rank. Build a `PipelineStage` from the part of the model a rank holds, wrap it in
`ScheduleGPipe` or `Schedule1F1B`, and call `schedule.step(...)` on every rank: the first stage
feeds the batch, the last one gets `target=` and returns the merged output. Or let
`pipeline(model, mb_args, split_spec=...)` cut a whole model into the stages."""

from kiln.distributed.pipelining.microbatch import (  # noqa: F401
    TensorChunkSpec, merge_chunks, split_args_kwargs_into_chunks)
from kiln.distributed.pipelining.schedules import Schedule1F1B, ScheduleGPipe  # noqa: F401
from kiln.distributed.pipelining.stage import PipelineStage  # noqa: F401
from kiln.distributed.pipelining.tracer import (  # noqa: F401
    Pipe, SplitPoint, build_stage, pipe_split, pipeline)
