"""Exported inference on the CPU, side by side in one process: kiln's C library (through
ctypes), onnxruntime on kiln's ONNX file, the exported program compiled by kiln (C kernels),
the exported program in kiln's IR interpreter, and PyTorch eager on the same weights.

Run: python benchmarks/export_cpu.py [--repeat N]
Models: the digits CNN (examples/digits_cnn.py's architecture) and a 2-layer transformer
encoder (d_model 64, 4 heads, sequence 16), at batch 1 and 64. Every runtime gets one thread
(OMP/OpenBLAS/torch/onnxruntime), so the comparison is per core. Prints median milliseconds per
call and each runtime's ratio to PyTorch eager; every output is checked against kiln eager.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

import kiln  # noqa: E402
import kiln.export  # noqa: E402
import kiln.onnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def median_ms(fn, repeat: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def digits_cnn(lib):
    return lib.nn.Sequential(
        lib.nn.Conv2d(1, 16, kernel_size=3, padding=1), lib.nn.BatchNorm2d(16), lib.nn.ReLU(),
        lib.nn.MaxPool2d(2),
        lib.nn.Conv2d(16, 32, kernel_size=3, padding=1), lib.nn.BatchNorm2d(32), lib.nn.ReLU(),
        lib.nn.MaxPool2d(2),
        lib.nn.Flatten(), lib.nn.Dropout(0.25), lib.nn.Linear(128, 64), lib.nn.ReLU(),
        lib.nn.Linear(64, 10))


def encoder(lib):
    layer = lib.nn.TransformerEncoderLayer(d_model=64, nhead=4, dim_feedforward=128,
                                           dropout=0.1, batch_first=True)
    return lib.nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False) \
        if lib is not kiln else lib.nn.TransformerEncoder(layer, num_layers=2)


MODELS = {"digits CNN": (digits_cnn, (1, 8, 8)), "transformer encoder": (encoder, (16, 64))}


def torch_copy(build, model):
    import torch
    twin = build(torch)
    state = {k: torch.from_numpy(v.numpy().copy()) for k, v in model.state_dict().items()}
    twin.load_state_dict(state, strict=False)
    return twin.eval()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=50)
    args = parser.parse_args()
    import onnxruntime as ort
    import torch
    torch.set_num_threads(1)
    kiln.set_num_threads(1)
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    tmp = tempfile.mkdtemp(prefix="kiln_export_bench_")
    print(f"median ms per call, {args.repeat} repeats, 1 thread each; (x) = ratio to PyTorch "
          "eager")
    header = f"{'model':<22} {'batch':>5} {'C library':>14} {'onnxruntime':>14} " \
             f"{'kiln compiled':>14} {'kiln interp':>14} {'torch eager':>12}"
    print(header)
    for title, (build, shape) in MODELS.items():
        kiln.manual_seed(0)
        model = build(kiln).eval()
        twin = torch_copy(build, model)
        ep = kiln.export.export(model, (kiln.randn(3, *shape),),
                                dynamic_shapes=({0: "batch"},))
        onnx_path = os.path.join(tmp, f"{title.split()[0]}.onnx")
        kiln.onnx.export(ep, (), onnx_path, input_names=["x"])
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        compiled = ep.compiled()
        for batch in (1, 64):
            x = kiln.randn(batch, *shape)
            a = x.numpy()
            with kiln.no_grad():
                want = model(x).numpy()
            lib = kiln.export.build_c_library(ep, os.path.join(tmp, f"{title[0]}{batch}"),
                                              sizes={"batch": batch})
            c_model = lib.open()
            tx = torch.from_numpy(a)
            runs = {
                "c": lambda: c_model(a),
                "ort": lambda: session.run(None, {"x": a}),
                "compiled": lambda: compiled(x),
                "interp": lambda: ep(x),
                "torch": lambda: twin(tx),
            }
            with torch.no_grad():
                outs = {"c": runs["c"]()[0], "ort": runs["ort"]()[0],
                        "compiled": runs["compiled"]().numpy(), "interp": runs["interp"]().numpy(),
                        "torch": runs["torch"]().numpy()}
                for k, got in outs.items():
                    err = float(np.abs(got - want).max())
                    if err > 1e-4:
                        raise SystemExit(f"{title} batch {batch}: {k} differs from kiln eager "
                                         f"by {err}")
                ms = {k: median_ms(fn, args.repeat) for k, fn in runs.items()}
            t = ms["torch"]
            cells = [f"{ms[k]:7.3f} ({ms[k] / t:4.2f})" for k in ("c", "ort", "compiled",
                                                                   "interp")]
            print(f"{title:<22} {batch:>5} {cells[0]:>14} {cells[1]:>14} {cells[2]:>14} "
                  f"{cells[3]:>14} {t:12.3f}")
            print(f"{'':<22} {'':>5} matmuls: {'CBLAS' if lib.blas else 'C loops'}")


if __name__ == "__main__":
    main()
