"""Tensor collectives with torch.distributed's signatures, over the default process group.

Each call checks its tensors (contiguous, one device, agreeing shapes), optionally exchanges a
few integers of metadata so that ranks passing different shapes, dtypes or ops get an error
naming both instead of a hang or garbage, and starts the backend's non-blocking operation on
the tensors' own memory. `async_op=True` returns the `Work`; otherwise it is waited here.

A collective inside a traced (`@kiln.compile`) function is a graph break: the compiled program
would replay its arithmetic without talking to the other ranks.
"""

from __future__ import annotations

import time

import numpy as np

from kiln import Tensor
from kiln.distributed import process_group as pg
from kiln.distributed.nccl_backend import NCCLBackend
from kiln.distributed.process_group import ReduceOp
from kiln.tracer.tensor import STATE

_OPS = ("all_reduce", "broadcast", "reduce", "all_gather", "all_gather_into_tensor",
        "reduce_scatter", "reduce_scatter_tensor", "gather", "scatter", "barrier", "all_to_all")
_DTYPES = ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
_MAX_DIMS = 8
# MPI tags of the exchanges below, apart from user tags (send/recv default to 0)
_TAG_ALL_TO_ALL, _TAG_MONITORED, _TAG_OBJECT = 0x7F01, 0x7F02, 0x7F03


class Work:
    """A started collective (torch.distributed.Work): `wait()` blocks until it is done."""

    def __init__(self, backend, requests: list, finish=None, result=None):
        self._backend, self._requests, self._finish = backend, requests, finish
        self._result, self._done, self._source = result, False, None
        self._future = None

    def wait(self, timeout=None) -> bool:
        if not self._done:
            statuses = self._backend.wait(self._requests)
            if statuses and hasattr(statuses[0], "Get_source"):
                self._source = statuses[0].Get_source()
            self._done = True
            if self._finish is not None:
                self._finish()
            if self._future is not None and not self._future.done():
                self._future.set_result(list(self._result or []))
        return True

    def get_future(self):
        """A `kiln.futures.Future` completed with the result tensors (a list) once the
        collective is done; waiting on it (or on a future chained from it with `then`) waits
        for the collective."""
        from kiln.futures import Future
        if self._future is None:
            self._future = Future()
            self._future._driver = self.wait
            if self._done:
                self._future.set_result(list(self._result or []))
        return self._future

    def is_completed(self) -> bool:
        if not self._done and self._backend.test(self._requests):
            self.wait()
        return self._done

    def is_success(self) -> bool:
        return self.is_completed()

    def result(self) -> list:
        self.wait()
        return list(self._result or [])

    def _source_rank(self) -> int:
        self.wait()
        return self._source


def _start(what: str, tensors: list[Tensor], group, check: tuple | None):
    """The group (the default one's `_World` or a ProcessGroup) and backend for `tensors`,
    after the caller-facing checks."""
    world = pg.resolve_group(group, what)
    if STATE.tracer is not None:
        STATE.tracer.graph_break(f"kiln.distributed.{what} is a collective: a compiled replay "
                                 "would skip talking to the other ranks")
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        raise ValueError(f"{what}: tensors on different devices {sorted(map(str, devices))}; "
                         "put them on one device")
    for t in tensors:
        if not isinstance(t, Tensor):
            raise TypeError(f"{what}: expected kiln.Tensor arguments, got {type(t).__name__}")
        if not t._data.flags.c_contiguous:
            raise ValueError(f"{what}: Tensors must be contiguous (got {t.dtype.name}"
                             f"{list(t.shape)} with strides {t.stride()}); call .contiguous()")
    device = tensors[0].device if tensors else None
    if device is not None and device.type == "cuda":
        if world.nccl is None:
            if not pg.is_nccl_available():
                raise RuntimeError(f"{what}: cuda tensors go through NCCL, which needs CuPy with "
                                   "NCCL (cupy.cuda.nccl); move the tensors to the CPU for MPI")
            world.nccl = NCCLBackend.create(world.comm)     # collective over the group
        backend = world.nccl
    else:
        backend = world.mpi
    if check is not None and world.checks and world.size > 1:
        _check_agree(world, what, *check)
    return world, backend


