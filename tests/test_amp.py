"""GradScaler against torch.amp.GradScaler on the CPU (where both scale for real), and autocast's
state (its policies: tests/test_autocast.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kiln


def _run(lib, losses_scale):
    w = lib.tensor([1.0, -2.0, 0.5], requires_grad=True)
    opt = lib.optim.SGD([w], lr=0.1)
    scaler = lib.amp.GradScaler("cpu", init_scale=8.0, growth_interval=2)
    scales = []
    for k in losses_scale:
        opt.zero_grad()
        loss = (w * w).sum() * k          # k = inf makes the gradients non-finite
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        scales.append(scaler.get_scale())
    return w.detach().numpy().copy(), scales


def test_grad_scaler_matches_torch_including_skipped_steps() -> None:
    ks = [1.0, 1.0, float("inf"), 1.0, 1.0, 1.0]
    kw, ks_k = _run(kiln, ks)
    tw, ks_t = _run(torch, ks)
    np.testing.assert_allclose(kw, tw, rtol=1e-6)
    assert ks_k == ks_t


def test_grad_scaler_unscale_then_clip_matches_torch() -> None:
    out = {}
    for lib in (torch, kiln):
        w = lib.tensor([3.0, 4.0], requires_grad=True)
        opt = lib.optim.SGD([w], lr=1.0)
        scaler = lib.amp.GradScaler("cpu", init_scale=4.0)
        scaler.scale((w * w).sum()).backward()
        scaler.unscale_(opt)
        lib.nn.utils.clip_grad_norm_([w], 1.0)
        scaler.step(opt)
        scaler.update()
        out[lib.__name__] = (w.detach().numpy().copy(), scaler.state_dict()["scale"])
    np.testing.assert_allclose(out["kiln"][0], out["torch"][0], rtol=1e-6)
    assert out["kiln"][1] == out["torch"][1]


def test_cuda_scaler_without_cuda_disables_itself_like_torch() -> None:
    if kiln.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.warns(UserWarning):
        scaler = kiln.cuda.amp.GradScaler()
    assert not scaler.is_enabled()
    loss = kiln.tensor(2.0, requires_grad=True)
    assert scaler.scale(loss) is loss


def test_autocast_is_reported_and_casts_matmul_like_torch() -> None:
    # the policies in full: tests/test_autocast.py
    for lib in (torch, kiln):
        x = lib.ones(2, 2)
        with lib.autocast("cpu", enabled=False):
            assert not lib.is_autocast_enabled("cpu")
            assert (x @ x).dtype is lib.float32
        with lib.autocast("cpu", dtype=lib.float16):
            assert lib.is_autocast_enabled("cpu")
            assert (x @ x).dtype is lib.float16
        assert not lib.is_autocast_enabled("cpu")


@pytest.mark.gpu
def test_unscale_reads_the_device_once_per_step(monkeypatch) -> None:
    # a host read of a device value waits for the GPU; unscale_ reads one flag for all the
    # gradients of a device (it read one per parameter), and still skips a non-finite step
    from kiln.runtime.device import cupy_module
    from tests import fake_cuda
    if cupy_module() is not fake_cuda.cupy:
        pytest.skip("counts the fake CUDA's host transfers")
    reads = []
    real = fake_cuda._host_access
    monkeypatch.setattr(fake_cuda, "_host_access", lambda what: reads.append(what) or real(what))
    for k, skipped in ((1.0, False), (float("inf"), True)):
        ws = [kiln.tensor([1.0, -2.0], device="cuda", requires_grad=True) for _ in range(4)]
        opt = kiln.optim.SGD(ws, lr=0.1, foreach=False)
        scaler = kiln.amp.GradScaler("cuda", init_scale=8.0)
        scaler.scale(sum((w * w).sum() for w in ws) * k).backward()
        reads.clear()
        scaler.unscale_(opt)
        assert len([r for r in reads if "reading" in r or "to the host" in r]) == 1, reads
        scaler.step(opt)
        moved = ws[0].detach().cpu().numpy()
        np.testing.assert_allclose(moved, [1.0, -2.0] if skipped else [0.8, -1.6], rtol=1e-6)


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_legacy_per_device_autocast_spellings(lib):
    """torch.get_autocast_cpu_dtype() and its siblings: deprecated spellings that still read
    and set the same state as get_autocast_dtype('cpu') and friends."""
    with pytest.warns(DeprecationWarning):
        before = lib.get_autocast_cpu_dtype()
    assert before == lib.get_autocast_dtype("cpu") == lib.bfloat16
    with pytest.warns(DeprecationWarning):
        assert lib.get_autocast_gpu_dtype() == lib.float16
    try:
        with pytest.warns(DeprecationWarning):
            lib.set_autocast_cpu_dtype(lib.float16)
            lib.set_autocast_cpu_enabled(True)
        assert lib.get_autocast_dtype("cpu") == lib.float16
        assert lib.is_autocast_enabled("cpu")
        with pytest.warns(DeprecationWarning):
            assert lib.is_autocast_cpu_enabled()
        x = lib.ones(2, 3)
        assert lib.mm(x, x.t()).dtype == lib.float16       # the state autocasts ops
    finally:
        lib.set_autocast_enabled("cpu", False)
        lib.set_autocast_dtype("cpu", before)
    assert lib.is_autocast_cache_enabled()
    lib.clear_autocast_cache()


def test_math_constants_are_torchs():
    assert (kiln.pi, kiln.e, kiln.inf) == (torch.pi, torch.e, torch.inf)
    assert math.isnan(kiln.nan) and kiln.newaxis is torch.newaxis is None
