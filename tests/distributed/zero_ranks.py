"""Run by `mpiexec -n 2` from tests/distributed/test_zero_join.py: DDP with
ZeroRedundancyOptimizer(Adam) + StepLR, its full state dict and a resume from it, uneven
inputs under Join, and communication hooks; each rank writes what it got to OUT/rank<r>.npz.
A check that raises records its message instead."""

from __future__ import annotations

import os
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.nn.functional as F  # noqa: E402
from kiln.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402
from kiln.distributed.algorithms.join import Join  # noqa: E402
from kiln.distributed.optim import ZeroRedundancyOptimizer  # noqa: E402
from kiln.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from tests.distributed import zero_workloads as W  # noqa: E402

OUT: dict[str, np.ndarray] = {}


def train_step(model, opt, step: int, rank: int) -> float:
    x, y = W.data(step)
    opt.zero_grad()
    loss = F.mse_loss(model(kiln.tensor(W.half(x, rank))), kiln.tensor(W.half(y, rank)))
    loss.backward()
    opt.step()
    return float(loss)


def zero_setup(model):
    opt = ZeroRedundancyOptimizer(model.parameters(), kiln.optim.Adam, lr=W.LR)
    return opt, kiln.optim.lr_scheduler.StepLR(opt, step_size=W.STEP_SIZE, gamma=W.GAMMA)


def check_zero(r: int) -> None:
    model = DDP(W.seeded_mlp())
    opt, sched = zero_setup(model)
    OUT["zero/local_params"] = np.array(sum(p.numel() for g in opt.optim.param_groups
                                            for p in g["params"]))
    owners = opt._param_to_rank
    OUT["zero/owners"] = np.array([owners[id(p)] for p in model.parameters()])
    losses = []
    for step in range(W.STEPS):
        losses.append(train_step(model, opt, step, r))
        sched.step()
    OUT["zero/losses"] = np.array(losses)
    OUT["zero/lr"] = np.array(opt.param_groups[0]["lr"])
    for k, v in W.state(model.module).items():
        OUT[f"zero/param/{k}"] = v
    # the full state, gathered on rank 0, then given to every rank to resume from
    opt.consolidate_state_dict(to=0)
    full = opt.state_dict() if r == 0 else None
    if r == 0:
        for index, entry in full["state"].items():
            for key, value in entry.items():
                OUT[f"zero/state/{index}/{key}"] = value.numpy()
        group = full["param_groups"][0]
        OUT["zero/group_params"] = np.array(group["params"])
        OUT["zero/group_keys"] = np.array(sorted(group))
        OUT["zero/group_lr"] = np.array([group["lr"], group["initial_lr"]])
    # saved by rank 0 with kiln.save (kiln's checkpoint format), loaded by every rank
    path = os.path.join(sys.argv[1], "zero_optim.kiln")
    if r == 0:
        kiln.save(full, path)
    dist.barrier()
    resumed = DDP(W.seeded_mlp(99))
    with kiln.no_grad():
        for mine, theirs in zip(resumed.parameters(), model.parameters()):
            mine.copy_(theirs)
    opt2, sched2 = zero_setup(resumed)
    opt2.load_state_dict(kiln.load(path))
    sched2.load_state_dict(sched.state_dict())
    for step in range(W.STEPS, W.STEPS + 2):
        train_step(model, opt, step, r)
        sched.step()
        train_step(resumed, opt2, step, r)
        sched2.step()
    for k, v in W.state(model.module).items():
        OUT[f"zero/continued/{k}"] = v
    for k, v in W.state(resumed.module).items():
        OUT[f"zero/resumed/{k}"] = v


def check_zero_group(r: int) -> None:
    """On a process group from new_group (both ranks, in reverse order): the same numbers."""
    group = dist.new_group([1, 0])
    for name, pg in (("world", None), ("group", group)):
        model = DDP(W.seeded_mlp())
        opt = ZeroRedundancyOptimizer(model.parameters(), kiln.optim.Adam, process_group=pg,
                                      lr=W.LR)
        for step in range(2):
            train_step(model, opt, step, r)
        for k, v in W.state(model.module).items():
            OUT[f"zero_{name}/{k}"] = v


