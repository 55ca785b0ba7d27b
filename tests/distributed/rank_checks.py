"""Run by `mpiexec -n 2` from tests/distributed: every rank runs each check and writes what it
got to OUT/rank<r>.npz; the tests compare those files with NumPy and single-process references.
A check that raises records its message instead, so the others still report."""

from __future__ import annotations

import os
import sys
import traceback
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.nn as nn  # noqa: E402
import kiln.nn.functional as F  # noqa: E402
from kiln.nn.parallel import DistributedDataParallel as DDP  # noqa: E402
from kiln.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: E402
from tests.distributed import workloads as W  # noqa: E402

OUT: dict[str, np.ndarray] = {}


def base(rank: int, dtype=np.float64) -> np.ndarray:
    """The input every collective starts from on `rank` (the tests rebuild it)."""
    return (np.arange(6.0).reshape(2, 3) * (rank + 1) + rank - 2.5).astype(dtype)


def collectives(r: int, n: int) -> None:
    R = dist.ReduceOp
    for op in ("SUM", "AVG", "MAX", "MIN", "PRODUCT"):
        t = kiln.tensor(base(r))
        dist.all_reduce(t, op=getattr(R, op))
        OUT[f"all_reduce_{op}"] = t.numpy()
    t = kiln.tensor(base(r, np.int64))
    dist.all_reduce(t)
    OUT["all_reduce_int64"] = t.numpy()
    t = kiln.tensor(base(r, np.float32))
    work = dist.all_reduce(t, op=R.MAX, async_op=True)
    work.wait()
    OUT["all_reduce_async_f32"] = t.numpy()
    OUT["all_reduce_async_done"] = np.array(work.is_completed())
    t = kiln.tensor(base(r) > 0)
    dist.all_reduce(t)                      # bool SUM is a logical or
    OUT["all_reduce_bool"] = t.numpy()
    t = kiln.tensor(base(r))
    dist.broadcast(t, src=1)
    OUT["broadcast"] = t.numpy()
    lst = [kiln.zeros(2, 3, dtype=kiln.float64) for _ in range(n)]
    dist.all_gather(lst, kiln.tensor(base(r)))
    OUT["all_gather"] = np.stack([x.numpy() for x in lst])
    out = kiln.zeros(2 * n, 3, dtype=kiln.float64)
    dist.all_gather_into_tensor(out, kiln.tensor(base(r)))
    OUT["all_gather_into_tensor"] = out.numpy()
    out = kiln.zeros(n, 2, 3, dtype=kiln.float64)
    dist.all_gather_into_tensor(out, kiln.tensor(base(r)), async_op=True).wait()
    OUT["all_gather_into_tensor_stacked"] = out.numpy()
    out = kiln.zeros(2, 3, dtype=kiln.float64)
    dist.reduce_scatter(out, [kiln.tensor(base(r) * (k + 1)) for k in range(n)])
    OUT["reduce_scatter"] = out.numpy()
    out = kiln.zeros(1, 3, dtype=kiln.float64)
    dist.reduce_scatter_tensor(out, kiln.tensor(base(r)), op=R.AVG)
    OUT["reduce_scatter_tensor_AVG"] = out.numpy()
    t = kiln.tensor(base(r))
    dist.reduce(t, dst=1, op=R.SUM)
    OUT["reduce"] = t.numpy()
    lst = [kiln.zeros(2, 3, dtype=kiln.float64) for _ in range(n)] if r == 0 else None
    dist.gather(kiln.tensor(base(r)), lst, dst=0)
    if r == 0:
        OUT["gather"] = np.stack([x.numpy() for x in lst])
    t = kiln.zeros(2, 3, dtype=kiln.float64)
    dist.scatter(t, [kiln.tensor(base(k) * 10) for k in range(n)] if r == 1 else None, src=1)
    OUT["scatter"] = t.numpy()
    out = kiln.zeros(2 * n, 3, dtype=kiln.float64)
    dist.all_to_all_single(out, kiln.tensor(np.concatenate([base(r) + 100 * k
                                                            for k in range(n)])))
    OUT["all_to_all_single"] = out.numpy()
    # point to point: a ring, blocking one way and non-blocking the other
    t = kiln.zeros(2, 3, dtype=kiln.float64)
    if r == 0:
        dist.send(kiln.tensor(base(r)), dst=1)
        OUT["recv_source"] = np.array(dist.recv(t))
    else:
        OUT["recv_source"] = np.array(dist.recv(t))
        dist.send(kiln.tensor(base(r)), dst=0)
    OUT["recv"] = t.numpy()
    t = kiln.zeros(2, 3, dtype=kiln.float64)
    reqs = [dist.isend(kiln.tensor(base(r) * 3), dst=(r + 1) % n),
            dist.irecv(t, src=(r - 1) % n)]
    for w in reqs:
        w.wait()
    OUT["irecv"] = t.numpy()
    dist.barrier()
    objs = [None] * n
    dist.all_gather_object(objs, {"rank": r})
    OUT["all_gather_object"] = np.array([o["rank"] for o in objs])
    # ranks that disagree get an error naming both sides, and the group stays usable
    try:
        dist.all_reduce(kiln.zeros(3 + r, dtype=kiln.float32 if r else kiln.float64))
    except RuntimeError as exc:
        OUT["mismatch_error"] = np.array(str(exc))
    t = kiln.tensor(base(r))
    dist.all_reduce(t)
    OUT["after_mismatch"] = t.numpy()


