"""`kiln.masked` (torch.masked): MaskedTensor and the masked reductions, against PyTorch."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

import kiln

LIBS = pytest.mark.parametrize("lib", [kiln, torch], ids=["kiln", "torch"])
DATA = [[0.5, -1.0, 2.0, 3.5], [4.0, -0.25, 5.0, 1.0], [2.0, 2.0, -3.0, 0.0]]
MASK = [[True, False, True, True], [False, False, True, False], [False, False, False, False]]


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # torch.masked warns that it is a prototype
        yield


def _mt(lib, requires_grad=False):
    return lib.masked.masked_tensor(lib.tensor(DATA), lib.tensor(MASK), requires_grad)


def _parts(mt):
    """(data where kept, mask): what a MaskedTensor means (data under the mask is arbitrary)."""
    if not type(mt).__name__ == "MaskedTensor":
        return np.asarray(mt.detach().numpy()), None
    mask = np.asarray(mt.get_mask().numpy())
    data = np.asarray(mt.get_data().detach().numpy())
    return np.where(mask, data, 0), mask


def _same(ours, theirs, rtol=1e-6):
    (a, am), (b, bm) = _parts(ours), _parts(theirs)
    assert (am is None) == (bm is None)
    if am is not None:
        np.testing.assert_array_equal(am, bm)
    np.testing.assert_allclose(a, b, rtol=rtol, atol=1e-6, equal_nan=True)


CASES = {
    "exp": lambda lib, m: lib.exp(m), "neg": lambda lib, m: -m, "abs": lambda lib, m: m.abs(),
    "add_self": lambda lib, m: m + m, "mul_scalar": lambda lib, m: m * 2,
    "add_plain": lambda lib, m: m + lib.ones(3, 4), "gt": lambda lib, m: m > 1,
    "sum": lambda lib, m: m.sum(), "sum_dim": lambda lib, m: m.sum(1),
    "sum_keepdim": lambda lib, m: m.sum(1, keepdim=True), "sum_dim0": lambda lib, m: m.sum(0),
    "mean": lambda lib, m: m.mean(), "mean_dim": lambda lib, m: m.mean(1),
    "amax": lambda lib, m: m.amax(1), "amin": lambda lib, m: m.amin(),
    "argmax": lambda lib, m: m.argmax(1), "argmin": lambda lib, m: m.argmin(1),
    "prod": lambda lib, m: m.prod(1), "var": lambda lib, m: m.var(1), "std": lambda lib, m: m.std(),
    "all": lambda lib, m: m.all(), "softmax": lambda lib, m: lib.softmax(m, 1),
    "softmax_dim0": lambda lib, m: m.softmax(0),
    "transpose": lambda lib, m: m.transpose(0, 1), "reshape": lambda lib, m: m.reshape(4, 3),
    "getitem": lambda lib, m: m[0], "unsqueeze": lambda lib, m: m.unsqueeze(0),
    "to_tensor": lambda lib, m: m.to_tensor(-1.0), "detach": lambda lib, m: m.detach(),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_masked_tensor_ops_match_torch(case):
    _same(CASES[case](kiln, _mt(kiln)), CASES[case](torch, _mt(torch)))


FUNCTIONS = {
    "sum": lambda lib, x, m: lib.masked.sum(x, 1, mask=m),
    "sum_all": lambda lib, x, m: lib.masked.sum(x, mask=m),
    "mean": lambda lib, x, m: lib.masked.mean(x, 0, mask=m),
    "amax": lambda lib, x, m: lib.masked.amax(x, 1, mask=m),
    "amin": lambda lib, x, m: lib.masked.amin(x, 0, keepdim=True, mask=m),
    "argmax": lambda lib, x, m: lib.masked.argmax(x, 1, mask=m),
    "prod": lambda lib, x, m: lib.masked.prod(x, 1, mask=m),
    "cumsum": lambda lib, x, m: lib.masked.cumsum(x, 1, mask=m),
    "norm": lambda lib, x, m: lib.masked.norm(x, 2.0, 1, mask=m),
    "var": lambda lib, x, m: lib.masked.var(x, 1, unbiased=False, mask=m),
    "softmax": lambda lib, x, m: lib.masked.softmax(x, 1, mask=m),
    "log_softmax": lambda lib, x, m: lib.masked.log_softmax(x, 1, mask=m),
    "logsumexp": lambda lib, x, m: lib.masked.logsumexp(x, 1, mask=m),
    "normalize": lambda lib, x, m: lib.masked.normalize(x, 2.0, 1, mask=m),
}


@pytest.mark.parametrize("case", sorted(FUNCTIONS))
def test_masked_functions_on_plain_tensors_match_torch(case):
    # a mask with a kept element in every row: PyTorch's value for an all-masked row is an
    # implementation detail of each reduction
    mask = [[True, False, True, True], [False, False, True, False], [True, True, False, True]]
    ours = FUNCTIONS[case](kiln, kiln.tensor(DATA), kiln.tensor(mask))
    theirs = FUNCTIONS[case](torch, torch.tensor(DATA), torch.tensor(mask))
    np.testing.assert_allclose(ours.numpy(), theirs.numpy(), rtol=1e-6, atol=1e-6)


@LIBS
def test_masks_must_match(lib):
    m = _mt(lib)
    other = lib.masked.masked_tensor(lib.tensor(DATA), ~lib.tensor(MASK))
    with pytest.raises(ValueError, match="Input masks must match"):
        m + other


def _reprs(lib):
    m = _mt(lib)
    return repr(m), repr(m.sum()), repr(m.sum(0)), repr(m > 1), repr(
        lib.masked.masked_tensor(lib.tensor(3.0), lib.tensor(False)))


def test_reprs_match_torch():
    assert _reprs(kiln) == _reprs(torch)


def test_gradients_match_torch():
    grads = {}
    for lib in (kiln, torch):
        leaf = _mt(lib, requires_grad=True)
        (leaf * leaf).softmax(1).sum(0).sum().backward()
        x = lib.tensor(DATA, requires_grad=True)
        lib.masked.as_masked_tensor(x, lib.tensor(MASK)).exp().sum().backward()
        grads[lib] = (leaf.grad, x.grad)
    _same(grads[kiln][0], grads[torch][0])
    theirs = grads[torch][1]       # a MaskedTensor in PyTorch; kiln's is plain, 0 where masked
    np.testing.assert_allclose(grads[kiln][1].numpy(), _parts(theirs)[0], rtol=1e-6)


def test_unsupported_ops_are_refused_by_name():
    with pytest.raises(NotImplementedError, match="kiln.masked: matmul is not supported"):
        _mt(kiln) @ kiln.ones(4, 2)
    with pytest.raises(ValueError, match="same shape"):
        kiln.masked.masked_tensor(kiln.ones(2), kiln.tensor([True]))
    with pytest.raises(TypeError, match="dtype bool"):
        kiln.masked.masked_tensor(kiln.ones(2), kiln.ones(2))


def test_sparse_data_is_refused_by_name_where_torch_keeps_it_sparse():
    """torch's MaskedTensor can hold sparse COO data; kiln's holds its data as its own dense
    values, so it refuses a sparse layout at creation instead of failing in a later op."""
    i, v = [[0, 1, 1], [2, 0, 2]], [3.0, 4.0, 5.0]
    g = torch.sparse_coo_tensor(torch.tensor(i), torch.tensor(v), [2, 4])
    assert torch.masked.masked_tensor(g, (g.to_dense() != 0).to_sparse()).get_data().is_sparse
    k = kiln.sparse_coo_tensor(kiln.tensor(i), kiln.tensor(v), [2, 4])
    with pytest.raises(NotImplementedError, match="data is a kiln.sparse_coo tensor"):
        kiln.masked.masked_tensor(k, (k.to_dense() != 0).to_sparse())
    with pytest.raises(NotImplementedError, match="mask is a kiln.sparse_coo tensor"):
        kiln.masked.masked_tensor(k.to_dense(), (k.to_dense() != 0).to_sparse())
