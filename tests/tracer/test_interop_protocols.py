"""The array protocols other libraries read from a tensor (DLPack, CUDA array interface) and
`del t[i]`, against PyTorch's behaviour."""

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")


def test_numpy_reads_a_tensor_through_dlpack_sharing_memory():
    for lib in (kiln, torch):
        t = lib.arange(6.0).reshape(2, 3)
        a = np.from_dlpack(t)
        a[0, 0] = 9.0
        assert t[0, 0].item() == 9.0
        assert t.__dlpack_device__()[0] == 1            # kDLCPU
    np.testing.assert_array_equal(np.from_dlpack(kiln.arange(4)[1:]), [1, 2, 3])


def test_protocols_refuse_as_torch_does():
    for lib in (kiln, torch):
        with pytest.raises(BufferError, match="require gradient"):
            lib.ones(2, requires_grad=True).__dlpack__()
        assert not hasattr(lib.ones(2), "__cuda_array_interface__")   # CPU: AttributeError
        with pytest.raises(TypeError, match="deleting items"):
            del lib.ones(2)[0]
