"""Choosing, on the GPU at hand, the block size and warp count a generated Triton kernel launches
with, once per kernel and GPU, kept on disk for later processes.

A pointwise or reduction kernel's source does not depend on its block size (a constexpr) or
its warps, so `kiln.codegen.triton.tuning_candidates` offers a few (BLOCK, num_warps) pairs,
its own first. On a kernel's first launch on a real GPU (`CudaKernelLauncher`, never while a
CUDA graph is captured):

- a configuration recorded for this kernel's source and this GPU's name is used as it is;
- otherwise, when the kernel moves at least `MIN_BYTES` and `KILN_TRITON_TUNE` is not 0, its
  candidates are built in the background (executors start those builds when they are made) and
  the kernel launches its own configuration, without waiting, until a launch finds them built
  (`CudaGraphRunner` captures a program only once its kernels are settled); then each
  candidate is launched on that call's inputs into scratch outputs,
  checked against the default's results and timed with CUDA events; the fastest is recorded
  (`triton_configs.json` beside the conv routes, through `kiln.codegen.tuned`) and used from
  then on. A candidate replaces the default only when `MARGIN` faster, so noise never does;
- in Triton's interpreter and under the tests' fake CUDA (no GPU name to key choices by) the
  kernel keeps its own configuration.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from kiln.codegen.triton import TritonKernel, tuning_candidates
from kiln.codegen.tuned import load_choices, save_choices, tuning_root
from kiln.runtime.device import cupy_module

ENV = "KILN_TRITON_TUNE"
MIN_BYTES = 1 << 20     # smaller kernels are launch-bound: any configuration does
REPEAT = 20             # launches per timed batch (the fastest of 3 batches counts)
MARGIN = 0.97           # a candidate must take at most this share of the default's time

# config_key -> {"block": int, "num_warps": int}
TUNED_CONFIGS: dict = {}
_loaded = [False]
# kernel name -> the last `Tuning` of a kernel of that name in this process (for reports)
TUNINGS: dict = {}


@dataclass(frozen=True)
class Tuning:
    """How one kernel's launch configuration was settled on a GPU."""

    kernel: str
    gpu: str
    chosen: tuple                   # (block, num_warps)
    cached: bool                    # read from the file, nothing timed
    timings: tuple = ()             # ((block, num_warps), ms per launch) per candidate kept
    rejected: tuple = ()            # ((block, num_warps), why) per candidate dropped

    def describe(self) -> str:
        if self.cached:
            return f"{self.kernel}: block {self.chosen[0]}, {self.chosen[1]} warps (recorded)"
        times = ", ".join(f"{b}/{w}: {ms * 1e3:.1f} us" for (b, w), ms in self.timings)
        return (f"{self.kernel}: block {self.chosen[0]}, {self.chosen[1]} warps of {times}"
                + "".join(f"; {b}/{w} dropped: {why}" for (b, w), why in self.rejected))


def configs_path() -> Path:
    """The file chosen launch configurations are kept in (beside the conv routes)."""
    return tuning_root() / "triton_configs.json"


def config_key(tk: TritonKernel, gpu: str) -> str:
    return f"{tk.name} {hashlib.sha256(tk.source.encode()).hexdigest()[:24]} {gpu}"


def _valid_entry(entry) -> bool:
    if not isinstance(entry, dict):
        return False
    block, warps = entry.get("block"), entry.get("num_warps")
    return isinstance(block, int) and isinstance(warps, int) and block >= 16 and \
        not block & (block - 1) and warps in (1, 2, 4, 8, 16, 32)


def _load() -> None:
    if not _loaded[0]:
        _loaded[0] = True
        TUNED_CONFIGS.update(load_choices(configs_path(), _valid_entry))


def recorded_config(tk: TritonKernel, gpu: str) -> tuple | None:
    """The configuration recorded for `tk` on `gpu`, if it is one of the kernel's candidates
    (a row block that no longer fits, say, is never used)."""
    _load()
    entry = TUNED_CONFIGS.get(config_key(tk, gpu))
    if entry is None:
        return None
    config = (entry["block"], entry["num_warps"])
    return config if config in tuning_candidates(tk) else None


