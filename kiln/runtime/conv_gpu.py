"""Measuring, on this machine's GPU, which route each convolution product should take.

`kiln.codegen.conv.conv_route` runs a conv2d product (forward, weight gradient, input
gradient) as an implicit-GEMM Triton kernel unless told otherwise; `measure_conv_routes` tells
it otherwise where that is slower: for each product it runs the kernel, with each candidate tile
size (`conv_triton.BLOCK_CANDIDATES`, built in parallel first), and the unfold route (unfold,
then CuPy's matmul; for the input gradient, the matmul then fold) on the same random inputs,
checks that they agree, times them on the current stream and records the faster route and the
fastest tiles (`kiln.codegen.conv.record_route`, kept on disk for later processes). Compile
after measuring: the route is chosen when a program is lowered. `benchmarks/compile_gpu.py
--only conv` measures the CNN's shapes and prints the times.
"""

from __future__ import annotations

import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from kiln.codegen.conv import record_route, route_key
from kiln.codegen.conv_triton import BLOCK_CANDIDATES, ConvGeometry, render_conv_kernel
from kiln.codegen.kernel import contiguous_strides
from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES
from kiln.runtime.device import cupy_module
from kiln.runtime.triton_launch import compiled_kernel, kernel_launcher


@dataclass(frozen=True)
class RouteTiming:
    """One product measured: median milliseconds per call of each route (the kernel's with
    its fastest tiles, `blocks`; `tiles_ms` per candidate), and the route kept."""

    kind: str
    geometry: ConvGeometry
    dtype: str
    implicit_gemm_ms: float
    unfold_ms: float
    route: str
    blocks: tuple
    tiles_ms: tuple = ()        # (blocks, ms) per candidate tried

    def describe(self) -> str:
        return (f"{self.kind:11s} {self.geometry.describe()} {self.dtype}: implicit GEMM "
                f"{self.implicit_gemm_ms:.3f} ms (tiles {list(self.blocks)}), unfold + matmul "
                f"{self.unfold_ms:.3f} ms -> {self.route}")


def _unfold_route(kind: str, g: ConvGeometry, xp, a, b):
    """The product on the unfold route, in the layouts the compiled programs give the kernel:
    forward (x, w) -> (rows, O); weight grad (x, g rows) -> (O, kh*kw*c); input grad
    (g rows, w) -> dx (n, c, h, w)."""
    unfold, fold = PRIMITIVES["unfold"].impl, PRIMITIVES["fold"].impl
    oh, ow = g.out_size
    (ph, pw), k = g.padding, g.kh * g.kw * g.c
    pads = ((0, 0), (0, 0), (ph, ph), (pw, pw))
    if kind == "input_grad":
        w_rows = b.transpose(0, 2, 3, 1).reshape(g.o, k)
        cols = xp.matmul(a.reshape(-1, g.o), w_rows).reshape(g.n, oh, ow, g.kh, g.kw, g.c)
        full = fold(xp, cols, (g.h + 2 * ph, g.w + 2 * pw), (g.kh, g.kw), g.stride, g.dilation)
        return full[:, :, ph:ph + g.h, pw:pw + g.w]
    x = PRIMITIVES["pad"].impl(xp, a, pads, 0.0) if ph or pw else a
    cols = unfold(xp, x, (g.kh, g.kw), g.stride, g.dilation).reshape(-1, k)
    if kind == "forward":
        return xp.matmul(cols, b.transpose(2, 3, 1, 0).reshape(k, g.o))
    return xp.matmul(b.reshape(-1, g.o).T, cols)


def _arrays(kind: str, g: ConvGeometry, dtype: np.dtype, xp, seed: int) -> tuple:
    """Random inputs, the kernel's strides and its output array for one product."""
    rng = np.random.default_rng(seed)
    oh, ow = g.out_size
    x, w = (g.n, g.c, g.h, g.w), (g.o, g.c, g.kh, g.kw)
    rows = (g.n, oh, ow, g.o)           # an output (gradient) as the unfold route's matrix
    as_noyx = tuple(contiguous_strides(rows)[i] for i in (0, 3, 1, 2))
    k = g.kh * g.kw * g.c
    shapes, strides, out = {
        "forward": ((x, w), (contiguous_strides(x), contiguous_strides(w), as_noyx), rows),
        "weight_grad": ((x, rows), (contiguous_strides(x), as_noyx,
                                    (k, 1, g.kw * g.c, g.c)), (g.o, k)),
        "input_grad": ((rows, w), (as_noyx, contiguous_strides(w), contiguous_strides(x)),
                       x)}[kind]
    ins = [xp.asarray(rng.standard_normal(s).astype(dtype)) for s in shapes]
    return ins, strides, xp.empty(out, dtype)


