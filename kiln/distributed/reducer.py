"""DDP's gradient reducer: parameters' gradients averaged across ranks in buckets, each bucket's
non-blocking all-reduce started by autograd hooks as soon as its last gradient is ready, so
communication can overlap the rest of backward (PyTorch's C++ Reducer, in Python). MPI moves a
non-blocking collective only while some MPI call runs, so each hook also polls the started ones.

Buckets hold parameters in reverse registration order (the order backward tends to produce
gradients), the first capped at 1 MiB so communication starts early, the rest at
`bucket_cap_mb`. Buckets are started strictly in index order on every rank, so ranks issue the
same collectives in the same order even if their gradients become ready in different orders.
The reducer talks on its own duplicate of the group's communicator, so it never interleaves
with the user's collectives.
"""

from __future__ import annotations

import itertools

import kiln
from kiln import Tensor
from kiln.compiler import replay_after
from kiln.distributed import process_group as pg
from kiln.distributed.mpi_backend import MPIBackend
from kiln.distributed.nccl_backend import NCCLBackend
from kiln.distributed.process_group import ReduceOp
from kiln.ir.ops_extra import COMMUNICATORS
from kiln.ir.primitive import P
from kiln.tracer import autograd
from kiln.tracer.tensor import STATE

FIRST_BUCKET_BYTES = 1 << 20
_KEYS = itertools.count()
_LAST_COLLECTIVE = [None, None]     # [the tracer, its last collective's result] (_collective)


class _Bucket:
    """Some parameters' gradients side by side in one flat buffer, all-reduced as one."""

    def __init__(self, params: list[Tensor], xp, dtype):
        self.params = params
        self.offsets, total = [], 0
        for p in params:
            self.offsets.append(total)
            total += p.numel()
        self.flat = xp.zeros(total, dtype=dtype)
        self.pending = len(params)
        self.requests = None
        self.future = None           # what a communication hook returned for this bucket


class GradBucket:
    """One bucket as a DDP communication hook sees it (torch.distributed.GradBucket): the
    flat gradients (`buffer()`, which the hook may change in place), its `index()`,
    `is_last()`, and the `parameters()` and their `gradients()` (views of the buffer)."""

    def __init__(self, index: int, count: int, buffer: Tensor, params: list[Tensor],
                 offsets: list[int]):
        self._index, self._count, self._buffer = index, count, buffer
        self._params, self._offsets = params, offsets

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return self._index == self._count - 1

    def buffer(self) -> Tensor:
        return self._buffer

    def set_buffer(self, buffer: Tensor) -> None:
        self._buffer = buffer

    def parameters(self) -> list[Tensor]:
        return list(self._params)

    def gradients(self) -> list[Tensor]:
        return [self._buffer[off:off + p.numel()].view(p.shape)
                for p, off in zip(self._params, self._offsets)]


