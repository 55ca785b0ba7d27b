"""One rank's pipeline stage (torch's manual `PipelineStage`): runs its submodule on one
microbatch at a time, sends the activations to the next stage and the input gradients back to
the previous one with kiln's point-to-point ops.

Shapes are not inferred ahead of time: every activation message is preceded by a small int64
header (tensor count, then each tensor's dtype code, rank and sizes), so microbatches of
different lengths just work. Gradients travel without a header: the receiver knows their
shapes from the activations it sent. Sends are non-blocking (`isend`) and waited for at the end
of a step, so a schedule only blocks on receives and cannot deadlock on a send."""

from __future__ import annotations

import kiln
import kiln.distributed as dist
from kiln import Tensor

_DTYPES = ("float32", "float64", "float16", "bfloat16", "int64", "int32", "int16", "int8",
           "uint8", "bool", "complex64", "complex128")
_HEADER = 64        # int64 slots of an activation header


def _encode(tensors: tuple[Tensor, ...]) -> Tensor:
    fields = [len(tensors)]
    for t in tensors:
        fields += [_DTYPES.index(t.dtype.name), t.dim(), *t.shape]
    if len(fields) > _HEADER:
        raise NotImplementedError(f"PipelineStage: the stage output (shapes "
                                  f"{[list(t.shape) for t in tensors]}) does not fit the "
                                  f"{_HEADER}-slot activation header")
    return kiln.tensor(fields + [0] * (_HEADER - len(fields)), dtype=kiln.int64)


def _decode(header: Tensor) -> list[tuple]:
    fields = [int(v) for v in header.tolist()]
    metas, pos = [], 1
    for _ in range(fields[0]):
        dtype, ndim = getattr(kiln, _DTYPES[fields[pos]]), fields[pos + 1]
        metas.append((dtype, tuple(fields[pos + 2:pos + 2 + ndim])))
        pos += 2 + ndim
    return metas


def _as_tuple(what: str, value) -> tuple[Tensor, ...]:
    values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
    for v in values:
        if not isinstance(v, Tensor):
            raise TypeError(f"{what}: a stage's output must be a tensor or a tuple of tensors, "
                            f"got {type(v).__name__}")
        if v.dtype.name not in _DTYPES:
            raise TypeError(f"{what}: cannot send a {v.dtype.name} activation between stages")
    return values


