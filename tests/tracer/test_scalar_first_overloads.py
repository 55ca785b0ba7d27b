"""PyTorch's deprecated scalar-first overloads against torch 2.13: `p.data.add_(-lr, p.grad.data)`
(older tutorials' hand-written SGD step), `x.sub(2, y)`, `x.addcmul_(v, t1, t2)`,
`torch.addcdiv(x, v, t1, t2)`: the same values and gradients, and the same single warning."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import kiln
from tests.parity import assert_close, random_array

# (what, fn(lib, x, y, z)): each deprecated form as a script writes it
CASES = [
    ("add_method", lambda lib, x, y, z: x.add(-0.5, y)),
    ("add_function", lambda lib, x, y, z: lib.add(x, 3, y)),
    ("add_inplace", lambda lib, x, y, z: x.clone().add_(-0.1, y)),
    ("sub_method", lambda lib, x, y, z: x.sub(2, y)),
    ("sub_function", lambda lib, x, y, z: lib.sub(x, 0.25, y)),
    ("sub_inplace", lambda lib, x, y, z: x.clone().sub_(1.5, y)),
    ("addcmul_method", lambda lib, x, y, z: x.addcmul(0.5, y, z)),
    ("addcmul_function", lambda lib, x, y, z: lib.addcmul(x, 2, y, z)),
    ("addcmul_inplace", lambda lib, x, y, z: x.clone().addcmul_(-3, y, z)),
    ("addcdiv_method", lambda lib, x, y, z: x.addcdiv(0.5, y, z)),
    ("addcdiv_function", lambda lib, x, y, z: lib.addcdiv(x, 2, y, z)),
    ("addcdiv_inplace", lambda lib, x, y, z: x.clone().addcdiv_(-3, y, z)),
]


def _inputs(lib, dtype, requires_grad=False):
    arrays = [random_array((2, 3), dtype, 0.5, 2.0, np.random.default_rng(i)) for i in range(3)]
    make = torch.from_numpy if lib is torch else kiln.from_numpy
    return [make(a.copy()).requires_grad_(requires_grad) for a in arrays]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("what,fn", CASES, ids=[c[0] for c in CASES])
def test_values_and_gradients_match_torch(what, fn, dtype):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        tx, kx = _inputs(torch, dtype, True), _inputs(kiln, dtype, True)
        t_out, k_out = fn(torch, *tx), fn(kiln, *kx)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    assert_close(k_out, t_out, tol, tol, what)
    t_out.sum().backward()
    k_out.sum().backward()
    for i, (k, t) in enumerate(zip(kx, tx)):
        if t.grad is not None:
            assert_close(k.grad, t.grad, tol, tol, f"{what}: grad of input {i}")


def test_the_hand_written_sgd_step_of_older_tutorials_matches_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for lib in (torch, kiln):
            w = lib.ones(3, requires_grad=True)
            (w * lib.tensor([1.0, 2.0, 3.0])).sum().backward()
            w.data.add_(-0.1, w.grad.data)
            if lib is torch:
                expected = w.detach()
    assert_close(w.detach(), expected, 1e-7, 1e-7, "updated weight")


def test_integer_tensors_take_integer_scalars_as_torch():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = torch.tensor([1, 2, 3]).add(2, torch.tensor([4, 5, 6]))
        k = kiln.tensor([1, 2, 3]).add(2, kiln.tensor([4, 5, 6]))
    assert_close(k, t, 0, 0, "int64 add")


@pytest.mark.parametrize("call", ["x.add(y, y)", "x.add(2, y, alpha=3)", "x.addcmul(y, y, y)"])
def test_malformed_calls_raise_type_error_as_torch(call):
    for lib in (torch, kiln):
        x, y = lib.ones(2), lib.ones(2)
        with pytest.raises(TypeError):
            eval(call, {"x": x, "y": y})


_SCRIPT = """
import warnings, {lib} as torch
warnings.simplefilter("always")
x, y = torch.ones(2), torch.ones(2)
with warnings.catch_warnings(record=True) as seen:
    warnings.simplefilter("always")
    x.clone().add_(2, y); x.clone().add_(3, y); x.sub(1, y); torch.addcmul(x, 2, y, y)
    x.addcdiv_(2, y, y)
for w in seen:
    print(w.category.__name__, str(w.message).splitlines()[0])
"""


def _warnings_of(lib: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", _SCRIPT.format(lib=lib)], capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.splitlines()


def test_warns_once_per_process_as_torch():
    expected = _warnings_of("torch")
    assert _warnings_of("kiln") == expected
    assert len(expected) == 1
