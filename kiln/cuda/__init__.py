"""`kiln.cuda`: torch.cuda's probes, device selection, memory statistics and seeding, on CuPy.

Without a usable GPU these answer as PyTorch does on a machine without one: `is_available()` is
False, `device_count()` 0, the memory counters 0 and `empty_cache()` does nothing, while what
needs a device (`current_device`, `set_device`, `get_device_name`, `synchronize`, ...) raises
RuntimeError. The memory counters are CuPy's default memory pool's: `memory_allocated` is the
bytes its live arrays hold, `memory_reserved` what the pool holds from the driver. CuPy keeps no
high-water mark, so kiln counts one by wrapping the allocator from the first memory call on
(`max_memory_allocated`, `reset_peak_memory_stats`). One random generator draws for every device
(kiln draws on the host), so the cuda seeding functions seed it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from kiln.runtime import pending_checks
from kiln.runtime.device import Device, cuda_is_available, cupy_module

NO_CUDA = ("no CUDA GPU is available (kiln.cuda.is_available() is False: CuPy is missing or "
           "sees no device); run on the CPU or check the driver with nvidia-smi")


def _require(what: str):
    """CuPy, when a GPU is usable; else the RuntimeError torch raises without one."""
    if not cuda_is_available():
        raise RuntimeError(f"torch.cuda.{what}: {NO_CUDA}")
    return cupy_module()


def _index(device, what: str, optional: bool = True) -> int:
    """The device index `device` names (an int, "cuda:1", a Device; None: the current one)."""
    if device is None:
        if not optional:
            raise ValueError(f"torch.cuda.{what}: expected a cuda device, got None")
        return current_device()
    if isinstance(device, int):
        return device
    dev = device if isinstance(device, Device) else Device(device)
    if dev.type != "cuda":
        raise ValueError(f"Expected a cuda device, but got: {dev}")
    return current_device() if dev.index is None else dev.index


# ----------------------------------------------------------------------------- devices

def is_available() -> bool:
    return cuda_is_available()


def is_initialized() -> bool:
    """Whether CUDA is in use: here, whether a GPU is usable (CuPy initializes on import)."""
    return cuda_is_available()


def device_count() -> int:
    if not cuda_is_available():
        return 0
    return cupy_module().cuda.runtime.getDeviceCount()


def current_device() -> int:
    return _require("current_device").cuda.Device().id


def set_device(device) -> None:
    """Make `device` (an index, "cuda:1" or a Device) CuPy's current GPU, which the memory
    counters, `current_device` and `synchronize` read; a negative index does nothing, as in
    torch. Unlike torch, kiln's plain "cuda" device stays cuda:0: name the index ("cuda:1") to
    put tensors on another GPU."""
    index = _index(device, "set_device", optional=False)
    if index < 0:
        return
    cp = _require("set_device")
    count = cp.cuda.runtime.getDeviceCount()
    if index >= count:
        raise RuntimeError(f"torch.cuda.set_device: device {index} does not exist; this "
                           f"machine has {count} CUDA device(s)")
    cp.cuda.Device(index).use()


class device:  # noqa: N801 (torch's name)
    """Context manager selecting a GPU for its block (`with torch.cuda.device(1): ...`)."""

    def __init__(self, device):
        self.index = -1 if device is None else _index(device, "device")
        self._before = -1

    def __enter__(self):
        if self.index >= 0:
            self._before = current_device()
            set_device(self.index)
        return self

    def __exit__(self, *exc) -> bool:
        if self._before >= 0:
            set_device(self._before)
        return False


@dataclass(frozen=True)
class DeviceProperties:
    """What torch.cuda.get_device_properties reports (`_CudaDeviceProperties`'s main fields)."""

    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int
    warp_size: int
    L2_cache_size: int  # noqa: N815 (torch's name)


def get_device_properties(device=None) -> DeviceProperties:
    cp = _require("get_device_properties")
    index = _index(device, "get_device_properties")
    if not 0 <= index < cp.cuda.runtime.getDeviceCount():
        raise RuntimeError(f"torch.cuda.get_device_properties: invalid device id {index}; "
                           f"this machine has {cp.cuda.runtime.getDeviceCount()} CUDA device(s)")
    props = cp.cuda.runtime.getDeviceProperties(index)
    name = props["name"]
    return DeviceProperties(name.decode() if isinstance(name, bytes) else str(name),
                            int(props["major"]), int(props["minor"]),
                            int(props["totalGlobalMem"]), int(props["multiProcessorCount"]),
                            int(props["warpSize"]), int(props["l2CacheSize"]))


def get_device_name(device=None) -> str:
    _require("get_device_name")
    return get_device_properties(device).name


def get_device_capability(device=None) -> tuple:
    _require("get_device_capability")
    props = get_device_properties(device)
    return props.major, props.minor


def is_bf16_supported(including_emulation: bool = True) -> bool:
    """False: kiln keeps no bfloat16 tensors on CUDA devices (CuPy has no bfloat16 type), so a
    script choosing its precision by this picks float16 or float32, which kiln runs."""
    return False


def synchronize(device=None) -> None:
    """Wait for the GPU's queued work, on every stream; index checks queued on it are read now
    (and raise)."""
    cp = _require("synchronize")
    cp.cuda.Device(_index(device, "synchronize")).synchronize()
    pending_checks.flush()      # eager index checks queued on the GPU, read now


class Event:
    """torch.cuda.Event on a CuPy event: `record()` marks the current stream (the one kiln's
    kernels and CuPy's work are queued on), `elapsed_time(end)` gives the milliseconds between
    two recorded events (both made with enable_timing=True)."""

    def __init__(self, enable_timing: bool = False, blocking: bool = False,
                 interprocess: bool = False):
        cp = _require("Event")
        self.enable_timing = enable_timing
        self._event = cp.cuda.Event(block=blocking, disable_timing=not enable_timing,
                                    interprocess=interprocess)

    def record(self, stream=None) -> None:
        self._event.record(getattr(stream, "_stream", stream))

    def wait(self, stream=None) -> None:
        """Work queued on `stream` (the current one if None) from now on waits for this
        event's recorded work."""
        target = stream._stream if stream is not None else cupy_module().cuda.get_current_stream()
        target.wait_event(self._event)

    def synchronize(self) -> None:
        self._event.synchronize()

    def query(self) -> bool:
        """Whether the work before the record has finished."""
        return bool(self._event.done)

    def elapsed_time(self, end_event: "Event") -> float:
        if not (self.enable_timing and end_event.enable_timing):
            raise ValueError("torch.cuda.Event.elapsed_time: both events must be made with "
                             "enable_timing=True")
        return float(cupy_module().cuda.get_elapsed_time(self._event, end_event._event))


# ----------------------------------------------------------------------------- memory

_peak = {"allocated": 0, "reserved": 0, "tracking": False}


def _pool():
    """CuPy's default memory pool, with the high-water marks counted from now on."""
    cp = cupy_module()
    pool = cp.get_default_memory_pool()
    if not _peak["tracking"]:
        inner = cp.cuda.get_allocator()

        def counting_malloc(size: int):
            # the pool's use grows only here, so its maximum right after each allocation is
            # the true peak
            memory = inner(size)
            _peak["allocated"] = max(_peak["allocated"], pool.used_bytes())
            _peak["reserved"] = max(_peak["reserved"], pool.total_bytes())
            return memory
        cp.cuda.set_allocator(counting_malloc)
        _peak["tracking"] = True
        _peak["allocated"] = max(_peak["allocated"], pool.used_bytes())
        _peak["reserved"] = max(_peak["reserved"], pool.total_bytes())
    return pool


def _on(device, read):
    """`read(pool)` with `device` current (the pool counts per device)."""
    if not cuda_is_available():
        return 0
    cp = cupy_module()
    with cp.cuda.Device(_index(device, "memory")):
        return int(read(_pool()))


def memory_allocated(device=None) -> int:
    """Bytes held by live tensors on the device (CuPy's default pool's used bytes)."""
    return _on(device, lambda pool: pool.used_bytes())


def memory_reserved(device=None) -> int:
    """Bytes the allocator holds from the driver, in use or cached (the pool's total)."""
    return _on(device, lambda pool: pool.total_bytes())


def max_memory_allocated(device=None) -> int:
    """The most `memory_allocated` has been since the last `reset_peak_memory_stats` (or since
    kiln first read memory: CuPy keeps no peak, kiln counts it from then on)."""
    return _on(device, lambda pool: max(_peak["allocated"], pool.used_bytes()))


def max_memory_reserved(device=None) -> int:
    return _on(device, lambda pool: max(_peak["reserved"], pool.total_bytes()))


def reset_peak_memory_stats(device=None) -> None:
    _require("reset_peak_memory_stats")
    _on(device, lambda pool: 0)              # starts the counting if it had not begun
    _peak["allocated"] = memory_allocated(device)
    _peak["reserved"] = memory_reserved(device)


def reset_max_memory_allocated(device=None) -> None:
    reset_peak_memory_stats(device)


def mem_get_info(device=None) -> tuple:
    """(free, total) bytes of the device's memory, as the driver reports them."""
    cp = _require("mem_get_info")
    with cp.cuda.Device(_index(device, "mem_get_info")):
        free, total = cp.cuda.runtime.memGetInfo()
    return int(free), int(total)


def empty_cache() -> None:
    """Give the pool's cached, unused blocks back to the driver."""
    if cuda_is_available():
        cupy_module().get_default_memory_pool().free_all_blocks()


def memory_stats(device=None) -> dict:
    """The counters above under torch's keys (empty without a GPU, as torch's)."""
    if not cuda_is_available():
        return {}
    return {"allocated_bytes.all.current": memory_allocated(device),
            "allocated_bytes.all.peak": max_memory_allocated(device),
            "reserved_bytes.all.current": memory_reserved(device),
            "reserved_bytes.all.peak": max_memory_reserved(device)}


# ----------------------------------------------------------------------------- random numbers
# kiln draws every device's random numbers on the host from the one generator

def manual_seed(seed: int) -> None:
    """torch.cuda.manual_seed: seeds the generator (shared by every device); returns None."""
    from kiln.tracer.creation import manual_seed as seed_all_devices
    seed_all_devices(seed)


def manual_seed_all(seed: int) -> None:
    manual_seed(seed)


def seed() -> None:
    from kiln.tracer.creation import seed as reseed
    reseed()


def seed_all() -> None:
    seed()


def initial_seed() -> int:
    from kiln.tracer.creation import initial_seed as first
    return first()


def get_rng_state(device="cuda"):
    """The generator's state (the one every device draws from) as a uint8 tensor."""
    _require("get_rng_state")
    from kiln.tracer.creation import get_rng_state as state
    return state()


def set_rng_state(new_state, device="cuda") -> None:
    _require("set_rng_state")
    from kiln.tracer.creation import set_rng_state as restore
    restore(new_state)


def get_rng_state_all() -> list:
    return [get_rng_state(i) for i in range(device_count())]


def set_rng_state_all(new_states) -> None:
    for state in new_states:
        set_rng_state(state)


from kiln.cuda import amp, nccl  # noqa: E402,F401  (torch.cuda.amp, torch.cuda.nccl)


def memory_cached(device=None) -> int:
    """PyTorch's old name of memory_reserved."""
    return memory_reserved(device)


def max_memory_cached(device=None) -> int:
    """PyTorch's old name of max_memory_reserved."""
    return max_memory_reserved(device)


def reset_max_memory_cached(device=None) -> None:
    reset_peak_memory_stats(device)


def memory_summary(device=None, abbreviated: bool = False) -> str:
    """The memory counters as a small table (PyTorch's report has per-pool rows; CuPy's pool
    has these four numbers)."""
    rows = [("Allocated memory", memory_allocated(device), max_memory_allocated(device)),
            ("Reserved memory", memory_reserved(device), max_memory_reserved(device))]
    lines = ["|" + "=" * 62 + "|",
             f"|{'kiln CUDA memory summary (CuPy default pool)':^62}|",
             "|" + "-" * 62 + "|",
             f"| {'Metric':<26}| {'Cur usage':>15} | {'Peak usage':>15} |"]
    for name, current, peak in rows:
        lines.append(f"| {name:<26}| {_mib(current):>15} | {_mib(peak):>15} |")
    lines.append("|" + "=" * 62 + "|")
    return "\n".join(lines)


def _mib(n: int) -> str:
    return f"{n / 2 ** 20:.1f} MiB" if n >= 2 ** 20 else f"{n} B"


def set_per_process_memory_fraction(fraction: float, device=None) -> None:
    """Cap the memory pool at `fraction` of the device's memory (CuPy's pool limit); an
    allocation beyond it raises OutOfMemoryError."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"Invalid fraction value: {fraction}. Allowed range: 0~1")
    _on(device, lambda pool: pool.set_limit(fraction=fraction) or 0)


def get_per_process_memory_fraction(device=None) -> float:
    _require("get_per_process_memory_fraction")
    limit = _on(device, lambda pool: pool.get_limit())
    total = mem_get_info(device)[1]
    return 1.0 if limit == 0 else limit / total


def ipc_collect() -> None:
    """Nothing to collect: kiln shares no CUDA memory between processes."""


class device_of(device):  # noqa: N801 (torch's name)
    """`with kiln.cuda.device_of(t):` makes `t`'s GPU current for the block; a CPU tensor
    changes nothing."""

    def __init__(self, obj):
        super().__init__(obj.get_device() if getattr(obj, "is_cuda", False) else -1)


def can_device_access_peer(device, peer_device) -> bool:
    """Whether `device` can read `peer_device`'s memory directly (CUDA peer access)."""
    cp = _require("can_device_access_peer")
    a, b = _index(device, "can_device_access_peer"), _index(peer_device,
                                                            "can_device_access_peer")
    count = device_count()
    if not (0 <= a < count and 0 <= b < count):
        raise AssertionError(f"Invalid device id: {a if not 0 <= a < count else b}")
    return a != b and bool(cp.cuda.runtime.deviceCanAccessPeer(a, b))


_SYNC_MODES = {"default": 0, "warn": 1, "error": 2}


def set_sync_debug_mode(debug_mode) -> None:
    """Warn ("warn", 1) or raise ("error", 2) at each operation that makes the host wait for
    the GPU to read device memory (`.item()`, `.cpu()`, printing, ...); "default" (0): quiet.
    kiln sees the reads of its tensors' values; a synchronization inside CuPy's own functions
    (`nonzero`'s result size) is not reported."""
    if isinstance(debug_mode, str):
        if debug_mode not in _SYNC_MODES:
            raise RuntimeError('invalid value of debug_mode, expected one of `default`, '
                               '`warn`, `error`')
        debug_mode = _SYNC_MODES[debug_mode]
    pending_checks.set_sync_debug_mode(int(debug_mode))


def get_sync_debug_mode() -> int:
    return pending_checks.get_sync_debug_mode()


def is_tf32_supported() -> bool:
    """Whether the GPU has TF32 tensor cores (compute capability 8.0 or newer)."""
    return cuda_is_available() and get_device_capability() >= (8, 0)


has_half = True
has_magma = False


def current_blas_handle() -> int:
    """The cuBLAS handle CuPy uses on the current device, as an int."""
    cp = _require("current_blas_handle")
    return int(cp.cuda.device.get_cublas_handle())


def _nvml(device, what: str):
    """pynvml and the NVML handle of `device` (the CUDA index mapped through
    CUDA_VISIBLE_DEVICES when that lists indices); pynvml is optional, as for PyTorch."""
    try:
        import pynvml
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"torch.cuda.{what}: nvidia-ml-py does not seem to be "
                                  "installed or it can't be imported (pip install "
                                  "nvidia-ml-py)") from e
    index = _index(device, what)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    if all(v.strip().isdigit() for v in visible) and index < len(visible):
        index = int(visible[index])
    pynvml.nvmlInit()
    return pynvml, pynvml.nvmlDeviceGetHandleByIndex(index)


