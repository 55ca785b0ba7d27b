"""Run by `mpiexec -n 3` from tests/distributed/test_rpc.py: rank 0 ("master") drives RPC
checks against "worker1" and "worker2" and writes what it got to OUT/results.pkl; the tests
compare that with values computed in one process. A section that raises records its error."""

from __future__ import annotations

import os
import pickle
import sys
import traceback

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import kiln  # noqa: E402
import kiln.distributed as dist  # noqa: E402
import kiln.distributed.autograd as dist_autograd  # noqa: E402
import kiln.distributed.rpc as rpc  # noqa: E402
import kiln.nn as nn  # noqa: E402
from kiln.distributed.nn import RemoteModule  # noqa: E402
from kiln.distributed.optim import DistributedOptimizer  # noqa: E402
from tests.distributed import rpc_workloads as W  # noqa: E402

OUT: dict = {}


def basics() -> None:
    OUT["sum"] = rpc.rpc_sync("worker1", W.add, args=(2, 3))
    t = kiln.arange(6, dtype=kiln.float64).reshape(2, 3)
    OUT["tensor"] = rpc.rpc_sync("worker2", W.affine, args=(t,), kwargs={"scale": 3.0,
                                                                         "shift": -1.5}).numpy()
    futs = [rpc.rpc_async(f"worker{1 + i % 2}", W.add, args=(kiln.full((2,), float(i)), i))
            for i in range(6)]
    OUT["async"] = [v.numpy() for v in kiln.futures.wait_all(futs)]
    OUT["then"] = rpc.rpc_async(rpc.get_worker_info("worker1"), W.add, args=(20, 1)).then(
        lambda fut: fut.value() * 2).wait()
    # a callback that makes another RPC and waits for it (its reply needs the listener free)
    OUT["then_rpc"] = rpc.rpc_async("worker1", W.add, args=(1, 2)).then(
        lambda fut: rpc.rpc_sync("worker2", W.add, args=(fut.value(), 10))).wait(timeout=30)
    try:
        rpc.rpc_sync(2, W.fail, args=(7,))
    except ValueError as exc:
        OUT["remote_error"] = (type(exc).__name__, str(exc))
    acc = rpc.remote("worker1", W.Accumulator, args=(10,))
    OUT["push"] = [acc.rpc_sync().push(5), acc.rpc_async().push(2).wait()]
    OUT["remote_method"] = acc.remote().total().to_here()
    OUT["async_method"] = [acc.rpc_sync().total_later(100), acc.rpc_async().total_later(200).wait(),
                           acc.remote().total_later(300).to_here()]
    OUT["async_chained"] = rpc.rpc_sync("worker1", W.add_chained, args=("worker2", 1, 2, 3))
    OUT["to_here"] = acc.to_here().values
    OUT["owner"] = (repr(acc.owner()), acc.owner_name(), acc.is_owner())
    try:
        acc.rpc_sync().boom()
    except KeyError as exc:
        OUT["method_error"] = str(exc)
    try:
        acc.local_value()
    except RuntimeError as exc:
        OUT["local_value_error"] = str(exc)
    # an RRef owned by worker1 handed to worker2, which fetches and calls it
    OUT["nested"] = rpc.rpc_sync("worker2", W.fetch_and_scale, args=(acc, 2))
    # an RRef owned here, sent away and fetched back from here
    mine = rpc.RRef(W.Accumulator(1))
    OUT["loopback"] = rpc.rpc_sync("worker1", W.fetch_and_scale, args=(mine, 3))
    OUT["me"] = repr(rpc.get_worker_info())
    OUT["arrivals"] = W.arrivals(kiln, rpc, dist_autograd, W.grad_info)
    echoed = rpc.rpc_sync("worker1", W.echo, args=([kiln.tensor(2.5), t.t(), t[:, 1],
                                                     kiln.tensor([1, 2], dtype=kiln.int32)],))
    OUT["echoed"] = [(tuple(e.shape), str(e.dtype), e.numpy()) for e in echoed]
    bad = rpc.remote("worker1", W.fail, args=(3,))
    try:
        bad.to_here()
    except ValueError as exc:
        OUT["remote_create_error"] = str(exc)
    # RRef.backward: a loss kept on worker2 as the root of a distributed backward
    w = kiln.tensor([1.0, -2.0, 3.0], dtype=kiln.float64, requires_grad=True)
    with dist_autograd.context() as ctx:
        loss = rpc.remote("worker2", W.square_sum, args=(w * 3,))
        loss.backward(ctx)
        OUT["rref_backward"] = dist_autograd.get_gradients(ctx)[w].numpy()
    OUT["rref_backward_dot_grad"] = w.grad is None
    try:
        rpc.rpc_sync("worker1", W.slow, args=(1.0, "late"), timeout=0.2)
    except RuntimeError as exc:
        OUT["timeout_error"] = str(exc)
    OUT["after_timeout"] = rpc.rpc_sync("worker1", W.slow, args=(0.0, "next"), timeout=0)
    try:
        rpc.rpc_sync("worker9", W.add, args=(1, 2))
    except ValueError as exc:
        OUT["unknown_worker"] = str(exc)


