"""Run by `mpiexec -n N` (N = 2 or 4) from tests/distributed/test_pipelining.py: each rank
holds one stage of pipe_workloads' MLP, trains it with ScheduleGPipe and Schedule1F1B, also on
a batch of 10 rows (which splits unevenly), also a model cut by pipeline() (split_spec); on 2
ranks a model with a tuple activation and the pipelining tutorial's Transformer, on 4 ranks two
2-stage pipelines over process groups {0, 1} and {2, 3}. It writes what it saw, with the
messages of the bad calls it tried, to OUT/rank<r>.npz."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
from kiln.distributed import pipelining  # noqa: E402
from tests.distributed import pipe_workloads as W  # noqa: E402


def error_message(fn) -> str:
    """The `type: message` fn raises (every call here fails before any message is sent)."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001
        return f"{type(e).__name__}: {e}"
    return "no error"


def bad_calls(rank: int, n: int) -> dict:
    module = W.stage_module(kiln, rank, n)
    stage = pipelining.PipelineStage(module, rank, n, "cpu")
    mse = kiln.nn.functional.mse_loss
    x, y = W.data(kiln, 0)
    calls = {
        "index_out_of_range": lambda: pipelining.PipelineStage(module, n, n, "cpu"),
        "too_few_stages": lambda: pipelining.PipelineStage(module, 0, n - 1, "cpu"),
        "too_many_stages": lambda: pipelining.PipelineStage(module, rank, n + 1, "cpu"),
        "wrong_rank": lambda: pipelining.PipelineStage(module, (rank + 1) % n, n, "cpu"),
        "few_microbatches": lambda: pipelining.Schedule1F1B(stage, n - 1, loss_fn=mse),
        "split_spec": lambda: pipelining.pipeline(
            module, (x,), split_spec={"nope": pipelining.SplitPoint.BEGINNING}),
    }
    if rank == 0:
        calls["no_batch"] = lambda: pipelining.ScheduleGPipe(stage, 2, loss_fn=mse).step()
    if rank == n - 1:
        calls["no_target"] = lambda: pipelining.ScheduleGPipe(stage, 2, loss_fn=mse).step()
        calls["no_loss_fn"] = lambda: pipelining.ScheduleGPipe(stage, 2).step(target=y)
    return {f"error/{k}": np.array(error_message(f)) for k, f in calls.items()}


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group("mpi")
    rank, n = dist.get_rank(), dist.get_world_size()
    res = {}
    try:
        for schedule in W.SCHEDULES + ((W.TUPLE,) if n == 2 else ()):
            got = W.train(kiln, pipelining, rank, n, schedule)
            res.update({f"{schedule}/{k}": v for k, v in got.items()})
            got = W.train(kiln, pipelining, rank, n, schedule, batch=W.UNEVEN_BATCH)
            res.update({f"uneven_{schedule}/{k}": v for k, v in got.items()})
        for schedule in W.SCHEDULES:
            got = W.train(kiln, pipelining, rank, n, "traced_" + schedule)
            res.update({f"traced_{schedule}/{k}": v for k, v in got.items()})
        if n == 4:
            groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
            got = W.train(kiln, pipelining, rank % 2, 2, "Schedule1F1B", group=groups[rank // 2])
            res.update({f"group_Schedule1F1B/{k}": v for k, v in got.items()})
        if n == 2:
            res.update({f"tutorial/{k}": v for k, v in W.tutorial(kiln, pipelining, rank).items()})
        res.update(bad_calls(rank, n))
    except Exception:  # noqa: BLE001
        res["error:pipelining"] = np.array(traceback.format_exc())
    np.savez(os.path.join(out, f"rank{rank}.npz"), **res)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
