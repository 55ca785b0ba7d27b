"""Loading, compiling, caching and launching generated Triton kernels, with no torch anywhere.

On CPU arrays a kernel runs in Triton's interpreter on NumPy memory; on CuPy arrays it is
compiled once and launched on CuPy's current stream through `kiln.runtime.triton_cuda`, by the
compiled kernel's own launcher with arguments prepared once (`kernel_launcher` decides which).
`compile_for_gpu` builds PTX ahead of time for any sm_XX without a GPU; `build_for_gpu` builds
a program's kernels (PTX and cubin) in parallel, and `prebuild` starts building an executor's
kernels for the GPU at hand in the background. Source files and
compiled PTX live in a cache on disk (`KILN_CACHE_DIR`, default `~/.cache/kiln`) keyed by
source hash, target and Triton version; entries are written atomically and checked on read,
so a corrupt or half-written entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from sys import getrefcount

import numpy as np

from kiln.codegen.kernel import Kernel, lower
from kiln.codegen.triton import TritonKernel, render_triton, tuning_candidates
from kiln.ir.graph import Graph
from kiln.runtime import triton_tune
from kiln.runtime.device import cupy_module
from kiln.runtime.refcounts import held_refs
from kiln.runtime.triton_cuda import activate_cupy_driver, use_cupy_scratch

_LOCK = threading.Lock()
_MODULES: dict = {}           # (source hash, interpret) -> the @triton.jit function
_PTX: dict = {}               # cache key -> PTX text


def cache_dir() -> Path:
    """Where kernel sources and compiled PTX are kept across processes."""
    root = os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kiln")
    return Path(root) / "triton"


def triton_version() -> str:
    import triton
    return triton.__version__


def source_hash(source: str) -> str:
    return hashlib.sha256(source.encode()).hexdigest()[:24]


def write_atomic(path: Path, data: bytes) -> None:
    """Write via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ----------------------------------------------------------------------------- the disk cache

class KernelCache:
    """Checked entries on disk: a JSON header with the payload's sha256, then the payload."""

    def __init__(self, root: Path | None = None):
        self.root = root or cache_dir()

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / key

    def get(self, kind: str, key: str) -> bytes | None:
        """The stored payload, or None when missing, truncated or corrupt."""
        try:
            raw = self.path(kind, key).read_bytes()
            header, _, payload = raw.partition(b"\n")
            meta = json.loads(header)
            if meta.get("key") != key or meta.get("sha256") != hashlib.sha256(payload).hexdigest():
                return None
            return payload
        except (OSError, ValueError):
            return None

    def put(self, kind: str, key: str, payload: bytes) -> None:
        header = json.dumps({"key": key, "sha256": hashlib.sha256(payload).hexdigest()})
        write_atomic(self.path(kind, key), header.encode() + b"\n" + payload)


# ----------------------------------------------------------------------------- loading source

def source_path(tk: TritonKernel) -> Path:
    """The file the kernel's source is imported from (readable, for inspection)."""
    return cache_dir() / "src" / f"{tk.name}_{source_hash(tk.source)}.py"


def load_kernel(tk: TritonKernel, interpret: bool):
    """The kernel's `@triton.jit` function, interpreted (CPU) or compiled (GPU)."""
    key = (source_hash(tk.source), interpret)
    with _LOCK:
        fn = _MODULES.get(key)
        if fn is not None:
            return fn
        import triton
        path = source_path(tk)
        try:
            ok = path.read_text() == tk.source
        except (OSError, UnicodeDecodeError):
            ok = False
        if not ok:                    # missing, stale or corrupt: write it again
            write_atomic(path, tk.source.encode())
        name = f"kiln_triton_{key[0]}_{'interp' if interpret else 'jit'}"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        # triton.jit picks the interpreter or the compiler when the function is decorated
        previous = triton.knobs.runtime.interpret
        triton.knobs.runtime.interpret = interpret
        try:
            sys.modules[name] = module
            spec.loader.exec_module(module)
        finally:
            triton.knobs.runtime.interpret = previous
        fn = getattr(module, tk.name)
        _MODULES[key] = fn
        return fn


# ----------------------------------------------------------------------------- arguments