def batch_server() -> None:
    server = rpc.RRef(W.BatchServer())
    futs = [rpc.rpc_async(f"worker{1 + t}", W.run_trainer, args=(server, t))
            for t in range(W.TRAINERS)]
    OUT["batch_seen"] = [np.array(seen) for seen in kiln.futures.wait_all(futs)]
    OUT["batch_final"] = server.local_value().param.detach().numpy().copy()


def split_model() -> None:
    weights = W.split_weights()
    first, last = W.linear("first", weights), W.linear("last", weights)
    middle = rpc.remote("worker1", W.MiddleShard)
    params = [rpc.RRef(p) for layer in (first, last) for p in layer.parameters()]
    params += middle.remote().parameter_rrefs().to_here()
    opt = DistributedOptimizer(kiln.optim.SGD, params, lr=W.SPLIT_LR)
    losses = []
    for step, (x, y) in enumerate(W.split_batches()):
        with dist_autograd.context() as ctx:
            h = first(kiln.tensor(x))
            h = middle.rpc_sync().forward(h)
            loss = nn.functional.mse_loss(last(h), kiln.tensor(y))
            dist_autograd.backward(ctx, [loss])
            if step == 0:
                grads = dist_autograd.get_gradients(ctx)
                OUT["split_grads_here"] = {
                    f"{n}.{k}": grads[p].numpy().copy() for n, layer in
                    (("first", first), ("last", last)) for k, p in layer.named_parameters()}
                OUT["split_dot_grad"] = [p.grad is None for p in first.parameters()]
            opt.step(ctx)
        losses.append(loss.item())
    OUT["split_losses"] = losses
    final = {f"{n}.{k}": p.detach().numpy().copy() for n, layer in
             (("first", first), ("last", last)) for k, p in layer.named_parameters()}
    final.update(middle.rpc_sync().state())
    OUT["split_final"] = final


def skip_connection() -> None:
    """h goes to the worker and also around it: its gradient has a local and a remote part."""
    weights = W.split_weights()
    first, last = W.linear("first", weights), W.linear("last", weights)
    middle = rpc.remote("worker1", W.MiddleShard)
    x, y = W.split_batches()[0]
    with dist_autograd.context() as ctx:
        loss = W.skip_loss(first, lambda h: middle.rpc_sync().forward(h), last, x, y)
        dist_autograd.backward(ctx, [loss])
        grads = dist_autograd.get_gradients(ctx)
        got = {f"{n}.{k}": grads[p].numpy().copy() for n, layer in
               (("first", first), ("last", last)) for k, p in layer.named_parameters()}
        got.update(rpc.rpc_sync("worker1", W.context_grads, args=(middle, ctx)))
    OUT["skip"] = (loss.item(), got)


