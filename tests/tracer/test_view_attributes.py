"""`requires_grad`, `grad_fn` and `is_leaf` read as PyTorch's: a view whose memory another
view (or its base) wrote since takes its history anew when read, and the setters refuse what
PyTorch refuses."""

import warnings

import pytest
import torch

import kiln


def _write_through_other_view(lib):
    """x (no grad) written through one view with a value that requires grad; returns the other
    view, taken before the write, and the parameter."""
    w = lib.tensor([1.5, -2.0], requires_grad=True)
    x = lib.arange(4.0)
    a, b = x[:2], x[1:3]
    a.mul_(w * 2)
    return b, w


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_other_view_of_written_memory_requires_grad(lib):
    b, _ = _write_through_other_view(lib)
    assert (b.requires_grad, b.grad_fn is not None, b.is_leaf) == (True, True, False)


def test_other_view_of_written_memory_backward_matches_torch():
    grads = []
    for lib in (torch, kiln):
        b, w = _write_through_other_view(lib)
        (b * lib.tensor([3.0, 5.0])).sum().backward()
        grads.append(w.grad.tolist())
    assert grads[0] == grads[1] == [0.0, 6.0]      # b[0] is x[1] = a[1] = 1 * 2 * w[1]


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_view_of_base_written_in_place_requires_grad(lib):
    w = lib.tensor(2.0, requires_grad=True)
    x = lib.zeros(2, 2)
    rows = x.view(4)
    x.add_(w)
    assert (rows.requires_grad, rows.is_leaf) == (True, False)
    names = [type(n).__name__ for n, _ in rows.grad_fn.next_functions if n is not None]
    assert names, "the view's history reaches the write"


def test_view_history_after_second_write_reaches_the_new_value():
    out = []
    for lib in (torch, kiln):
        w1 = lib.tensor([1.0, 2.0], requires_grad=True)
        w2 = lib.tensor([3.0, 4.0], requires_grad=True)
        x = lib.zeros(4)
        whole = x[:]
        x[:2].copy_(w1)
        first = whole.grad_fn
        x[2:].copy_(w2 * w2)
        assert whole.grad_fn is not first           # taken anew after the second write
        (whole * lib.arange(1.0, 5.0)).sum().backward()
        out.append((w1.grad.tolist(), w2.grad.tolist()))
    assert out[0] == out[1] == ([1.0, 2.0], [18.0, 32.0])


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_requires_grad_of_a_non_leaf_cannot_be_set(lib):
    y = lib.ones(3, requires_grad=True) * 2
    for value in (False, True):
        with pytest.raises(RuntimeError, match="only change requires_grad flags of leaf"):
            y.requires_grad = value
    assert y.requires_grad and y.grad_fn is not None


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_integer_tensor_cannot_require_grad(lib):
    n = lib.zeros(3, dtype=lib.long)
    with pytest.raises(RuntimeError, match="floating point and complex dtype"):
        n.requires_grad = True
    n.requires_grad = False
    assert not n.requires_grad
    z = lib.zeros(2, dtype=lib.complex64)
    z.requires_grad = True
    assert z.requires_grad


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_requires_grad_must_be_a_bool(lib):
    x = lib.ones(2)
    for value in (1, None):
        with pytest.raises(RuntimeError, match="requires_grad must be a bool"):
            x.requires_grad = value
    assert not x.requires_grad


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_grad_fn_and_is_leaf_are_read_only(lib):
    y = lib.ones(3, requires_grad=True) * 2
    for name in ("grad_fn", "is_leaf"):
        with pytest.raises(AttributeError):
            setattr(y, name, None)
    assert y.grad_fn is not None


def test_compiled_branch_on_a_written_view_matches_eager():
    def step(w):
        x = kiln.arange(1.0, 5.0)
        a, b = x[:2], x[1:3]
        a.mul_(w)                                # b = [2 * w[1], 3] now depends on w
        if b.requires_grad:
            return (b * 3).sum()
        return b.sum()

    compiled = kiln.compile(step)
    with warnings.catch_warnings():
        warnings.simplefilter("error")           # compiled, not run eagerly
        for _ in range(3):
            w_e = kiln.tensor([1.5, -2.0], requires_grad=True)
            w_c = kiln.tensor([1.5, -2.0], requires_grad=True)
            want, got = step(w_e), compiled(w_c)
            assert got.item() == want.item() == (2 * -2.0 + 3) * 3
            want.backward()
            got.backward()
            assert w_c.grad.tolist() == w_e.grad.tolist() == [0.0, 6.0]
    assert all(e.program is not None for e in compiled.entries.values())
