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

from kiln import Tensor
from kiln.distributed import process_group as pg
from kiln.distributed.mpi_backend import MPIBackend
from kiln.distributed.nccl_backend import NCCLBackend
from kiln.distributed.process_group import ReduceOp
from kiln.tracer import autograd
from kiln.tracer.tensor import STATE

FIRST_BUCKET_BYTES = 1 << 20


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
        # True between a DDP forward that will be followed by a synchronizing backward and the
        # end of that backward: a backward through the bare module (or inside no_sync) is local
        self.sync = False
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
            b.pending, b.requests = len(b.params), None
        self.next_bucket = 0
        self.active = False
        self.used: set[int] | None = None

    def forward_begins(self) -> None:
        """DDP's forward is about to run. Under a trace this is a graph break: a compiled replay
        would skip the Python that arms the reducer, so its backward would not all-reduce."""
        if STATE.tracer is not None:
            STATE.tracer.graph_break("DistributedDataParallel's forward arms the gradient "
                                     "all-reduce of the next backward; a compiled replay would "
                                     "skip it")

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
        if STATE.tracer is not None:
            STATE.tracer.graph_break("DistributedDataParallel all-reduces gradients during "
                                     "backward: a compiled replay would skip it")
        b, i = self.where[id(param)]
        if self.ready[b][i]:
            return          # a second backward through part of the graph: already counted
        self._mark(param, param.grad)

    def _mark(self, param: Tensor, grad: Tensor | None) -> None:
        if not self.active:
            self.active = True
            autograd.queue_callback(self._finish)
        b, i = self.where[id(param)]
        bucket = self.buckets[b]
        off, n = bucket.offsets[i], param.numel()
        if grad is None:
            bucket.flat[off:off + n] = 0
        else:
            bucket.flat[off:off + n] = grad._data.reshape(-1)
        self.ready[b][i] = True
        bucket.pending -= 1
        self._launch_ready()

    def _launch_ready(self) -> None:
        while self.next_bucket < len(self.buckets) and \
                self.buckets[self.next_bucket].pending == 0:
            bucket = self.buckets[self.next_bucket]
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
        size = self.world.size
        for bucket in self.buckets:
            self._backend(bucket).wait(bucket.requests)
            xp = bucket.params[0].device.xp
            for p, off in zip(bucket.params, bucket.offsets):
                if globally_used is not None and id(p) not in globally_used:
                    continue       # unused on every rank: its .grad stays as it was
                view = bucket.flat[off:off + p.numel()].reshape(p._data.shape)
                if p.grad is None:
                    p.grad = Tensor._make(view / size, p.dtype, p.device)
                else:          # the average, written in the same pass as the copy
                    xp.divide(view, size, out=p.grad._data)
                    p.grad._version[0] += 1
        self._reset()
        self.sync = False

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
