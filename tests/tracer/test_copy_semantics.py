"""Ops PyTorch defines as copies (flip, fliplr, flipud, rot90, repeat, tile, repeat_interleave)
give memory of their own in kiln too: NumPy's forms of some are views, through which an
in-place write reached the input (x.flip(0).add_(1) changed x) or was refused (repeat). So do
floor, ceil and trunc of integers, which returned the input itself."""

import numpy as np
import pytest
import torch

import kiln

COPIES = {
    "flip": lambda lib, x: x.flip(0),
    "fliplr": lambda lib, x: lib.fliplr(x),
    "flipud": lambda lib, x: lib.flipud(x),
    "rot90": lambda lib, x: lib.rot90(x, 1, (0, 1)),
    "rot90_2": lambda lib, x: lib.rot90(x, 2, (0, 1)),
    "repeat_ones": lambda lib, x: x.repeat(1, 1),
    "repeat_rows": lambda lib, x: x[:1].repeat(4, 1),
    "tile": lambda lib, x: lib.tile(x, (1, 2)),
    "repeat_interleave_1": lambda lib, x: x.repeat_interleave(1, 0),
    "repeat_interleave_2": lambda lib, x: x.repeat_interleave(2, 1),
}


@pytest.mark.parametrize("name", sorted(COPIES))
def test_a_write_into_the_result_leaves_the_input_alone_as_in_torch(name):
    seen = []
    for lib in (torch, kiln):
        x = lib.tensor(np.arange(6, dtype=np.float32).reshape(2, 3))
        y = COPIES[name](lib, x)
        y.add_(100)
        seen.append((x.tolist(), y.tolist(), tuple(y.stride())))
    assert seen[1] == seen[0]


@pytest.mark.parametrize("name", sorted(COPIES))
def test_gradients_and_compiled_writes_through_the_copy(name):
    def f(x):
        y = COPIES[name](kiln, x * 1.0)
        y.mul_(2)
        return (y * y).sum() + x.sum()
    data = np.random.default_rng(0).standard_normal((2, 3))
    results = []
    for fn in (f, kiln.compile(f), kiln.compile(f)):
        x = kiln.tensor(data, requires_grad=True)
        out = fn(x)
        out.backward()
        results.append((out.item(), x.grad.numpy().copy()))
    tx = torch.tensor(data, requires_grad=True)
    ty = COPIES[name](torch, tx * 1.0)
    ty.mul_(2)
    tout = (ty * ty).sum() + tx.sum()
    tout.backward()
    for value, grad in results:
        np.testing.assert_allclose(value, tout.item(), rtol=1e-12)
        np.testing.assert_allclose(grad, tx.grad.numpy(), rtol=1e-12)


@pytest.mark.parametrize("op", ["floor", "ceil", "trunc"])
@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_rounding_an_integer_tensor_gives_a_copy_as_in_torch(op, compiled):
    def f(lib, x):
        y = getattr(x, op)()
        y.add_(10)
        return y, x * 1

    want = f(torch, torch.arange(4))
    fn = kiln.compile(lambda x: f(kiln, x)) if compiled else (lambda x: f(kiln, x))
    for _ in range(2):
        x = kiln.arange(4)
        got = fn(x)
        assert [g.tolist() for g in got] == [w.tolist() for w in want]
        assert x.tolist() == [0, 1, 2, 3]


def test_real_is_an_attribute_and_imag_refuses_as_for_a_real_torch_tensor():
    for lib in (torch, kiln):
        x = lib.tensor([1.0, -2.0])
        x.real.add_(1)                          # the real part of a real tensor is itself
        assert x.tolist() == [2.0, -1.0]
        with pytest.raises(RuntimeError, match="imag is not implemented"):
            x.imag


def test_expand_that_repeats_nothing_can_be_written_through_as_in_torch():
    seen = []
    for lib in (torch, kiln):
        x = lib.zeros(3)
        x.expand(1, 3).add_(1)                  # a new leading dim of size 1: no repeats
        x[None].expand_as(lib.ones(1, 3)).mul_(2)
        with pytest.raises(RuntimeError, match="more than one element"):
            lib.zeros(1, 3).expand(2, 3).add_(1)
        seen.append(x.tolist())
    assert seen[0] == seen[1] == [2.0, 2.0, 2.0]


def test_numpy_of_a_tensor_that_requires_grad_is_refused_only_in_grad_mode():
    """torch refuses numpy() on a tensor that requires grad only while grad mode is on: under
    no_grad, and inside a custom Function's forward (which NumPy-backed Functions rely on), it
    converts."""
    for lib in (torch, kiln):
        x = lib.tensor([1.0, 2.0], requires_grad=True)
        with pytest.raises(RuntimeError, match="requires grad"):
            x.numpy()
        with lib.no_grad():
            np.testing.assert_array_equal(x.numpy(), [1.0, 2.0])

        class Double(lib.autograd.Function):
            @staticmethod
            def forward(t):
                return lib.tensor(t.numpy() * 2)

            @staticmethod
            def setup_context(ctx, inputs, output):
                pass

            @staticmethod
            def backward(ctx, g):
                return 2 * g
        y = Double.apply(x)
        y.sum().backward()
        np.testing.assert_array_equal(y.detach().numpy(), [2.0, 4.0])
        np.testing.assert_array_equal(x.grad.numpy(), [2.0, 2.0])