class PipelineStage:
    """Stage `stage_index` of `num_stages`, held by the rank whose rank in `group` (the
    default group if None) is `stage_index`. `input_args`/`output_args` (example tensors) are
    optional: when given, the received activations and the outputs are checked against them."""

    def __init__(self, submodule, stage_index: int, num_stages: int, device,
                 input_args=None, output_args=None, group=None):
        if not isinstance(submodule, kiln.nn.Module):
            raise TypeError(f"PipelineStage: submodule must be a kiln.nn.Module, got "
                            f"{type(submodule).__name__}")
        if not isinstance(num_stages, int) or num_stages < 1:
            raise ValueError(f"PipelineStage: num_stages must be a positive int, got "
                             f"{num_stages!r}")
        if not isinstance(stage_index, int) or not 0 <= stage_index < num_stages:
            raise ValueError(f"PipelineStage: stage_index {stage_index!r} is out of range of "
                             f"{num_stages} stages (0 .. {num_stages - 1})")
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        if size > num_stages:
            raise RuntimeError(f"PipelineStage: pipeline group size {size} cannot be larger "
                               f"than the number of stages {num_stages}")
        if size < num_stages:
            raise NotImplementedError(f"PipelineStage: {num_stages} stages on {size} ranks "
                                      "needs several stages per rank (interleaved schedules), "
                                      "which kiln does not have: use one stage per rank")
        if rank != stage_index:
            raise ValueError(f"PipelineStage: rank {rank} of the pipeline group must hold "
                             f"stage {rank}, got stage_index={stage_index}")
        self.submod, self.stage_index, self.num_stages = submodule, stage_index, num_stages
        self.device, self.group = kiln.device(device), group
        self._input_meta = self._meta(input_args)
        self._output_meta = self._meta(output_args)
        self.has_backward = False
        self.clear_runtime_states()

    @staticmethod
    def _meta(example) -> list[tuple] | None:
        if example is None:
            return None
        return [(t.dtype, tuple(t.shape)) for t in _as_tuple("PipelineStage", example)]

    @property
    def is_first(self) -> bool:
        return self.stage_index == 0

    @property
    def is_last(self) -> bool:
        return self.stage_index == self.num_stages - 1

    def _peer(self, stage: int) -> int:
        return stage if self.group is None else dist.get_global_rank(self.group, stage)

    def clear_runtime_states(self) -> None:
        """Forget the last step's saved microbatches, outputs and pending sends."""
        self.fwd_cache: dict[int, tuple] = {}
        self.output_chunks: list = []
        self._sends: list = []

    def wait_sends(self) -> None:
        for work in self._sends:
            work.wait()
        self._sends = []

    def _send(self, tensors, stage: int) -> None:
        for t in tensors:
            t = t.detach().contiguous()
            self._sends.append(dist.isend(t, self._peer(stage), group=None))

    # ------------------------------------------------------------------------- forward

    def _recv_activations(self) -> tuple[Tensor, ...]:
        header = kiln.empty(_HEADER, dtype=kiln.int64)
        dist.recv(header, self._peer(self.stage_index - 1))
        metas = _decode(header)
        self._check_meta("received activations", metas, self._input_meta)
        inputs = []
        for dtype, shape in metas:
            t = kiln.empty(shape, dtype=dtype, device=self.device)
            dist.recv(t, self._peer(self.stage_index - 1))
            if self.has_backward and (dtype.is_floating_point or dtype.is_complex):
                t.requires_grad_()
            inputs.append(t)
        return tuple(inputs)

    def _check_meta(self, what: str, got: list[tuple], want: list[tuple] | None) -> None:
        if want is not None and got != want:
            raise RuntimeError(f"PipelineStage {self.stage_index}: {what} are {_show(got)}, "
                               f"but the stage was built for {_show(want)}")

    def forward_one_chunk(self, chunk: int, args: tuple, kwargs: dict | None = None):
        """Run microbatch `chunk` (the first stage's `args`; later stages receive theirs) and
        send the output on."""
        inputs = args if self.is_first else self._recv_activations()
        output = self.submod(*inputs, **(kwargs or {}))
        outputs = _as_tuple(f"PipelineStage {self.stage_index}", output)
        self._check_meta("outputs", [(t.dtype, tuple(t.shape)) for t in outputs],
                         self._output_meta)
        self.fwd_cache[chunk] = (outputs, inputs)
        if self.is_last:
            self.output_chunks.append(output)
        else:
            self._send([_encode(outputs)], self.stage_index + 1)
            self._send(outputs, self.stage_index + 1)
        return output

    # ------------------------------------------------------------------------- backward

    def backward_one_chunk(self, chunk: int, loss: Tensor | None = None) -> None:
        """Backward of microbatch `chunk`: from `loss` on the last stage, otherwise from the
        output gradients the next stage sends; then send the input gradients back."""
        outputs, inputs = self.fwd_cache.pop(chunk)
        if self.is_last:
            loss.backward()
        else:
            self._backward_from_next(outputs)
        if not self.is_first:
            grads = [x.grad if x.grad is not None else kiln.zeros_like(x) for x in inputs]
            self._send(grads, self.stage_index - 1)
            if self.is_last:
                self.output_chunks[chunk] = _detached(self.output_chunks[chunk])

    def _backward_from_next(self, outputs: tuple[Tensor, ...]) -> None:
        grads = []
        for out in outputs:
            g = kiln.empty(tuple(out.shape), dtype=out.dtype, device=self.device)
            dist.recv(g, self._peer(self.stage_index + 1))
            grads.append(g)
        pairs = [(o, g) for o, g in zip(outputs, grads) if o.requires_grad]
        for k, (out, g) in enumerate(pairs):
            out.backward(g, retain_graph=k < len(pairs) - 1)

    def scale_grads(self, grad_scale_factor: int) -> None:
        """Divide the stage's gradients by `grad_scale_factor` (the schedules pass the number
        of microbatches when `scale_grads=True`, as torch does)."""
        if grad_scale_factor != 1:
            for p in self.submod.parameters():
                if p.grad is not None:
                    p.grad.div_(grad_scale_factor)


def _show(metas: list[tuple]) -> list[str]:
    return [f"{dtype.name}{list(shape)}" for dtype, shape in metas]


def _detached(output):
    if isinstance(output, (tuple, list)):
        return type(output)(o.detach() for o in output)
    return output.detach()
