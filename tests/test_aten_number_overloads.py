"""ATen's Python-number overloads (`torch.ops.aten.add.default(2, 3)`, `floordiv.int`,
`lt.float`): kiln.ops.aten has each one torch has, with the same results and refusals."""

import pytest
import torch

import kiln

OPS = "add sub mul div floordiv remainder eq ne lt le gt ge".split()
PAIRS = [(7, 2), (-7, 2), (7, -3), (2.5, 0.5), (-7.5, 2), (3, 1.5)]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("overload", ["default", "int", "float"])
def test_number_overloads_compute_as_torchs(op, overload):
    k = getattr(getattr(kiln.ops.aten, op), overload)
    t = getattr(getattr(torch.ops.aten, op), overload)
    for a, b in PAIRS:
        if overload == "int" and not (type(a) is int and type(b) is int):
            continue
        if overload == "float":
            a, b = float(a), float(b)
        got, want = k(a, b), t(a, b)
        assert type(got) is type(want) and got == pytest.approx(want), (op, overload, a, b)


@pytest.mark.parametrize("overload", ["int", "float"])
def test_neg_of_a_number(overload):
    value = 3 if overload == "int" else 2.5
    got = getattr(kiln.ops.aten.neg, overload)(value)
    want = getattr(torch.ops.aten.neg, overload)(value)
    assert type(got) is type(want) and got == want


def test_number_overloads_refuse_tensors_and_wrong_kinds_as_torch():
    for lib in (torch, kiln):
        with pytest.raises(RuntimeError):
            lib.ops.aten.add.default(lib.ones(1), 1)
        with pytest.raises(RuntimeError):
            lib.ops.aten.add.int(2.5, 1)
    assert kiln.ops.aten.add.Tensor(kiln.ones(2), 3).tolist() == [4.0, 4.0]