class ArrayArg:
    """What Triton needs of a tensor argument, over NumPy or CuPy memory.

    Triton reads `data_ptr()` and `dtype`; its interpreter also copies "device" storage to
    the host and back, which for NumPy memory is the identity, so those methods return self.
    """

    def __init__(self, array, ptr: int):
        self.array = array                      # keeps the memory alive during the launch
        self.ptr = ptr
        self.dtype = np.dtype(array.dtype).name  # Triton maps "float32" -> "*fp32"
        self.shape = tuple(array.shape)

    def data_ptr(self) -> int:
        return self.ptr

    def untyped_storage(self) -> "ArrayArg":
        return self

    def cpu(self) -> "ArrayArg":
        return self

    def new_empty(self, *args, **kwargs) -> "ArrayArg":
        return self

    def set_(self, *args) -> "ArrayArg":
        return self

    def copy_(self, other) -> "ArrayArg":
        return self

    def storage_offset(self) -> int:
        return 0

    def size(self) -> tuple:
        return self.shape

    def stride(self) -> tuple:
        return tuple(s // max(np.dtype(self.dtype).itemsize, 1) for s in
                     np.empty(self.shape or (1,), dtype=self.dtype).strides)


def _numpy_arg(array: np.ndarray) -> ArrayArg:
    return ArrayArg(array, array.ctypes.data)


# ----------------------------------------------------------------------------- launching

def launch(tk: TritonKernel, inputs: list, outputs: list, backend: str = "interpreter") -> None:
    """Run a rendered kernel: inputs and outputs are contiguous arrays (outputs are written).

    A one-off launch; executors keep a `kernel_launcher` per kernel instead, which prepares
    its arguments once.
    """
    if backend == "interpreter":
        fn = load_kernel(tk, interpret=True)
        if getattr(tk, "zero_outputs", False):     # a kernel adding into its outputs
            for a in outputs:
                a[...] = 0
        args = [_numpy_arg(a) for a in list(inputs) + list(outputs)]
        with np.errstate(all="ignore"):    # masked-off lanes may compute log(0) and the like
            fn[tk.grid](*args, **tk.constexprs)
        return
    kernel_launcher(tk, backend)(inputs, outputs)


def kernel_launcher(tk: TritonKernel, backend: str):
    """The one place that decides how a kernel runs: a callable `(inputs, outputs)`.

    "interpreter": Triton's interpreter on NumPy memory (through `launch`, looked up at each
    call, so tests may wrap it). "cuda": the compiled kernel's own launcher, called directly on
    CuPy's current stream with arguments prepared once (`CudaKernelLauncher`).
    """
    if backend == "interpreter":
        return InterpretedLauncher(tk)
    if backend == "cuda":
        return CudaKernelLauncher(tk)
    raise ValueError(f"unknown Triton backend {backend!r}; expected 'interpreter' or 'cuda'")


class InterpretedLauncher:
    """A kernel in Triton's interpreter, on NumPy arrays (slow; tests and reading kernels)."""

    def __init__(self, tk: TritonKernel):
        self.tk = tk

    def __call__(self, inputs: list, outputs: list) -> None:
        launch(self.tk, inputs, outputs, "interpreter")