def _describe(row: np.ndarray) -> str:
    op, dtype, ndim, redop, root = (int(v) for v in row[:5])
    shape = [int(s) for s in row[5:5 + min(ndim, _MAX_DIMS)]]
    text = _OPS[op]
    if dtype >= 0:
        text += f" with {_DTYPES[dtype] if dtype < len(_DTYPES) else 'dtype ' + str(dtype)}"
        text += str(shape)
    if redop >= 0:
        text += f", op={ReduceOp.ALL[redop].upper()}"
    if root >= 0:
        text += f", root rank {root}"
    return text


def _check_agree(world, what: str, tensor: Tensor | None, redop: int = -1,
                 root: int = -1) -> None:
    """Ranks compare (op, dtype, shape, reduce op, root) with one small Allgather first."""
    row = np.full(5 + _MAX_DIMS, -1, dtype=np.int64)
    row[0], row[3], row[4] = _OPS.index(what), redop, root
    if tensor is not None:
        row[1] = _DTYPES.index(tensor.dtype.name) if tensor.dtype.name in _DTYPES else 99
        row[2] = tensor.ndim
        shape = list(tensor.shape)
        if len(shape) > _MAX_DIMS:
            shape = shape[:_MAX_DIMS - 1] + [int(np.prod(shape[_MAX_DIMS - 1:]))]
        row[5:5 + len(shape)] = shape
    rows = np.empty((world.size, row.size), dtype=np.int64)
    world.comm.Allgather(row, rows)
    bad = [r for r in range(world.size) if not np.array_equal(rows[r], row)]
    if bad:
        other = bad[0]
        raise RuntimeError(
            f"{what}: ranks disagree on the collective: rank {world.rank} called "
            f"{_describe(row)}; rank {other} called {_describe(rows[other])}. Every rank must "
            "call the same collectives in the same order with the same shapes and dtypes")


def _run(backend, requests: list, async_op: bool, finish=None, result=None):
    return _run_work(Work(backend, requests, finish, result), async_op)


def _run_work(work: Work, async_op: bool):
    if async_op:
        return work
    work.wait()
    return None


def _written(*tensors: Tensor) -> None:
    for t in tensors:
        t._version[0] += 1


def _check_op(what: str, op: str, tensor: Tensor) -> int:
    if op not in ReduceOp.ALL:
        raise ValueError(f"{what}: unknown reduce op {op!r}; use kiln.distributed.ReduceOp")
    if op == ReduceOp.AVG and not tensor.dtype.is_floating_point:
        raise TypeError(f"{what}: ReduceOp.AVG needs a floating-point tensor, got "
                        f"{tensor.dtype.name}")
    return ReduceOp.ALL.index(op)


def _average(world, *arrays):
    def finish():
        for a in arrays:
            a /= world.size
    return finish


# ----------------------------------------------------------------------------- collectives

def all_reduce(tensor: Tensor, op: str = ReduceOp.SUM, group=None, async_op: bool = False):
    """Reduce `tensor` across every rank, in place, so each rank holds the result."""
    code = _check_op("all_reduce", op, tensor)
    world, backend = _start("all_reduce", [tensor], group, (tensor, code))
    requests = backend.all_reduce(tensor._data, op)
    _written(tensor)
    finish = _average(world, tensor._data) if op == ReduceOp.AVG else None
    return _run(backend, requests, async_op, finish, [tensor])


def broadcast(tensor: Tensor, src: int = 0, group=None, async_op: bool = False,
              group_src: int | None = None):
    """Copy rank `src`'s `tensor` into `tensor` on every rank."""
    src = _group_rank(group, src, group_src)
    world, backend = _start("broadcast", [tensor], group, (tensor, -1, src))
    _check_rank("broadcast", "src", src, world)
    requests = backend.broadcast(tensor._data, src)
    _written(tensor)
    return _run(backend, requests, async_op, None, [tensor])