def utilization(device=None) -> int:
    """Percent of the last sample period the GPU was busy (NVML)."""
    nvml, handle = _nvml(device, "utilization")
    return int(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)


def memory_usage(device=None) -> int:
    """Percent of the last sample period the GPU's memory was being read or written (NVML)."""
    nvml, handle = _nvml(device, "memory_usage")
    return int(nvml.nvmlDeviceGetUtilizationRates(handle).memory)


def temperature(device=None) -> int:
    """The GPU's temperature in degrees Celsius (NVML)."""
    nvml, handle = _nvml(device, "temperature")
    return int(nvml.nvmlDeviceGetTemperature(handle, 0))      # 0: NVML_TEMPERATURE_GPU


def power_draw(device=None) -> int:
    """The GPU's power draw in milliwatts (NVML)."""
    nvml, handle = _nvml(device, "power_draw")
    return int(nvml.nvmlDeviceGetPowerUsage(handle))


def clock_rate(device=None) -> int:
    """The GPU's streaming-multiprocessor clock in MHz (NVML)."""
    nvml, handle = _nvml(device, "clock_rate")
    return int(nvml.nvmlDeviceGetClockInfo(handle, 1))        # 1: NVML_CLOCK_SM


def device_memory_used(device=None) -> int:
    """Bytes of the GPU's memory in use by every process (NVML)."""
    nvml, handle = _nvml(device, "device_memory_used")
    return int(nvml.nvmlDeviceGetMemoryInfo(handle).used)


