"""torch's own RPC framework on the RPC tests' split model: `python rpc_torch_ranks.py OUT`
spawns two processes (torch.multiprocessing) that train it over torch.distributed.rpc
(TensorPipe): first/last linear on "master", the middle linear + tanh on "worker1", with
dist_autograd.backward and DistributedOptimizer(SGD), from the same initial weights and batches
as kiln's run; master writes its losses and the final weights to OUT/torch_split.npz, and how
tensors that require grad arrive with and without a context (`rpc_workloads.arrivals`) to
OUT/torch_arrivals.txt."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch


def _linear(weight: np.ndarray, bias: np.ndarray) -> torch.nn.Linear:
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(weight))
        layer.bias.copy_(torch.from_numpy(bias))
    return layer


class TorchMiddle(torch.nn.Module):
    def __init__(self, weight, bias):
        super().__init__()
        self.middle = _linear(weight, bias)

    def forward(self, h):
        return torch.tanh(self.middle(h))

    def parameter_rrefs(self):
        from torch.distributed.rpc import RRef
        return [RRef(p) for p in self.parameters()]

    def state(self):
        return {k: v.detach().numpy().copy() for k, v in self.state_dict().items()}


def grad_info(t) -> tuple:
    return (t.requires_grad, t.grad_fn is None, type(t).__name__,
            "" if t.grad_fn is None else t.grad_fn.name())


def echo(x):
    return x


def rank_main(rank: int, store: str, out: str, weights: dict, batches: list, lr: float) -> None:
    import torch.distributed.autograd as dist_autograd
    import torch.distributed.rpc as rpc
    from torch.distributed.optim import DistributedOptimizer
    options = rpc.TensorPipeRpcBackendOptions(init_method=f"file://{store}", rpc_timeout=120)
    rpc.init_rpc("master" if rank == 0 else "worker1", rank=rank, world_size=2,
                 rpc_backend_options=options)
    if rank == 0:
        first = _linear(weights["first.weight"], weights["first.bias"])
        last = _linear(weights["last.weight"], weights["last.bias"])
        middle = rpc.remote("worker1", TorchMiddle, args=(weights["middle.weight"],
                                                          weights["middle.bias"]))
        params = [rpc.RRef(p) for layer in (first, last) for p in layer.parameters()]
        params += middle.remote().parameter_rrefs().to_here()
        opt = DistributedOptimizer(torch.optim.SGD, params, lr=lr)
        losses = []
        for x, y in batches:
            with dist_autograd.context() as ctx:
                h = middle.rpc_sync().forward(first(torch.from_numpy(x)))
                loss = torch.nn.functional.mse_loss(last(h), torch.from_numpy(y))
                dist_autograd.backward(ctx, [loss])
                opt.step(ctx)
            losses.append(loss.item())
        final = {f"{n}.{k}": p.detach().numpy().copy() for n, layer in
                 (("first", first), ("last", last)) for k, p in layer.named_parameters()}
        final.update(middle.rpc_sync().state())
        np.savez(os.path.join(out, "torch_split.npz"), losses=np.array(losses), **final)
        from tests.distributed import rpc_workloads as W
        arrivals = W.arrivals(torch, rpc, dist_autograd, grad_info)
        with open(os.path.join(out, "torch_arrivals.txt"), "w") as f:
            f.write(repr(arrivals))
    rpc.shutdown()
    os._exit(0)     # no interpreter teardown: torch's RPC threads can abort it


def main() -> None:
    out = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    from tests.distributed import rpc_workloads as W
    import torch.multiprocessing as mp
    mp.spawn(rank_main, args=(os.path.join(out, "store"), out, W.split_weights(),
                              W.split_batches(), W.SPLIT_LR), nprocs=2)


if __name__ == "__main__":
    main()
