"""`torch.utils.dlpack`: tensors to and from DLPack (shared memory, no copy)."""

import enum

from kiln import from_dlpack, to_dlpack  # noqa: F401

__all__ = ["DLDeviceType", "from_dlpack", "to_dlpack"]


class DLDeviceType(enum.IntEnum):
    """DLPack's device codes (`Tensor.__dlpack_device__()[0]`)."""
    kDLCPU = 1
    kDLCUDA = 2
    kDLCUDAHost = 3
    kDLOpenCL = 4
    kDLVulkan = 7
    kDLMetal = 8
    kDLVPI = 9
    kDLROCM = 10
    kDLExtDev = 12
    kDLOneAPI = 14