def reduce(tensor: Tensor, dst: int = 0, op: str = ReduceOp.SUM, group=None,
           async_op: bool = False, group_dst: int | None = None):
    """Reduce `tensor` across ranks into rank `dst`'s `tensor` (others' are left as they were)."""
    dst = _group_rank(group, dst, group_dst)
    code = _check_op("reduce", op, tensor)
    world, backend = _start("reduce", [tensor], group, (tensor, code, dst))
    _check_rank("reduce", "dst", dst, world)
    requests = backend.reduce(tensor._data, dst, op)
    finish = None
    if world.rank == dst:
        _written(tensor)
        finish = _average(world, tensor._data) if op == ReduceOp.AVG else None
    return _run(backend, requests, async_op, finish, [tensor])


def all_gather(tensor_list: list[Tensor], tensor: Tensor, group=None, async_op: bool = False):
    """Every rank's `tensor`, in rank order, copied into `tensor_list` on every rank."""
    world, backend = _start("all_gather", [tensor, *tensor_list], group, (tensor, -1))
    _check_list("all_gather", "tensor_list", tensor_list, tensor, world)
    xp = _xp(tensor)
    out = xp.empty((world.size,) + tuple(tensor.shape), dtype=tensor._data.dtype)
    requests = backend.all_gather(out, tensor._data)

    def finish():
        for i, t in enumerate(tensor_list):
            t._data[...] = out[i]
            _written(t)
    return _run(backend, requests, async_op, finish, tensor_list)


def all_gather_into_tensor(output_tensor: Tensor, input_tensor: Tensor, group=None,
                           async_op: bool = False):
    """Every rank's `input_tensor` concatenated (or stacked) in rank order into one tensor."""
    world, backend = _start("all_gather_into_tensor", [output_tensor, input_tensor], group,
                            (input_tensor, -1))
    _check_sizes("all_gather_into_tensor", output_tensor, input_tensor, world.size, "output")
    requests = backend.all_gather(output_tensor._data, input_tensor._data)
    _written(output_tensor)
    return _run(backend, requests, async_op, None, [output_tensor])


def reduce_scatter(output: Tensor, input_list: list[Tensor], op: str = ReduceOp.SUM,
                   group=None, async_op: bool = False):
    """Reduce `input_list[i]` across ranks into rank i's `output`."""
    code = _check_op("reduce_scatter", op, output)
    world, backend = _start("reduce_scatter", [output, *input_list], group, (output, code))
    _check_list("reduce_scatter", "input_list", input_list, output, world)
    send = _xp(output).stack([t._data for t in input_list])
    requests = backend.reduce_scatter(output._data, send, op)
    _written(output)
    finish = _average(world, output._data) if op == ReduceOp.AVG else None
    return _run(backend, requests, async_op, finish, [output])


def reduce_scatter_tensor(output: Tensor, input: Tensor, op: str = ReduceOp.SUM, group=None,
                          async_op: bool = False):
    """Reduce `input` across ranks; rank i gets the i-th of `world_size` equal slices."""
    code = _check_op("reduce_scatter_tensor", op, output)
    world, backend = _start("reduce_scatter_tensor", [output, input], group, (input, code))
    _check_sizes("reduce_scatter_tensor", input, output, world.size, "input")
    requests = backend.reduce_scatter(output._data, input._data, op)
    _written(output)
    finish = _average(world, output._data) if op == ReduceOp.AVG else None
    return _run(backend, requests, async_op, finish, [output])


def gather(tensor: Tensor, gather_list: list[Tensor] | None = None, dst: int = 0, group=None,
           async_op: bool = False, group_dst: int | None = None):
    """Every rank's `tensor`, in rank order, into `gather_list` on rank `dst`."""
    dst = _group_rank(group, dst, group_dst)
    world = pg.resolve_group(group, "gather")
    root = world.rank == dst
    if root and gather_list is None:
        raise ValueError("gather: gather_list must be given on the destination rank")
    lists = list(gather_list) if root else []
    world, backend = _start("gather", [tensor, *lists], group, (tensor, -1, dst))
    _check_rank("gather", "dst", dst, world)
    out = None
    if root:
        _check_list("gather", "gather_list", lists, tensor, world)
        out = _xp(tensor).empty((world.size,) + tuple(tensor.shape), dtype=tensor._data.dtype)
    requests = backend.gather(out, tensor._data, dst)

    def finish():
        for i, t in enumerate(lists):
            t._data[...] = out[i]
            _written(t)
    return _run(backend, requests, async_op, finish, lists)


