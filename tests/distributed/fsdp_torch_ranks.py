"""torch's own FSDP2 on the FSDP tests' transformer: `python fsdp_torch_ranks.py OUT` spawns
two processes (torch.multiprocessing, gloo) that train the torch twin of
`fsdp_workloads.Transformer` from kiln's initial weights, each on its half of every batch, and
write their losses and full state dicts to OUT/torch_rank<r>.npz."""

from __future__ import annotations

import os
import sys

import numpy as np
import torch

DIM, HEADS, HIDDEN = 8, 2, 20


class TorchAttention(torch.nn.Module):
    def __init__(self):
        super().__init__()
        for name in ("wq", "wk", "wv", "wo"):
            setattr(self, name, torch.nn.Linear(DIM, DIM, bias=False))

    def forward(self, x):
        b, s, _ = x.shape
        heads = [t.view(b, s, HEADS, DIM // HEADS).transpose(1, 2)
                 for t in (self.wq(x), self.wk(x), self.wv(x))]
        out = torch.nn.functional.scaled_dot_product_attention(*heads, is_causal=True)
        return self.wo(out.transpose(1, 2).reshape(b, s, DIM))


class TorchBlock(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attention_norm = torch.nn.LayerNorm(DIM)
        self.attention = TorchAttention()
        self.ffn_norm = torch.nn.LayerNorm(DIM)
        self.w1 = torch.nn.Linear(DIM, HIDDEN)
        self.w2 = torch.nn.Linear(HIDDEN, DIM)

    def forward(self, x):
        h = x + self.attention(self.attention_norm(x))
        return h + self.w2(torch.nn.functional.gelu(self.w1(self.ffn_norm(h))))


class TorchTransformer(torch.nn.Module):
    def __init__(self, vocab: int, seq: int, layers: int):
        super().__init__()
        self.vocab = vocab
        self.tok_embeddings = torch.nn.Embedding(vocab, DIM)
        self.pos_embeddings = torch.nn.Embedding(seq, DIM)
        self.layers = torch.nn.ModuleList([TorchBlock() for _ in range(layers)])
        self.norm = torch.nn.LayerNorm(DIM)
        self.output = torch.nn.Linear(DIM, vocab, bias=False)

    def forward(self, tokens):
        h = self.tok_embeddings(tokens) + self.pos_embeddings(torch.arange(tokens.shape[1]))
        for layer in self.layers:
            h = layer(h)
        return self.output(self.norm(h))


def twin(weights: dict, vocab: int, seq: int, layers: int) -> TorchTransformer:
    model = TorchTransformer(vocab, seq, layers).double()
    model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
    return model


def lm_loss(model, batch: torch.Tensor) -> torch.Tensor:
    logits = model(batch[:, :-1])
    return torch.nn.functional.cross_entropy(logits.reshape(-1, model.vocab),
                                             batch[:, 1:].reshape(-1))


def rank_main(rank: int, world: int, store: str, out: str, weights: dict, batches: list,
              sizes: tuple) -> None:
    import torch.distributed as tdist
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import fully_shard
    tdist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    model = twin(weights, *sizes)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for batch in batches:
        half = len(batch) // world
        loss = lm_loss(model, torch.from_numpy(batch[rank * half:(rank + 1) * half]))
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    np.savez(os.path.join(out, f"torch_rank{rank}.npz"), losses=np.array(losses),
             **{f"state/{k}": v.numpy() for k, v in state.items()})
    tdist.barrier()
    # Both ranks have written their files. Leave without teardown: gloo's worker threads can
    # abort the process while the process group and the interpreter are destroyed ("terminate
    # called without an active exception", a torch-side race seen once in CI).
    os._exit(0)


def main() -> None:
    out = sys.argv[1]
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
        __file__)))))
    from tests.distributed import fsdp_workloads as W      # kiln: in this parent only
    import torch.multiprocessing as mp
    weights = W.state(W.transformer(0))
    batches = [W.tokens(step) for step in range(W.STEPS)]
    mp.spawn(rank_main, args=(2, os.path.join(out, "store"), out, weights, batches,
                              (W.VOCAB, W.SEQ, W.LAYERS)), nprocs=2)


if __name__ == "__main__":
    main()
