"""linalg.qr's three modes ('reduced', 'complete', 'r') and torch.qr(some=False) against
torch 2.13: shapes, strides, values, gradients where torch has them and its refusals where it
has none, compiled against eager, and mode 'r' never forming Q."""

import numpy as np
import pytest
import torch

import kiln

SHAPES = [(5, 3), (3, 5), (4, 4), (2, 5, 3), (2, 3, 5)]


def _pair(shape, seed=0, dtype=np.float64):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    return kiln.tensor(a.copy()), torch.tensor(a.copy())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["reduced", "complete", "r"])
def test_each_mode_gives_torchs_factors(shape, mode):
    k, t = _pair(shape)
    (kq, kr), (tq, tr) = kiln.linalg.qr(k, mode=mode), torch.linalg.qr(t, mode=mode)
    assert kq.shape == tq.shape and kr.shape == tr.shape
    assert kq.stride() == tq.stride() and kr.stride() == tr.stride()
    np.testing.assert_allclose(kq.numpy(), tq.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(kr.numpy(), tr.numpy(), rtol=1e-10, atol=1e-12)


def test_complete_q_is_orthogonal_and_reconstructs_a_tall_matrix():
    k, _ = _pair((6, 2))
    q, r = kiln.linalg.qr(k, mode="complete")
    np.testing.assert_allclose((q.mT @ q).numpy(), np.eye(6), atol=1e-12)
    np.testing.assert_allclose((q @ r).numpy(), k.numpy(), atol=1e-12)
    np.testing.assert_allclose(r.numpy()[2:], 0.0, atol=0)


@pytest.mark.parametrize("some", [True, False])
def test_legacy_torch_qr_some(some):
    k, t = _pair((5, 3), seed=1)
    for a, b in zip(kiln.qr(k, some=some), torch.qr(t, some=some)):
        assert a.shape == b.shape
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 5), (4, 4), (2, 3, 5)])
def test_complete_mode_gradient_where_torch_has_one(shape):
    k, t = _pair(shape, seed=2)
    k.requires_grad_(True)
    t.requires_grad_(True)
    w = np.random.default_rng(3).standard_normal(shape[:-1] + (shape[-2],))
    for lib, a in ((kiln, k), (torch, t)):
        q, r = lib.linalg.qr(a, mode="complete")
        ((q * lib.tensor(w)).sum() + (r * r).sum()).backward()
    np.testing.assert_allclose(k.grad.numpy(), t.grad.numpy(), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("mode, shape, message", [
    ("r", (4, 3), "not computed when mode='r'"),
    ("complete", (5, 3), "not differentiable when mode='complete' and nrows > ncols"),
])
def test_no_gradient_where_torch_has_none(mode, shape, message):
    for lib in (kiln, torch):
        a = lib.tensor(np.random.default_rng(4).standard_normal(shape), requires_grad=True)
        _, r = lib.linalg.qr(a, mode=mode)
        with pytest.raises(RuntimeError, match=message):
            r.sum().backward()


def test_an_unknown_mode_is_refused_as_torch():
    for lib in (kiln, torch):
        with pytest.raises(RuntimeError, match="unrecognized mode 'full'"):
            lib.linalg.qr(lib.ones(3, 3, dtype=lib.float64), mode="full")


def test_mode_r_never_forms_q(monkeypatch):
    modes = []
    real = np.linalg.qr

    def spy(a, mode="reduced"):
        modes.append(mode)
        return real(a, mode=mode)

    monkeypatch.setattr(np.linalg, "qr", spy)
    k, t = _pair((50, 20), seed=5)
    r = kiln.linalg.qr(k, mode="r").R
    assert modes == ["r"]
    np.testing.assert_allclose(r.numpy(), torch.linalg.qr(t, mode="r").R.numpy(), rtol=1e-10,
                               atol=1e-12)


@pytest.mark.parametrize("mode", ["reduced", "complete"])
def test_compiled_equals_eager(mode):
    def f(a):
        q, r = kiln.linalg.qr(a * 2, mode=mode)
        return q.sum(-1), r.abs().sum()

    g = kiln.compile(f)
    for seed in range(3):
        k, _ = _pair((2, 3, 5), seed=seed, dtype=np.float32)
        for x, y in zip(f(k), g(k)):
            np.testing.assert_allclose(y.numpy(), x.numpy(), rtol=1e-6, atol=1e-6)