def list_gpu_processes(device=None) -> str:
    """The processes running on the GPU and the memory each uses (NVML), as text."""
    nvml, handle = _nvml(device, "list_gpu_processes")
    lines = [f"GPU:{_index(device, 'list_gpu_processes')}"]
    procs = nvml.nvmlDeviceGetComputeRunningProcesses(handle)
    if not procs:
        lines.append("no processes are running")
    for p in procs:
        lines.append(f"process {p.pid:>10d} uses {p.usedGpuMemory / 2 ** 20:>12.3f} MB GPU memory")
    return "\n".join(lines)


def init() -> None:
    """Initialize CUDA (torch.cuda.init): CuPy initializes on first use; raises without a
    GPU, as PyTorch does."""
    _require("init")


def get_arch_list() -> list[str]:
    """The GPU architectures kiln's kernels are built for: the present devices' (Triton
    compiles for the GPU it runs on); empty without a GPU."""
    if not cuda_is_available():
        return []
    return sorted({f"sm_{a}{b}" for a, b in (get_device_capability(i)
                                           for i in range(device_count()))})


from kiln.cuda import nvtx  # noqa: E402,F401
from kiln.cuda.streams import (ExternalStream, Stream, StreamContext,  # noqa: E402,F401
                               current_stream, default_stream, is_current_stream_capturing,
                               set_stream, stream)
