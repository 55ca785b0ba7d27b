"""torch's own pipelining on pipe_workloads' MLP: `python pipe_torch_ranks.py OUT N` spawns N
processes (torch.multiprocessing, gloo on the CPU), each holding one torch PipelineStage, that
train with ScheduleGPipe and Schedule1F1B and write what they saw to OUT/torch_rank<r>.npz."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch


def rank_main(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as tdist
    from torch.distributed import pipelining

    from tests.distributed import pipe_workloads as W
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    res = {}
    for schedule in W.SCHEDULES + ((W.TUPLE,) if world == 2 else ()):
        got = W.train(torch, pipelining, rank, world, schedule)
        res.update({f"{schedule}/{k}": v for k, v in got.items()})
    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), **res)
    tdist.barrier()
    tdist.destroy_process_group()


def main() -> None:
    out, world = sys.argv[1], int(sys.argv[2])
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    import torch.multiprocessing as mp
    mp.spawn(rank_main, args=(world, os.path.join(out, f"store{world}"), out), nprocs=world)


if __name__ == "__main__":
    main()
