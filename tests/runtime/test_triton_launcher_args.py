"""kiln's lean launch path passes Triton's CUDA launcher what Triton's own `JITFunction.run`
passes, under whichever Triton is installed (the GPU machine has 3.6, CI 3.9), without a GPU.

Triton's driver is stubbed (device 0, an sm_90 target, a stream handle, `load_binary` giving a
function handle): kernels really build for sm_90, kiln's warmup build (`_SpecializationArg`)
must find the kernel Triton's own launch on real (torch CPU) tensors specializes to, and both
launches go through Triton's real `CudaLauncher`, whose native entry point is replaced by a
recorder: the arguments it gets are checked against what that Triton's launcher parses (3.6:
the `PyArg_ParseTuple` format of the generated C launcher; 3.9: one value per parameter,
constexprs included, as its argument annotations say).

What this cannot see: the C launcher compiling and loading on the GPU machine, the cubin loading
on the device, `cuLaunchKernelEx` itself, or the memory at the pointers (benchmarks/gpu_check.sh
runs the GPU-marked tests for that)."""

import re
import types

import numpy as np
import pytest

from kiln.codegen.kernel import lower
from kiln.codegen.triton import render_triton
from kiln.runtime import triton_launch
from tests.codegen.cases import BY_NAME

STREAM, FUNCTION = 0x5000, 0xF00


class _Recorder:
    """Triton's real CudaLauncher for a kernel, recording what `CompiledKernel.run` is called
    with (`calls`) and what reaches the launcher's native entry point (`native`)."""

    made: list = []

    def __init__(self, src, metadata):
        from triton.backends.nvidia import driver as nv
        self.calls, self.native, self.src = [], [], src
        self.made.append(self)
        record = lambda *args: self.native.append(args)     # noqa: E731
        if hasattr(nv, "make_launcher"):        # 3.6: a C launcher generated per kernel
            sources = []

            def compile_module_from_src(src, name, **kwargs):
                sources.append(src)
                return types.SimpleNamespace(launch=record)
            saved = nv.compile_module_from_src, nv.library_dirs   # the latter finds libcuda
            nv.compile_module_from_src, nv.library_dirs = compile_module_from_src, list
            try:
                self.launcher = nv.CudaLauncher(src, metadata)
            finally:
                nv.compile_module_from_src, nv.library_dirs = saved
            (self.c_source,) = sources
        else:                                   # 3.9: one generic launch in the driver utils
            self.c_source = None
            utils = _driver_config().active.utils
            utils.launch = record
            self.launcher = nv.CudaLauncher(src, metadata)

    def __call__(self, *args):
        self.calls.append(args)
        self.launcher(*args)


def _driver_config():
    """Triton's driver configuration (`triton.runtime.driver`: its `active` driver)."""
    import triton
    return triton.runtime.driver


def _stub_driver():
    from triton.backends.compiler import GPUTarget
    utils = types.SimpleNamespace(
        load_binary=lambda name, kernel, shared, device: (object(), FUNCTION, 32, 0, 1024),
        get_device_properties=lambda device: {"max_shared_mem": 232448,
                                              "multiprocessor_count": 132},
        build_signature_metadata=lambda signature: tuple(signature),
        unload_module=lambda module: None)
    return types.SimpleNamespace(
        utils=utils, launcher_cls=_Recorder, get_current_device=lambda: 0,
        set_current_device=lambda device: None, get_current_stream=lambda device=None: STREAM,
        get_device_capability=lambda device=None: (9, 0),
        get_current_target=lambda: GPUTarget("cuda", 90, 32))


@pytest.fixture
def stub_gpu(monkeypatch, tmp_path, nvidia_backend):
    pytest.importorskip("triton.backends.nvidia.driver")
    from triton.backends.nvidia import driver as nv
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    # a JITFunction and kernels of their own: none built here reaches a real launch later
    monkeypatch.setattr(triton_launch, "_MODULES", {})
    monkeypatch.setattr(triton_launch, "_COMPILED", {})
    monkeypatch.setattr(triton_launch, "_BUILDING", {})
    monkeypatch.setattr(triton_launch, "activate_cupy_driver", lambda: None)
    stream = types.SimpleNamespace(ptr=STREAM, is_capturing=lambda: False)
    monkeypatch.setattr(triton_launch, "cupy_module", lambda: types.SimpleNamespace(
        cuda=types.SimpleNamespace(get_current_stream=lambda: stream)))
    if not hasattr(nv, "make_launcher"):
        # 3.9's launcher annotates arguments with classes of its native module (not built here)
        monkeypatch.setattr(nv, "PyKernelArg", lambda nested_tuple, type: type, raising=False)
        for name in ("ARG_KERNEL", "ARG_CONSTEXPR", "ARG_TUPLE"):
            monkeypatch.setattr(nv, name, name, raising=False)
    config = _driver_config()
    saved = config._active
    config.set_active(_stub_driver())
    _Recorder.made = []
    yield
    for kernel in triton_launch._COMPILED.values():
        kernel.module = None        # Triton 3.9 would unload it through the stub when freed
    config._active = saved


class _DeviceArray:
    """What CudaKernelLauncher reads of a CuPy array."""

    def __init__(self, tensor):
        self.data = types.SimpleNamespace(ptr=tensor.data_ptr())
        self.shape, self.dtype = tuple(tensor.shape), np.dtype(str(tensor.dtype)[6:])