def ddp_mlp(r: int, n: int) -> None:
    model = W.seeded(W.mlp, 10 + r)        # different on each rank: DDP broadcasts rank 0's
    ddp = DDP(model)
    OUT["ddp_mlp_keys"] = np.array(sorted(ddp.state_dict()))
    OUT["ddp_mlp_losses"] = np.array(W.train_mlp(ddp, r, n))
    for k, v in W.state(model).items():
        OUT[f"ddp_mlp/{k}"] = v
    if r == 0:     # only rank 0 writes the checkpoint
        kiln.save(ddp.module.state_dict(), os.path.join(sys.argv[1], "mlp.kiln"))


def ddp_small_buckets(r: int, n: int) -> None:
    import kiln.distributed.reducer as reducer
    model = W.seeded(W.mlp, 10 + r)
    reducer.FIRST_BUCKET_BYTES = 256         # no 1 MiB first bucket: every bucket is small
    ddp = DDP(model, bucket_cap_mb=0.0005)
    reducer.FIRST_BUCKET_BYTES = 1 << 20
    OUT["small_buckets_count"] = np.array(len(ddp.reducer.buckets))
    W.train_mlp(ddp, r, n, steps=5)
    for k, v in W.state(model).items():
        OUT[f"small_buckets/{k}"] = v


def ddp_cnn(r: int, n: int) -> None:
    model = nn.SyncBatchNorm.convert_sync_batchnorm(W.seeded(W.cnn, 10 + r))
    OUT["cnn_has_sync_bn"] = np.array(isinstance(model[1], nn.SyncBatchNorm))
    ddp = DDP(model)
    OUT["ddp_cnn_losses"] = np.array(W.train_cnn(ddp, r, n))
    for k, v in W.state(model).items():
        OUT[f"ddp_cnn/{k}"] = v


def sync_bn_data(shape: tuple) -> tuple[np.ndarray, np.ndarray]:
    """The global batch and loss weights for the SyncBatchNorm check (ranks take row halves)."""
    rng = np.random.default_rng(len(shape))
    return rng.normal(size=shape) * 3 + 1, rng.normal(size=shape)


def sync_bn(r: int, n: int) -> None:
    for shape in ((8, 3), (6, 3, 5), (4, 3, 2, 2)):
        x, w = (W.shard(a, r, n) for a in sync_bn_data(shape))
        layer = nn.SyncBatchNorm(3, momentum=0.3).double()
        with kiln.no_grad():
            layer.weight.copy_(kiln.tensor([1.5, -0.5, 2.0]))
            layer.bias.copy_(kiln.tensor([0.1, 0.2, -0.3]))
        xt = kiln.tensor(x, requires_grad=True)
        y = layer(xt)
        (y * kiln.tensor(w)).sum().backward()
        key = "x".join(map(str, shape))
        OUT[f"sync_bn/{key}/y"] = y.detach().numpy()
        OUT[f"sync_bn/{key}/x_grad"] = xt.grad.numpy()
        OUT[f"sync_bn/{key}/weight_grad"] = layer.weight.grad.numpy()
        OUT[f"sync_bn/{key}/bias_grad"] = layer.bias.grad.numpy()
        OUT[f"sync_bn/{key}/running_mean"] = layer.running_mean.numpy()
        OUT[f"sync_bn/{key}/running_var"] = layer.running_var.numpy()
        layer.eval()
        OUT[f"sync_bn/{key}/eval"] = layer(kiln.tensor(x)).detach().numpy()


