"""Collectives on CPU arrays through MPI (mpi4py), zero-copy: MPI reads and writes the NumPy
arrays behind the tensors. Every call starts a non-blocking MPI operation and returns its
requests; `kiln.distributed.collectives` waits on them (now, or in `Work.wait()`)."""

from __future__ import annotations

import numpy as np

from kiln.distributed.process_group import ReduceOp, mpi_module


class MPIBackend:
    """One communicator's collectives; arrays in, MPI requests out."""

    def __init__(self, comm):
        self.comm = comm
        self.MPI = MPI = mpi_module()
        self.ops = {ReduceOp.SUM: MPI.SUM, ReduceOp.AVG: MPI.SUM, ReduceOp.PRODUCT: MPI.PROD,
                    ReduceOp.MIN: MPI.MIN, ReduceOp.MAX: MPI.MAX, ReduceOp.BAND: MPI.BAND,
                    ReduceOp.BOR: MPI.BOR, ReduceOp.BXOR: MPI.BXOR}
        # MPI's arithmetic ops are undefined on C_BOOL: use the logical ones PyTorch means
        self.bool_ops = {ReduceOp.SUM: MPI.LOR, ReduceOp.MAX: MPI.LOR, ReduceOp.BOR: MPI.LOR,
                         ReduceOp.PRODUCT: MPI.LAND, ReduceOp.MIN: MPI.LAND,
                         ReduceOp.BAND: MPI.LAND, ReduceOp.BXOR: MPI.LXOR}

    def _op(self, op: str, arr: np.ndarray):
        return (self.bool_ops if arr.dtype == np.bool_ else self.ops)[op]

    def all_reduce(self, arr: np.ndarray, op: str) -> list:
        return [self.comm.Iallreduce(self.MPI.IN_PLACE, arr, self._op(op, arr))]

    def broadcast(self, arr: np.ndarray, src: int) -> list:
        return [self.comm.Ibcast(arr, root=src)]

    def reduce(self, arr: np.ndarray, dst: int, op: str) -> list:
        if self.comm.Get_rank() == dst:
            return [self.comm.Ireduce(self.MPI.IN_PLACE, arr, self._op(op, arr), root=dst)]
        return [self.comm.Ireduce(arr, None, self._op(op, arr), root=dst)]

    def all_gather(self, out: np.ndarray, arr: np.ndarray) -> list:
        return [self.comm.Iallgather(arr, out)]

    def reduce_scatter(self, out: np.ndarray, arr: np.ndarray, op: str) -> list:
        return [self.comm.Ireduce_scatter_block(arr, out, self._op(op, arr))]

    def gather(self, out: np.ndarray | None, arr: np.ndarray, dst: int) -> list:
        return [self.comm.Igather(arr, out, root=dst)]

    def scatter(self, arr: np.ndarray, chunks: np.ndarray | None, src: int) -> list:
        return [self.comm.Iscatter(chunks, arr, root=src)]

    def all_to_all(self, out: np.ndarray, arr: np.ndarray) -> list:
        return [self.comm.Ialltoall(arr, out)]

    def send(self, arr: np.ndarray, dst: int, tag: int) -> list:
        return [self.comm.Isend(arr, dest=dst, tag=tag)]

    def recv(self, arr: np.ndarray, src: int | None, tag: int) -> list:
        source = self.MPI.ANY_SOURCE if src is None else src
        return [self.comm.Irecv(arr, source=source, tag=tag)]

    def send_recv(self, sends: list, recvs: list) -> list:
        """Start the sends and receives of (array, peer, tag) triples together; one request
        each, sends first."""
        return ([self.comm.Isend(a, dest=peer, tag=tag) for a, peer, tag in sends]
                + [self.comm.Irecv(a, source=peer, tag=tag) for a, peer, tag in recvs])

    def barrier(self) -> list:
        return [self.comm.Ibarrier()]

    # -- waiting
    def wait(self, requests: list) -> list:
        """Wait for `requests`; returns each one's MPI status (a recv's source is in it)."""
        statuses = [self.MPI.Status() for _ in requests]
        self.MPI.Request.Waitall(requests, statuses)
        return statuses

    def test(self, requests: list) -> bool:
        return bool(self.MPI.Request.Testall(requests))