class Reducer:
    """Averages the gradients of `params` across the default group after each backward."""

    def __init__(self, params: list[Tensor], bucket_cap_mb: float = 25.0,
                 find_unused_parameters: bool = False,
                 first_bucket_bytes: int | None = None):
        world = pg._require("DistributedDataParallel")
        self.world = world
        self.comm = world.comm.Dup()
        self.params = params
        self.find_unused = find_unused_parameters
        first = FIRST_BUCKET_BYTES if first_bucket_bytes is None else first_bucket_bytes
        self.buckets = _make_buckets(params, int(bucket_cap_mb * (1 << 20)), first)
        self.where = {}                  # id(param) -> (bucket index, position)
        for b, bucket in enumerate(self.buckets):
            for i, p in enumerate(bucket.params):
                self.where[id(p)] = (b, i)
        self.mpi = MPIBackend(self.comm)
        self.handles = [p.register_post_accumulate_grad_hook(self._grad_ready) for p in params]
        # the name compiled programs' collectives call this reducer's communicator by
        self.key = f"ddp{next(_KEYS)}"
        COMMUNICATORS[self.key] = self
        self.arming = None          # what a traced forward has each replay run (arm_on_replay)
        # True between a DDP forward that will be followed by a synchronizing backward and the
        # end of that backward: a backward through the bare module (or inside no_sync) is local
        self.sync = False
        self.comm_hook = None        # (state, hook) from DDP.register_comm_hook
        # what the all-reduced sums are divided by: the world size, or under a Join with
        # divide_by_initial_world_size=False the number of ranks still running
        self.divisor = None
        self._reset()

    def _backend(self, bucket: _Bucket):
        if bucket.params[0].device.type == "cuda":
            if self.world.nccl is None:
                self.world.nccl = NCCLBackend.create(self.world.comm)
            return self.world.nccl
        return self.mpi

    def _reset(self) -> None:
        self.ready = [[False] * len(b.params) for b in self.buckets]
        for b in self.buckets:
            b.pending, b.requests, b.future = len(b.params), None, None
        self.next_bucket = 0
        self.active = False
        self.traced = False         # this backward's buckets are all-reduced in a trace
        self.used: set[int] | None = None

    def break_trace(self, why: str) -> None:
        """DDP's forward is traced and its reducer cannot be armed by a replay (`why`): a
        graph break."""
        STATE.tracer.graph_break("DistributedDataParallel's forward arms the gradient "
                                 f"all-reduce of the next backward; {why}")

    def prepare_for_backward(self, outputs: list[Tensor]) -> None:
        """Called after forward: with find_unused_parameters, parameters the outputs do not
        depend on are ready now (their bucket slots hold zeros)."""
        self._reset()
        if not self.find_unused or not self.sync:
            return
        self.used = _leaves_reached(outputs)
        for p in self.params:
            if id(p) not in self.used:
                self._mark(p, None)

    def _grad_ready(self, param: Tensor) -> None:
        if not self.sync:
            return
        if STATE.tracer is not None and not self.active:
            self._start_traced()
        if self.traced:
            b, i = self.where[id(param)]
            self.ready[b][i] = True
            if not self.active:
                self.active = True
                autograd.queue_callback(self._traced_finish)
            return
        b, i = self.where[id(param)]
        if self.ready[b][i]:
            return          # a second backward through part of the graph: already counted
        self._mark(param, param.grad)

    # ------------------------------------------------------------------ inside a compiled call
    def arm_on_replay(self, arm) -> None:
        """A traced DDP forward: every replay of the call runs `arm()` after the program, as
        the forward would (a backward outside the compiled call all-reduces then), unless the
        call's own backward is traced too and all-reduces inside the program."""
        self.arming = arm
        replay_after("DistributedDataParallel's forward", arm)

    def _start_traced(self) -> None:
        """The first gradient of a backward that kiln.compile traces: its buckets will be
        all-reduced when it ends, as nodes of the compiled program (`_traced_finish`), where
        the eager path starts each bucket's non-blocking all-reduce as it fills; or, where a
        replay cannot do what this reducer does, a graph break."""
        why = None
        if self.comm_hook is not None:
            why = "a communication hook runs Python on each bucket"
        elif self.divisor is not None:
            why = "under a Join the divisor changes as ranks join"
        elif self.params[0].device.type == "cuda":
            why = "on a GPU its NCCL all-reduce is not yet a node of the compiled program"
        if why is not None:
            STATE.tracer.graph_break(f"DistributedDataParallel all-reduces gradients during "
                                     f"backward ({why}): a compiled replay would skip it")
        self.traced = STATE.tracer is not None

    def _traced_finish(self) -> None:
        """End of a traced backward: each bucket's gradients, flattened, summed over the ranks
        by an `all_reduce_sum` node (each ordered after the previous bucket's, so every rank's
        program issues them in bucket order), averaged and copied back into `.grad`."""
        reached = [p for p in self.params if self.ready[self.where[id(p)][0]]
                   [self.where[id(p)][1]]]
        if STATE.tracer is not None and (len(reached) < len(self.params) or
                                         any(p.grad.is_sparse for p in reached)):
            STATE.tracer.graph_break("DistributedDataParallel: a parameter got no gradient, or "
                                     "a sparse one, in this backward")
        if STATE.tracer is None:
            # the trace broke during this backward: the call goes on eagerly, so does this
            self._reset()
            for p in reached:
                self._mark(p, p.grad)       # (queues the eager _finish)
            return
        if self.arming is not None:      # armed and used by this very call: not again after it
            STATE.tracer.drop_replay_after(self.arming)
            self.arming = None
        with kiln.no_grad():
            for bucket in self.buckets:
                flat = kiln.cat([p.grad.reshape(-1) for p in bucket.params])
                summed = self._collective("all_reduce_sum", flat)
                mean = summed / self.world.size
                for p, off in zip(bucket.params, bucket.offsets):
                    p.grad.copy_(mean[off:off + p.numel()].view(p.shape))
        self._reset()
        self.sync = False

    def _collective(self, name: str, t: Tensor, **attrs) -> Tensor:
        """Primitive `name` on `t` in the trace, ordered after the trace's previous collective
        (of any reducer): a replay then issues them in the order the traced call did, on
        every rank, whichever rank traces and whichever replays."""
        tracer, last = _LAST_COLLECTIVE
        after = (last,) if tracer is STATE.tracer and last is not None else ()
        out = getattr(P, name)(t, *after, group=self.key, **attrs)
        _LAST_COLLECTIVE[:] = [STATE.tracer, out]
        return out

    def traced_broadcast(self, buffers: list[Tensor], src: int) -> None:
        """A traced DDP forward's buffer sync: rank `src`'s values copied into `buffers` by
        `broadcast_from` nodes of the compiled program."""
        with kiln.no_grad():
            for b in buffers:
                b.copy_(self._collective("broadcast_from", b, src=src))

    def sum_in_place(self, arr) -> None:
        """`arr` (NumPy, contiguous) summed over the ranks, blocking: a compiled program's
        `all_reduce_sum` node."""
        self.mpi.wait(self.mpi.all_reduce(arr, ReduceOp.SUM))

    def broadcast_in_place(self, arr, src: int) -> None:
        """Rank `src`'s `arr` (NumPy, contiguous), blocking: a `broadcast_from` node."""
        self.mpi.wait(self.mpi.broadcast(arr, src))

    def _mark(self, param: Tensor, grad: Tensor | None) -> None:
        if not self.active:
            self.active = True
            autograd.queue_callback(self._finish)
        b, i = self.where[id(param)]
        bucket = self.buckets[b]
        off, n = bucket.offsets[i], param.numel()
        if grad is None:
            bucket.flat[off:off + n] = 0
        elif grad.is_sparse:
            raise NotImplementedError(
                f"DistributedDataParallel: the gradient of a parameter of shape "
                f"{list(param.shape)} is sparse (an embedding with sparse=True); kiln's DDP "
                f"all-reduces dense buckets only: use sparse=False under DDP")
        else:
            bucket.flat[off:off + n] = grad._data.reshape(-1)
        self.ready[b][i] = True
        bucket.pending -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self.next_bucket < len(self.buckets) and \
                self.buckets[self.next_bucket].pending == 0:
            bucket = self.buckets[self.next_bucket]
            if self.comm_hook is not None:
                bucket.future = self._run_hook(self.next_bucket, bucket.flat)
            else:
                bucket.requests = self._backend(bucket).all_reduce(bucket.flat, ReduceOp.SUM)
            self.next_bucket += 1
        # MPI moves non-blocking collectives only inside MPI calls: a test lets the started
        # buckets progress while backward goes on
        started = [r for bk in self.buckets[:self.next_bucket] if bk.requests is not None
                   and self._backend(bk) is self.mpi for r in bk.requests]
        if started:
            self.mpi.test(started)

    def _finish(self) -> None:
        """End of backward: every bucket started, waited, averaged and written to `.grad`."""
        missing = [p for p in self.params if not self.ready[self.where[id(p)][0]]
                   [self.where[id(p)][1]]]
        if missing:
            if not self.find_unused:
                for bucket in self.buckets[:self.next_bucket]:    # nothing left in flight
                    if bucket.future is not None:
                        bucket.future.wait()
                    else:
                        self._backend(bucket).wait(bucket.requests)
                self._reset()
                self.sync = False
                shapes = ", ".join(f"{p.dtype.name}{list(p.shape)}" for p in missing[:4])
                raise RuntimeError(
                    f"DistributedDataParallel: {len(missing)} parameter(s) got no gradient in "
                    f"this backward ({shapes}{', ...' if len(missing) > 4 else ''}), so their "
                    "buckets were never reduced. Pass find_unused_parameters=True to "
                    "DistributedDataParallel if some parameters are unused in forward, and make "
                    "sure every forward output takes part in the loss")
            for p in missing:      # used in forward but given no gradient (a detached path)
                self._mark(p, None)
        globally_used = None
        if self.find_unused:
            globally_used = self._globally_used()
        size = self.world.size if self.divisor is None else self.divisor
        for bucket in self.buckets:
            xp = bucket.params[0].device.xp
            flat, divide = bucket.flat, size
            if bucket.future is not None:      # a hook's result: averaged already
                flat, divide = self._hook_result(bucket), 1
            else:
                self._backend(bucket).wait(bucket.requests)
            for p, off in zip(bucket.params, bucket.offsets):
                if globally_used is not None and id(p) not in globally_used:
                    continue       # unused on every rank: its .grad stays as it was
                view = flat[off:off + p.numel()].reshape(p._data.shape)
                if p.grad is None:
                    p.grad = Tensor._make(view / divide, p.dtype, p.device)
                else:          # the average, written in the same pass as the copy
                    xp.divide(view, divide, out=p.grad._data)
                    p.grad._version[0] += 1
        self._reset()
        self.sync = False

    def _run_hook(self, index: int, flat) -> object:
        """The communication hook's future for bucket `index` holding `flat`."""
        from kiln.futures import Future
        bucket = self.buckets[index]
        p0 = bucket.params[0]
        grads = GradBucket(index, len(self.buckets), Tensor._make(flat, p0.dtype, p0.device),
                           bucket.params, bucket.offsets)
        state, hook = self.comm_hook
        future = hook(state, grads)
        if not isinstance(future, Future):
            raise TypeError(f"DistributedDataParallel: the communication hook "
                            f"{getattr(hook, '__name__', hook)!r} returned "
                            f"{type(future).__name__}; it must return a kiln.futures.Future "
                            "of the bucket's reduced gradients (a Tensor)")
        return future

    def _hook_result(self, bucket: _Bucket):
        """The flat array of the hook's result for `bucket`, checked, as a copy (the bucket's
        buffer is reused next iteration)."""
        result = bucket.future.wait()
        if isinstance(result, (list, tuple)) and len(result) == 1:
            result = result[0]
        if not isinstance(result, Tensor) or result.numel() != bucket.flat.size:
            got = f"{result.dtype.name}{list(result.shape)}" if isinstance(result, Tensor) \
                else type(result).__name__
            raise RuntimeError(f"DistributedDataParallel: the communication hook's future for "
                               f"bucket {self.buckets.index(bucket)} holds {got}; it must hold "
                               f"a tensor of the bucket's {bucket.flat.size} elements")
        return result._data.reshape(-1).astype(bucket.flat.dtype, copy=True)

    def shadow_backward(self) -> None:
        """A joined rank's part of one backward of the ranks still running: each bucket's
        all-reduce (or hook) with zero gradients, in bucket order, and the used-parameter
        all-reduce with nothing used. Gradients here are left as they were."""
        import numpy as np
        futures, started = [], []
        for index, bucket in enumerate(self.buckets):
            zeros = bucket.params[0].device.xp.zeros_like(bucket.flat)
            if self.comm_hook is not None:
                futures.append(self._run_hook(index, zeros))
            else:
                started.append((bucket, self._backend(bucket).all_reduce(zeros, ReduceOp.SUM)))
        for bucket, requests in started:
            self._backend(bucket).wait(requests)
        for future in futures:
            future.wait()
        if self.find_unused:
            unused = np.zeros(len(self.params), dtype=np.uint8)
            self.comm.Allreduce(self.mpi.MPI.IN_PLACE, unused, op=self.mpi.MPI.MAX)

    def _globally_used(self) -> set[int]:
        """Ids of parameters some rank used (had a gradient for) in this iteration."""
        import numpy as np
        local = np.array([1 if (self.used is None or id(p) in self.used) and p.grad is not None
                          else 0 for p in self.params], dtype=np.uint8)
        self.comm.Allreduce(self.mpi.MPI.IN_PLACE, local, op=self.mpi.MPI.MAX)
        return {id(p) for p, u in zip(self.params, local) if u}

    def close(self) -> None:
        """Remove the hooks and free the communicator (DDP calls this when it is collected)."""
        for h in self.handles:
            h.remove()
        self.handles = []
        COMMUNICATORS.pop(self.key, None)
        if self.comm is not None and not self.mpi.MPI.Is_finalized():
            self.comm.Free()
        self.comm = None


