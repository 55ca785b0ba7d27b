"""kiln.multiprocessing.spawn from a script's `__main__`: `python spawn_cases.py CASE OUT`
writes OUT/result.json for the test to check.

faults: a lambda (refused by pickle), a process raising ValueError while the other waits in a
barrier, a process calling os._exit(3) or killed by SIGKILL while the other waits, a Tensor
and a queue as arguments (multiprocessing, not MPI), and forked
processes calling init_process_group (refused). group: 4 processes started with join=False, of
which ranks 0 and 1 form a 2-process group (the DDP + RPC example's pattern) and all-reduce, and
rank 3 is refused a place in it; every process writes what it saw to OUT/rank<i>.json.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import kiln
import kiln.distributed as dist
import kiln.multiprocessing as mp


def fails(rank: int, how: str) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2)
    if rank == 1:
        time.sleep(0.3)         # the other process is in the barrier by then
        if how == "raise":
            raise ValueError(f"rank {rank} gives up")
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        os._exit(3)
    dist.barrier()              # never completes: the job must be stopped, not hang


def fill(rank: int, shared: kiln.Tensor, queue) -> None:
    # a multiprocessing process (no MPI job): mpiexec's rank variable is absent
    shared[rank] = float(rank + 1) if "PMI_RANK" not in os.environ else -1.0
    queue.put((rank, "PMI_RANK" in os.environ))


def group_member(rank: int, out: str) -> None:
    seen = {"module": __name__, "rank_env": "RANK" in os.environ or "WORLD_SIZE" in os.environ}
    if rank < 2:
        dist.init_process_group("gloo", rank=rank, world_size=2,
                                init_method="tcp://localhost:29500")
        t = kiln.tensor([float(rank + 1), 10.0 * (rank + 1)], dtype=kiln.float64)
        dist.all_reduce(t)
        seen.update(sum=t.tolist(), world=dist.get_world_size(), rank=dist.get_rank())
        dist.destroy_process_group()
    elif rank == 3:         # not one of the group's processes: refused, and the group is
        try:                # not disturbed
            dist.init_process_group("gloo", world_size=2)
        except RuntimeError as exc:
            seen.update(refused=str(exc))
    seen.update(initialized=dist.is_initialized())
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump(seen, f)


def alone(rank: int) -> None:
    dist.init_process_group("gloo", rank=rank, world_size=2)


def outcome(call) -> dict:
    start = time.monotonic()
    try:
        call()
    except Exception as exc:
        return {"type": type(exc).__name__, "message": str(exc), "seconds":
                time.monotonic() - start, "error_index": getattr(exc, "error_index", None),
                "exit_code": getattr(exc, "exit_code", None),
                "signal_name": getattr(exc, "signal_name", None),
                "error_pid": getattr(exc, "error_pid", None)}
    return {"type": None}


if __name__ == "__main__":
    case, out = sys.argv[1], sys.argv[2]
    result = {}
    if case == "faults":
        result["lambda"] = outcome(lambda: mp.spawn(lambda rank: None, nprocs=2))
        result["raise"] = outcome(lambda: mp.spawn(fails, args=("raise",), nprocs=2))
        result["exit"] = outcome(lambda: mp.spawn(fails, args=("exit",), nprocs=2))
        result["kill"] = outcome(lambda: mp.spawn(fails, args=("kill",), nprocs=2))
        shared, queue = kiln.zeros(2), mp.get_context("spawn").SimpleQueue()
        result["shared"] = outcome(lambda: mp.spawn(fill, args=(shared, queue), nprocs=2))
        result["shared"]["tensor"] = shared.tolist()
        result["shared"]["queue"] = sorted(queue.get() for _ in range(2))
        # forked processes are not an MPI job: init_process_group says how to start them
        result["separate"] = outcome(lambda: mp.start_processes(alone, nprocs=2,
                                                                start_method="fork"))
    else:
        context = mp.spawn(group_member, args=(out,), nprocs=4, join=False)
        result["context"] = type(context).__name__
        result["pids"] = []
        polls = 0
        while not context.join(timeout=0.5):
            polls += 1
            result["pids"] = context.pids()
        result["polls"] = polls
        result["pids"] = context.pids()       # all four known at the end, however fast it ran
        result["joined_again"] = context.join()
    with open(os.path.join(out, "result.json"), "w") as f:
        json.dump(result, f)
