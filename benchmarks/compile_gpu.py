"""kiln compiled (auto backend: Triton kernels on CUDA tensors) vs PyTorch eager vs torch.compile
(Inductor) on one CUDA GPU, side by side in one process, with kiln eager (CuPy) for reference.

Run: PYTHONPATH=. python benchmarks/compile_gpu.py [--quick] [--no-inductor] [--only ROWS]
Rows: GELU (tanh form) on 64M floats, softmax and layer_norm on 16384x4096, a training step of
an MLP (784-512-512-10, Adam, cross entropy) at batch 4096 and 512, and of a CNN (conv 1->32->64
k3 on 28x28, max-pool 4, fc 2304->128->10, Adam) at batch 64 and 512; each is checked against
PyTorch once, then timed (median ms per call, and ratios), with torch.compile in its default mode
and in mode="reduce-overhead" (CUDA graphs, as kiln replays its compiled programs). Then every
fused kernel kiln generated for them runs alone on random inputs: bytes read and written, time,
and bandwidth as a fraction of a device-to-device copy measured in the same run. Targets:
kernels moving 1 MB or more at 80% of copy bandwidth or better; kiln compiled at least as fast
as PyTorch eager on every row. `--quick` divides the sizes by 8 and takes fewer repeats;
`--no-inductor` skips torch.compile; `--only functions` or `--only steps` runs those rows alone
(`--no-kernels` skips the per-kernel bandwidth part). `--only conv` (and a full run, first) times
each convolution product of the CNN step alone: kiln's implicit-GEMM kernel (each candidate tile
size), its unfold + matmul route and PyTorch's cuDNN, recording the faster kiln route and the
fastest tiles for the compiler (on disk). Without a
CUDA GPU, CuPy or a CUDA build of PyTorch it says so and exits with status 2.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import statistics
import sys
import time
import traceback
from dataclasses import dataclass

import numpy as np

import kiln
from kiln.ir.ops import PRIMITIVES, REDUCE
from kiln.runtime import triton_launch
from kiln.runtime.device import cupy_module
from kiln.runtime.schedule_executor import ScheduleExecutor

try:
    import torch
except ImportError:         # main() says what is missing and exits
    torch = None
if torch is not None:       # the CPU benchmark's workloads and table; it imports torch itself
    from compile_cpu import _mlp, training_step, workloads
    from models_cpu import cnn28, make_step

INDUCTOR_MODES = ("default", "reduce-overhead")
HEADER = (f"{'workload':28s} {'kiln eager':>11s} {'kiln comp':>10s} {'torch':>9s} "
          f"{'inductor':>9s} {'ind r-o':>9s} {'torch/comp':>11s} {'induct/comp':>12s} "
          f"{'r-o/comp':>9s}")


def _row(name: str, e: float, c: float, t: float, modes: dict) -> str:
    """One table row: ms per call, then each reference's time over kiln compiled's."""
    cells = [f"{name:28s} {e:10.3f}m {c:9.3f}m {t:8.3f}m"]
    for mode in INDUCTOR_MODES:
        i = modes.get(mode, math.nan)
        cells.append(f"{i:8.3f}m" if not math.isnan(i) else f"{'-':>9s}")
    cells.append(f"{t / c:10.2f}x")
    for mode, width in zip(INDUCTOR_MODES, (11, 8)):
        i = modes.get(mode, math.nan)
        cells.append(f"{i / c:{width}.2f}x" if not math.isnan(i) else f"{'-':>{width + 1}s}")
    return " ".join(cells)


def _inductor(fn, mode: str):
    import torch._dynamo
    torch._dynamo.config.cache_size_limit = 64
    return torch.compile(fn) if mode == "default" else torch.compile(fn, mode=mode)

BIG_KERNEL = 1_000_000       # bytes a kernel must move to count toward the bandwidth target
TARGET_OF_COPY = 0.8


def gpu_problem() -> str | None:
    """Why this process cannot run the benchmark, or None when it can."""
    if torch is None:
        return "PyTorch is not installed"
    try:
        cupy_module()
    except Exception as e:        # not installed, or built for another CUDA
        return str(e).splitlines()[0]
    if not kiln.cuda.is_available():
        return "CuPy sees no CUDA GPU"
    if not torch.cuda.is_available():
        return f"PyTorch {torch.__version__} sees no CUDA GPU (a CPU-only build?)"
    return None


# ----------------------------------------------------------------------------- timing

def device_synchronize() -> None:
    """Wait for all work queued on the GPU, on every stream."""
    cupy_module().cuda.runtime.deviceSynchronize()


def wall_ms(fn, repeat: int, warmup: int = 2, sample_ms: float = 20.0) -> float:
    """Median milliseconds per call of `fn`: wall clock over samples of calls back to back, the
    whole device synchronized before and after each sample.

    kiln queues its work on CuPy's current stream and torch on its own, so no one stream's
    events time both; a device-wide synchronize waits for either, whatever streams they are.
    The wall clock counts each call's Python and launch costs, which are part of what kiln
    compiled must beat, and calls back to back let them overlap the GPU's work, as in a loop.
    """
    for _ in range(warmup):
        fn()
    device_synchronize()
    t0 = time.perf_counter()
    fn()
    device_synchronize()
    calls = max(1, min(1000, round(sample_ms / 1e3 / max(time.perf_counter() - t0, 1e-6))))
    samples = []
    for _ in range(repeat):
        device_synchronize()
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        device_synchronize()
        samples.append((time.perf_counter() - t0) / calls)
    return statistics.median(samples) * 1e3


SPIN_SOURCE = r"""
extern "C" __global__ void spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""