from kiln.cuda.graphs import (CUDAGraph, graph, graph_pool_handle,  # noqa: E402,F401
                              make_graphed_callables)
from kiln.cuda.memory import (MemPool, caching_allocator_alloc,  # noqa: E402,F401
                              caching_allocator_delete, get_allocator_backend,
                              memory_stats_as_nested_dict, reset_accumulated_memory_stats,
                              use_mem_pool)
from kiln.cuda.memory_history import memory_snapshot  # noqa: E402,F401
from kiln.torch_namespace import OutOfMemoryError  # noqa: E402,F401


def _legacy_types() -> dict:
    """kiln.cuda.FloatTensor & co.: PyTorch's legacy constructors of cuda tensors (old GAN and
    RL scripts pick `Tensor = torch.cuda.FloatTensor if cuda else torch.FloatTensor`)."""
    from kiln.ir import dtypes as dt
    from kiln.tracer.creation import legacy_type
    kinds = {"Float": dt.float32, "Double": dt.float64, "Half": dt.float16,
             "BFloat16": dt.bfloat16, "Long": dt.int64, "Int": dt.int32, "Short": dt.int16,
             "Char": dt.int8, "Byte": dt.uint8, "Bool": dt.bool_}
    return {f"{k}Tensor": legacy_type(f"{k}Tensor", d, "cuda") for k, d in kinds.items()}


globals().update(_legacy_types())


def __getattr__(name: str):
    """`kiln.cuda.default_generators`: a generator per device, which in kiln is the one
    generator every device draws from (read when asked: counting devices loads CuPy)."""
    if name == "default_generators":
        from kiln.tracer.creation import default_generator
        return (default_generator,) * device_count()
    raise AttributeError(f"module 'kiln.cuda' has no attribute '{name}'")
