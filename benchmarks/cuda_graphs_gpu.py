"""Eager training steps captured by the user as CUDA graphs (PyTorch's recipe: warm up on a
side stream, `with graph(g):` one whole step, then copy each batch in and `g.replay()`), in kiln
and in PyTorch, side by side in one process on one CUDA GPU, with each library's plain eager
step and kiln compiled (which replays its programs as CUDA graphs by itself) for reference.

Run: PYTHONPATH=. python benchmarks/cuda_graphs_gpu.py [--quick]
The step: the MLP of benchmarks/compile_gpu.py (784-512-512-10, ReLU, cross entropy) with
Adam(capturable=True), at batch 512 and 4096 (--quick: 512 only, fewer repeats). Before timing,
10 replays of kiln's graph must give the losses of 10 eager steps on the same batches (kiln's
own eager run, to 1e-4 relative). Prints the median ms per step of each and the ratios
torch eager / kiln graph and torch graph / kiln graph (> 1: kiln's graph is faster). Without a
CUDA GPU, CuPy or a CUDA build of PyTorch it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import kiln

try:
    import torch
except ImportError:
    torch = None

if torch is not None:
    from compile_cpu import _mlp
    from compile_gpu import gpu_problem, wall_ms


def _graphed_step(lib, model, opt, x, y):
    """PyTorch's whole-network capture recipe: returns (replay, static input, static target,
    static loss)."""
    loss_fn = lib.nn.CrossEntropyLoss()
    static_x, static_y = x.clone(), y.clone()
    side = lib.cuda.Stream()
    side.wait_stream(lib.cuda.current_stream())
    with lib.cuda.stream(side):
        for _ in range(3):
            opt.zero_grad(set_to_none=True)
            loss_fn(model(static_x), static_y).backward()
            opt.step()
    lib.cuda.current_stream().wait_stream(side)
    g = lib.cuda.CUDAGraph()
    opt.zero_grad(set_to_none=True)
    with lib.cuda.graph(g):
        static_loss = loss_fn(model(static_x), static_y)
        static_loss.backward()
        opt.step()
    return g.replay, static_x, static_y, static_loss


def _eager_step(lib, model, opt):
    loss_fn = lib.nn.CrossEntropyLoss()

    def step(x, y):
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss
    return step


def check(batches) -> float:
    """Largest relative difference between 10 graph replays and 10 eager steps (kiln)."""
    kiln.manual_seed(0)
    eager_model = _mlp(kiln).cuda()
    graph_model = _mlp(kiln).cuda()
    graph_model.load_state_dict(eager_model.state_dict())
    eager = _eager_step(kiln, eager_model,
                        kiln.optim.Adam(eager_model.parameters(), lr=1e-3, capturable=True))
    x0, y0 = batches[0]
    # the warm-up of the graphed model trains it 3 steps on the first batch: the eager one too
    for _ in range(3):
        eager(x0, y0)
    replay, sx, sy, sloss = _graphed_step(
        kiln, graph_model, kiln.optim.Adam(graph_model.parameters(), lr=1e-3,
                                           capturable=True), x0, y0)
    worst = 0.0
    for x, y in batches:
        want = eager(x, y).item()
        sx.copy_(x)
        sy.copy_(y)
        replay()
        worst = max(worst, abs(sloss.item() - want) / abs(want))
    return worst


def bench(batch: int, repeat: int) -> None:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kx, ky = kiln.tensor(x, device="cuda"), kiln.tensor(y, device="cuda")
    tx, ty = torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda()
    times = {}
    for lib, bx, by in ((kiln, kx, ky), (torch, tx, ty)):
        lib.manual_seed(0)
        model = _mlp(lib).cuda()
        step = _eager_step(lib, model, lib.optim.Adam(model.parameters(), lr=1e-3,
                                                      capturable=True))
        times[f"{lib.__name__} eager"] = wall_ms(lambda: step(bx, by), repeat)
        if lib is kiln:
            compiled = kiln.compile(_eager_step(kiln, model, kiln.optim.Adam(
                model.parameters(), lr=1e-3)))
            times["kiln compiled"] = wall_ms(lambda: compiled(bx, by), repeat)
        model = _mlp(lib).cuda()
        replay, sx, sy, _ = _graphed_step(lib, model, lib.optim.Adam(
            model.parameters(), lr=1e-3, capturable=True), bx, by)

        def graphed():
            sx.copy_(bx)
            sy.copy_(by)
            replay()
        times[f"{lib.__name__} graph"] = wall_ms(graphed, repeat)
    cells = "  ".join(f"{k} {v:.3f}" for k, v in times.items())
    print(f"MLP step batch {batch:5d} (ms): {cells}  |  torch eager/kiln graph "
          f"{times['torch eager'] / times['kiln graph']:.2f}x  torch graph/kiln graph "
          f"{times['torch graph'] / times['kiln graph']:.2f}x", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    problem = "PyTorch is not installed" if torch is None else gpu_problem()
    if problem:
        print(f"cuda_graphs_gpu: {problem}; nothing to run")
        sys.exit(2)
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(3)
    batches = [(kiln.tensor(rng.standard_normal((64, 784), dtype=np.float32), device="cuda"),
                kiln.tensor(rng.integers(0, 10, 64), device="cuda")) for _ in range(10)]
    worst = check(batches)
    print(f"check: 10 replays of kiln's captured step vs 10 eager steps: max rel diff "
          f"{worst:.2e}", flush=True)
    if not worst <= 1e-4:
        sys.exit("cuda_graphs_gpu: kiln's graph replays do not train as its eager steps do")
    for batch in ((512,) if args.quick else (512, 4096)):
        bench(batch, 5 if args.quick else 15)


if __name__ == "__main__":
    main()