class CudaKernelLauncher:
    """A compiled kernel launched on a GPU without `JITFunction.run`.

    The argument tuple (device pointers, then the constexpr values Triton's launcher expects
    in the parameter list) and the grid are prepared once and reused while the arrays' device
    pointers stay the same (an executor keeps its output arrays from call to call); a new
    pointer prepares them again, and a new 16-byte alignment pattern (what Triton specializes
    pointers on) fetches the kernel built for it. `prepared` counts the preparations.

    With `tune`, a launch outside a CUDA graph capture settles the kernel's block size and
    warps on this GPU (`kiln.runtime.triton_tune.settle`: recorded, or timed once the
    candidates are built; until then the kernel's own configuration launches and their builds
    run in the background, so no call waits for them); `settled` says whether it is done and
    `tuning` how (None: not on a GPU, or nothing to choose).
    """

    def __init__(self, tk: TritonKernel, tune: bool = True):
        self._settle = tune and len(tuning_candidates(tk)) > 1
        self.wait_for_builds = False    # set: the next launch waits for the candidates' builds
        self.tuning = None
        self._set_kernel(tk)
        self._current_stream = cupy_module().cuda.get_current_stream
        self._args = ()
        self._run = self._function = self._metadata = None
        self.prepared = 0

    def _set_kernel(self, tk: TritonKernel) -> None:
        self.tk = tk
        self.grid = tuple(tk.grid) + (1,) * (3 - len(tk.grid))
        self.constexpr_values = tuple(tk.constexprs.values())   # after the pointers
        self.zero_outputs = getattr(tk, "zero_outputs", False)  # kiln.codegen.conv_triton
        self._pointers = self._aligned = self._specs = None  # fetch the kernel built for it

    def __call__(self, inputs: list, outputs: list) -> None:
        if self._settle and not self._capturing():
            self.settle(inputs, outputs, wait=self.wait_for_builds)
        pointers = tuple([a.data.ptr for a in inputs] + [a.data.ptr for a in outputs])
        if pointers != self._pointers:
            self.num_outputs = len(outputs)
            self._prepare(pointers, list(inputs) + list(outputs))
        if self.zero_outputs:       # a kernel adding into its outputs: zeros first, same stream
            for a in outputs:
                a.fill(0)
        gx, gy, gz = self.grid
        self._run(gx, gy, gz, self._current_stream().ptr, self._function, self._metadata,
                  None, None, None, *self._args)

    def _capturing(self) -> bool:
        """Whether the current stream is capturing a CUDA graph (no timing then)."""
        try:
            return bool(self._current_stream().is_capturing())
        except Exception:
            return True             # cannot tell: do not time anything now

    @property
    def settled(self) -> bool:
        """Whether the launch configuration is settled (nothing left to tune)."""
        return not self._settle

    def settle(self, inputs: list, outputs: list, wait: bool = True) -> bool:
        """Settle the launch configuration on these arrays now (`wait`: for the candidates'
        builds too; else only if they are built, starting those that are not). Whether it is
        settled; outputs are not written."""
        if not self._settle:
            return True
        arrays = list(inputs) + list(outputs)
        aligned = tuple(a.data.ptr % 16 == 0 for a in arrays)
        specs = [(tuple(a.shape), np.dtype(a.dtype)) for a in arrays]
        n = len(inputs)
        result = triton_tune.settle(
            self.tk, inputs, outputs, lambda k: CudaKernelLauncher(k, tune=False),
            lambda k: compiled_kernel(k, aligned, specs, n),
            None if wait else lambda ks: builds_ready(ks, aligned, specs, n))
        if result is None:
            return False
        self._settle = False
        tk, self.tuning = result
        if tk is not self.tk:
            self._set_kernel(tk)
        return True

    def _prepare(self, pointers: tuple, arrays: list) -> None:
        use_cupy_scratch()                      # in this thread, where the kernel launches
        aligned = tuple(p % 16 == 0 for p in pointers)
        specs = [(tuple(a.shape), np.dtype(a.dtype)) for a in arrays]
        if aligned != self._aligned or specs != self._specs:
            # (a GPU's binary depends on the alignment and dtypes only, so another shape finds
            # the same one; the fake CUDA's kernels map memory by shape)
            kernel = compiled_kernel(self.tk, aligned, specs, len(arrays) - self.num_outputs)
            self._run = kernel.run              # first: it loads the binary on the device
            self._function, self._metadata = kernel.function, kernel.packed_metadata
            self._aligned, self._specs = aligned, specs
        self._args = pointers + self.constexpr_values
        self._pointers = pointers
        self.prepared += 1


class _SpecializationArg:
    """What `JITFunction.run(..., warmup=True)` reads of a pointer argument to pick the kernel:
    its dtype, and an address with the argument's 16-byte alignment (nothing is launched)."""

    def __init__(self, dtype: np.dtype, aligned: bool):
        self.dtype = dtype.name
        self._ptr = 1 << 20 if aligned else (1 << 20) + 4

    def data_ptr(self) -> int:
        return self._ptr


_COMPILED: dict = {}    # `_compiled_key` -> Triton's CompiledKernel
_BUILDING: dict = {}    # the same key -> Future of a build `prebuild` started


