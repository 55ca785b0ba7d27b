"""Python's shift and augmented-assignment operators on tensors, against PyTorch: `v |= m` on a
view writes into its base (Python would otherwise rebind `v` to a new tensor and leave the base
as it was), and autograd sees the in-place op."""

import numpy as np
import pytest

import kiln

torch = pytest.importorskip("torch")

AUGMENTED = {
    "or": lambda v: v.__ior__(8), "and": lambda v: v.__iand__(6), "xor": lambda v: v.__ixor__(5),
    "lshift": lambda v: v.__ilshift__(2), "rshift": lambda v: v.__irshift__(1),
    "mod": lambda v: v.__imod__(4), "floordiv": lambda v: v.__ifloordiv__(3),
    "pow": lambda v: v.__ipow__(2),
}


@pytest.mark.parametrize("op", sorted(AUGMENTED))
def test_augmented_assignment_writes_through_a_view(op):
    def run(lib):
        t = lib.tensor([[1, 2, 3], [-4, 5, 6]])
        v = t[1]
        out = AUGMENTED[op](v)
        assert out is v
        return t
    np.testing.assert_array_equal(run(kiln).numpy(), run(torch).numpy())


def test_statement_forms_and_reflected_shifts():
    def run(lib):
        t = lib.arange(12).reshape(3, 4)
        row = t[0]
        row |= 16
        row <<= 1
        col = t[:, 1]
        col **= 2
        col %= 11
        col >>= 1
        return t, 3 << lib.tensor([1, 2]), 64 >> lib.tensor([1, 3]), \
            lib.stack(list(reversed(lib.tensor([[1, 2], [3, 4]]))))
    for k, t in zip(run(kiln), run(torch)):
        np.testing.assert_array_equal(k.numpy(), t.numpy())


def test_ipow_records_an_in_place_op_for_autograd():
    def run(lib):
        x = lib.tensor([1.0, 2.0, 3.0], requires_grad=True)
        y = x * 1
        y **= 3
        y.sum().backward()
        return x.grad
    np.testing.assert_allclose(run(kiln).numpy(), run(torch).numpy())
