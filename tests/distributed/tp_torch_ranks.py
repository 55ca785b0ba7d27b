"""torch's own tensor parallelism on the TP tests' transformer: `python tp_torch_ranks.py OUT`
spawns two processes (torch.multiprocessing, gloo) that parallelize the torch twin of
`tp_workloads.Transformer` with torch's parallelize_module (the same plans: without and with
sequence parallelism), train it from kiln's initial weights on the same batch, and write their
losses and full state dicts to OUT/torch_rank<r>.npz. Also holds the torch twins."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

VOCAB, DIM, HEADS, HIDDEN, LAYERS = 11, 8, 2, 20, 2


def _local(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor
    return t.to_local() if isinstance(t, DTensor) else t


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for name in ("wq", "wk", "wv", "wo"):
            setattr(self, name, torch.nn.Linear(DIM, DIM, bias=False))

    def forward(self, x):
        b, s, _ = _local(x).shape
        # torch's DTensor has no CPU attention rule: attend on the local heads (as kiln does)
        heads = [_local(t).view(b, s, -1, DIM // HEADS).transpose(1, 2)
                 for t in (self.wq(x), self.wk(x), self.wv(x))]
        out = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, -1))


class TorchFeedForward(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.w1 = torch.nn.Linear(DIM, HIDDEN, bias=False)
        self.w2 = torch.nn.Linear(HIDDEN, DIM, bias=False)
        self.w3 = torch.nn.Linear(DIM, HIDDEN, bias=False)

    def forward(self, x):
        return self.w2(torch.nn.functional.silu(self.w1(x)) * self.w3(x))


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm = torch.nn.RMSNorm(DIM)
        self.attention = TorchAttention()
        self.ffn_norm = torch.nn.RMSNorm(DIM)
        self.feed_forward = TorchFeedForward()

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.feed_forward(self.ffn_norm(h))


class TorchTransformer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.tok_embeddings = torch.nn.Embedding(VOCAB, DIM)
        self.layers = torch.nn.ModuleList([TorchBlock() for _ in range(LAYERS)])
        self.norm = torch.nn.RMSNorm(DIM)
        self.output = torch.nn.Linear(DIM, VOCAB, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens)
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


def twin(weights: dict) -> TorchTransformer:
    model = TorchTransformer().double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, VOCAB), batch[:, 1:].reshape(-1))


def rank_main(rank: int, world: int, store: str, out: str, weights: dict, batch: np.ndarray,
              steps: int) -> None:
    import torch.distributed as tdist
    import torch.distributed.tensor.parallel as tp
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Replicate, Shard
    from tests.distributed.tp_workloads import sp_plans, tp_plans
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    results = {}
    for name, plans in (("transformer", tp_plans), ("sp", sp_plans)):
        model = twin(weights)
        top, _ = plans(tp, Shard, Replicate)
        tp.parallelize_module(model, mesh, top)
        for layer in model.layers:
            tp.parallelize_module(layer, mesh, plans(tp, Shard, Replicate)[1])
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        losses = []
        for _ in range(steps):
            loss = lm_loss(model, torch.from_numpy(batch))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
        results[f"{name}_losses"] = np.array(losses)
        for k, v in model.state_dict().items():
            v = v.full_tensor() if isinstance(v, DTensor) else v
            results[f"{name}_state/{k}"] = v.detach().numpy()
    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), **results)
    tdist.barrier()
    os._exit(0)     # no teardown: see fsdp_torch_ranks.py


def main() -> None:
    out = sys.argv[1]
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, root)
    from tests.distributed import tp_workloads as W
    import torch.multiprocessing as mp
    mp.spawn(rank_main, args=(2, os.path.join(out, "store"), out, W.state(W.transformer(0)),
                              W.tokens(), W.STEPS), nprocs=2)


if __name__ == "__main__":
    main()