def _compiled_key(tk: TritonKernel, aligned: tuple, specs: list) -> tuple:
    """What one built binary depends on: the source, and what its build specializes on beside
    it (argument dtypes and 16-byte alignment, constexpr values, warps), so two kernels of one
    source with other constants never share a binary."""
    return (source_hash(tk.source), aligned, tuple(str(d) for _, d in specs),
            tuple(sorted((k, repr(v)) for k, v in tk.constexprs.items())), tk.num_warps)


def compiled_kernel(tk: TritonKernel, aligned: tuple, specs: list, num_inputs: int):
    """The kernel built for the GPU for arguments with this 16-byte alignment pattern (Triton's
    CompiledKernel, with `run`, `function` and `packed_metadata`); `specs`: (shape, dtype) per
    argument, the first `num_inputs` read, the rest written. Built on first use (Triton's own
    disk cache keeps the binary)."""
    key = _compiled_key(tk, aligned, specs)
    with _LOCK:
        kernel = _COMPILED.get(key)
        building = _BUILDING.get(key)
    if kernel is not None:
        return kernel
    if building is not None:
        try:
            return building.result()        # started by `prebuild`: wait for it
        except Exception:
            pass                             # build here, raising where the launch is
        finally:
            with _LOCK:
                _BUILDING.pop(key, None)
    return _build_kernel(tk, aligned, specs, num_inputs)


def builds_ready(kernels: list, aligned: tuple, specs: list, num_inputs: int) -> bool:
    """Whether every kernel is built for these arguments, without waiting: those not built
    and not being built start building in the background."""
    ready = True
    with _LOCK:
        for k in kernels:
            key = _compiled_key(k, aligned, specs)
            if key in _COMPILED:
                continue
            building = _BUILDING.get(key)
            if building is None:
                _BUILDING[key] = _BUILDERS.submit(_build_kernel, k, aligned, specs, num_inputs)
                ready = False
            elif not building.done():
                ready = False
    return ready


_FRONT_END = threading.Lock()     # serializes a build retried after CPython's AST race


def _race_safe(build):
    """`build()`; once more, alone, when CPython 3.11 reports its AST race. Triton's front end
    parses kernels with `ast`, whose converter keeps one recursion counter per interpreter,
    not per thread: two threads building at once can trip it ("SystemError: AST constructor
    recursion depth mismatch"), though neither kernel is at fault."""
    try:
        return build()
    except SystemError as e:
        if "recursion depth mismatch" not in str(e):
            raise
        with _FRONT_END:
            return build()


def _build_kernel(tk: TritonKernel, aligned: tuple, specs: list, num_inputs: int):
    """Build (or fetch from Triton's own caches) the kernel for this GPU; kept in memory."""
    activate_cupy_driver()
    fn = load_kernel(tk, interpret=False)
    args = [_SpecializationArg(dtype, a) for (_, dtype), a in zip(specs, aligned)]
    kernel = _race_safe(lambda: fn.run(*args, grid=tk.grid, warmup=True,
                                       num_warps=tk.num_warps, **tk.constexprs))
    with _LOCK:
        _COMPILED[_compiled_key(tk, aligned, specs)] = kernel
    return kernel


class TritonStep:
    """One fused kernel of an executor, prepared once: its launcher, the dtypes its inputs must
    have, and its output arrays, kept from call to call and written again once nothing but
    this step holds them (fresh device memory per call costs an allocation, and on the CPU a
    page fault per 4 KiB)."""

    def __init__(self, tk: TritonKernel, subgraph: Graph, backend: str, xp):
        self.tk, self.xp = tk, xp
        self.launcher = kernel_launcher(tk, backend)
        self.in_dtypes = [np.dtype(v.dtype.np) for v in subgraph.inputs]
        self.out_specs = [(tuple(v.shape), np.dtype(v.dtype.np)) for v in subgraph.outputs]
        self.outputs: list = [None] * len(self.out_specs)

    def run(self, inputs: list) -> list:
        """Launch on `inputs` (converted to contiguous arrays of the kernel's dtypes where they
        are not); returns the output arrays."""
        xp = self.xp
        args = [a if type(a) is xp.ndarray and a.dtype == d and a.flags.c_contiguous
                else xp.ascontiguousarray(xp.asarray(a), dtype=d)
                for a, d in zip(inputs, self.in_dtypes)]
        outputs = self.outputs
        in_list = held_refs()[0]        # what a count reads for an array only a list holds
        for k, (shape, d) in enumerate(self.out_specs):
            if getrefcount(outputs[k]) != in_list:  # handed out and still held: a new array
                outputs[k] = xp.empty(shape, d)
        self.launcher(args, outputs)
        return list(outputs)

    def release(self) -> None:
        """Forget the kept output arrays (the next run allocates them again)."""
        self.outputs = [None] * len(self.out_specs)