def record_config(tk: TritonKernel, gpu: str, config: tuple, save: bool = True) -> None:
    """Remember `config` (block, num_warps) for `tk` on `gpu`; with `save`, on disk too."""
    _load()
    key = config_key(tk, gpu)
    TUNED_CONFIGS[key] = {"block": int(config[0]), "num_warps": int(config[1])}
    if save:
        save_choices(configs_path(), {key: TUNED_CONFIGS[key]}, _valid_entry)


def tuning_enabled() -> bool:
    """Whether kernels are timed on their first launch (`KILN_TRITON_TUNE`, default on)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


_GPU_NAMES: dict = {}    # device id -> name (reading the properties takes a while)


def gpu_name() -> str | None:
    """The current CUDA device's name ("NVIDIA H200"), or None where there is none to read
    (the tests' fake CUDA has no device properties)."""
    try:
        runtime = cupy_module().cuda.runtime
        device = runtime.getDevice()
        name = _GPU_NAMES.get(device)
        if name is None:
            name = runtime.getDeviceProperties(device)["name"]
            name = _GPU_NAMES[device] = name.decode() if isinstance(name, bytes) else str(name)
    except Exception:
        return None
    return name


SPIN_SOURCE = r"""
extern "C" __global__ void kiln_spin(long long cycles) {
    long long start = clock64();
    while (clock64() - start < cycles) { }
}
"""
_SPIN: list = []


def event_timer(tk: TritonKernel, run: Callable[[], None]) -> float:
    """Milliseconds per launch of `run` on the current stream, by CUDA events around `REPEAT`
    launches back to back: the fastest of three batches, after one launch that loads the kernel.

    A spin kernel queued before each batch holds the GPU while Python queues the launches, so
    the events time the kernels and not the launch overhead between them (a kernel of a few
    microseconds would otherwise time the host); the spin doubles until it covers the queueing.
    """
    cp = cupy_module()
    stream = cp.cuda.get_current_stream()
    run()
    stream.synchronize()
    if not _SPIN:
        runtime = cp.cuda.runtime
        props = runtime.getDeviceProperties(runtime.getDevice())
        # CUDA 13 dropped clockRate: 2 GHz is above any GPU's clock, so the spin is no shorter
        _SPIN.append((cp.RawKernel(SPIN_SOURCE, "kiln_spin"),
                      int(props.get("clockRate") or 2_000_000)))
    spin, khz = _SPIN[0]
    spin_ms, samples = 0.5, []
    while len(samples) < 3:
        start, end = cp.cuda.Event(), cp.cuda.Event()
        spin((1,), (1,), (np.int64(spin_ms * khz),))
        start.record(stream)
        for _ in range(REPEAT):
            run()
        end.record(stream)
        covered = not start.done        # still spinning: the launches went out back to back
        end.synchronize()
        if covered or spin_ms >= 64:
            samples.append(cp.cuda.get_elapsed_time(start, end) / REPEAT)
        else:
            spin_ms *= 2
    return min(samples)


TIMER = event_timer     # (candidate kernel, run) -> ms; tests put a fake timer here


def settle(tk: TritonKernel, inputs: list, outputs: list,
           launcher_for: Callable[[TritonKernel], Callable],
           build: Callable[[TritonKernel], object] | None = None,
           ready: Callable[[list], bool] | None = None
           ) -> tuple[TritonKernel, Tuning | None] | None:
    """The kernel to launch from now on in place of `tk` (itself, or the same source with
    another block size and warps), and how it was chosen (None: not on a GPU, or nothing to
    choose); or None when the candidates are still being built (`ready` said so).

    Args:
        inputs, outputs: the launch's device arrays (outputs are not written here).
        launcher_for: a plain launcher `(inputs, outputs)` for a candidate kernel.
        build: builds a candidate for the GPU (called for all of them in parallel first).
        ready: whether these candidates are built, without waiting (and starting the builds
            of those that are not); None: wait for them.
    """
    candidates = tuning_candidates(tk)
    if len(candidates) < 2:
        return tk, None
    gpu = gpu_name()
    if gpu is None:
        return tk, None
    saved = recorded_config(tk, gpu)
    if saved is not None:
        tuning = Tuning(tk.name, gpu, saved, True)
        TUNINGS[tk.name] = tuning
        return tk.with_config(*saved), tuning
    if not tuning_enabled() or sum(a.nbytes for a in list(inputs) + list(outputs)) < MIN_BYTES:
        return tk, None
    kernels = [tk.with_config(*c) for c in candidates]
    if ready is not None and not ready(kernels):
        return None
    tuning = _tune(tk, gpu, kernels, inputs, outputs, launcher_for, build)
    record_config(tk, gpu, tuning.chosen)
    TUNINGS[tk.name] = tuning
    return tk.with_config(*tuning.chosen), tuning


def kernels_to_build(tk: TritonKernel, nbytes: int) -> list[TritonKernel]:
    """The configurations of `tk` its first launch on this GPU will need built, for a kernel
    moving `nbytes`: the recorded one, every candidate when it will be timed, else its own."""
    candidates = tuning_candidates(tk)
    gpu = gpu_name() if len(candidates) > 1 else None
    if gpu is None:
        return [tk]
    saved = recorded_config(tk, gpu)
    if saved is not None:
        return [tk.with_config(*saved)]
    if tuning_enabled() and nbytes >= MIN_BYTES:
        return [tk.with_config(*c) for c in candidates]
    return [tk]


def _tune(tk: TritonKernel, gpu: str, kernels: list, inputs: list, outputs: list,
          launcher_for: Callable, build: Callable | None) -> Tuning:
    """Time `kernels` (the candidates, `tk`'s own first) on the launch's arrays; the choice."""
    xp = cupy_module()
    if build is not None:
        def build_quietly(k):
            try:
                build(k)
            except Exception:
                pass            # it fails again at its launch below, and is dropped there
        with ThreadPoolExecutor(min(8, len(kernels)), thread_name_prefix="kiln-tune") as pool:
            list(pool.map(build_quietly, kernels))
    reference, timings, rejected = None, [], []
    for k in kernels:
        scratch = [xp.empty(o.shape, o.dtype) for o in outputs]
        launch = launcher_for(k)
        try:
            ms = TIMER(k, lambda: launch(inputs, scratch))
        except Exception as e:
            if reference is None:
                raise                   # the kernel's own configuration: its launch fails
            rejected.append((k.config, f"{type(e).__name__}: {(str(e).splitlines() or [''])[0]}"))
            continue
        if reference is None:
            reference = scratch
        elif not _agree(xp, reference, scratch):
            rejected.append((k.config, "results differ from the default configuration's"))
            continue
        timings.append((k.config, float(ms)))
    (own, own_ms), *others = timings
    chosen, best = own, own_ms
    for config, ms in others:
        if ms <= MARGIN * own_ms and ms < best:
            chosen, best = config, ms
    return Tuning(tk.name, gpu, chosen, False, tuple(timings), tuple(rejected))


def _agree(xp, want: list, got: list) -> bool:
    """Whether a candidate's outputs equal the default's: exactly for integers and booleans,
    to rounding for floats (another warp count sums a row in another order)."""
    for w, g in zip(want, got):
        kind = np.dtype(w.dtype)
        if kind.kind != "f":
            same = xp.array_equal(w, g)
        else:
            tol = {2: 1e-2, 4: 1e-4}.get(kind.itemsize, 1e-9)
            same = xp.allclose(g, w, rtol=tol, atol=tol, equal_nan=True)
        if not bool(same):
            return False
    return True


__all__ = ["TIMER", "TUNED_CONFIGS", "Tuning", "config_key", "configs_path", "event_timer",
           "gpu_name", "kernels_to_build", "record_config", "recorded_config", "settle",
           "tuning_enabled"]