def no_sync(r: int, n: int) -> None:
    model = W.seeded(W.mlp, 0)
    ddp = DDP(model)
    opt = kiln.optim.SGD(model.parameters(), lr=0.1)
    for s in range(3):
        x, y = (W.shard(a, r, n) for a in W.mlp_data(s))
        opt.zero_grad()
        half = len(x) // 2
        with ddp.no_sync():
            (F.mse_loss(ddp(kiln.tensor(x[:half])), kiln.tensor(y[:half])) / 2).backward()
        if s == 0:   # inside no_sync nothing was exchanged: the ranks' gradients differ
            OUT["no_sync_local_grad"] = model[0].weight.grad.numpy().copy()
        (F.mse_loss(ddp(kiln.tensor(x[half:])), kiln.tensor(y[half:])) / 2).backward()
        opt.step()
    for k, v in W.state(model).items():
        OUT[f"no_sync/{k}"] = v


def compiled(r: int, n: int) -> None:
    results = {}
    for mode in ("eager", "compiled", "compiled_forward", "ddp_of_compiled", "eager_no_sync",
                 "compiled_forward_no_sync", "compiled_hook"):
        model = W.seeded(W.mlp, 10 + r)
        inner = model
        if mode == "ddp_of_compiled":      # forward and backward compiled, all-reduce outside
            inner = CompiledModule(model)
        ddp = DDP(inner)
        opt = kiln.optim.Adam(model.parameters(), lr=1e-2)
        if mode == "compiled_hook":         # a communication hook: Python on every bucket
            ddp.register_comm_hook(None, default_hooks.allreduce_hook)

        def step(x, y):
            opt.zero_grad()
            loss = F.mse_loss(ddp(x), y)
            loss.backward()
            opt.step()
            return loss

        def forward(x, y):
            return F.mse_loss(ddp(x), y)
        if mode in ("compiled", "compiled_hook"):
            step = kiln.compile(step)
        if mode == "compiled_forward":      # torch.compile(model) style: backward outside
            compiled_forward = kiln.compile(forward)

            def step(x, y):
                opt.zero_grad()
                compiled_forward(x, y).backward()
                opt.step()
        local = []
        if mode.endswith("no_sync"):        # a local backward, then a synchronizing one
            call = kiln.compile(forward) if mode.startswith("compiled") else forward

            def step(x, y):
                opt.zero_grad()
                with ddp.no_sync():
                    call(x, y).backward()
                local.append(model[0].weight.grad.numpy().copy())
                call(x, y).backward()
                opt.step()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for s in range(5):
                x, y = (W.shard(a, r, n) for a in W.mlp_data(s))
                step(kiln.tensor(x), kiln.tensor(y))
        if mode != "eager":
            OUT[f"{mode}_warnings"] = np.array([str(w.message) for w in caught] or [""])
        if local:
            OUT[f"{mode}_local"] = np.stack(local)
        if mode.startswith("compiled_forward") or mode == "compiled":
            fn = step if mode == "compiled" else \
                compiled_forward if mode == "compiled_forward" else call
            OUT[f"{mode}_replays"] = np.array(
                sum(e.calls for e in fn.entries.values() if e.program is not None))
        if mode == "ddp_of_compiled":
            entries = list(inner.fn.entries.values())
            OUT["ddp_of_compiled_replays"] = np.array(
                sum(e.calls for e in entries if e.program is not None))
        results[mode] = W.state(model)
    for mode, state in results.items():
        for k, v in state.items():
            OUT[f"compiled_{mode}/{k}"] = v


