"""The tracer front end of torch.distributed.pipelining (`pipeline`, `SplitPoint`,
`pipe_split`, `Pipe.build_stage`), which kiln does not have: kiln has no graph splitter for
whole models, so each entry raises NotImplementedError naming the manual `PipelineStage` way."""

from __future__ import annotations

import enum

_MANUAL = ("kiln has no model tracer that splits a module into stages; build the stages by "
           "hand: give each rank its part of the model as "
           "PipelineStage(submodule, stage_index, num_stages, device) and pass it to "
           "ScheduleGPipe / Schedule1F1B")


class SplitPoint(enum.Enum):
    """Where `pipeline`'s split_spec cuts a model: before or after the named submodule."""
    BEGINNING = 1
    END = 2


def pipeline(module, mb_args, mb_kwargs=None, split_spec=None, split_policy=None):
    raise NotImplementedError(f"pipeline(): {_MANUAL}")


def pipe_split() -> None:
    raise NotImplementedError(f"pipe_split(): {_MANUAL}")


def build_stage(stage_module, stage_index, pipe_info, device, group=None):
    raise NotImplementedError(f"build_stage(): {_MANUAL}")


class Pipe:
    """torch's traced pipeline; kiln cannot build one."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(f"Pipe: {_MANUAL}")