def concurrent_contexts() -> None:
    """worker1 and the master train through one module on worker2 at the same time, each in
    its own contexts."""
    shared = rpc.remote("worker2", W.MiddleShard)
    theirs = rpc.rpc_async("worker1", W.grads_against, args=(shared, 1))
    mine = W.grads_against(shared, 2)
    OUT["concurrent"] = {1: theirs.wait(), 2: mine}


def remote_module() -> None:
    layer = RemoteModule("worker2/cpu", nn.Linear, args=(4, 2), kwargs={"dtype": kiln.float64})
    state = layer.get_module_rref().rpc_sync().state_dict()
    OUT["rm_initial"] = {k: v.numpy().copy() for k, v in state.items()}
    opt = DistributedOptimizer(kiln.optim.SGD, layer.remote_parameters(), lr=W.SPLIT_LR)
    losses = []
    for x, y in W.remote_module_batches():
        with dist_autograd.context() as ctx:
            out = layer.forward_async(kiln.tensor(x)).wait()
            loss = nn.functional.mse_loss(out, kiln.tensor(y))
            dist_autograd.backward(ctx, [loss])
            opt.step(ctx)
        losses.append(loss.item())
    OUT["rm_losses"] = losses
    x = W.remote_module_batches()[0][0]
    OUT["rm_here"] = layer(kiln.tensor(x)).detach().numpy()
    OUT["rm_elsewhere"] = rpc.rpc_sync("worker1", W.forward_elsewhere, args=(layer, x))
    state = layer.get_module_rref().rpc_sync().state_dict()
    OUT["rm_final"] = {k: v.numpy().copy() for k, v in state.items()}
    OUT["rm_repr"] = repr(layer)


def fault(rank: int) -> None:
    """worker1 dies of an uncaught exception while the master waits on it: the job must end."""
    rpc.init_rpc("master" if rank == 0 else f"worker{rank}")
    if rank == 1:
        raise RuntimeError("worker1 failed on purpose")
    if rank == 0:
        rpc.rpc_sync("worker1", W.slow, args=(300.0, None), timeout=0)
    rpc.shutdown()


def partial_grads() -> None:
    pair = rpc.remote("worker1", W.Pair)
    opt = DistributedOptimizer(kiln.optim.SGD, pair.remote().parameter_rrefs().to_here(), lr=0.25)
    for use_b in (True, False):
        with dist_autograd.context() as ctx:
            dist_autograd.backward(ctx, [pair.rpc_sync().forward(use_b)])
            opt.step(ctx)
        OUT.setdefault("partial", []).append(pair.rpc_sync().values())


def main() -> None:
    from mpi4py import MPI
    rank = MPI.COMM_WORLD.Get_rank()
    if sys.argv[2:] == ["fault"]:
        fault(rank)
        return
    dist.init_process_group("gloo")      # as the batch example: a process group beside RPC
    rpc.init_rpc("master" if rank == 0 else f"worker{rank}", rank=rank, world_size=3,
                 rpc_backend_options=rpc.TensorPipeRpcBackendOptions(num_worker_threads=8,
                                                                      rpc_timeout=60))
    if rank == 0:
        for section in (basics, batch_server, split_model, skip_connection,
                        concurrent_contexts, remote_module, partial_grads):
            try:
                section()
            except Exception:
                OUT[f"error:{section.__name__}"] = traceback.format_exc()
    total = kiln.tensor([float(rank + 1)])
    dist.all_reduce(total)         # the process group's traffic, after RPC's, on its own comm
    if rank == 0:
        OUT["all_reduce"] = total.item()
        with open(os.path.join(sys.argv[1], "results.pkl"), "wb") as f:
            pickle.dump(OUT, f)
    rpc.shutdown()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
