"""Device calls per eager training step on cuda tensors, counted on the fake CUDA (no GPU needed).

Eager mode on a GPU is host-bound: each CuPy call or kernel launch costs the host a few to tens
of microseconds, more than a small kernel runs. This counts the device calls (CuPy functions,
operators, methods and views, and Triton launches) that kiln makes in one eager step of
`benchmarks/models_cpu.py`'s rows, split into forward + loss, backward and optimizer step, and
names the kiln lines that make the most. It also counts host transfers: a read of device memory
on the host (`.item()`, `bool(x)`, `.get()`) makes the host wait for the GPU, so an eager step
with one cannot run ahead of the device; a copy from the host costs a transfer. It runs on the CPU with `tests/fake_cuda.py` standing
in for CuPy, so it counts calls, not time (views are host-only on a real GPU but still counted).

    python benchmarks/gpu_eager_calls.py [--rows cnn28_b16,mlp,lenet] [--top 15]

For comparison it counts PyTorch's ATen calls in the same step on the CPU (with Adam's and SGD's
multi-tensor `foreach` implementation, PyTorch's default on CUDA), split into views (no kernel)
and the others (about one CUDA kernel each; a foreach op launches one or a few for all tensors).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import traceback

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), HERE]

from tests import fake_cuda  # noqa: E402

fake_cuda.install()

import kiln  # noqa: E402
from kiln.codegen.conv_triton import ConvKernel  # noqa: E402
from kiln.runtime import triton_launch  # noqa: E402
from models_cpu import ROWS  # noqa: E402


def _conv_kernel_in_numpy(tk, inputs: list, outputs: list) -> None:
    """What an implicit-GEMM convolution kernel (kiln/codegen/conv_triton.py) computes, in NumPy:
    Triton's interpreter takes minutes over these rows' convolutions, and the count is the same
    (the fake counts a launch as one call, whatever runs it). Its tests run the kernels."""
    k = tk.constexprs
    view = lambda a, shape, p: np.lib.stride_tricks.as_strided(   # noqa: E731
        a.reshape(-1), shape, tuple(k[f"{p}S{x}"] * a.itemsize for x in
                                    {"X": "NCHW", "W": "OCIJ", "G": "NOYX", "O": "NOYX",
                                     "D": "OCIJ" if tk.name.endswith("weight_grad")
                                     else "NCHW"}[p]))
    image, weight = (k["N"], k["C"], k["H"], k["W"]), (k["O"], k["C"], k["KH"], k["KW"])
    rows = (k["N"], k["O"], k["OH"], k["OW"])
    pads = ((0, 0), (0, 0), (k["PH"], k["PH"]), (k["PW"], k["PW"]))

    def windows(x):                 # (N, C, OH, OW, KH, KW) of the padded image
        x = np.pad(x, pads)
        sn, sc, sh, sw = x.strides
        return np.lib.stride_tricks.as_strided(
            x, (k["N"], k["C"], k["OH"], k["OW"], k["KH"], k["KW"]),
            (sn, sc, sh * k["SH"], sw * k["SW"], sh * k["DH"], sw * k["DW"]))
    if tk.name.endswith("weight_grad"):
        x, g = view(inputs[0], image, "X"), view(inputs[1], rows, "G")
        view(outputs[0], weight, "D")[...] = np.einsum("ncyxij,noyx->ocij", windows(x), g)
    elif tk.name.endswith("input_grad"):
        g, w = view(inputs[0], rows, "G"), view(inputs[1], weight, "W")
        cols = np.einsum("noyx,ocij->ncyxij", g, w)
        full = np.zeros((k["N"], k["C"], k["H"] + 2 * k["PH"], k["W"] + 2 * k["PW"]),
                        cols.dtype)
        for i in range(k["KH"]):
            for j in range(k["KW"]):
                r, q = i * k["DH"], j * k["DW"]
                full[:, :, r:r + k["SH"] * (k["OH"] - 1) + 1:k["SH"],
                     q:q + k["SW"] * (k["OW"] - 1) + 1:k["SW"]] += cols[..., i, j]
        view(outputs[0], image, "D")[...] = full[:, :, k["PH"]:k["PH"] + k["H"],
                                                 k["PW"]:k["PW"] + k["W"]]
    else:
        x, w = view(inputs[0], image, "X"), view(inputs[1], weight, "W")
        out = np.einsum("ncyxij,ocij->noyx", windows(x), w)
        if "b_ptr" in tk.arg_names:
            out += inputs[2].reshape(1, -1, 1, 1)
        if tk.name.endswith("_relu"):
            out = np.maximum(out, 0)
        view(outputs[-1], rows, "O")[...] = out


_interpret = triton_launch.launch
triton_launch.launch = lambda tk, inputs, outputs, backend="interpreter": (
    _conv_kernel_in_numpy(tk, inputs, outputs) if isinstance(tk, ConvKernel)
    else _interpret(tk, inputs, outputs, backend))


class CallCounter:
    """Counts the fake's outermost device calls, by phase and by the kiln line that made them."""

    def __init__(self):
        self.phase = None
        self.by_phase: collections.Counter = collections.Counter()
        self.by_line: collections.Counter = collections.Counter()
        self.transfers: collections.Counter = collections.Counter()
        self._real, self._real_host = fake_cuda._on_device, fake_cuda._host_access

    def __enter__(self):
        fake_cuda._on_device, fake_cuda._host_access = self._count, self._count_host
        return self

    def __exit__(self, *exc):
        fake_cuda._on_device, fake_cuda._host_access = self._real, self._real_host
        return False

    def _count_host(self, what: str) -> None:
        if self.phase is not None:
            frames = [f for f in traceback.extract_stack()[:-1] if "/kiln/" in f.filename]
            where = f" at {frames[-1].filename.split('/kiln/')[-1]}:{frames[-1].lineno}" \
                if frames else ""
            self.transfers[f"{what}{where}"] += 1
        self._real_host(what)

    def _count(self, run, args=(), writes=(), stream=None):
        if self.phase is not None and not getattr(fake_cuda._CURRENT, "inside", False):
            self.by_phase[self.phase] += 1
            frames = [f for f in traceback.extract_stack()[:-1] if "/kiln/" in f.filename]
            if frames:
                f = frames[-1]
                self.by_line[f"{f.filename.split('/kiln/')[-1]}:{f.lineno} {f.name}"] += 1
        return self._real(run, args, writes, stream)


