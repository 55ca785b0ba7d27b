"""Time a training epoch of the digits CNN and an MLP in kiln and in PyTorch, eager, on the CPU.

Both frameworks get the same model (same initial weights), the same batches and the same number
of BLAS/intra-op threads. Run: python benchmarks/train_cpu.py [--threads 1,2] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch
from sklearn.datasets import load_digits

import kiln


def digits_cnn(lib):
    """The model of examples/digits_cnn.py, written once for either library."""
    nn = lib.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(0.25), nn.Linear(128, 64), nn.ReLU(), nn.Linear(64, 10))


def mlp(lib):
    nn = lib.nn
    return nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                         nn.Linear(512, 10))


def copy_weights(kiln_model, torch_model) -> None:
    """Give the torch model kiln's initial weights, so both start from the same point."""
    state = {k: torch.from_numpy(np.array(v.numpy())) for k, v in
             kiln_model.state_dict().items()}
    torch_model.load_state_dict(state)


def digits_batches(batch_size: int = 64):
    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]
    y = digits.target.astype(np.int64)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


def random_batches(n: int = 8192, batch_size: int = 256):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 784)).astype(np.float32)
    y = rng.integers(0, 10, n).astype(np.int64)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def epoch_seconds(lib, model, batches) -> float:
    """One training epoch (forward, loss, backward, Adam step per batch) in seconds."""
    tensors = [(lib.tensor(x), lib.tensor(y)) for x, y in batches]
    optimizer = lib.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = lib.nn.CrossEntropyLoss()
    model.train()
    start = time.perf_counter()
    for x, y in tensors:
        optimizer.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
    loss.item()
    return time.perf_counter() - start


def compare(name: str, build, batches, repeats: int) -> tuple:
    kiln.manual_seed(0)
    kiln_model = build(kiln)
    torch_model = build(torch)
    copy_weights(kiln_model, torch_model)
    epoch_seconds(kiln, kiln_model, batches[:2])            # warm caches (index tables, ...)
    epoch_seconds(torch, torch_model, batches[:2])
    kiln_times, torch_times = [], []
    for _ in range(repeats):                                # interleaved: both see the same load
        kiln_times.append(epoch_seconds(kiln, kiln_model, batches))
        torch_times.append(epoch_seconds(torch, torch_model, batches))
    # each kiln epoch over the torch epoch run right after it: on a shared, noisy host this
    # median moves much less between runs than the ratio of the two medians
    pairs = statistics.median(k / t for k, t in zip(kiln_times, torch_times))
    return name, statistics.median(kiln_times), statistics.median(torch_times), pairs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    workloads = [
        ("digits CNN, 1797 imgs, batch 64", digits_cnn, digits_batches()),
        ("MLP 784-512-512-10, 8192 rows, batch 256", mlp, random_batches()),
    ]
    print(f"median of {args.repeats} epochs; Adam; kiln eager (NumPy) vs PyTorch "
          f"{torch.__version__} eager")
    print(f"{'workload':<42} {'threads':>7} {'kiln s':>8} {'torch s':>8} {'kiln/torch':>10} "
          f"{'per pair':>8}")
    for threads in [int(t) for t in args.threads.split(",")]:
        kiln.set_num_threads(threads)
        torch.set_num_threads(threads)
        for label, build, batches in workloads:
            name, k, t, pairs = compare(label, build, batches, args.repeats)
            print(f"{name:<42} {threads:>7} {k:>8.3f} {t:>8.3f} {k / t:>9.2f}x {pairs:>7.2f}x")


if __name__ == "__main__":
    main()
