"""torch's own pipelining on pipe_workloads' models: `python pipe_torch_ranks.py OUT N` spawns
N processes (torch.multiprocessing, gloo on the CPU), each holding one torch PipelineStage, that
train the MLP with ScheduleGPipe and Schedule1F1B (with 2 processes also the tuple-activation
model) and write what they saw to OUT/torch_rank<r>.npz; `... OUT 2 tutorial` instead trains
the tutorial's Transformer cut by torch's pipeline() (a separate run: torch.export is slow)."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch


def rank_main(rank: int, world: int, store: str, out: str, what: str) -> None:
    import torch.distributed as tdist
    from torch.distributed import pipelining

    from tests.distributed import pipe_workloads as W
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    if what == "tutorial":
        res = {f"tutorial/{k}": v for k, v in W.tutorial(torch, pipelining, rank).items()}
    else:
        res = {}
        for schedule in W.SCHEDULES + ((W.TUPLE,) if world == 2 else ()):
            got = W.train(torch, pipelining, rank, world, schedule)
            res.update({f"{schedule}/{k}": v for k, v in got.items()})
    np.savez(os.path.join(out, f"torch_{what}_rank{rank}.npz"), **res)
    tdist.barrier()
    tdist.destroy_process_group()


def main() -> None:
    out, world = sys.argv[1], int(sys.argv[2])
    what = sys.argv[3] if len(sys.argv) > 3 else "mlp"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    import torch.multiprocessing as mp
    store = os.path.join(out, f"store{world}{what}")
    mp.spawn(rank_main, args=(world, store, out, what), nprocs=world)


if __name__ == "__main__":
    main()
