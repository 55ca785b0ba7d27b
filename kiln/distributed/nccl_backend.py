"""Collectives on cuda arrays through NCCL (CuPy's `cupy.cuda.nccl` bindings).

The communicator is bootstrapped over MPI (rank 0 makes NCCL's unique id and broadcasts it),
each operation is queued on CuPy's current stream, and its "request" is a CUDA event recorded
after it: waiting on the event is waiting for the collective. NCCL has no gather, scatter or
all-to-all: those are grouped sends and receives, as PyTorch's NCCL backend does them.

Written without a GPU: its bookkeeping (counts, offsets, dtype and op codes, roots, groups) is
tested against a stand-in NCCL over MPI with NumPy memory (tests/distributed); running on real
GPUs is still to be done.
"""

from __future__ import annotations

import numpy as np

from kiln.distributed.process_group import ReduceOp


class NCCLBackend:
    """One NCCL communicator's collectives; cuda arrays in, CUDA events out."""

    def __init__(self, comm, rank: int, size: int, nccl, cupy):
        self.comm, self.rank, self.size, self.nccl, self.cp = comm, rank, size, nccl, cupy
        n = nccl
        self.dtypes = {"float16": n.NCCL_FLOAT16, "float32": n.NCCL_FLOAT32,
                       "float64": n.NCCL_FLOAT64, "int8": n.NCCL_INT8, "uint8": n.NCCL_UINT8,
                       "bool": n.NCCL_UINT8, "int32": n.NCCL_INT32, "int64": n.NCCL_INT64}
        self.ops = {ReduceOp.SUM: n.NCCL_SUM, ReduceOp.PRODUCT: n.NCCL_PROD,
                    ReduceOp.MIN: n.NCCL_MIN, ReduceOp.MAX: n.NCCL_MAX}

    @classmethod
    def create(cls, mpi_comm) -> "NCCLBackend":
        """A communicator over the ranks of `mpi_comm`, on each rank's current CUDA device."""
        import cupy
        from cupy.cuda import nccl
        rank, size = mpi_comm.Get_rank(), mpi_comm.Get_size()
        uid = mpi_comm.bcast(nccl.get_unique_id() if rank == 0 else None, root=0)
        return cls(nccl.NcclCommunicator(size, uid, rank), rank, size, nccl, cupy)

    def close(self) -> None:
        self.comm.destroy()

    # -- helpers
    def _type(self, arr) -> int:
        name = np.dtype(arr.dtype).name
        if name not in self.dtypes:
            raise TypeError(f"NCCL collectives do not support dtype {name}")
        return self.dtypes[name]

    def _op(self, op: str, arr) -> int:
        if np.dtype(arr.dtype) == np.bool_:
            op = {ReduceOp.SUM: ReduceOp.MAX, ReduceOp.BOR: ReduceOp.MAX,
                  ReduceOp.PRODUCT: ReduceOp.MIN, ReduceOp.BAND: ReduceOp.MIN}.get(op, op)
        if op not in self.ops:
            raise ValueError(f"NCCL has no {op!r} reduction; use SUM, AVG, PRODUCT, MIN or MAX")
        return self.ops[op]

    @staticmethod
    def _ptr(arr) -> int:
        data = arr.data
        return data.ptr if hasattr(data, "ptr") else arr.__array_interface__["data"][0]

    def _stream(self) -> int:
        return self.cp.cuda.get_current_stream().ptr

    def _done(self) -> list:
        event = self.cp.cuda.Event(block=False, disable_timing=True)
        event.record(self.cp.cuda.get_current_stream())
        return [event]

    # -- collectives (AVG runs as SUM: the collectives layer divides by the world size after
    #    the wait, the same for both backends)
    def all_reduce(self, arr, op: str) -> list:
        nop = self.nccl.NCCL_SUM if op == ReduceOp.AVG else self._op(op, arr)
        p = self._ptr(arr)
        self.comm.allReduce(p, p, arr.size, self._type(arr), nop, self._stream())
        return self._done()

    def broadcast(self, arr, src: int) -> list:
        p = self._ptr(arr)
        self.comm.broadcast(p, p, arr.size, self._type(arr), src, self._stream())
        return self._done()

    def reduce(self, arr, dst: int, op: str) -> list:
        nop = self.nccl.NCCL_SUM if op == ReduceOp.AVG else self._op(op, arr)
        p = self._ptr(arr)
        self.comm.reduce(p, p, arr.size, self._type(arr), nop, dst, self._stream())
        return self._done()

    def all_gather(self, out, arr) -> list:
        self.comm.allGather(self._ptr(arr), self._ptr(out), arr.size, self._type(arr),
                            self._stream())
        return self._done()

    def reduce_scatter(self, out, arr, op: str) -> list:
        nop = self.nccl.NCCL_SUM if op == ReduceOp.AVG else self._op(op, arr)
        self.comm.reduceScatter(self._ptr(arr), self._ptr(out), out.size, self._type(arr), nop,
                                self._stream())
        return self._done()

    def gather(self, out, arr, dst: int) -> list:
        t, n, s = self._type(arr), arr.size, self._stream()
        self.nccl.groupStart()
        try:
            if self.rank == dst:
                base, step = self._ptr(out), arr.size * arr.itemsize
                for r in range(self.size):
                    if r != dst:
                        self.comm.recv(base + r * step, n, t, r, s)
            else:
                self.comm.send(self._ptr(arr), n, t, dst, s)
        finally:
            self.nccl.groupEnd()
        if self.rank == dst:
            out[dst] = arr
        return self._done()

    def scatter(self, arr, chunks, src: int) -> list:
        t, n, s = self._type(arr), arr.size, self._stream()
        self.nccl.groupStart()
        try:
            if self.rank == src:
                base, step = self._ptr(chunks), arr.size * arr.itemsize
                for r in range(self.size):
                    if r != src:
                        self.comm.send(base + r * step, n, t, r, s)
            else:
                self.comm.recv(self._ptr(arr), n, t, src, s)
        finally:
            self.nccl.groupEnd()
        if self.rank == src:
            arr[...] = chunks[src]
        return self._done()

    def all_to_all(self, out, arr) -> list:
        n = arr.size // self.size
        t, s, step = self._type(arr), self._stream(), n * arr.itemsize
        send, recv = self._ptr(arr), self._ptr(out)
        self.nccl.groupStart()
        try:
            for r in range(self.size):
                self.comm.send(send + r * step, n, t, r, s)
                self.comm.recv(recv + r * step, n, t, r, s)
        finally:
            self.nccl.groupEnd()
        return self._done()

    def send(self, arr, dst: int, tag: int) -> list:
        self.comm.send(self._ptr(arr), arr.size, self._type(arr), dst, self._stream())
        return self._done()

    def recv(self, arr, src: int | None, tag: int) -> list:
        if src is None:
            raise ValueError("recv: NCCL needs the sender's rank (src=None is MPI-only)")
        self.comm.recv(self._ptr(arr), arr.size, self._type(arr), src, self._stream())
        return self._done()

    def send_recv(self, sends: list, recvs: list) -> list:
        """The sends and receives of (array, peer, tag) triples as one NCCL group (NCCL has no
        tags, and ungrouped pairs would deadlock); one event per operation, sends first."""
        s = self._stream()
        self.nccl.groupStart()
        try:
            for arr, peer, _ in sends:
                self.comm.send(self._ptr(arr), arr.size, self._type(arr), peer, s)
            for arr, peer, _ in recvs:
                if peer is None:
                    raise ValueError("irecv: NCCL needs the sender's rank (src=None is MPI-only)")
                self.comm.recv(self._ptr(arr), arr.size, self._type(arr), peer, s)
        finally:
            self.nccl.groupEnd()
        return self._done() * (len(sends) + len(recvs))

    def barrier(self) -> list:
        one = self.cp.zeros(1, dtype=np.float32)
        return self.all_reduce(one, ReduceOp.SUM)

    # -- waiting
    def wait(self, events: list) -> list:
        for e in events:
            e.synchronize()
        return []

    def test(self, events: list) -> bool:
        return all(e.done for e in events)
