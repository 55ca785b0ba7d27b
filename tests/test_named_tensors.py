"""Named tensors: PyTorch 2.13 removed them (pytorch/pytorch#173895), and kiln follows it.

Every call of PyTorch's named-tensor tutorial (`intermediate_source/named_tensor_tutorial.py`),
in its form, fails in torch 2.13; each must fail in kiln with the same exception type, so a
script behaves alike on both. Where the tutorial gives a dimension by name, kiln's message says
why and what to do instead.
"""

from __future__ import annotations

import pytest
import torch

import kiln

# (what, fn(lib, x)): the tutorial's calls; x is torch.randn(3, 1, 1, 2), its `named_imgs`
TUTORIAL_CALLS = [
    ("randn_names", lambda lib, x: lib.randn(1, 2, 2, 3, names=("N", "C", "H", "W"))),
    ("names", lambda lib, x: x.names),
    ("rename_mapping", lambda lib, x: x.rename(channel="C", width="W", height="H")),
    ("rename_none", lambda lib, x: x.rename(None)),
    ("refine_names", lambda lib, x: x.refine_names("N", "C", "H", "W")),
    ("refine_names_ellipsis", lambda lib, x: x.refine_names(..., "H", "W")),
    ("sum_by_name", lambda lib, x: x.sum("C")),
    ("select_by_name", lambda lib, x: x.select("N", 0)),
    ("rand_names", lambda lib, x: lib.rand(2, names=("N",))),
    ("align_as", lambda lib, x: x.align_as(x)),
    ("flatten_names", lambda lib, x: x.flatten(["C", "H", "W"], "features")),
    ("unflatten_name", lambda lib, x: x.unflatten("features", (("C", 2), ("H", 2), ("W", 2)))),
    ("align_to", lambda lib, x: x.align_to(..., "H", "T", "D_head")),
    ("size_by_name", lambda lib, x: x.size("D")),
]

# the same API in the other ops the tutorial's readers reach for
OTHER_CALLS = [
    ("zeros_names", lambda lib, x: lib.zeros(2, 3, names=("N", "C"))),
    ("ones_names", lambda lib, x: lib.ones(2, names=("N",))),
    ("empty_names", lambda lib, x: lib.empty(2, names=("N",))),
    ("full_names", lambda lib, x: lib.full((2,), 1.0, names=("N",))),
    ("tensor_names", lambda lib, x: lib.tensor([1.0, 2.0], names=("N",))),
    ("has_names", lambda lib, x: x.has_names()),
    ("mean_by_name", lambda lib, x: x.mean("C")),
    ("softmax_by_name", lambda lib, x: x.softmax(dim="W")),
    ("transpose_by_name", lambda lib, x: x.transpose("H", "W")),
    ("squeeze_by_name", lambda lib, x: x.squeeze("C")),
    ("unbind_by_name", lambda lib, x: x.unbind("N")),
    ("max_by_name", lambda lib, x: x.max("N")),
]

CALLS = TUTORIAL_CALLS + OTHER_CALLS


def _failure(lib, fn):
    try:
        fn(lib, lib.randn(3, 1, 1, 2))
    except Exception as e:        # noqa: BLE001 - the type is what is compared
        return e
    return None


@pytest.mark.parametrize("what,fn", CALLS, ids=[c[0] for c in CALLS])
def test_fails_in_kiln_as_in_torch_2_13(what, fn):
    expected = _failure(torch, fn)
    assert expected is not None, f"torch {torch.__version__} ran {what}: named tensors are back"
    got = _failure(kiln, fn)
    assert type(got) is type(expected), f"{what}: kiln raised {got!r}, torch {expected!r}"


@pytest.mark.parametrize("what,fn", [c for c in CALLS if "by_name" in c[0] or "flatten" in c[0]],
                         ids=[c[0] for c in CALLS if "by_name" in c[0] or "flatten" in c[0]])
def test_a_dimension_by_name_says_named_tensors_are_gone(what, fn):
    message = str(_failure(kiln, fn))
    assert "named tensors" in message and "2.13" in message and "index" in message


def test_neither_has_the_named_tensor_methods():
    for name in ("names", "rename", "rename_", "refine_names", "align_to", "align_as",
                 "has_names"):
        assert hasattr(torch.Tensor, name) == hasattr(kiln.Tensor, name), name


def test_dimensions_by_index_still_work_as_in_torch():
    # the tutorial's computations with indices for names: N, C, H, W = 0, 1, 2, 3
    t = torch.randn(3, 2, 2, 2)
    k = kiln.tensor(t.numpy())
    pairs = [
        (t.sum(1), k.sum(1)), (t.select(0, 0), k.select(0, 0)),
        (t.flatten(1, 3), k.flatten(1, 3)),
        (t.flatten(1, 3).unflatten(1, (2, 2, 2)), k.flatten(1, 3).unflatten(1, (2, 2, 2))),
        (t.permute(0, 2, 3, 1), k.permute(0, 2, 3, 1)),
        (t * torch.ones(3)[:, None, None, None], k * kiln.ones(3)[:, None, None, None]),
    ]
    for i, (want, have) in enumerate(pairs):
        assert tuple(have.shape) == tuple(want.shape), i
        assert (have.numpy() == want.numpy()).all(), i
    assert k.size(3) == t.size(3)