class CompiledModule(nn.Module):
    """A module whose forward runs through kiln.compile (its backward is compiled too)."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.fn = kiln.compile(lambda x: self.module(x))

    def forward(self, x):
        return self.fn(x)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Linear(3, 2), nn.Linear(3, 2), nn.Linear(3, 2)

    def forward(self, x, use_b: bool):
        out = self.a(x)
        return out + self.b(x) if use_b else out


def unused(r: int, n: int) -> None:
    model = W.seeded(lambda: TwoHeads().double(), 3)
    ddp = DDP(model, find_unused_parameters=True)
    x = kiln.tensor(base(r))
    ddp(x, use_b=(r == 0)).pow(2).sum().backward()
    OUT["unused_a"] = model.a.weight.grad.numpy()
    OUT["unused_b"] = model.b.weight.grad.numpy()
    OUT["unused_c_is_none"] = np.array(model.c.weight.grad is None)
    strict = DDP(W.seeded(lambda: TwoHeads().double(), 3))
    try:
        strict(x, use_b=True).sum().backward()
    except RuntimeError as exc:
        OUT["unused_error"] = np.array(str(exc))


def nccl_fake(r: int, n: int) -> None:
    """The collectives and a DDP run on cuda tensors through kiln's NCCL backend, over the
    stand-in NCCL (fake_nccl.py) and fake CUDA (tests/fake_cuda.py). Runs last: the fake CUDA
    patches kiln's device module for the rest of the process."""
    import tests.fake_cuda
    tests.fake_cuda.install()       # cuda tensors hold (strict) NumPy arrays from here on
    from kiln.distributed import process_group as pg
    from kiln.distributed.nccl_backend import NCCLBackend
    from tests.distributed.fake_nccl import FakeNccl, FakeNcclCommunicator, fake_cupy
    nccl = FakeNccl()
    pg._WORLD.nccl = NCCLBackend(FakeNcclCommunicator(pg._WORLD.comm.Dup(), nccl), r, n, nccl,
                                 fake_cupy)
    R = dist.ReduceOp

    def cuda(a):
        return kiln.tensor(a).cuda()
    for op in ("SUM", "AVG", "MAX", "MIN", "PRODUCT"):
        t = cuda(base(r))
        dist.all_reduce(t, op=getattr(R, op))
        OUT[f"nccl/all_reduce_{op}"] = t.cpu().numpy()
    t = cuda(base(r) > 0)
    dist.all_reduce(t)
    OUT["nccl/all_reduce_bool"] = t.cpu().numpy()
    t = cuda(base(r, np.float32))
    dist.broadcast(t, src=1)
    OUT["nccl/broadcast"] = t.cpu().numpy()
    t = cuda(base(r))
    dist.reduce(t, dst=1, op=R.MAX)
    OUT["nccl/reduce"] = t.cpu().numpy()
    lst = [cuda(np.zeros((2, 3))) for _ in range(n)]
    dist.all_gather(lst, cuda(base(r)))
    OUT["nccl/all_gather"] = np.stack([x.cpu().numpy() for x in lst])
    out = cuda(np.zeros((2 * n, 3)))
    dist.all_gather_into_tensor(out, cuda(base(r)))
    OUT["nccl/all_gather_into_tensor"] = out.cpu().numpy()
    out = cuda(np.zeros((2, 3)))
    dist.reduce_scatter(out, [cuda(base(r) * (k + 1)) for k in range(n)])
    OUT["nccl/reduce_scatter"] = out.cpu().numpy()
    out = cuda(np.zeros((1, 3)))
    dist.reduce_scatter_tensor(out, cuda(base(r)), op=R.AVG)
    OUT["nccl/reduce_scatter_tensor_AVG"] = out.cpu().numpy()
    lst = [cuda(np.zeros((2, 3))) for _ in range(n)] if r == 0 else None
    dist.gather(cuda(base(r)), lst, dst=0)
    if r == 0:
        OUT["nccl/gather"] = np.stack([x.cpu().numpy() for x in lst])
    t = cuda(np.zeros((2, 3)))
    dist.scatter(t, [cuda(base(k) * 10) for k in range(n)] if r == 1 else None, src=1)
    OUT["nccl/scatter"] = t.cpu().numpy()
    out = cuda(np.zeros((2 * n, 3)))
    dist.all_to_all_single(out, cuda(np.concatenate([base(r) + 100 * k for k in range(n)])))
    OUT["nccl/all_to_all_single"] = out.cpu().numpy()
    t = cuda(np.zeros((2, 3)))
    works = [dist.isend(cuda(base(r) * 3), dst=(r + 1) % n), dist.irecv(t, src=(r - 1) % n)]
    for w in works:
        w.wait()
    OUT["nccl/irecv"] = t.cpu().numpy()
    dist.barrier()
    # DDP on a cuda model: broadcast and bucketed all-reduce go through NCCL
    model = W.seeded(W.mlp, 10 + r).cuda()
    ddp = DDP(model)
    opt = kiln.optim.Adam(model.parameters(), lr=1e-2)
    for s in range(5):
        x, y = (W.shard(a, r, n) for a in W.mlp_data(s))
        opt.zero_grad()
        F.mse_loss(ddp(cuda(x)), cuda(y)).backward()
        opt.step()
    for k, v in model.state_dict().items():
        OUT[f"nccl_ddp/{k}"] = v.cpu().numpy()
    OUT["nccl/calls"] = np.array(sorted(set(nccl.calls)))


