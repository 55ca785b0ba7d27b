"""PyTorch's legacy constructors (torch.Tensor(2, 3), torch.FloatTensor(array), ...) and the
`size=` keyword of the factory functions, as graph scripts in pytorch/examples use them,
against PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import kiln


def same(k, t):
    assert tuple(k.shape) == tuple(t.shape)
    assert k.dtype.name == str(t.dtype).split(".")[1]


@pytest.mark.parametrize("args", [(2, 3), (4,), (), (np.int64(2), 5)])
def test_tensor_with_a_shape_is_float32_of_that_shape(args):
    same(kiln.Tensor(*args), torch.Tensor(*args))
    same(kiln.FloatTensor(*args), torch.FloatTensor(*args))
    same(kiln.LongTensor(*args), torch.LongTensor(*args))
    same(kiln.Tensor(kiln.Size(args)), torch.Tensor(torch.Size(args)))


@pytest.mark.parametrize("name", ["Tensor", "FloatTensor", "DoubleTensor", "LongTensor",
                                  "IntTensor", "BoolTensor", "ByteTensor", "HalfTensor"])
@pytest.mark.parametrize("data", [[1, 0, 3], [[1.5, 2.0]], np.array([[1, 0], [2, 7]],
                                                                       dtype=np.int32)])
def test_data_is_copied_into_the_constructors_dtype(name, data):
    data = data.copy()                        # the parameter is shared between the cases
    k, t = getattr(kiln, name)(data), getattr(torch, name)(data)
    same(k, t)
    np.testing.assert_array_equal(np.asarray(k.numpy(), dtype=np.float64),
                                  t.numpy().astype(np.float64))
    if isinstance(data, np.ndarray):
        data[0, 0] = 99                       # a copy: the array's later writes do not show
        assert k.numpy().flat[0] != 99


def test_isinstance_asks_for_the_dtype_and_a_float_tensor_is_aliased():
    x = kiln.ones(2)
    assert isinstance(x, kiln.FloatTensor) and isinstance(x, kiln.Tensor)
    assert not isinstance(x, kiln.LongTensor) and not isinstance(kiln.ones(2).long(),
                                                                 kiln.FloatTensor)
    assert kiln.FloatTensor(x) is x           # PyTorch's legacy constructor aliases, too
    with pytest.raises(TypeError, match="Tensor\\(\\): takes a shape"):
        kiln.Tensor(2, "a")


@pytest.mark.parametrize("name", ["empty", "zeros", "ones", "rand", "randn"])
def test_factories_take_the_size_keyword(name):
    same(getattr(kiln, name)(size=(2, 3)), getattr(torch, name)(size=(2, 3)))
    with pytest.raises(TypeError, match="unexpected keyword argument 'shape'"):
        getattr(kiln, name)(shape=(2, 3))
    full = kiln.full(size=(2, 2), fill_value=3.0)
    np.testing.assert_array_equal(full.numpy(), torch.full(size=(2, 2), fill_value=3.0).numpy())