def _check_native_arguments(recorder, args):
    """The arguments reaching the launcher's native code, against what it parses."""
    signature = list(recorder.src.signature.values())
    pointers = [i for i, ty in enumerate(signature) if ty.startswith("*")]
    if recorder.c_source is not None:           # 3.6: PyArg_ParseTuple's format
        (fmt,) = re.findall(r'PyArg_ParseTuple\(args, "([^"]+)"', recorder.c_source)
        assert len(args) == len(fmt), (fmt, args)
        base = len(fmt) - len(signature)
        assert fmt[base:] == "".join("O" if ty.startswith("*") or ty == "constexpr" else "?"
                                     for ty in signature)
        kernel_args = args[base:]
        assert "launch_enter_hook != Py_None" in recorder.c_source     # None: no hook called
    else:                                       # 3.9: annotations, then the kernel's arguments
        *_, annotations, kernel_signature, kernel_args = args
        assert len(kernel_args) == len(annotations) == len(signature)
        assert len(kernel_signature) == sum(ty != "constexpr" for ty in signature)
    assert all(type(kernel_args[i]) is int or hasattr(kernel_args[i], "data_ptr")
               for i in pointers), kernel_args
    return kernel_args


def _shifted(torch, t):
    """`t`'s values one element past a 16-byte boundary (what Triton does not specialize)."""
    return torch.cat([t.new_zeros(1), t.reshape(-1)])[1:].reshape(t.shape)


@pytest.mark.parametrize("case,shift", [("layer_norm", False), ("bool_out", True)])
def test_kiln_launches_as_tritons_own_jit_launch_does(stub_gpu, case, shift):
    torch = pytest.importorskip("torch")
    tk = render_triton(lower(BY_NAME[case].graph()))
    arrays = BY_NAME[case].arrays(seed=0)
    outs = [np.empty(v.shape, v.dtype.np) for v in BY_NAME[case].graph().outputs]
    tensors = [torch.from_numpy(np.ascontiguousarray(a)) for a in list(arrays) + outs]
    if shift:
        tensors[0] = _shifted(torch, tensors[0])
    assert [t.data_ptr() % 16 == 0 for t in tensors][0] is not shift
    # kiln: the kernel built ahead of its launch (warmup), then launched by its launcher
    launcher = triton_launch.CudaKernelLauncher(tk, tune=False)
    device = [_DeviceArray(t) for t in tensors]
    launcher(device[:len(arrays)], device[len(arrays):])
    (recorder,) = _Recorder.made
    ((kiln_call,),) = [recorder.calls]
    # Triton: its own launch of the same function on tensors at the same addresses finds the
    # kernel kiln built (same specialization: dtypes, 16-byte alignment) and calls it alike
    fn = triton_launch.load_kernel(tk, interpret=False)
    fn[tk.grid](*tensors, num_warps=tk.num_warps, **tk.constexprs)
    assert len(_Recorder.made) == 1, "Triton specialized these arguments to another kernel"
    jit_call = recorder.calls[1]
    # the same grid, stream, function, packed metadata and arguments; no launch metadata or
    # hooks from kiln (Triton passes its hook chains, empty unless a profiler adds to them)
    # (Triton's launcher takes an int or an object with data_ptr() for a pointer)
    assert kiln_call[:6] + kiln_call[9:] == jit_call[:6] + tuple(
        a.data_ptr() if hasattr(a, "data_ptr") else a for a in jit_call[9:])
    assert kiln_call[6:9] == (None, None, None)
    gx, gy, gz, stream, function, metadata = kiln_call[:6]
    assert (gx, gy, gz) == tuple(tk.grid) + (1,) * (3 - len(tk.grid))
    assert (stream, function, metadata[0]) == (STREAM, FUNCTION, tk.num_warps)
    kiln_native, jit_native = recorder.native
    assert list(_check_native_arguments(recorder, kiln_native)) == [
        t.data_ptr() for t in tensors] + list(tk.constexprs.values())
    _check_native_arguments(recorder, jit_native)


def test_the_launching_thread_has_kilns_scratch_allocator(stub_gpu):
    # Triton keeps its allocator for a kernel's global scratch memory in a ContextVar, which a
    # new thread starts without: a launcher prepared in a thread sets it there
    import threading

    import triton.runtime._allocation as allocation
    torch = pytest.importorskip("torch")
    from kiln.runtime import triton_cuda
    graph = BY_NAME["bool_out"].graph()
    tk = render_triton(lower(graph))
    tensors = [torch.zeros(v.shape, dtype=getattr(torch, np.dtype(v.dtype.np).name))
               for v in list(graph.inputs) + list(graph.outputs)]
    arrays = [_DeviceArray(t) for t in tensors]
    # built here first: the thread only prepares and launches (no compiling in two threads)
    triton_launch.CudaKernelLauncher(tk, tune=False)(arrays[:1], arrays[1:])
    seen = []

    def launch():
        before = allocation._allocator.get()
        triton_launch.CudaKernelLauncher(tk, tune=False)(arrays[:1], arrays[1:])
        seen.append((before, allocation._allocator.get()))
    thread = threading.Thread(target=launch)
    thread.start()
    thread.join()
    ((before, after),) = seen
    assert before is not triton_cuda._cupy_scratch and after is triton_cuda._cupy_scratch
