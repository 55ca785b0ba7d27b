"""as_strided / empty_strided / new_empty_strided against torch: values, gradients where
windows overlap, the view's writes reaching the input, compiled against eager, and the cases
kiln refuses by name (non-contiguous input, positions outside the input)."""

import numpy as np
import pytest
import torch

import kiln
from tests.parity import check_op

CASES = [((12,), (3, 3), (1, 1), None),          # overlapping windows: gradients accumulate
         ((3, 4), (2, 2), (1, 2), None),
         ((3, 4), (4, 2), (2, 3), 1),
         ((2, 3, 4), (2, 3), (12, 4), 0),        # every 4th: a column
         ((2, 3, 4), (2, 0, 2), (1, 1, 1), 5),   # an empty view
         ((5,), (), (), 3)]                      # a 0-d view of one element


@pytest.mark.parametrize("shape,size,stride,offset", CASES)
def test_as_strided_matches_torch(shape, size, stride, offset):
    check_op(lambda lib, x: lib.as_strided(x * 1.5, size, stride, offset), [shape])
    check_op(lambda lib, x: (x * 1.5).as_strided(size, stride, offset).sin(), [shape])


def test_view_offsets_count_from_the_memory_as_torch():
    for lib in (torch, kiln):
        base = lib.arange(12.0)
        part = base[4:]                       # storage offset 4: the default offset
        assert part.as_strided((2, 2), (1, 2)).tolist() == [[4.0, 6.0], [5.0, 7.0]]
        assert part.as_strided((2,), (3,), 5).tolist() == [5.0, 8.0]


def test_writes_through_the_view_reach_the_input():
    def run(lib):
        x = lib.zeros(3, 4)
        x.as_strided((3,), (5,)).fill_(1.0)                 # the diagonal
        x.as_strided((2, 2), (4, 1), 2).add_(lib.tensor([[1.0, 2.0], [3.0, 4.0]]))
        return x.numpy()
    np.testing.assert_array_equal(run(kiln), run(torch))


def test_compiled_equals_eager():
    def f(x):
        windows = x.as_strided((5, 4), (2, 1))
        return (windows * windows.sum(1, keepdim=True)).mean()
    data = np.random.default_rng(0).standard_normal(12).astype(np.float32)
    got = []
    for fn in (f, kiln.compile(f)):
        x = kiln.tensor(data, requires_grad=True)
        loss = fn(x)
        loss.backward()
        got.append((loss.item(), x.grad.numpy()))
    x = torch.tensor(data, requires_grad=True)
    f(x).backward()
    for loss, grad in got:
        np.testing.assert_allclose(grad, x.grad.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[0][0], got[1][0], rtol=1e-6)


@pytest.mark.parametrize("size,stride", [((2, 3), (1, 2)), ((2, 3), (3, 1)), ((4,), (3,)),
                                         ((2, 0), (1, 1))])
def test_empty_strided_has_torchs_layout(size, stride):
    for make in (lambda lib: lib.empty_strided(size, stride, dtype=lib.float64),
                 lambda lib: lib.ones(3).new_empty_strided(size, stride)):
        k, t = make(kiln), make(torch)
        assert k.shape == t.shape and k.stride() == t.stride()
        assert k.is_contiguous() == t.is_contiguous()
        assert str(k.dtype).split(".")[1] == str(t.dtype).split(".")[1]
        k.fill_(2.0)
        assert (k == 2).all()


def test_refusals_name_the_op():
    x = kiln.arange(12.0).reshape(3, 4)
    with pytest.raises(RuntimeError, match="as_strided.*contiguous"):
        x.t().as_strided((2, 2), (1, 2))
    with pytest.raises(RuntimeError, match="as_strided.*outside the input"):
        x[1:].as_strided((2, 2), (1, 2), 0)
    with pytest.raises(RuntimeError, match="as_strided.*outside the input"):
        x.as_strided((4, 4), (4, 1))
    with pytest.raises(RuntimeError, match="as_strided.*Negative strides"):
        x.as_strided((2,), (-1,))
    with pytest.raises(RuntimeError, match="as_strided.*mismatch"):
        x.as_strided((2, 2), (1,))
