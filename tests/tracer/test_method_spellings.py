"""Tensor methods called the ways PyTorch accepts: sizes and dims one by one or as one sequence
or keyword, the tensor in the method's own place (`x.where(cond, y)`), an in-place call that
returns its tensor. kiln binds methods apart from functions (`kiln/tracer/methods.py`), so each
spelling is checked against torch's result here; `tests/test_opinfo_variants.py` runs PyTorch's
samples through the methods."""

import numpy as np
import pytest
import torch

import kiln

SPELLINGS = [
    "x.flip(0, 2)", "x.flip((0, 2))", "x.flip([1])", "x.flip(1)", "x.flip(dims=(0, 1))",
    "x.tile(2)", "x.tile(2, 1, 1)", "x.tile((1, 2))", "x.tile(dims=(2, 1))",
    "x.permute(2, 0, 1)", "x.permute((2, 0, 1))", "x.view(6, 4)", "x.view((6, -1))",
    "x.reshape(4, 6)", "x.reshape(shape=(4, -1))", "x.repeat(1, 2, 1)", "x.repeat((2, 1, 1))", "x[:, :1].expand(2, 3, 4)",
    "x.where(x > 0, y)", "x.where(x > 0, 0.5)", "x.where(condition=x < 0, other=y)",
    "x.split(split_size=[1, 3], dim=-1)[1]", "x.split(split_size=2, dim=1)[0]", "x.split(1)[1]",
]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_method_spelling_matches_torch(spelling):
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 2, 3, 4)).astype(np.float32)
    want = eval(spelling, {"x": torch.tensor(a), "y": torch.tensor(b)})
    got = eval(spelling, {"x": kiln.tensor(a), "y": kiln.tensor(b)})
    assert tuple(got.shape) == tuple(want.shape)
    np.testing.assert_array_equal(got.numpy(), want.numpy())


# inf * 0: NumPy's warning, which kiln's module filter silences outside pytest
@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("p", [0.0, 0.5, 1.0])
def test_inplace_dropout_returns_its_input(p):
    """`F.dropout(x, p, inplace=True)` is x for every p: p = 1 once returned a new tensor of
    zeros and left x as it was."""
    x = kiln.tensor([1.0, -2.0, float("inf")])
    want = torch.nn.functional.dropout(torch.tensor([1.0, -2.0, float("inf")]), p, True,
                                       inplace=True)
    out = kiln.nn.functional.dropout(x, p, True, inplace=True)
    assert out is x
    if p != 0.5:                    # p = 0.5 draws: only the identity is compared
        np.testing.assert_array_equal(x.numpy(), want.numpy())


def test_inplace_tan_keeps_its_gradient():
    """`y.tan_()` overwrites y: its gradient reads tan's output (1 + tan^2), not y, as PyTorch's
    does (kiln's tan was sin / cos, whose rules read the overwritten y)."""
    a = np.linspace(-0.7, 0.7, 9)
    grads = []
    for lib in (torch, kiln):
        x = lib.tensor(a, requires_grad=True)
        y = x * 2
        y.tan_()
        (y * y).sum().backward()
        grads.append(np.asarray(x.grad.tolist()))
    np.testing.assert_allclose(grads[1], grads[0], rtol=1e-12)