@functools.cache
def _spin_kernel():
    return cupy_module().RawKernel(SPIN_SOURCE, "spin")


@functools.cache
def _clock_khz() -> int:
    runtime = cupy_module().cuda.runtime
    props = runtime.getDeviceProperties(runtime.getDevice())
    # CUDA 13 dropped clockRate; 2 GHz is more than any GPU's clock, so the spin is no shorter
    return int(props.get("clockRate") or 2_000_000)


def gpu_ms(run, launches: int, repeat: int) -> float:
    """Median GPU milliseconds of one `run()` (work queued on CuPy's current stream), from CUDA
    events around `launches` calls back to back.

    A spin kernel queued first holds the GPU while Python queues the calls, so the events time
    the kernels alone and not the launch overhead between them (a kernel of a few microseconds
    would otherwise measure Triton's launch). The spin doubles until the queueing ends first.
    """
    cp = cupy_module()
    stream = cp.cuda.get_current_stream()
    spin_ms, samples = 1.0, []
    while len(samples) < repeat:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        _spin_kernel()((1,), (1,), (np.int64(spin_ms * _clock_khz()),))
        start.record(stream)
        for _ in range(launches):
            run()
        end.record(stream)
        covered = not start.done        # still spinning: the launches went out back to back
        end.synchronize()
        if covered or spin_ms >= 1000:
            samples.append(cp.cuda.get_elapsed_time(start, end) / launches)
        else:
            spin_ms *= 2
    return statistics.median(samples)


