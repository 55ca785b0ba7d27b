"""Pipeline schedules for one stage per rank: GPipe (all forwards, then all backwards) and
1F1B (after a warm-up, one forward then one backward). `step` splits the batch into
microbatches, runs them through the stage, computes `loss_fn(output, target)` per microbatch on
the last stage, and leaves the gradients summed over microbatches and divided by their number
(`scale_grads=True`, torch's default: right for a mean-reduced loss)."""

from __future__ import annotations

import kiln
from kiln.distributed.pipelining.microbatch import merge_chunks, split_args_kwargs_into_chunks
from kiln.distributed.pipelining.microbatch import split_tensor
from kiln.distributed.pipelining.stage import PipelineStage


class _PipelineSchedule:
    """What both schedules share: checks, splitting, losses, gradient scaling, merging."""

    def __init__(self, stage: PipelineStage, n_microbatches: int, loss_fn=None,
                 args_chunk_spec=None, kwargs_chunk_spec=None, output_merge_spec=None,
                 scale_grads: bool = True):
        name = type(self).__name__
        if not isinstance(stage, PipelineStage):
            raise TypeError(f"{name}: expected a PipelineStage, got {type(stage).__name__}")
        if not isinstance(n_microbatches, int) or n_microbatches < 1:
            raise ValueError(f"{name}: n_microbatches must be a positive int, got "
                             f"{n_microbatches!r}")
        if output_merge_spec is not None:
            raise NotImplementedError(f"{name}: output_merge_spec is not supported; kiln "
                                      "merges the last stage's outputs along dim 0")
        self._stage, self._n_microbatches, self._loss_fn = stage, n_microbatches, loss_fn
        self._args_chunk_spec, self._kwargs_chunk_spec = args_chunk_spec, kwargs_chunk_spec
        self.scale_grads = scale_grads
        self._has_backward = loss_fn is not None
        self._losses: list = []

    def step(self, *args, target=None, losses: list | None = None,
             return_outputs: bool = True, **kwargs):
        """One training (or, without loss_fn, inference) step on the whole batch; the last
        stage returns the merged output (None with return_outputs=False), the others None."""
        stage, n = self._stage, self._n_microbatches
        self._check_step(args, target, losses)
        stage.clear_runtime_states()
        stage.has_backward = self._has_backward
        arg_mbs, kwarg_mbs = split_args_kwargs_into_chunks(
            args, kwargs, n, self._args_chunk_spec, self._kwargs_chunk_spec)
        targets = None
        if target is not None and stage.is_last and self._has_backward:
            targets = split_tensor(f"{type(self).__name__}.step target", target, n)
        self._losses = []
        self._step_microbatches(arg_mbs, kwarg_mbs, targets)
        stage.wait_sends()
        if stage.is_last and losses is not None:
            losses.clear()
            losses.extend(self._losses)
        if self._has_backward and self.scale_grads:
            stage.scale_grads(n)
        if stage.is_last and return_outputs:
            return merge_chunks(stage.output_chunks)
        return None

    def _check_step(self, args, target, losses) -> None:
        name, stage = f"{type(self).__name__}.step", self._stage
        if self._has_backward and not kiln.is_grad_enabled():
            raise RuntimeError(f"{name}: a schedule with a loss_fn runs backward and needs "
                               "gradients enabled; do not call it under no_grad()")
        if stage.is_first and not args:
            raise ValueError(f"{name}: the first stage (stage 0) needs the batch: "
                             "schedule.step(x)")
        if stage.is_last and self._has_backward and target is None:
            raise ValueError(f"{name}: the last stage (stage {stage.stage_index}) computes "
                             "loss_fn(output, target): pass target=")
        if target is not None and not self._has_backward:
            raise ValueError(f"{name}: target= was given but the schedule has no loss_fn; "
                             f"build it as {type(self).__name__}(stage, n, loss_fn=...)")
        if losses is not None and not isinstance(losses, list):
            raise TypeError(f"{name}: losses must be a list, got {type(losses).__name__}")
        if losses is not None and stage.is_last and not self._has_backward:
            raise ValueError(f"{name}: losses= was given but the schedule has no loss_fn to "
                             "compute them")

    def _forward(self, i: int, arg_mbs, kwarg_mbs, targets) -> None:
        output = self._stage.forward_one_chunk(i, arg_mbs[i], kwarg_mbs[i])
        if self._stage.is_last and self._has_backward:
            self._losses.append(self._loss_fn(output, targets[i]))

    def _backward(self, i: int) -> None:
        if self._has_backward:
            loss = self._losses[i] if self._stage.is_last else None
            self._stage.backward_one_chunk(i, loss=loss)


class ScheduleGPipe(_PipelineSchedule):
    """Fill-drain: every microbatch forward, then every microbatch backward."""

    def _step_microbatches(self, arg_mbs, kwarg_mbs, targets) -> None:
        for i in range(self._n_microbatches):
            self._forward(i, arg_mbs, kwarg_mbs, targets)
        for i in range(self._n_microbatches):
            self._backward(i)


class Schedule1F1B(_PipelineSchedule):
    """One forward, one backward: stage s first runs num_stages - s forwards, then alternates
    backward and forward, then drains the backwards; it needs n_microbatches >= num_stages."""

    def __init__(self, stage: PipelineStage, n_microbatches: int, loss_fn=None, **kwargs):
        super().__init__(stage, n_microbatches, loss_fn, **kwargs)
        if n_microbatches < stage.num_stages:
            raise ValueError(f"Schedule1F1B: the number of microbatches ({n_microbatches}) "
                             f"must be at least the number of stages ({stage.num_stages})")

    def _step_microbatches(self, arg_mbs, kwarg_mbs, targets) -> None:
        n, stage = self._n_microbatches, self._stage
        warmup = min(n, stage.num_stages - stage.stage_index)
        for i in range(warmup):
            self._forward(i, arg_mbs, kwarg_mbs, targets)
        for i in range(n):
            self._backward(i)
            if warmup + i < n:
                self._forward(warmup + i, arg_mbs, kwarg_mbs, targets)