def check_join(r: int) -> None:
    model = DDP(W.seeded_mlp())
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    losses = []
    with model.join():
        for step in range(W.JOIN_BATCHES[r]):
            losses.append(train_step(model, opt, step, r))
    OUT["join/losses"] = np.array(losses)
    for k, v in W.state(model.module).items():
        OUT[f"join/param/{k}"] = v
    # the average over the ranks still running
    model = DDP(W.seeded_mlp())
    opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    with model.join(divide_by_initial_world_size=False):
        for step in range(W.JOIN_BATCHES[r]):
            train_step(model, opt, step, r)
    for k, v in W.state(model.module).items():
        OUT[f"join_running/param/{k}"] = v
    # every rank raises once one runs out
    model = DDP(W.seeded_mlp())
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    try:
        with model.join(throw_on_early_termination=True):
            for step in range(W.JOIN_BATCHES[r]):
                train_step(model, opt, step, r)
    except RuntimeError as exc:
        OUT["join_throw/error"] = np.array(str(exc))
    # buffers: broadcast from the highest running rank before each forward
    kiln.manual_seed(4)
    model = DDP(W.bn_mlp())
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    with model.join():
        for step in range(W.JOIN_BATCHES[r]):
            train_step(model, opt, step, r)
    for k, v in W.state(model.module).items():
        OUT[f"join_bn/param/{k}"] = v
    # DDP and ZeroRedundancyOptimizer joined together
    model = DDP(W.seeded_mlp())
    opt, _ = zero_setup(model)
    with Join([model, opt]):
        for step in range(W.JOIN_BATCHES[r]):
            train_step(model, opt, step, r)
    for k, v in W.state(model.module).items():
        OUT[f"join_zero/param/{k}"] = v


def check_hooks(r: int) -> None:
    seen = []

    def recording_hook(state, bucket):
        seen.append((bucket.index(), bucket.is_last(), len(bucket.parameters()),
                     sum(g.numel() for g in bucket.gradients()), bucket.buffer().numel()))
        return default_hooks.allreduce_hook(state, bucket)
    def torch_style_hook(process_group, bucket):        # as torch's own hooks are written
        group_to_use = process_group if process_group is not None else dist.group.WORLD
        tensor = bucket.buffer().div_(group_to_use.size())
        return dist.all_reduce(tensor, group=group_to_use, async_op=True).get_future().then(
            lambda fut: fut.value()[0])
    for name, hook in (("none", None), ("allreduce", recording_hook),
                       ("torch_style", torch_style_hook),
                       ("fp16", default_hooks.fp16_compress_hook),
                       ("fp16_wrapper",
                        default_hooks.fp16_compress_wrapper(default_hooks.allreduce_hook))):
        model = DDP(W.seeded_mlp())
        if hook is not None:
            model.register_comm_hook(None, hook)
        opt = kiln.optim.SGD(model.parameters(), lr=0.1)
        for step in range(3):
            train_step(model, opt, step, r)
        for k, v in W.state(model.module).items():
            OUT[f"hooks/{name}/{k}"] = v
    OUT["hooks/seen"] = np.array(seen)
    try:
        DDP(W.seeded_mlp()).register_comm_hook(None, default_hooks.bf16_compress_hook)
        model = DDP(W.seeded_mlp())
        model.register_comm_hook(None, default_hooks.bf16_compress_hook)
        train_step(model, kiln.optim.SGD(model.parameters(), lr=0.1), 0, r)
    except TypeError as exc:
        OUT["hooks/bf16_error"] = np.array(str(exc))


def main() -> None:
    out = sys.argv[1]
    dist.init_process_group(backend="mpi")
    r = dist.get_rank()
    for name, check in (("zero", check_zero), ("zero_group", check_zero_group),
                        ("join", check_join), ("hooks", check_hooks)):
        try:
            check(r)
        except Exception:
            OUT[f"error:{name}"] = np.array(traceback.format_exc())

    np.savez(os.path.join(out, f"rank{r}.npz"), **OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
