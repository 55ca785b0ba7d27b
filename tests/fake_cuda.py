"""A pytest plugin that runs GPU-marked tests without a GPU: `pytest -p tests.fake_cuda ...`.

`cuda` tensors hold NumPy arrays (moving a tensor there copies it, as on a GPU), and compiled
code on them generates Triton kernels, which run in Triton's interpreter because the arrays
are NumPy's. The device checks stay, so these runs find code that mixes devices (a gradient
rule making its zeros on the CPU, optimizer state on another device than its parameter) on any
machine. They cannot find what only CuPy or a GPU shows: CuPy's API differences, kernels that
fail to build or launch on the device, speed. Tests that call CuPy or the GPU themselves do not
belong in such a run.
"""

import numpy as np

from kiln.runtime import device


def _to_device(array, device):
    return np.array(array, copy=True) if device.type == "cuda" else np.asarray(array)


def _cuda_is_available():
    return True


# Modules import these functions by name (`from kiln.runtime.device import to_device`), so their
# code is replaced in place: every importer then calls the stand-in. `np` is a global of both.
device.to_device.__code__ = _to_device.__code__
device.cuda_is_available.__code__ = _cuda_is_available.__code__
device.cupy_module = lambda: np        # read at each call: Device.xp and the runtime's imports
