"""float16 on the CPU against torch 2.13's CPU float16: computed in float32 and rounded once,
as PyTorch's kernels compute it (sums, cumulative sums, matmuls and composites accumulate in
float32), compiled code equal to eager, and the ops whose PyTorch kernels round at their own
steps (linspace, histc, addr, addbmm, conv2d's backward, uniform_) reproduced bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as TF

import kiln
import kiln.nn.functional as KF


def _pair(shape, seed=0, scale=3.0):
    data = (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float16)
    return kiln.tensor(data), torch.from_numpy(data.copy())


def _equal(k, t):
    assert k.dtype is kiln.float16 and t.dtype == torch.float16
    np.testing.assert_array_equal(np.asarray(k.detach().numpy()), t.detach().numpy())


def test_accumulations_run_in_float32_and_round_once():
    k, t = _pair((64, 3000))
    # NumPy's float16 cumsum stalls at 2048; kiln's runs in float32 (which accumulates in
    # float64, as PyTorch's float32 kernel, where its float16 kernel accumulates in float32:
    # a few values round to the neighbouring float16)
    np.testing.assert_allclose(k.cumsum(1).float().numpy(), t.cumsum(1).float().numpy(),
                               rtol=2 ** -10, atol=1e-4)
    _equal(k.sum(1), t.sum(1))
    w, tw = _pair((3000, 16), seed=1, scale=0.1)
    # float32 sums in another order can round to the neighbouring float16 (BLAS blocking)
    np.testing.assert_allclose((k @ w).float().numpy(), (t @ tw).float().numpy(),
                               rtol=2 ** -10, atol=0)
    # one rounding for the whole composite; float32 erf differs by an ulp between libraries
    np.testing.assert_allclose(KF.gelu(k).float().numpy(), TF.gelu(t).float().numpy(),
                               rtol=2 ** -10, atol=1e-6)


def test_vector_norm_does_not_overflow():
    k, t = _pair((50,), scale=5.0)
    for ord in (2, 3, 6, -1.5):
        _equal(kiln.linalg.vector_norm(k, ord), torch.linalg.vector_norm(t, ord))
    assert np.isfinite(float(kiln.linalg.vector_norm(k, 6)))


@pytest.mark.parametrize("beta, alpha", [(1, 1), (0.6, 0.2), (0, 0.3)])
def test_addmm_family_rounds_as_aten(beta, alpha):
    x, tx = _pair((5, 10))
    b1, tb1 = _pair((4, 5, 6), seed=1)
    b2, tb2 = _pair((4, 6, 10), seed=2)
    _equal(kiln.addbmm(x, b1, b2, beta=beta, alpha=alpha),
           torch.addbmm(tx, tb1, tb2, beta=beta, alpha=alpha))
    _equal(kiln.addmm(x, b1[0], b2[0], beta=beta, alpha=alpha),
           torch.addmm(tx, tb1[0], tb2[0], beta=beta, alpha=alpha))
    v1, tv1 = _pair((5,), seed=3)
    v2, tv2 = _pair((10,), seed=4)
    _equal(kiln.addr(x, v1, v2, beta=beta, alpha=alpha),
           torch.addr(tx, tv1, tv2, beta=beta, alpha=alpha))


def test_steps_aten_takes_in_float16():
    for start, end, steps in ((4.3, -3, 50), (-10, 10, 101), (3, 1000, 33), (0.1, 0.7, 17)):
        _equal(kiln.linspace(start, end, steps, dtype=kiln.float16),
               torch.linspace(start, end, steps, dtype=torch.float16))
    k, t = _pair((500,), scale=6.0)
    for bins, lo, hi in ((100, -10, 10), (7, -10, 0), (33, -3, 7)):
        _equal(kiln.histc(k, bins, lo, hi), torch.histc(t, bins, lo, hi))
    _equal(kiln.fmod(k, 1.7), torch.fmod(t, 1.7))
    assert kiln.copysign(k, -3.14).dtype is kiln.float16


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
@pytest.mark.parametrize("low, high", [(0.0, 1.0), (1.0, 2.0), (-3.3, 5.7), (-100, 1000)])
def test_uniform_of_half_types_draws_torchs_values(dtype, low, high):
    if not hasattr(kiln, dtype):
        pytest.skip(f"this kiln has no {dtype}")
    torch.manual_seed(0)
    kiln.manual_seed(0)
    t = torch.empty(20000, dtype=getattr(torch, dtype)).uniform_(low, high)
    k = kiln.empty(20000, dtype=getattr(kiln, dtype)).uniform_(low, high)
    np.testing.assert_array_equal(k.float().numpy(), t.float().numpy())
    assert float(k.float().max()) < high          # a value rounding up to `high` is `low`


def test_conv2d_backward_rounds_as_torchs_kernel():
    x, tx = _pair((6, 3, 8, 8), scale=1.0)
    w, tw = _pair((4, 3, 3, 3), seed=1, scale=0.3)
    b, tb = _pair((4,), seed=2, scale=0.3)
    g, tg = _pair((6, 4, 4, 2), seed=3, scale=1.0)
    for t in (x, w, b, tx, tw, tb):
        t.requires_grad_(True)
    ky = KF.conv2d(x, w, b, stride=(2, 3), padding=1, dilation=(1, 2))
    ty = TF.conv2d(tx, tw, tb, stride=(2, 3), padding=1, dilation=(1, 2))
    _equal(ky, ty)
    ky.backward(g)
    ty.backward(tg)
    for k, t in ((x, tx), (w, tw), (b, tb)):
        _equal(k.grad, t.grad)


def test_grid_sample_3d_index_is_integer():
    """A float16 index stops being exact past 2048: the gather read past the input."""
    torch.manual_seed(0)
    ti = torch.randn(2, 3, 14, 13, 15).half()
    tg = (torch.rand(2, 5, 6, 7, 3) * 2.2 - 1.1).half()
    out = KF.grid_sample(kiln.tensor(ti.numpy()), kiln.tensor(tg.numpy()), align_corners=False)
    ref = TF.grid_sample(ti, tg, align_corners=False)
    np.testing.assert_allclose(out.float().numpy(), ref.float().numpy(), rtol=1e-2, atol=1e-3)


def test_compiled_equals_eager_on_float16_accumulations():
    k, _ = _pair((32, 3000))
    w, _ = _pair((3000, 16), seed=1, scale=0.1)

    def f(a, b):
        return a.cumsum(1), a @ b, KF.gelu(a)
    compiled = kiln.compile(f)
    eager = f(k, w)
    for _ in range(3):
        out = compiled(k, w)
    for e, c in zip(eager[:2], out[:2]):
        np.testing.assert_array_equal(np.asarray(c.numpy()), np.asarray(e.numpy()))
    # the C kernel's float32 erf (Cephes' polynomial) is a couple of ulps from NumPy's
    np.testing.assert_allclose(out[2].float().numpy(), eager[2].float().numpy(),
                               rtol=2 ** -10, atol=1e-6)