def copy_bandwidth(nbytes: int, repeat: int) -> dict:
    """GB/s of device-to-device copies of `nbytes` (each reads and writes them: 2 * nbytes),
    by cudaMemcpyAsync and by CuPy's elementwise copy kernel."""
    cp = cupy_module()
    src = cp.ones(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    stream = cp.cuda.get_current_stream()

    def memcpy():
        cp.cuda.runtime.memcpyAsync(dst.data.ptr, src.data.ptr, src.nbytes,
                                    cp.cuda.runtime.memcpyDeviceToDevice, stream.ptr)

    def kernel():
        dst[...] = src
    return {name: 2 * src.nbytes / (gpu_ms(fn, 10, repeat) * 1e-3) / 1e9
            for name, fn in (("cudaMemcpyAsync", memcpy), ("CuPy copy kernel", kernel))}


# ----------------------------------------------------------------------------- fused kernels

@dataclass
class KernelTiming:
    """One Triton kernel kiln generated for a workload, and how it ran alone."""

    workload: str
    part: str               # "forward" or "backward"
    kernel: object          # the rendered TritonKernel
    subgraph: object        # the fused group it computes: its inputs and outputs are buffers
    nbytes: int = 0         # read and written per launch
    ms: float = math.nan
    config: tuple = ()      # (block, warps) it launched with

    @property
    def kind(self) -> str:
        return "reduction" if any(PRIMITIVES[n.op].kind == REDUCE for n in self.subgraph.nodes) \
            else "pointwise"


def fused_kernels(workload: str, compiled) -> list[KernelTiming]:
    """Every Triton kernel a compiled function's entries run, forward and backward, each once."""
    found, seen = [], set()
    for entry in compiled.entries.values():
        for part, executor in (("forward", entry.executor), ("backward", entry.backward)):
            if not isinstance(executor, ScheduleExecutor):
                continue
            for kind, tk, _, _, sub, _ in executor.steps:
                key = repr((tk.source, tk.grid, tk.constexprs)) if kind == "triton" else None
                if key is not None and key not in seen:
                    seen.add(key)
                    found.append(KernelTiming(workload, part, tk, sub))
    return found


def kernel_arrays(subgraph, xp) -> tuple[list, list]:
    """Inputs of a fused subgraph's shapes and dtypes (normal floats; ones for integers, which
    index and divide safely; random booleans) and empty outputs, in `xp` (NumPy or CuPy)."""
    inputs = []
    for v in subgraph.inputs:
        size = math.prod(v.shape)
        if v.dtype.is_floating_point:
            a = xp.random.standard_normal(size).astype(v.dtype.np)
        elif v.dtype is kiln.bool:
            a = xp.random.standard_normal(size) > 0
        else:
            a = xp.ones(size, v.dtype.np)
        inputs.append(a.reshape(v.shape))
    return inputs, [xp.empty(v.shape, v.dtype.np) for v in subgraph.outputs]


def time_kernel(fk: KernelTiming, xp, backend: str, timer) -> None:
    """Launch the kernel alone on random inputs; set its bytes moved and `timer(run)` in ms.

    One launcher, as the executors keep: its first launch compiles the kernel (or loads it from
    the cache) and, on a GPU, settles its block size and warps (`kiln.runtime.triton_tune`:
    recorded when the workload ran, or timed now), so what is timed is the tuned kernel."""
    inputs, outputs = kernel_arrays(fk.subgraph, xp)
    launcher = triton_launch.kernel_launcher(fk.kernel, backend)

    def run():
        launcher(inputs, outputs)
    if hasattr(launcher, "settle"):
        launcher.settle(inputs, outputs)        # waiting for the candidates' builds
    run()
    fk.config = launcher.tk.config
    fk.nbytes = sum(a.nbytes for a in inputs + outputs)
    fk.ms = timer(run)


def print_kernels(kernels: list[KernelTiming], copy_gbs: float, how: str) -> None:
    print(f"\nfused kernels launched alone ({how}); bandwidth = bytes read and written / time; "
          f"copy = {copy_gbs:.0f} GB/s")
    header = (f"  {'workload':24s} {'part':8s} {'kernel':44s} {'kind':9s} {'block/warps':>11s} "
              f"{'MB':>9s} {'us':>9s} {'GB/s':>7s} {'of copy':>8s}")
    print(header)
    print("  " + "-" * (len(header) - 2))
    for fk in kernels:
        gbs = fk.nbytes / (fk.ms * 1e-3) / 1e9
        small = "   (< 1 MB: not in the summary)" if fk.nbytes < BIG_KERNEL else ""
        config = "/".join(map(str, fk.config))
        print(f"  {fk.workload:24s} {fk.part:8s} {fk.kernel.name[:44]:44s} {fk.kind:9s} "
              f"{config:>11s} {fk.nbytes / 1e6:9.2f} {fk.ms * 1e3:9.1f} {gbs:7.0f} "
              f"{gbs / copy_gbs:8.0%}{small}")
    big = [fk for fk in kernels if fk.nbytes >= BIG_KERNEL]
    if not big:
        return
    fractions = [fk.nbytes / (fk.ms * 1e-3) / 1e9 / copy_gbs for fk in big]
    below = [f"{fk.workload}: {fk.kernel.name} {f:.0%}" for fk, f in zip(big, fractions)
             if f < TARGET_OF_COPY]
    print(f"kernels moving 1 MB or more: {len(big) - len(below)} of {len(big)} at "
          f"{TARGET_OF_COPY:.0%} of copy bandwidth or better (median "
          f"{statistics.median(fractions):.0%})" + ("; below: " + "; ".join(below) if below
                                                    else ""))


# ----------------------------------------------------------------------------- workloads

def eager_reason(compiled) -> str | None:
    """Why a compiled function ran (some calls) eagerly, or None when all replayed kernels."""
    if not compiled.entries:
        return "nothing was compiled"
    for entry in compiled.entries.values():
        if entry.program is None:
            return entry.eager_reason
    return None


@contextlib.contextmanager
def triton_driver_for_torch():
    """Triton's own CUDA driver while torch.compile runs, kiln's CuPy driver again after.

    kiln makes Triton launch on CuPy's current stream by installing its driver process-wide
    (kiln.runtime.triton_cuda); Inductor's autotuning asks the active driver for torch's device
    interface, which kiln's does not have.
    """
    from triton.runtime import driver
    kilns = driver.active
    driver.reset_active()
    try:
        yield
    finally:
        driver.set_active(kilns)


def inductor_times(make, args, want, repeat: int, modes, check) -> dict:
    """ms per call of torch.compile(make()) in each mode (NaN where it failed, with the error
    printed: a mode PyTorch cannot run here must not hide the other columns); `check(result)`
    compares a result with `want`."""
    out = {}
    for mode in modes:
        try:
            with triton_driver_for_torch():
                tc = _inductor(make(), mode)
                for _ in range(3):          # compiles; reduce-overhead records its graph
                    result = tc(*args)
                if want is not None:
                    check(result)
                out[mode] = wall_ms(lambda: tc(*args), repeat, warmup=3)
        except Exception as exc:
            print(f"  torch.compile(mode={mode!r}) failed: {type(exc).__name__}: "
                  f"{str(exc).splitlines()[0] if str(exc) else ''}")
            out[mode] = math.nan
    return out


def bench_function(data, kfn, tfn, repeat: int, modes) -> tuple:
    """(kiln eager, kiln compiled, torch eager, {inductor mode: ms}, the compiled function)."""
    kx, tx = kiln.from_numpy(data).cuda(), torch.from_numpy(data).cuda()
    compiled = kiln.compile(kfn)
    compiled(kx)                            # traces (runs eagerly) and compiles
    got = compiled(kx)                      # replays the kernels
    reason = eager_reason(compiled)
    if reason:
        raise RuntimeError(f"kiln compiled ran eagerly: {reason}")
    want = tfn(tx)
    np.testing.assert_allclose(got.cpu().numpy(), want.cpu().numpy(), rtol=1e-4, atol=1e-5)
    e = wall_ms(lambda: kfn(kx), repeat)
    c = wall_ms(lambda: compiled(kx), repeat)
    t = wall_ms(lambda: tfn(tx), repeat)
    i = inductor_times(lambda: tfn, (tx,), want, repeat, modes, lambda r: np.testing.
                       assert_allclose(r.cpu().numpy(), want.cpu().numpy(), rtol=1e-4,
                                       atol=1e-5))
    return e, c, t, i, compiled


def bench_step(k_model, make_torch_step, k_step, x, y, repeat: int, modes,
               rtol: float) -> tuple:
    """A training step in kiln (`k_step` training `k_model`) and in torch (`make_torch_step()`
    builds a fresh model from kiln's initial weights and its step), on the same batch: the
    losses of the first steps agree, then each is timed. Returns what bench_function does."""
    k_args = (kiln.from_numpy(x).cuda(), kiln.from_numpy(y).cuda())
    t_step, t_args = make_torch_step(), (torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    compiled = kiln.compile(k_step)
    # five steps: the trace, any retrace once Adam's state exists, a warm-up replay, the CUDA
    # graph's capture, replays
    got = [compiled(*k_args).item() for _ in range(5)]
    want = [t_step(*t_args).item() for _ in range(5)]
    reason = eager_reason(compiled)
    if reason:
        raise RuntimeError(f"kiln compiled ran eagerly: {reason}")
    np.testing.assert_allclose(got, want, rtol=rtol, err_msg="losses of the first 5 steps")
    e = wall_ms(lambda: k_step(*k_args), repeat)
    c = wall_ms(lambda: compiled(*k_args), repeat)
    t = wall_ms(lambda: t_step(*t_args), repeat)
    i = inductor_times(make_torch_step, t_args, None, repeat, modes, None)
    return e, c, t, i, compiled


def _torch_copy(make_model, k_model):
    """A torch model from `make_model()` holding `k_model`'s weights, on the GPU."""
    model = make_model().cuda()
    with torch.no_grad():
        for p, w in zip(model.parameters(), k_model.parameters(), strict=True):
            p.copy_(torch.from_numpy(w.detach().cpu().numpy()))
    return model


def bench_mlp_step(batch: int, repeat: int, modes) -> tuple:
    """The MLP + Adam step (784-512-512-10, cross entropy)."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, 784), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kiln.manual_seed(0)
    k_model = _mlp(kiln).cuda()
    initial = _torch_copy(lambda: _mlp(torch), k_model).state_dict()

    def torch_step():
        model = _mlp(torch).cuda()
        model.load_state_dict(initial)
        return training_step(torch, model, torch.optim.Adam, lr=1e-3)
    k_step = training_step(kiln, k_model, kiln.optim.Adam, lr=1e-3)
    return bench_step(k_model, torch_step, k_step, x, y, repeat, modes, rtol=1e-4)


def bench_cnn_step(batch: int, repeat: int, modes) -> tuple:
    """The CNN + Adam step of benchmarks/models_cpu.py (`cnn28`: conv 1->32->64 k3 on 28x28,
    max-pool 4, fc 2304->128->10, cross entropy). torch's convolutions and matmuls run without
    TF32 here, so both compute in float32 and the losses can agree."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    rng = np.random.default_rng(2)
    x = rng.standard_normal((batch, 1, 28, 28), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    kiln.manual_seed(0)
    k_model, k_step = make_step(kiln, cnn28, batch)
    k_model.cuda()
    initial = _torch_copy(lambda: cnn28(torch, batch)[0], k_model).state_dict()

    def torch_step():
        model, step = make_step(torch, cnn28, batch)
        model.cuda()
        model.load_state_dict(initial)
        return step
    return bench_step(k_model, torch_step, k_step, x, y, repeat, modes, rtol=1e-3)


def cnn_conv_products(batch: int) -> list:
    """The convolution products of the CNN step (`cnn28`) at `batch`: conv1 (1 -> 32, 3x3 on
    28x28; its input needs no gradient) forward and weight gradient, conv2 (32 -> 64, 3x3 on
    26x26) forward, weight gradient and input gradient, in float32."""
    from kiln.codegen.conv_triton import ConvGeometry
    from kiln.ir import dtypes as dt
    conv1 = ConvGeometry(batch, 1, 28, 28, 32, 3, 3)
    conv2 = ConvGeometry(batch, 32, 26, 26, 64, 3, 3)
    return [("forward", conv1, dt.float32), ("weight_grad", conv1, dt.float32),
            ("forward", conv2, dt.float32), ("weight_grad", conv2, dt.float32),
            ("input_grad", conv2, dt.float32)]


def _torch_conv_ms(kind: str, g, repeat: int) -> float:
    """PyTorch's time (cuDNN, float32 without TF32, as in the CNN step rows) for one product."""
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    x = torch.randn(g.n, g.c, g.h, g.w, device=dev)
    w = torch.randn(g.o, g.c, g.kh, g.kw, device=dev)
    grad = torch.randn((g.n, g.o) + g.out_size, device=dev)
    args = dict(stride=g.stride, padding=g.padding, dilation=g.dilation)
    run = {"forward": lambda: torch.nn.functional.conv2d(x, w, **args),
           "weight_grad": lambda: torch.nn.grad.conv2d_weight(x, w.shape, grad, **args),
           "input_grad": lambda: torch.nn.grad.conv2d_input(x.shape, w, grad, **args)}[kind]
    with torch.no_grad():
        return wall_ms(run, repeat)


def bench_convolutions(batches: list, repeat: int) -> None:
    """Each convolution product of the CNN step, alone: kiln's implicit-GEMM kernel against
    its unfold + matmul route (`kiln.runtime.conv_gpu.measure_conv_routes`, which checks they
    agree and records the faster for the compiler, on disk) and against PyTorch (cuDNN)."""
    from kiln.codegen.conv import routes_path
    from kiln.runtime.conv_gpu import measure_conv_routes
    print(f"\nconvolutions of the CNN step alone (ms per call; route kept for the compiler, "
          f"saved in {routes_path()})")
    print(f"{'product':44s} {'igemm':>8s} {'unfold':>8s} {'torch':>8s} {'torch/igemm':>12s} "
          "route (igemm tiles; each candidate's ms)")
    for batch in batches:
        for t in measure_conv_routes(cnn_conv_products(batch), repeat=repeat):
            g = t.geometry
            name = f"b{g.n} {g.c}->{g.o} {g.h}x{g.w} {t.kind}"
            torch_ms = _torch_conv_ms(t.kind, g, repeat)
            tiles = ", ".join(f"{'x'.join(map(str, b))} {ms:.3f}" for b, ms in t.tiles_ms)
            print(f"{name:44s} {t.implicit_gemm_ms:8.3f} {t.unfold_ms:8.3f} {torch_ms:8.3f} "
                  f"{torch_ms / t.implicit_gemm_ms:11.2f}x {t.route} ({tiles})")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="sizes / 8, fewer repeats")
    parser.add_argument("--no-inductor", action="store_true", help="skip torch.compile")
    parser.add_argument("--only", choices=("all", "functions", "steps", "conv"), default="all",
                        help="the function rows (GELU, softmax, layer_norm), the training "
                             "steps, or the CNN's convolutions alone (not in --quick runs "
                             "unless asked for: they build 10 kernels)")
    parser.add_argument("--no-kernels", action="store_true",
                        help="skip timing each fused kernel alone")
    args = parser.parse_args()
    problem = gpu_problem()
    if problem:
        print(f"compile_gpu.py needs a CUDA GPU, CuPy and a CUDA build of PyTorch: {problem}",
              file=sys.stderr)
        sys.exit(2)
    scale = 8 if args.quick else 1
    repeat = 5 if args.quick else 15
    cp = cupy_module()
    import triton
    print(f"{torch.cuda.get_device_name()}: torch {torch.__version__}, CuPy {cp.__version__}, "
          f"Triton {triton.__version__}; repeat {repeat}, medians in ms; ratios > 1 mean kiln "
          "compiled is faster")
    if args.only == "conv" or (args.only == "all" and not args.quick):
        # first: the routes measured here are the ones the CNN step rows then compile with
        bench_convolutions([max(64 // scale, 8), max(512 // scale, 8)], repeat)
        if args.only == "conv":
            return
    print(f"\nGPU sizes{' (quick: / 8)' if args.quick else ''}")
    print(HEADER)
    print("-" * len(HEADER))
    rows = []
    if args.only in ("all", "functions"):
        rows += [(name, functools.partial(bench_function, data, kfn, tfn))
                 for name, data, kfn, tfn in workloads(args.quick, "gpu")]
    if args.only in ("all", "steps"):
        # the headline rows first: a run cut short by its time limit still has them
        for kind, batch in (("mlp", 4096), ("cnn", 64), ("mlp", 512), ("cnn", 512)):
            batch = max(batch // scale, 8)
            rows.append((f"mlp step {batch}x784 adam", functools.partial(bench_mlp_step, batch))
                        if kind == "mlp" else (f"cnn step 28x28 b{batch} adam",
                                               functools.partial(bench_cnn_step, batch)))
    modes = () if args.no_inductor else INDUCTOR_MODES
    kernels, slower, failed = [], [], []
    for name, bench in rows:
        try:
            e, c, t, i, compiled = bench(repeat, modes)
        except Exception as exc:        # one broken row must not hide the others
            failed.append(name)
            print(f"{name:28s} FAILED: {type(exc).__name__}: {str(exc).splitlines()[0]}")
            traceback.print_exc()
            continue
        print(_row(name, e, c, t, i))
        for line in kiln.compiler.cuda_graph_notes(compiled):
            print(f"    {line}")
        kernels += fused_kernels(name, compiled)
        if c > t:
            slower.append(f"{name} ({t / c:.2f}x)")
    print("kiln compiled at least as fast as PyTorch eager: " +
          ("on every row" if not slower and not failed else
           "not on " + ", ".join(slower + [f"{n} (failed)" for n in failed])))

    if args.no_kernels:
        sys.exit(1 if failed else 0)
    copies = copy_bandwidth((1 << 30) // scale, repeat)
    copy_gbs = max(copies.values())
    cp.get_default_memory_pool().free_all_blocks()      # the copy's 2 GiB
    print(f"\ndevice-to-device copy of {(1 << 30) // scale >> 20} MiB: " +
          ", ".join(f"{name} {gbs:.0f} GB/s" for name, gbs in copies.items()) +
          "; the faster is the reference")
    launches = 20
    for fk in kernels:
        time_kernel(fk, cp, "cuda", lambda run: gpu_ms(run, launches, repeat))
    print_kernels(kernels, copy_gbs, f"CUDA events, median of {repeat} samples of {launches} "
                                     "launches queued behind a spin kernel")
    if failed:
        sys.exit(1)


if __name__ == "__main__":
    main()