def _median_ms(run, xp, repeat: int) -> float:
    stream = xp.cuda.get_current_stream()
    run()                               # warm-up: builds, allocates
    stream.synchronize()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        run()
        stream.synchronize()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def measure_conv_routes(products: list, repeat: int = 20, save: bool = True,
                        candidates: dict | None = None) -> list[RouteTiming]:
    """Time both routes of each product on this GPU and record the faster, with the kernel's
    fastest tile sizes.

    Args:
        products: (kind, ConvGeometry, dtype) triples; kind "forward", "weight_grad" or
            "input_grad"; dtype a kiln float dtype (float32, float16).
        repeat: timed calls per route and candidate (the median is kept).
        save: also keep the choices on disk (`kiln.codegen.conv.routes_path`).
        candidates: kind -> the tile sizes to try (`conv_triton.BLOCK_CANDIDATES` if None).

    Raises:
        RuntimeError: when a kernel disagrees with the unfold route (a kernel computing wrong
            numbers is never recorded as the faster route).
    """
    if not products:
        return []
    xp = cupy_module()
    candidates = candidates or BLOCK_CANDIDATES
    cases = []
    for i, (kind, g, dtype) in enumerate(products):
        ins, strides, out = _arrays(kind, g, np.dtype(dtype.np), xp, seed=i)
        kernels = [render_conv_kernel(kind, g, dtype, strides, blocks=b)
                   for b in candidates[kind]]
        cases.append((kind, g, dtype, ins, out, kernels))
    # every kernel built first, in parallel (Triton's front end holds the GIL; its LLVM passes
    # and ptxas do not), for the 16-byte aligned pointers CuPy's allocations have
    builds = [(tk, [(tuple(a.shape), a.dtype) for a in ins + [out]], len(ins))
              for _, _, _, ins, out, kernels in cases for tk in kernels]
    with ThreadPoolExecutor(min(8, len(builds)), thread_name_prefix="kiln-conv-build") as pool:
        list(pool.map(lambda b: compiled_kernel(b[0], (True,) * len(b[1]), b[1], b[2]),
                      builds))
    timings = []
    for kind, g, dtype, ins, out, kernels in cases:
        want = _unfold_route(kind, g, xp, *ins)
        scale = float(xp.abs(want).max()) or 1.0
        tolerance = (1e-3 if dtype is dt.float32 else 2e-2) * scale
        tiles = []
        for tk in kernels:
            launch = kernel_launcher(tk, "cuda")
            ms = _median_ms(lambda: launch(ins, [out]), xp, repeat)
            got = out.reshape(want.shape)
            err = float(xp.abs(got.astype(np.float32) - want.astype(np.float32)).max())
            blocks = (tk.constexprs["BLOCK_M"], tk.constexprs["BLOCK_N"],
                      tk.constexprs["BLOCK_K"])
            if not err <= tolerance:
                raise RuntimeError(f"conv2d {kind} implicit GEMM (tiles {list(blocks)}) "
                                   f"disagrees with the unfold route on {g.describe()} "
                                   f"({dtype}): max error {err:.3g}, allowed {tolerance:.3g}; "
                                   "not recorded")
            tiles.append((blocks, ms))
        blocks, kernel_ms = min(tiles, key=lambda t: t[1])
        unfold_ms = _median_ms(lambda: _unfold_route(kind, g, xp, *ins), xp, repeat)
        route = "implicit_gemm" if kernel_ms <= unfold_ms else "unfold"
        record_route(kind, g, dtype, route, save=save, blocks=blocks)
        timings.append(RouteTiming(kind, g, str(dtype), kernel_ms, unfold_ms, route, blocks,
                                   tuple(tiles)))
    return timings


__all__ = ["RouteTiming", "measure_conv_routes", "route_key"]