def scatter(tensor: Tensor, scatter_list: list[Tensor] | None = None, src: int = 0, group=None,
            async_op: bool = False, group_src: int | None = None):
    """Rank `src`'s `scatter_list[i]` into rank i's `tensor`."""
    src = _group_rank(group, src, group_src)
    world = pg.resolve_group(group, "scatter")
    root = world.rank == src
    if root and scatter_list is None:
        raise ValueError("scatter: scatter_list must be given on the source rank")
    lists = list(scatter_list) if root else []
    world, backend = _start("scatter", [tensor, *lists], group, (tensor, -1, src))
    _check_rank("scatter", "src", src, world)
    chunks = None
    if root:
        _check_list("scatter", "scatter_list", lists, tensor, world)
        chunks = _xp(tensor).stack([t._data for t in lists])
    requests = backend.scatter(tensor._data, chunks, src)
    _written(tensor)
    return _run(backend, requests, async_op, None, [tensor])


def all_to_all_single(output: Tensor, input: Tensor, output_split_sizes=None,
                      input_split_sizes=None, group=None, async_op: bool = False):
    """Rank r sends the j-th slice of `input` (dim 0) to rank j; the slices from each rank land
    in rank order in `output`. The slices are equal, or `input_split_sizes[j]` rows go to rank
    j and `output_split_sizes[j]` rows come from rank j."""
    if output_split_sizes is not None or input_split_sizes is not None:
        return _all_to_all_split(output, input, output_split_sizes, input_split_sizes, group,
                                 async_op)
    world, backend = _start("all_to_all", [output, input], group, (input, -1))
    if input.numel() != output.numel() or input.numel() % world.size:
        raise ValueError(f"all_to_all_single: input {list(input.shape)} and output "
                         f"{list(output.shape)} must have the same number of elements, a "
                         f"multiple of the world size {world.size}")
    requests = backend.all_to_all(output._data, input._data)
    _written(output)
    return _run(backend, requests, async_op, None, [output])


