"""`.grad` owns its memory: a gradient that nothing else holds is stored as it is (a view too,
when nothing else holds its base: no copy, as PyTorch's AccumulateGrad steals it), and one
that the user can reach (the gradient passed to backward, a retained or hooked gradient, the
same gradient reaching two leaves) is copied. Values against PyTorch; aliasing by memory."""

import numpy as np
import pytest
import torch

import kiln


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _shares(a: kiln.Tensor, b: kiln.Tensor) -> bool:
    """Whether two tensors' memory overlaps (on a GPU: their byte ranges)."""
    if a.device.type == "cpu":
        return np.shares_memory(a.detach().numpy(), b.detach().numpy())
    lo_a, lo_b = a.data_ptr(), b.data_ptr()
    return lo_a < lo_b + b._data.nbytes and lo_b < lo_a + a._data.nbytes


def _np(t) -> np.ndarray:
    return t.detach().cpu().numpy()


@pytest.mark.parametrize("device", DEVICES)
def test_one_gradient_reaching_two_leaves_and_the_seed_is_copied_for_each(device):
    a = kiln.ones(3, requires_grad=True, device=device)
    b = kiln.ones(3, requires_grad=True, device=device)
    ta, tb = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    seed = kiln.tensor([1.0, 2.0, 3.0], device=device)
    (a + b).backward(seed)
    (ta + tb).backward(torch.tensor([1.0, 2.0, 3.0]))
    assert not _shares(a.grad, b.grad) and not _shares(a.grad, seed)
    a.grad += 1                    # the user's in-place change reaches only a.grad
    np.testing.assert_array_equal(_np(b.grad), tb.grad.numpy())
    np.testing.assert_array_equal(_np(seed), [1.0, 2.0, 3.0])
    np.testing.assert_array_equal(_np(a.grad), ta.grad.numpy() + 1)


