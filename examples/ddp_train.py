"""Data-parallel training on several processes: an MLP classifying points drawn around four
centres, with DistributedDataParallel, each rank reading its own share of every epoch
(DistributedSampler).

    python -m kiln.distributed.run --nproc-per-node 2 examples/ddp_train.py [--out DIR] [--compile]

With --compile the training step runs through kiln.compile: forward, backward, the gradient
all-reduce and the optimizer step replay as one compiled program.

Every rank holds the same model after every step; only rank 0 evaluates and writes the
checkpoint (`ddp.module.state_dict()`: no `module.` prefix, so a plain model loads it).
"""

import argparse
import os
import tempfile

import kiln
import kiln.distributed as dist
import kiln.nn as nn
import kiln.nn.functional as F
from kiln.nn.parallel import DistributedDataParallel as DDP
from kiln.utils.data import DataLoader, TensorDataset
from kiln.utils.data.distributed import DistributedSampler

EPOCHS = 3 if os.environ.get("KILN_EXAMPLE_QUICK") else 10


def model() -> nn.Module:
    return nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 4))


def make_data(n: int, seed: int) -> tuple[kiln.Tensor, kiln.Tensor]:
    """Noisy points around four fixed centres in 16 dimensions; the label is the centre."""
    kiln.manual_seed(1234)
    centres = kiln.randn(4, 16)
    kiln.manual_seed(seed)
    labels = kiln.randint(0, 4, (n,))
    return centres[labels] + 1.5 * kiln.randn(n, 16), labels


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=tempfile.gettempdir())
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    dist.init_process_group(backend="gloo")          # MPI underneath
    rank, world = dist.get_rank(), dist.get_world_size()

    x_train, y_train = make_data(1024, seed=0)      # the same data on every rank
    x_test, y_test = make_data(512, seed=1)
    train = TensorDataset(x_train, y_train)
    sampler = DistributedSampler(train, shuffle=True, seed=0)
    loader = DataLoader(train, batch_size=64 // world, sampler=sampler)

    kiln.manual_seed(rank)          # different on purpose: DDP copies rank 0's weights
    ddp = DDP(model())
    opt = kiln.optim.Adam(ddp.parameters(), lr=3e-3)

    def step(x, y):
        opt.zero_grad()
        loss = F.cross_entropy(ddp(x), y)
        loss.backward()
        opt.step()
        return loss
    if args.compile:
        step = kiln.compile(step)
    for epoch in range(EPOCHS):
        sampler.set_epoch(epoch)
        for x, y in loader:
            loss = step(x, y)
        mean_loss = kiln.tensor([loss.item()])
        dist.all_reduce(mean_loss, op=dist.ReduceOp.AVG)
        if rank == 0:
            print(f"epoch {epoch} loss {mean_loss.item():.4f}", flush=True)

    if rank == 0:       # one writer: every rank's model is the same
        path = os.path.join(args.out, "ddp_train.kiln")
        kiln.save(ddp.module.state_dict(), path)
        plain = model()
        plain.load_state_dict(kiln.load(path))
        with kiln.no_grad():
            accuracy = (plain(x_test).argmax(1) == y_test).float().mean().item()
        print(f"checkpoint {path}")
        print(f"accuracy {accuracy:.4f}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
