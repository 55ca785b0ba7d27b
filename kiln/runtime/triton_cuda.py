"""A Triton driver for NVIDIA GPUs that takes the device and stream from CuPy, not torch.

Triton's stock driver asks torch for the current device and stream (and falls back to the
default stream without torch). kiln's arrays are CuPy's, so kernels must run on CuPy's current
stream to be ordered with CuPy's own work. This module imports cupy and Triton's NVIDIA backend
only when `activate_cupy_driver` is called, so CPU-only machines never import them.
"""

from __future__ import annotations

import functools

from kiln.runtime.device import cupy_module


def _driver_class():
    from triton.backends.nvidia.driver import CudaDriver, CudaLauncher, CudaUtils


    class CupyCudaDriver(CudaDriver):
        """Triton's CUDA driver and launcher, with CuPy as the source of device and stream."""

        def __init__(self):
            # not CudaDriver.__init__: with torch imported (as in tests) it would bind torch's
            # device and stream functions
            self.utils = CudaUtils()
            self.launcher_cls = CudaLauncher
            self.cp = cupy_module()

        def get_current_device(self) -> int:
            return self.cp.cuda.runtime.getDevice()

        def set_current_device(self, device: int) -> None:
            self.cp.cuda.runtime.setDevice(device)

        def get_current_stream(self, device: int | None = None) -> int:
            # the raw cudaStream_t of CuPy's current stream (0 is the legacy default stream)
            return self.cp.cuda.get_current_stream().ptr

        def get_device_capability(self, device: int | None = None) -> tuple:
            cc = self.cp.cuda.Device(self.get_current_device() if device is None
                                     else device).compute_capability
            return int(cc[:-1]), int(cc[-1])

        def get_active_torch_device(self):
            raise RuntimeError("kiln's CuPy Triton driver has no torch device")

        def get_device_interface(self):
            raise RuntimeError("kiln's CuPy Triton driver has no torch device interface")

        def get_empty_cache_for_benchmark(self):
            return self.cp.empty(256 * 1024 * 1024 // 4, dtype=self.cp.int32)

        def clear_cache(self, cache) -> None:
            cache.fill(0)

        @staticmethod
        def is_active() -> bool:
            try:
                return cupy_module().cuda.runtime.getDeviceCount() > 0
            except Exception:
                return False

    return CupyCudaDriver


class _CupyScratch:
    """Global scratch memory Triton asks for (some kernels need it), allocated by CuPy."""

    def __init__(self, size: int):
        self.memory = cupy_module().cuda.alloc(max(size, 1))

    def data_ptr(self) -> int:
        return int(self.memory.ptr)


def _cupy_scratch(size: int, alignment: int, stream) -> _CupyScratch:
    return _CupyScratch(size)


def use_cupy_scratch() -> None:
    """Make Triton take a kernel's global scratch memory from CuPy in the calling thread.

    Triton keeps its allocator in a ContextVar, which every new thread starts without: set in
    the thread that first activated the driver (often a background builder), it would be
    missing where kernels launch. So the launching thread sets it too."""
    import triton
    triton.set_allocator(_cupy_scratch)


@functools.lru_cache(maxsize=None)
def activate_cupy_driver():
    """Make Triton launch on CuPy's current device and stream; idempotent; returns the driver."""
    import triton
    driver = _driver_class()()
    triton.runtime.driver.set_active(driver)
    use_cupy_scratch()
    return driver