def errors(r: int, n: int) -> None:
    """Mistakes every rank makes alike: each raises before anything is sent."""
    cases = {
        "non_contiguous": lambda: dist.all_reduce(kiln.zeros(3, 4).t()),
        "avg_int": lambda: dist.all_reduce(kiln.zeros(3, dtype=kiln.int64),
                                           op=dist.ReduceOp.AVG),
        "bad_op": lambda: dist.all_reduce(kiln.zeros(3), op="mean"),
        "list_length": lambda: dist.all_gather([kiln.zeros(2)], kiln.zeros(2)),
        "list_shape": lambda: dist.all_gather([kiln.zeros(2), kiln.zeros(3)], kiln.zeros(2)),
        "gather_size": lambda: dist.all_gather_into_tensor(kiln.zeros(3), kiln.zeros(2)),
        "src_rank": lambda: dist.broadcast(kiln.zeros(2), src=n),
        "group": lambda: dist.all_reduce(kiln.zeros(2), group="subgroup"),
        "double_init": lambda: dist.init_process_group(),
        "backend": lambda: dist.init_process_group(backend="ucc"),
    }
    for name, call in cases.items():
        try:
            call()
            OUT[f"errors/{name}"] = np.array("no error")
        except Exception as exc:
            OUT[f"errors/{name}"] = np.array(f"{type(exc).__name__}: {exc}")
    # a backward through the bare module (not the DDP wrapper) stays local: no collective
    model = W.seeded(W.mlp, 10 + r)
    ddp = DDP(model)
    x, y = W.mlp_data(0)
    F.mse_loss(model(kiln.tensor(x[:4] + r)), kiln.tensor(y[:4])).backward()
    OUT["errors/bare_module_grad"] = model[0].weight.grad.numpy()
    del ddp


def compiled_cnn(r: int, n: int) -> None:
    """A CNN with BatchNorm under DDP (its running statistics broadcast from rank 0 at every
    forward), the whole SGD step compiled, against the same step eager."""
    for mode in ("eager", "compiled"):
        model = W.seeded(W.cnn, 10 + r)
        ddp = DDP(model)
        opt = kiln.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        def step(x, y):
            opt.zero_grad()
            loss = F.cross_entropy(ddp(x), y)
            loss.backward()
            opt.step()
            return loss
        if mode == "compiled":
            step = kiln.compile(step)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            losses = [step(*(kiln.tensor(W.shard(a, r, n)) for a in W.cnn_data(s))).item()
                      for s in range(5)]
        OUT[f"compiled_cnn_{mode}_losses"] = np.array(losses)
        if mode == "compiled":
            OUT["compiled_cnn_warnings"] = np.array([str(w.message) for w in caught] or [""])
            OUT["compiled_cnn_replays"] = np.array(
                sum(e.calls for e in step.entries.values() if e.program is not None))
        for k, v in W.state(model).items():
            OUT[f"compiled_cnn_{mode}/{k}"] = v


def main() -> None:
    dist.init_process_group(backend="gloo")
    r, n = dist.get_rank(), dist.get_world_size()
    OUT["env"] = np.array([int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                           int(os.environ["LOCAL_RANK"])])
    checks = sys.argv[2].split(",") if len(sys.argv) > 2 else [
        "collectives", "ddp_mlp", "ddp_small_buckets", "ddp_cnn", "sync_bn", "no_sync", "compiled",
        "compiled_cnn", "unused", "errors", "nccl_fake"]
    for name in checks:
        try:
            globals()[name](r, n)
        except Exception:
            OUT[f"error:{name}"] = np.array(traceback.format_exc())
    np.savez(os.path.join(sys.argv[1], f"rank{r}.npz"), **OUT)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