def render(subgraph: Graph, **options) -> TritonKernel:
    """Lower and render a fused subgraph (raises `LoweringError` if it cannot be generated)."""
    kernel: Kernel = lower(subgraph)
    return render_triton(kernel, **options)


def run_kernel(subgraph: Graph, input_arrays: list, backend: str = "interpreter",
               **options) -> list:
    """Run a fused subgraph as one generated Triton kernel; returns its output arrays.

    Args:
        subgraph: a fused group (elementwise, reductions, views, creation), inputs = buffers.
        input_arrays: one array per `subgraph.inputs` (NumPy for "interpreter", CuPy for "cuda").
        backend: "interpreter" (Triton's interpreter on NumPy) or "cuda" (CuPy's stream).
        options: passed to `render_triton` (persistent_limit, loop_rblock).
    """
    tk = render(subgraph, **options)
    if backend == "interpreter":
        xp = np
        inputs = [np.ascontiguousarray(a, dtype=v.dtype.np)
                  for a, v in zip(input_arrays, subgraph.inputs)]
    else:
        xp = cupy_module()
        inputs = [xp.ascontiguousarray(xp.asarray(a, dtype=v.dtype.np))
                  for a, v in zip(input_arrays, subgraph.inputs)]
    outputs = [xp.empty(v.shape, dtype=v.dtype.np) for v in subgraph.outputs]
    launch(tk, inputs, outputs, backend)
    return outputs


# ----------------------------------------------------------------------------- ahead of time

def compile_for_gpu(kernel: TritonKernel | Kernel, arch: int, cache: KernelCache | None = None
                    ) -> str:
    """PTX for an NVIDIA GPU of compute capability `arch` (80, 90, ...); needs no GPU.

    The result is cached on disk keyed by source, target, launch options and Triton version.
    """
    tk = kernel if isinstance(kernel, TritonKernel) else render_triton(kernel)
    cache = cache or KernelCache()
    key = hashlib.sha256(json.dumps(
        [tk.source, f"cuda:{arch}", tk.num_warps, tk.signature, tk.constexprs,
         triton_version()], sort_keys=True).encode()).hexdigest()[:32]
    with _LOCK:
        if key in _PTX:
            return _PTX[key]
    hit = cache.get("ptx", key)
    if hit is not None:
        ptx = hit.decode()
    else:
        import triton
        from triton.backends.compiler import GPUTarget
        fn = load_kernel(tk, interpret=False)
        src = triton.compiler.ASTSource(fn=fn, signature=dict(tk.signature),
                                        constexprs=dict(tk.constexprs))
        compiled = triton.compile(src, target=GPUTarget("cuda", arch, 32),
                                  options={"num_warps": tk.num_warps,
                                           "enable_fp_fusion": True})
        ptx = compiled.asm["ptx"]
        cache.put("ptx", key, ptx.encode())
    with _LOCK:
        _PTX[key] = ptx
    return ptx


@dataclass(frozen=True)
class GpuBuild:
    """One kernel built ahead of time for an NVIDIA GPU: its PTX and cubin (the binary the
    driver loads), and whether they came from the disk cache."""

    kernel: str
    arch: int
    ptx: str
    cubin: bytes
    cached: bool


def _aligned_attrs(tk: TritonKernel) -> dict:
    """Triton's attributes for pointers on 16-byte boundaries (what CuPy's allocations give and
    what the runtime specializes on), so the build ahead of time is the kernel that runs."""
    pointers = [i for i, name in enumerate(tk.signature) if tk.signature[name] != "constexpr"]
    return {(i,): [["tt.divisibility", 16]] for i in pointers}


