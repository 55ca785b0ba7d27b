"""kiln.return_types against torch.return_types: the same type names and fields per op, printed
as PyTorch prints them (`torch.return_types.max(` then one `field=value` line per field)."""

import numpy as np
import pytest
import torch

import kiln

X = np.array([[1.0, 3.0, 2.0], [4.0, 2.0, 0.5]])

CALLS = [
    ("max", lambda lib, x: lib.max(x, 1)), ("min", lambda lib, x: x.min(0)),
    ("sort", lambda lib, x: x.sort(descending=True)), ("topk", lambda lib, x: lib.topk(x, 2)),
    ("kthvalue", lambda lib, x: x.kthvalue(2)), ("median", lambda lib, x: x.median(1)),
    ("mode", lambda lib, x: lib.mode(x)), ("cummax", lambda lib, x: x.cummax(1)),
    ("cummin", lambda lib, x: lib.cummin(x, 0)), ("aminmax", lambda lib, x: lib.aminmax(x)),
    ("svd", lambda lib, x: lib.svd(x[:, :2])), ("slogdet", lambda lib, x: lib.slogdet(x[:, :2])),
    ("linalg_qr", lambda lib, x: lib.linalg.qr(x)),
    ("linalg_eigh", lambda lib, x: lib.linalg.eigh(x[:, :2] @ x[:, :2].T)),
]


@pytest.mark.parametrize("name, call", CALLS, ids=[c[0] for c in CALLS])
def test_named_results_have_torchs_type_names_fields_and_printout(name, call):
    # introyt tensors tutorial: print(torch.svd(m3)) printed `svd(U=..., S=..., V=...)`, and
    # torch.max(x, 1) `values_indices(...)`, where torch prints torch.return_types.<op>(...)
    k, t = call(kiln, kiln.tensor(X)), call(torch, torch.tensor(X))
    assert type(k).__name__ == type(t).__name__ == name
    fields = [f for f in ("values", "indices", "U", "S", "V", "sign", "logabsdet", "Q", "R",
                          "eigenvalues", "eigenvectors", "min", "max") if hasattr(t, f)]
    assert list(k._fields) == fields
    for f in fields:
        np.testing.assert_allclose(getattr(k, f).numpy(), getattr(t, f).numpy(), rtol=1e-10,
                                   atol=1e-12)
    assert repr(k).replace("kiln.", "torch.") == repr(t)
    first, *rest = k                       # still a tuple
    assert first is k[0] and len(rest) == len(fields) - 1