@pytest.mark.parametrize("device", DEVICES)
def test_a_gradient_a_leaf_hook_kept_is_not_taken_by_grad(device):
    b = kiln.zeros(3, requires_grad=True, device=device)
    tb = torch.zeros(3, requires_grad=True)
    kept, tkept = [], []
    b.register_hook(kept.append)
    tb.register_hook(tkept.append)
    x = np.arange(6.0, dtype=np.float32).reshape(2, 3)
    (kiln.tensor(x, device=device) + b).square().sum().backward()   # b's gradient: a fresh sum
    (torch.tensor(x) + tb).square().sum().backward()
    assert not _shares(b.grad, kept[0])
    b.grad.zero_()
    np.testing.assert_array_equal(_np(kept[0]), tkept[0].numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_retained_gradients_are_not_aliased_with_leaf_grads(device):
    w = np.arange(6.0, dtype=np.float32).reshape(3, 2)
    for make_view in (lambda x: x.t(), lambda x: x * 1):    # x's gradient: a view, a fresh one
        x = kiln.ones(2, 3, requires_grad=True, device=device)
        tx = torch.ones(2, 3, requires_grad=True)
        y, ty = make_view(x).reshape(3, 2), make_view(tx).reshape(3, 2)
        y.retain_grad()
        ty.retain_grad()
        (y * kiln.tensor(w, device=device)).sum().backward()
        (ty * torch.tensor(w)).sum().backward()
        assert not _shares(x.grad, y.grad)
        np.testing.assert_array_equal(_np(x.grad), tx.grad.numpy())
        np.testing.assert_array_equal(_np(y.grad), ty.grad.numpy())


@pytest.mark.parametrize("device", DEVICES)
def test_linear_gradients_are_taken_without_a_copy_and_accumulate_right(device, monkeypatch):
    from kiln.tracer import autograd
    if not autograd._COUNTS_HOLD:
        pytest.skip("this Python's reference counts are not trusted: every gradient is copied")
    taken = []
    check = autograd._memory_unshared
    monkeypatch.setattr(autograd, "_memory_unshared", lambda g: taken.append(check(g)) or
                        taken[-1])
    rng = np.random.default_rng(0)
    x_np = rng.standard_normal((5, 4)).astype(np.float32)
    w_np = rng.standard_normal((3, 4)).astype(np.float32)
    b_np = rng.standard_normal(3).astype(np.float32)
    w = kiln.tensor(w_np, device=device, requires_grad=True)
    b = kiln.tensor(b_np, device=device, requires_grad=True)
    tw = torch.tensor(w_np, requires_grad=True)
    tb = torch.tensor(b_np, requires_grad=True)
    x, tx = kiln.tensor(x_np, device=device), torch.tensor(x_np)
    out = kiln.nn.functional.linear(x, w, b)
    out.square().sum().backward()
    # the weight's gradient is a transposed view of a fresh product, and the bias's a fresh
    # sum: nothing else holds their memory, so `.grad` takes it as it is
    assert taken == [True, True]
    assert w.grad._data.base is not None and w.grad._data.flags.c_contiguous
    first = w.grad
    kiln.nn.functional.linear(x, w, b).sum().backward()      # accumulates in place
    assert w.grad is first
    torch.nn.functional.linear(tx, tw, tb).square().sum().backward()
    torch.nn.functional.linear(tx, tw, tb).sum().backward()
    np.testing.assert_allclose(w.grad.cpu().numpy(), tw.grad.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(b.grad.cpu().numpy(), tb.grad.numpy(), rtol=1e-5, atol=1e-5)
    assert not _shares(w.grad, x) and not _shares(w.grad, out)


def test_autograd_grad_and_create_graph_leave_grads_as_before():
    x = kiln.tensor([1.0, 2.0], requires_grad=True)
    tx = torch.tensor([1.0, 2.0], requires_grad=True)
    (g,) = kiln.autograd.grad((x * x).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((tx * tx).sum(), tx, create_graph=True)
    np.testing.assert_array_equal(g.detach().numpy(), tg.detach().numpy())
    g.sum().backward()
    tg.sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


_AFTER_DYNAMO_ERROR = r"""
import json, sys
import numpy as np
import torch
import kiln
from kiln.tracer import autograd

before = autograd._probe_refs()

@torch.compile(backend="eager")
def baz(x):                       # an error inside a compiled region (the set_stance recipe)
    with torch.compiler.set_stance("force_eager"):
        return x + 1

try:
    baz(torch.zeros(3))
except Exception:
    pass
conv = kiln.nn.Conv2d(3, 4, 3)
pooled = kiln.nn.functional.max_pool2d(conv(kiln.randn(2, 3, 6, 6)), 2)
flat = pooled.view(2, -1)                       # channels-last memory, made C order unseen
a, b = kiln.ones(3, requires_grad=True), kiln.ones(3, requires_grad=True)
seed = kiln.tensor([1.0, 2.0, 3.0])
(a + b).backward(seed)
lin = kiln.nn.Linear(4, 2)
taken, check = [], autograd._memory_unshared
autograd._memory_unshared = lambda g: taken.append(check(g)) or taken[-1]
lin(kiln.ones(5, 4)).sum().backward()
autograd._memory_unshared = check
from kiln.runtime import c_build
from tests.runtime.test_schedule_executor_steps import _reuse_facts
executor = _reuse_facts() if c_build.compiler_problem() is None else None
print(json.dumps({"probe": [before, autograd._probe_refs()], "flat": list(flat.shape),
                  "taken": taken, "executor": executor,
                  "seed_copied": not np.shares_memory(a.grad.numpy(), seed.numpy()),
                  "grads_apart": not np.shares_memory(a.grad.numpy(), b.grad.numpy()),
                  "weight_grad": lin.weight.grad.numpy().tolist()}))
"""


def test_reference_counts_hold_after_torch_dynamo_changes_them():
    """In a process where PyTorch 2.13's TorchDynamo met an error inside a compiled region,
    every reference count reads one higher for each call level that holds the object; kiln
    compared counts with a probe taken at import, so `x.view(-1, n)` after a conv (channels-last
    memory) raised and every gradient was copied. The probe is now taken with each count, held
    through as many calls; the executors' reuse of kept memory compares counts with such
    probes too (kiln/runtime/refcounts.py). (A subprocess: the change lasts for the whole
    process.)"""
    import json
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", _AFTER_DYNAMO_ERROR], capture_output=True,
                         text=True, cwd=root, timeout=300,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["flat"] == [2, 16]
    assert result["seed_copied"] and result["grads_apart"]
    assert result["taken"] == [True, True]      # fresh gradients still taken without a copy
    # the C executor still reuses its kept memory, and leaves what the caller keeps alone
    from tests.runtime.test_schedule_executor_steps import REUSED
    assert result["executor"] in (REUSED, None)
    np.testing.assert_allclose(result["weight_grad"], np.full((2, 4), 5.0))