def build_one_for_gpu(tk: TritonKernel, arch: int, cache: KernelCache | None = None
                      ) -> GpuBuild:
    """PTX and cubin of one kernel for compute capability `arch`, from the disk cache when an
    intact entry is there (keyed by source, target, launch options and Triton version)."""
    cache = cache or KernelCache()
    key = hashlib.sha256(json.dumps(
        [tk.source, f"cuda:{arch}", tk.num_warps, tk.signature, tk.constexprs, "aligned",
         triton_version()], sort_keys=True).encode()).hexdigest()[:32]
    ptx, cubin = cache.get("aot_ptx", key), cache.get("aot_cubin", key)
    if ptx is not None and cubin is not None:
        return GpuBuild(tk.name, arch, ptx.decode(), cubin, True)
    import triton
    from triton.backends.compiler import GPUTarget
    fn = load_kernel(tk, interpret=False)
    src = triton.compiler.ASTSource(fn=fn, signature=dict(tk.signature),
                                    constexprs=dict(tk.constexprs), attrs=_aligned_attrs(tk))
    compiled = _race_safe(lambda: triton.compile(
        src, target=GPUTarget("cuda", arch, 32),
        options={"num_warps": tk.num_warps, "enable_fp_fusion": True}))
    ptx, cubin = compiled.asm["ptx"], bytes(compiled.asm["cubin"])
    cache.put("aot_ptx", key, ptx.encode())
    cache.put("aot_cubin", key, cubin)
    return GpuBuild(tk.name, arch, ptx, cubin, False)


def build_for_gpu(kernels: list, arch: int = 90, workers: int | None = None,
                  cache: KernelCache | None = None) -> list[GpuBuild]:
    """Build a program's Triton kernels for an NVIDIA GPU ahead of time, in parallel; needs no
    GPU. Threads, not processes: Triton's front end holds the GIL, but its LLVM passes and
    ptxas (a subprocess) do not, and kernels already in the disk cache cost a read."""
    tks = list(dict.fromkeys(kernels))          # a kernel used twice is built once
    if not tks:
        return []
    workers = workers or min(len(tks), os.cpu_count() or 1, 8)
    with ThreadPoolExecutor(workers, thread_name_prefix="kiln-triton-build") as pool:
        return list(pool.map(lambda tk: build_one_for_gpu(tk, arch, cache), tks))


def prebuild(kernels: list) -> None:
    """Start building an executor's kernels for this process's GPU in the background, in
    parallel, for 16-byte aligned arguments (CuPy's allocations), so its first call finds them
    built: `kernels` holds (TritonKernel, the fused subgraph it computes) pairs. A kernel's
    launch configuration recorded on this GPU is built in place of its own, and every candidate
    of one its first launch will time (`triton_tune.kernels_to_build`): those after every
    kernel's first, which the first call waits for (the builders take them in order)."""
    first, later = [], []
    for tk, subgraph in kernels:
        specs = [(tuple(v.shape), np.dtype(v.dtype.np))
                 for v in list(subgraph.inputs) + list(subgraph.outputs)]
        nbytes = sum(math.prod(shape) * d.itemsize for shape, d in specs)
        head, *rest = triton_tune.kernels_to_build(tk, nbytes)
        first.append((head, specs, len(subgraph.inputs)))
        later += [(k, specs, len(subgraph.inputs)) for k in rest]
    for k, specs, num_inputs in first + later:
        aligned = (True,) * len(specs)
        key = _compiled_key(k, aligned, specs)
        with _LOCK:
            if key in _COMPILED or key in _BUILDING:
                continue
            # looked up now, not at import: the fake CUDA of the tests replaces it
            _BUILDING[key] = _BUILDERS.submit(_build_kernel, k, aligned, specs, num_inputs)


_BUILDERS = ThreadPoolExecutor(min(8, os.cpu_count() or 1), thread_name_prefix="kiln-prebuild")


def clear_memory_cache() -> None:
    """Forget kernels held in memory (the disk cache stays)."""
    with _LOCK:
        _MODULES.clear()
        _PTX.clear()
        _COMPILED.clear()
        _BUILDING.clear()
