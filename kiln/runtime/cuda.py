"""`kiln.cuda`: whether a CUDA GPU is usable, and a few of torch.cuda's helpers.

`kiln.cuda.manual_seed` (and `manual_seed_all`) is `kiln.manual_seed`, attached by the package
root: one generator draws for every device, and runtime imports no tracer."""

from kiln.runtime import pending_checks
from kiln.runtime.device import cuda_is_available, cupy_module


def is_available() -> bool:
    return cuda_is_available()


def device_count() -> int:
    if not cuda_is_available():
        return 0
    return cupy_module().cuda.runtime.getDeviceCount()


def synchronize() -> None:
    if cuda_is_available():
        cupy_module().cuda.get_current_stream().synchronize()
        pending_checks.flush()      # eager index checks queued on the GPU, read now

