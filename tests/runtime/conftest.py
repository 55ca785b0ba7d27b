"""Fixtures the runtime's GPU tests share."""

import pytest

from kiln.codegen import conv
from kiln.runtime import cupy_backend
from kiln.runtime.triton_launch import CudaKernelLauncher


@pytest.fixture
def fresh_conv_routes(monkeypatch, tmp_path):
    """No measured convolution routes but the test's own (kept in the test's own cache folder),
    and no eager conv kernels prepared by earlier tests."""
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("KILN_CONV_ROUTE", raising=False)
    monkeypatch.setattr(conv, "MEASURED_ROUTES", {})
    monkeypatch.setattr(conv, "_loaded", [False])
    monkeypatch.setattr(cupy_backend, "_LAUNCHERS", {})


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