def training_step(model, opt, loss_fn, data, counter=None) -> None:
    """One step as users write it, naming each phase on `counter` (its `phase`) as it starts."""
    def phase(name):
        if counter is not None:
            counter.phase = name
    phase("forward + loss")
    loss = loss_fn(model, *data)
    phase("zero_grad")
    opt.zero_grad()
    phase("backward")
    loss.backward()
    phase("optimizer step")
    opt.step()
    phase(None)


def count_row(name: str) -> CallCounter:
    maker, batch, make_batch, _ = ROWS[name]
    data = [kiln.from_numpy(a).cuda() for a in make_batch(np.random.default_rng(0))]
    kiln.manual_seed(0)
    model, opt, loss_fn = maker(kiln, batch)
    model.cuda()

    def step(counter=None):
        training_step(model, opt, loss_fn, data, counter)
    for _ in range(2):      # the optimizer's state exists from the first step on
        step()
    with CallCounter() as counter:
        step(counter)
    return counter


def torch_counts(name: str) -> collections.Counter:
    """PyTorch's ATen calls per phase of one step of row `name`: (phase, "views"/"others")."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode

    class Count(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.phase, self.counts = None, collections.Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if self.phase is not None and not func.__name__.startswith("_record_function"):
                self.counts[self.phase, "views" if func.is_view else "others"] += 1
            return func(*args, **(kwargs or {}))

    maker, batch, make_batch, _ = ROWS[name]
    torch.manual_seed(0)
    model, opt, loss_fn = maker(torch, batch)
    opt.defaults["foreach"] = True
    for group in opt.param_groups:
        group["foreach"] = True
    data = [torch.from_numpy(a) for a in make_batch(np.random.default_rng(0))]

    def step(mode=None):
        training_step(model, opt, loss_fn, data, mode)
    for _ in range(2):
        step()
    with Count() as mode:
        step(mode)
    return mode.counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="cnn28_b16,mlp,lenet",
                        help="rows of benchmarks/models_cpu.py")
    parser.add_argument("--top", type=int, default=15, help="lines to name per row")
    parser.add_argument("--torch", action="store_true",
                        help="also count PyTorch's ATen calls in the same step")
    args = parser.parse_args()
    for name in args.rows.split(","):
        counter = count_row(name)
        total = sum(counter.by_phase.values())
        parts = ", ".join(f"{phase} {n}" for phase, n in counter.by_phase.items())
        print(f"{name}: {total} device calls per eager step ({parts})")
        if args.torch:
            counts = torch_counts(name)
            phases = dict.fromkeys(phase for phase, _ in counts)
            print("  PyTorch ATen calls (views + others): " + ", ".join(
                f"{phase} {counts[phase, 'views']} + {counts[phase, 'others']}"
                for phase in phases))
        for line, n in counter.by_line.most_common(args.top):
            print(f"  {n:5d}  {line}")
        print(f"  host transfers: {sum(counter.transfers.values())}")
        for what, n in counter.transfers.most_common(args.top):
            print(f"  {n:5d}  {what}")


if __name__ == "__main__":
    main()
