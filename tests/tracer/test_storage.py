"""Tensor.untyped_storage() / storage() against torch: the same byte counts, element counts,
values and sharing answers for tensors, views and copies; resizing is refused by name."""

import warnings

import numpy as np
import pytest
import torch

import kiln


def _facts(lib):
    t = lib.arange(6.0).reshape(2, 3)
    view, copy = t[1], t[1].clone()
    s = t.untyped_storage()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        typed = view.storage()
    return {
        "nbytes": (s.nbytes(), s.size(), len(s), s.element_size()),
        "view shares": view.untyped_storage().data_ptr() == s.data_ptr() == t.data_ptr(),
        "copy shares": copy.untyped_storage().data_ptr() == s.data_ptr(),
        "copy nbytes": copy.untyped_storage().nbytes(),
        "bytes": s.tolist()[:8],
        "typed": (typed.size(), len(typed), typed.tolist(), typed[4], typed.nbytes(),
                  typed.element_size(), str(typed.dtype).split(".")[1]),
        "typed ptr": typed.data_ptr() == t.data_ptr(),
        "untyped of typed": typed.untyped().nbytes(),
        "is_storage": lib.is_storage(s),
        "int64": lib.arange(5).untyped_storage().nbytes(),
        "transposed": t.t().untyped_storage().data_ptr() == t.data_ptr(),
    }


def test_storage_facts_match_torch():
    assert _facts(kiln) == _facts(torch)


def test_storage_warns_as_deprecated_and_resize_is_refused():
    with pytest.warns(UserWarning, match="TypedStorage is deprecated"):
        kiln.ones(2).storage()
    with pytest.raises(RuntimeError, match="resize_"):
        kiln.ones(2).untyped_storage().resize_(0)
    assert np.frombuffer(bytes(kiln.tensor([1.0]).untyped_storage().tolist()),
                         np.float32).tolist() == [1.0]
