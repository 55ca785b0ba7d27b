"""Fixtures the runtime's GPU tests share."""

import pytest

from kiln.runtime.triton_launch import CudaKernelLauncher


@pytest.fixture
def launches(monkeypatch):
    """The names of the Triton kernels launched on the GPU, in order."""
    seen = []
    call = CudaKernelLauncher.__call__

    def counted(self, inputs, outputs):
        seen.append(self.tk.name)
        return call(self, inputs, outputs)
    monkeypatch.setattr(CudaKernelLauncher, "__call__", counted)
    return seen