def _make_buckets(params: list[Tensor], cap: int, first_cap: int) -> list[_Bucket]:
    """Parameters in reverse order, grouped by device and dtype, into buckets up to `cap`."""
    buckets, open_ = [], {}
    for p in reversed(params):
        key = (p.device, p.dtype)
        group, size = open_.get(key, ([], 0))
        limit = first_cap if not buckets else cap
        group.append(p)
        size += p.numel() * p.dtype.itemsize
        if size >= limit:
            buckets.append(_Bucket(group, p.device.xp, p._data.dtype))
            group, size = [], 0
        open_[key] = (group, size)
    for key, (group, _) in open_.items():
        if group:
            buckets.append(_Bucket(group, key[0].xp, group[0]._data.dtype))
    return buckets


def _leaves_reached(outputs: list[Tensor]) -> set[int]:
    """Ids of the leaf tensors the autograd graph of `outputs` reaches."""
    seen, leaves = set(), set()
    stack = [t.grad_fn if t.grad_fn is not None else t for t in outputs
             if isinstance(t, Tensor) and t.requires_grad]
    while stack:
        node = stack.pop()
        if isinstance(node, Tensor):
            leaves.add(id(node))
            continue
        if id(node) in seen or node.edges is None:
            continue
        seen.add(id(node))
        stack.extend(e for e in node.edges if e is not None)
    return leaves
