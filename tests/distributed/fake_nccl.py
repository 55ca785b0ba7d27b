"""A stand-in for CuPy's NCCL bindings (and the bits of CuPy the NCCL backend touches) that
moves data with MPI between NumPy buffers given by address. With tests/fake_cuda.py (cuda
tensors that hold NumPy arrays) it runs kiln's NCCL backend on a machine without GPUs: what it
checks is the backend's bookkeeping (counts, pointer offsets, dtype and op codes, roots,
grouped sends and receives), not NCCL itself."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace

import numpy as np


class FakeNccl:
    # the codes of NCCL's ncclDataType_t and ncclRedOp_t
    NCCL_INT8, NCCL_UINT8, NCCL_INT32, NCCL_INT64 = 0, 1, 2, 4
    NCCL_FLOAT16, NCCL_FLOAT32, NCCL_FLOAT64 = 6, 7, 8
    NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
    DTYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 4: np.int64, 6: np.float16, 7: np.float32,
              8: np.float64}

    def __init__(self):
        self.group: list | None = None
        self.calls: list[str] = []

    def groupStart(self) -> None:
        assert self.group is None, "nested NCCL group"
        self.group = []

    def groupEnd(self) -> None:
        ops, self.group = self.group, None
        from mpi4py import MPI
        requests = [op() for op in ops]
        MPI.Request.Waitall(requests)


class FakeNcclCommunicator:
    def __init__(self, mpi_comm, nccl: FakeNccl):
        from mpi4py import MPI
        self.comm, self.nccl, self.MPI = mpi_comm, nccl, MPI
        self.ops = {0: MPI.SUM, 1: MPI.PROD, 2: MPI.MAX, 3: MPI.MIN}

    def _arr(self, ptr: int, count: int, dtype: int) -> np.ndarray:
        np_dtype = np.dtype(FakeNccl.DTYPES[dtype])
        raw = (ctypes.c_char * (count * np_dtype.itemsize)).from_address(ptr)
        return np.frombuffer(raw, dtype=np_dtype)

    def allReduce(self, send, recv, count, dtype, op, stream):
        self.nccl.calls.append("allReduce")
        self.comm.Allreduce(self._arr(send, count, dtype).copy(), self._arr(recv, count, dtype),
                            self.ops[op])

    def broadcast(self, send, recv, count, dtype, root, stream):
        self.nccl.calls.append("broadcast")
        buf = self._arr(recv, count, dtype)
        if self.comm.Get_rank() == root:
            buf[:] = self._arr(send, count, dtype)
        self.comm.Bcast(buf, root=root)

    def reduce(self, send, recv, count, dtype, op, root, stream):
        self.nccl.calls.append("reduce")
        out = self._arr(recv, count, dtype) if self.comm.Get_rank() == root else None
        self.comm.Reduce(self._arr(send, count, dtype).copy(), out, self.ops[op], root=root)

    def allGather(self, send, recv, count, dtype, stream):
        self.nccl.calls.append("allGather")
        self.comm.Allgather(self._arr(send, count, dtype).copy(),
                            self._arr(recv, count * self.comm.Get_size(), dtype))

    def reduceScatter(self, send, recv, recvcount, dtype, op, stream):
        self.nccl.calls.append("reduceScatter")
        size = self.comm.Get_size()
        self.comm.Reduce_scatter_block(self._arr(send, recvcount * size, dtype).copy(),
                                       self._arr(recv, recvcount, dtype), self.ops[op])

    def send(self, send, count, dtype, peer, stream):
        self.nccl.calls.append("send")
        buf = self._arr(send, count, dtype)
        if self.nccl.group is not None:
            self.nccl.group.append(lambda: self.comm.Isend(buf, dest=peer))
        else:
            self.comm.Send(buf, dest=peer)

    def recv(self, recv, count, dtype, peer, stream):
        self.nccl.calls.append("recv")
        buf = self._arr(recv, count, dtype)
        if self.nccl.group is not None:
            self.nccl.group.append(lambda: self.comm.Irecv(buf, source=peer))
        else:
            self.comm.Recv(buf, source=peer)

    def destroy(self):
        pass


class _Event:
    def __init__(self, block=False, disable_timing=True):
        self.done = False

    def record(self, stream=None):
        self.done = True      # the stand-in's operations finish before they return

    def synchronize(self):
        assert self.done


fake_cupy = SimpleNamespace(
    cuda=SimpleNamespace(get_current_stream=lambda: SimpleNamespace(ptr=0), Event=_Event),
    zeros=np.zeros)