def _all_to_all_split(output: Tensor, input: Tensor, output_split_sizes, input_split_sizes,
                      group, async_op: bool):
    """all_to_all_single with split sizes: one send and one receive of dim-0 rows per rank."""
    world, backend = _start("all_to_all", [output, input], group, (None, -1))
    _check_one_dtype("all_to_all_single", [output, input])
    pieces = []
    for name, t, splits in (("input", input, input_split_sizes),
                            ("output", output, output_split_sizes)):
        if t.ndim == 0:
            raise ValueError(f"all_to_all_single: the {name} tensor must have a dim 0 to split")
        rows = t.shape[0]
        if splits is None:
            if rows % world.size:
                raise ValueError(f"all_to_all_single: the {name} tensor's {rows} rows do not "
                                 f"split equally over {world.size} ranks; give "
                                 f"{name}_split_sizes")
            splits = [rows // world.size] * world.size
        splits = [int(k) for k in splits]
        if len(splits) != world.size or sum(splits) != rows or min(splits) < 0:
            raise ValueError(f"all_to_all_single: {name}_split_sizes {splits} must give one "
                             f"row count per rank ({world.size}) summing to the {name} "
                             f"tensor's {rows} rows")
        starts = np.cumsum([0] + splits)
        pieces.append([t._data[starts[j]:starts[j + 1]] for j in range(world.size)])
    sends, recvs = pieces
    if world.checks and world.size > 1:
        _check_exchange(world, "all_to_all_single", [a.size for a in sends],
                        [a.size for a in recvs])
    requests = backend.send_recv([(a, j, _TAG_ALL_TO_ALL) for j, a in enumerate(sends)],
                                 [(a, j, _TAG_ALL_TO_ALL) for j, a in enumerate(recvs)])
    return _run(backend, requests, async_op, lambda: _written(output), [output])


def barrier(group=None, async_op: bool = False, device_ids=None):
    """Wait until every rank has reached this barrier."""
    world, backend = _start("barrier", [], group, (None, -1))
    return _run(backend, backend.barrier(), async_op)


def all_to_all(output_tensor_list: list[Tensor], input_tensor_list: list[Tensor], group=None,
               async_op: bool = False):
    """Rank r's `input_tensor_list[j]` lands in rank j's `output_tensor_list[r]`. The pieces may
    differ in size from pair to pair; each sent piece must fit its receiving tensor."""
    outputs, inputs = list(output_tensor_list), list(input_tensor_list)
    world, backend = _start("all_to_all", [*outputs, *inputs], group, (None, -1))
    for name, tensors in (("output_tensor_list", outputs), ("input_tensor_list", inputs)):
        if len(tensors) != world.size:
            raise ValueError(f"all_to_all: {name} has {len(tensors)} tensors; it needs one per "
                             f"rank ({world.size})")
    _check_one_dtype("all_to_all", outputs + inputs)
    if world.checks and world.size > 1:
        _check_exchange(world, "all_to_all", [t.numel() for t in inputs],
                        [t.numel() for t in outputs])
    sends = [(t._data, peer, _TAG_ALL_TO_ALL) for peer, t in enumerate(inputs)]
    recvs = [(t._data, peer, _TAG_ALL_TO_ALL) for peer, t in enumerate(outputs)]
    requests = backend.send_recv(sends, recvs)
    return _run(backend, requests, async_op, lambda: _written(*outputs), outputs)


def all_gather_coalesced(output_tensor_lists: list[list[Tensor]], input_tensor_list: list[Tensor],
                         group=None, async_op: bool = False):
    """`all_gather` of each tensor of `input_tensor_list` (deprecated in torch):
    `output_tensor_lists[r][i]` receives rank r's `input_tensor_list[i]`."""
    world = pg.resolve_group(group, "all_gather_coalesced")
    if len(output_tensor_lists) != world.size or any(
            len(row) != len(input_tensor_list) for row in output_tensor_lists):
        raise ValueError(f"all_gather_coalesced: output_tensor_lists must hold one list per rank "
                         f"({world.size}), each with one tensor per input tensor "
                         f"({len(input_tensor_list)})")
    _check_one_dtype("all_gather_coalesced", list(input_tensor_list))
    works = [all_gather([row[i] for row in output_tensor_lists], t, group, async_op=True)
             for i, t in enumerate(input_tensor_list)]
    return _joined(works, [t for row in output_tensor_lists for t in row], async_op)


def all_reduce_coalesced(tensors: list[Tensor], op: str = ReduceOp.SUM, group=None,
                         async_op: bool = False):
    """`all_reduce` of each tensor of `tensors`, in place (deprecated in torch)."""
    if isinstance(tensors, Tensor):
        tensors = [tensors]
    _check_one_dtype("all_reduce_coalesced", list(tensors))
    works = [all_reduce(t, op, group, async_op=True) for t in tensors]
    return _joined(works, list(tensors), async_op)


def _joined(works: list[Work], result: list, async_op: bool):
    """One Work that is done when every work of `works` is."""
    if not works:
        return None
    finishes = [w._finish for w in works if w._finish is not None]
    work = Work(works[0]._backend, [r for w in works for r in w._requests],
                lambda: [f() for f in finishes], result)
    return _run_work(work, async_op)


def monitored_barrier(group=None, timeout=None, wait_all_ranks: bool = False) -> None:
    """A barrier that names the ranks that did not reach it in time: every rank reports to
    rank 0, which raises a RuntimeError naming the first late rank (every late rank with
    `wait_all_ranks=True`) after `timeout` (default: default_pg_timeout); the other ranks then
    raise too. Runs on the CPU (MPI) whatever the backend, as torch's runs on gloo."""
    world, _ = _start("barrier", [], group, None)
    seconds = timeout if timeout is not None else pg.default_pg_timeout
    seconds = seconds.total_seconds() if hasattr(seconds, "total_seconds") else float(seconds)
    comm = world.comm
    if world.size == 1:
        return
    if world.rank != 0:
        comm.send(world.rank, dest=0, tag=_TAG_MONITORED)
        late = comm.recv(source=0, tag=_TAG_MONITORED)
        if late:
            raise RuntimeError(f"monitored_barrier: rank 0 reported that ranks {late} failed to "
                               f"pass the barrier within {seconds:g} s")
        return
    pending = {r: comm.irecv(source=r, tag=_TAG_MONITORED) for r in range(1, world.size)}
    deadline = time.monotonic() + seconds
    while pending and time.monotonic() < deadline:
        pending = {r: req for r, req in pending.items() if not req.Test()}
        if pending:
            time.sleep(0.001)
    late = sorted(pending)
    for r in range(1, world.size):
        comm.send(late, dest=r, tag=_TAG_MONITORED)
    if late:
        for req in pending.values():
            req.Cancel()
        shown = late if wait_all_ranks else late[:1]
        raise RuntimeError(f"monitored_barrier: rank(s) {shown} failed to pass the barrier "
                           f"within {seconds:g} s ({int(seconds * 1000)} ms)")


# ----------------------------------------------------------------------------- point to point

def isend(tensor: Tensor, dst: int, group=None, tag: int = 0) -> Work:
    dst = _group_rank(group, dst, None)
    world, backend = _start("isend", [tensor], group, None)
    _check_rank("isend", "dst", dst, world)
    return Work(backend, backend.send(tensor._data, dst, tag), None, [tensor])


def irecv(tensor: Tensor, src: int | None = None, group=None, tag: int = 0) -> Work:
    src = None if src is None else _group_rank(group, src, None)
    world, backend = _start("irecv", [tensor], group, None)
    if src is not None:
        _check_rank("irecv", "src", src, world)
    work = Work(backend, backend.recv(tensor._data, src, tag), lambda: _written(tensor),
                [tensor])
    work._source = src
    return work


def send(tensor: Tensor, dst: int, group=None, tag: int = 0) -> None:
    isend(tensor, dst, group, tag).wait()


def recv(tensor: Tensor, src: int | None = None, group=None, tag: int = 0) -> int:
    """Receive into `tensor`; returns the sender's (global) rank."""
    work = irecv(tensor, src, group, tag)
    work.wait()
    source = work._source
    return source if group is None or source is None else pg.get_global_rank(group, source)


class P2POp:
    """One send or receive of a `batch_isend_irecv` batch: `op` is `isend` or `irecv`, `peer`
    the other rank (global; `group_peer` counts within `group`)."""

    def __init__(self, op, tensor: Tensor, peer: int | None = None, group=None, tag: int = 0,
                 group_peer: int | None = None):
        if op not in (isend, irecv):
            raise ValueError("P2POp: op must be kiln.distributed.isend or "
                             f"kiln.distributed.irecv, got {op!r}")
        if not isinstance(tensor, Tensor):
            raise TypeError(f"P2POp: expected a kiln.Tensor, got {type(tensor).__name__}")
        if (peer is None) == (group_peer is None):
            raise ValueError("P2POp: give exactly one of peer and group_peer")
        self.op, self.tensor, self.group, self.tag = op, tensor, group, tag
        self.peer, self.group_peer = peer, group_peer

    def __repr__(self) -> str:
        return (f"P2POp({self.op.__name__}, {self.tensor.dtype.name}{list(self.tensor.shape)}, "
                f"peer={self.peer if self.group_peer is None else self.group_peer})")


def batch_isend_irecv(p2p_op_list: list[P2POp]) -> list[Work]:
    """Start every send and receive of `p2p_op_list` at once (one NCCL group for cuda
    tensors); returns one Work per op, in order."""
    ops = list(p2p_op_list)
    if not ops or not all(isinstance(o, P2POp) for o in ops):
        raise ValueError("batch_isend_irecv: expected a non-empty list of P2POp")
    if len({id(pg.GroupMember.WORLD if o.group is None else o.group) for o in ops}) != 1:
        raise ValueError("batch_isend_irecv: every P2POp of a batch must use the same group")
    group = ops[0].group
    world, backend = _start("batch_isend_irecv", [o.tensor for o in ops], group, None)
    sends, recvs, order = [], [], []
    for o in ops:
        peer = _group_rank(group, o.peer, o.group_peer)
        _check_rank("batch_isend_irecv", "peer", peer, world)
        (sends if o.op is isend else recvs).append((o.tensor._data, peer, o.tag))
        order.append(o.op is isend)
    requests = backend.send_recv(sends, recvs)
    send_requests, recv_requests = iter(requests[:len(sends)]), iter(requests[len(sends):])
    works = []
    for o, is_send in zip(ops, order):
        if is_send:
            works.append(Work(backend, [next(send_requests)], None, [o.tensor]))
        else:
            works.append(Work(backend, [next(recv_requests)],
                              lambda t=o.tensor: _written(t), [o.tensor]))
    return works


# ----------------------------------------------------------------------------- Python objects

def broadcast_object_list(object_list: list, src: int = 0, group=None, device=None) -> None:
    """Replace `object_list`'s items with rank `src`'s (pickled; for small values)."""
    src = _group_rank(group, src, None)
    world, _ = _start("broadcast", [], group, None)
    object_list[:] = world.comm.bcast(list(object_list) if world.rank == src else None, src)


def all_gather_object(object_list: list, obj, group=None) -> None:
    """Every rank's `obj`, in rank order, into `object_list` (pickled; for small values)."""
    world, _ = _start("all_gather", [], group, None)
    if len(object_list) != world.size:
        raise ValueError(f"all_gather_object: object_list has {len(object_list)} entries; it "
                         f"needs one per rank ({world.size})")
    object_list[:] = world.comm.allgather(obj)


def gather_object(obj, object_gather_list: list | None = None, dst: int | None = None,
                  group=None, group_dst: int | None = None) -> None:
    """Every rank's `obj`, in rank order, into `object_gather_list` on rank `dst` (pickled)."""
    dst = _group_rank(group, 0 if dst is None else dst, group_dst)
    world, _ = _start("gather", [], group, None)
    _check_rank("gather_object", "dst", dst, world)
    if world.rank == dst and (object_gather_list is None
                              or len(object_gather_list) != world.size):
        have = "None" if object_gather_list is None else f"{len(object_gather_list)} entries"
        raise ValueError(f"gather_object: object_gather_list on the destination rank must have "
                         f"one entry per rank ({world.size}); it has {have}")
    gathered = world.comm.gather(obj, root=dst)
    if world.rank == dst:
        object_gather_list[:] = gathered


def scatter_object_list(scatter_object_output_list: list, scatter_object_input_list=None,
                        src: int | None = None, group=None, group_src: int | None = None):
    """Rank `src`'s `scatter_object_input_list[i]` into rank i's
    `scatter_object_output_list[0]` (pickled)."""
    src = _group_rank(group, 0 if src is None else src, group_src)
    world, _ = _start("scatter", [], group, None)
    _check_rank("scatter_object_list", "src", src, world)
    if not isinstance(scatter_object_output_list, list) or not scatter_object_output_list:
        raise ValueError("scatter_object_list: scatter_object_output_list must be a non-empty "
                         "list (its first entry receives this rank's object)")
    inputs = None
    if world.rank == src:
        if scatter_object_input_list is None or len(scatter_object_input_list) != world.size:
            raise ValueError(f"scatter_object_list: scatter_object_input_list on the source rank "
                             f"must have one entry per rank ({world.size})")
        inputs = list(scatter_object_input_list)
    scatter_object_output_list[0] = world.comm.scatter(inputs, root=src)


def send_object_list(object_list: list, dst: int | None = None, group=None, device=None,
                     group_dst: int | None = None, use_batch: bool = False) -> None:
    """Send the objects of `object_list` to rank `dst`, whose `recv_object_list` takes them."""
    dst = _group_rank(group, dst, group_dst)
    world, _ = _start("send", [], group, None)
    _check_rank("send_object_list", "dst", dst, world)
    world.comm.send(list(object_list), dest=dst, tag=_TAG_OBJECT)


def recv_object_list(object_list: list, src: int | None = None, group=None, device=None,
                     group_src: int | None = None, use_batch: bool = False) -> int:
    """Fill `object_list` with the objects rank `src` (any rank if None) sent with
    `send_object_list`; returns the sender's (global) rank. The lists must have one length."""
    src = None if src is None and group_src is None else _group_rank(group, src, group_src)
    world, _ = _start("recv", [], group, None)
    if src is not None:
        _check_rank("recv_object_list", "src", src, world)
    status = pg.mpi_module().Status()
    got = world.comm.recv(source=pg.mpi_module().ANY_SOURCE if src is None else src,
                          tag=_TAG_OBJECT, status=status)
    if len(got) != len(object_list):
        raise ValueError(f"recv_object_list: rank {status.Get_source()} sent {len(got)} objects "
                         f"but object_list has {len(object_list)} entries; they must match")
    object_list[:] = got
    source = status.Get_source()
    return source if group is None else pg.get_global_rank(group, source)


# ----------------------------------------------------------------------------- checks

def _group_rank(group, rank, group_rank):
    """A root given as a global rank (`src`/`dst`, as torch) or as `group_src`/`group_dst`,
    as the group's own rank, which is what the group's communicator counts in."""
    if group_rank is not None:
        return group_rank
    if group is None or group is pg.GroupMember.WORLD or not isinstance(rank, int):
        return rank
    ranks = pg.get_process_group_ranks(group)
    if rank not in ranks:
        raise ValueError(f"rank {rank} is not part of the group {ranks}; pass a global rank of "
                         "the group, or its rank within the group as group_src/group_dst")
    return ranks.index(rank)


def _xp(tensor: Tensor):
    return tensor.device.xp


def _check_rank(what: str, name: str, rank: int, world) -> None:
    if not isinstance(rank, int) or not 0 <= rank < world.size:
        raise ValueError(f"{what}: {name}={rank!r} is not a rank of this group (0 to "
                         f"{world.size - 1})")


def _check_list(what: str, name: str, tensors: list, like: Tensor, world) -> None:
    if len(tensors) != world.size:
        raise ValueError(f"{what}: {name} has {len(tensors)} tensors; it needs one per rank "
                         f"({world.size})")
    for i, t in enumerate(tensors):
        if tuple(t.shape) != tuple(like.shape) or t.dtype is not like.dtype:
            raise ValueError(f"{what}: {name}[{i}] is {t.dtype.name}{list(t.shape)}, but the "
                             f"tensor is {like.dtype.name}{list(like.shape)}; they must match")


def _check_sizes(what: str, big: Tensor, small: Tensor, size: int, big_name: str) -> None:
    if big.dtype is not small.dtype:
        raise ValueError(f"{what}: the tensors' dtypes differ ({big.dtype.name} and "
                         f"{small.dtype.name})")
    if big.numel() != small.numel() * size:
        raise ValueError(f"{what}: the {big_name} tensor {list(big.shape)} must hold world size "
                         f"({size}) times the elements of the other {list(small.shape)}")


def _check_one_dtype(what: str, tensors: list[Tensor]) -> None:
    dtypes = sorted({t.dtype.name for t in tensors})
    if len(dtypes) > 1:
        raise ValueError(f"{what}: every tensor must have one dtype, got {dtypes}")


def _check_exchange(world, what: str, send_sizes: list[int], recv_sizes: list[int]) -> None:
    """Each rank's `send_sizes[j]` (elements for rank j) must equal rank j's `recv_sizes[r]`;
    every rank sees every rank's sizes, so all of them raise together."""
    rows = np.empty((world.size, 2, world.size), dtype=np.int64)
    world.comm.Allgather(np.asarray([send_sizes, recv_sizes], dtype=np.int64), rows)
    for src in range(world.size):
        for dst in range(world.size):
            if rows[src, 0, dst] != rows[dst, 1, src]:
                raise RuntimeError(f"{what}: rank {src} sends {int(rows[src, 0, dst])} elements "
                                   f"to rank {dst}, which expects {int(rows[dst, 1, src])} "
                                   f"from rank {src}; each sent piece must match the tensor "
                                   "(or slice) that receives it")
