"""Memory formats against PyTorch: `.to(memory_format=torch.channels_last)` gives the same
strides and values, `is_contiguous(memory_format=...)` the same answers, and a channels-last
model trains (eagerly and compiled) exactly as a row-major one."""

import numpy as np
import pytest
import torch

import kiln
import kiln.nn as knn
import kiln.nn.functional as KF

FORMATS = [("contiguous_format", 4), ("channels_last", 4), ("channels_last_3d", 5)]


def _pair(shape, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return torch.from_numpy(a.copy()), kiln.tensor(a.copy())


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 3, 4, 5), (2, 1, 4, 5), (2, 3, 1, 1),
                                   (1, 1, 1, 1)])
def test_channels_last_strides_values_and_contiguity_match_torch(shape):
    t, k = _pair(shape)
    tc, kc = t.to(memory_format=torch.channels_last), k.to(memory_format=kiln.channels_last)
    assert kc.stride() == tc.stride()
    np.testing.assert_array_equal(kc.numpy(), tc.numpy())
    for tensor_t, tensor_k in [(t, k), (tc, kc)]:
        for name, ndim in FORMATS[:2]:
            assert tensor_k.is_contiguous(memory_format=getattr(kiln, name)) == \
                tensor_t.is_contiguous(memory_format=getattr(torch, name)), (shape, name)
        assert tensor_k.is_contiguous() == tensor_t.is_contiguous()
    back_t, back_k = tc.contiguous(), kc.contiguous()
    assert back_k.stride() == back_t.stride()
    np.testing.assert_array_equal(back_k.numpy(), t.numpy())


def test_views_and_5d_layouts_answer_as_torch():
    t, k = _pair((2, 3, 4, 5, 6))
    for fmt in ["contiguous_format", "channels_last_3d"]:
        tc = t.to(memory_format=getattr(torch, fmt))
        kc = k.to(memory_format=getattr(kiln, fmt))
        assert kc.stride() == tc.stride()
        assert kc.is_contiguous(memory_format=kiln.channels_last_3d) == \
            tc.is_contiguous(memory_format=torch.channels_last_3d)
    t4, k4 = _pair((2, 3, 4, 5))
    for tv, kv in [(t4.transpose(1, 3), k4.transpose(1, 3)), (t4[:, :, ::2], k4[:, :, ::2]),
                   (t4.permute(0, 2, 3, 1), k4.permute(0, 2, 3, 1))]:
        for name, _ in FORMATS[:2]:
            assert kv.is_contiguous(memory_format=getattr(kiln, name)) == \
                tv.is_contiguous(memory_format=getattr(torch, name)), name


def test_contiguous_in_the_layout_it_has_is_the_tensor_itself_and_clone_takes_a_format():
    _, k = _pair((2, 3, 4, 5))
    kc = k.contiguous(memory_format=kiln.channels_last)
    assert kc.contiguous(memory_format=kiln.channels_last) is kc
    assert k.contiguous() is k
    t, _ = _pair((2, 3, 4, 5))
    assert k.clone(memory_format=kiln.channels_last).stride() == \
        t.clone(memory_format=torch.channels_last).stride()
    assert kc.clone(memory_format=kiln.contiguous_format).stride() == t.stride()


def test_wrong_rank_and_preserve_format_are_refused_as_in_torch():
    t, k = _pair((2, 3, 4))
    with pytest.raises(RuntimeError, match="rank 4"):
        t.to(memory_format=torch.channels_last)
    with pytest.raises(RuntimeError, match="rank 4"):
        k.to(memory_format=kiln.channels_last)
    with pytest.raises(RuntimeError, match="preserve"):
        k.contiguous(memory_format=kiln.preserve_format)
    with pytest.raises(TypeError, match="memory format"):
        k.contiguous(memory_format="channels_last")
    assert k.to(memory_format=kiln.preserve_format) is k


def test_gradients_flow_through_a_layout_change():
    t, k = _pair((2, 3, 4, 5))
    t.requires_grad_(True)
    k.requires_grad_(True)
    w = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    (t.to(memory_format=torch.channels_last) * torch.from_numpy(w)).sum().backward()
    (k.to(memory_format=kiln.channels_last) * kiln.tensor(w)).sum().backward()
    np.testing.assert_array_equal(k.grad.numpy(), t.grad.numpy())


def _cnn(lib):
    nn = lib.nn
    # (no bias before the batch norm: its gradient is rounding noise, which Adam would scale
    # up to steps of the learning rate's size, differently in every summation order)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Conv2d(8, 4, 3), nn.Flatten(), nn.Linear(4 * 2 * 2, 5))


def test_module_to_channels_last_lays_out_4d_parameters_only_and_trains_as_torch():
    torch.manual_seed(0)
    tm = _cnn(torch)
    km = _cnn(kiln)
    km.load_state_dict({k: kiln.tensor(v.detach().numpy().copy())
                        for k, v in tm.state_dict().items()})
    tm = tm.to(memory_format=torch.channels_last)
    opt_before = kiln.optim.SGD(km.parameters(), lr=0.1, momentum=0.9)
    km = km.to(memory_format=kiln.channels_last)
    for (name, tp), (_, kp) in zip(tm.named_parameters(), km.named_parameters()):
        assert kp.stride() == tp.stride(), name
    assert km[0].weight is opt_before.param_groups[0]["params"][0]   # the same Parameter
    topt = torch.optim.SGD(tm.parameters(), lr=0.1, momentum=0.9)
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.standard_normal((4, 3, 8, 8)).astype(np.float32)
        y = rng.integers(0, 5, 4)
        tx = torch.from_numpy(x).to(memory_format=torch.channels_last)
        kx = kiln.tensor(x).to(memory_format=kiln.channels_last)
        tl = torch.nn.functional.cross_entropy(tm(tx), torch.from_numpy(y))
        kl = KF.cross_entropy(km(kx), kiln.tensor(y))
        topt.zero_grad()
        tl.backward()
        topt.step()
        opt_before.zero_grad()
        kl.backward()
        opt_before.step()
        np.testing.assert_allclose(kl.item(), tl.item(), rtol=1e-5)
    for (name, tp), (_, kp) in zip(tm.named_parameters(), km.named_parameters()):
        np.testing.assert_allclose(kp.detach().numpy(), tp.detach().numpy(), rtol=1e-4,
                                   atol=1e-5, err_msg=name)


def test_compiled_step_on_a_channels_last_model_equals_eager():
    def build():
        kiln.manual_seed(0)
        model = _cnn(kiln).to(memory_format=kiln.channels_last)
        return model, kiln.optim.Adam(model.parameters(), lr=1e-2)

    def make_step(model, opt):
        def step(x, y):
            loss = KF.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            return loss
        return step
    eager_model, eager_opt = build()
    comp_model, comp_opt = build()
    eager, compiled = make_step(eager_model, eager_opt), kiln.compile(make_step(comp_model,
                                                                             comp_opt))
    rng = np.random.default_rng(3)
    for _ in range(4):
        x = kiln.tensor(rng.standard_normal((4, 3, 8, 8)).astype(np.float32))
        x = x.to(memory_format=kiln.channels_last)
        y = kiln.tensor(rng.integers(0, 5, 4))
        np.testing.assert_allclose(compiled(x, y).item(), eager(x, y).item(), rtol=1e-5)
    for pe, pc in zip(eager_model.parameters(), comp_model.parameters()):
        np.testing.assert_allclose(pc.detach().numpy(), pe.detach().numpy(), rtol=1e-4,
                                   atol=1e-6)


def test_backends_flag_modules_import_as_scripts_import_them():
    import kiln.backends.cudnn as cudnn
    cudnn.benchmark = True
    assert kiln.backends.cudnn.benchmark is True
    cudnn.benchmark = False
    from kiln.backends import cuda, mps  # noqa: F401
    import kiln.backends.mps as mps_module
    assert mps_module is mps and mps_module.is_available() is False


@pytest.mark.gpu
def test_channels_last_on_cuda_matches_the_cpu():
    t, k = _pair((2, 3, 4, 5))
    kc = k.to("cuda", memory_format=kiln.channels_last)
    assert kc.device.type == "cuda"
    assert kc.stride() == t.to(memory_format=torch.channels_last).stride()
    assert kc.is_contiguous(memory_format=kiln.channels_last) and not kc.is_contiguous()
    np.testing.assert_array_equal(kc.contiguous().cpu().numpy(), t.numpy())
    model = _cnn(kiln).to("cuda", memory_format=kiln.channels_last)
    assert model[0].weight.device.type == "cuda"
    assert model[0].weight.is_contiguous(memory_format=kiln.channels_last)
    assert model(kiln.randn(2, 3, 8, 8, device="cuda")).shape == (2, 5)


@pytest.mark.parametrize("shape,name", [((10, 3, 32, 32), "channels_last"),
                                        ((2, 1, 4, 5), "channels_last"),
                                        ((2, 3, 4, 5, 6), "channels_last_3d")])
def test_factories_make_and_like_factories_keep_a_channels_last_layout_as_torch(shape, name):
    # memory_format tutorial: torch.empty(N, C, H, W, memory_format=torch.channels_last) and
    # torch.empty_like(x) of such an x have channels-last strides (kiln gave row-major ones)
    def run(lib):
        fmt = getattr(lib, name)
        x = lib.empty(*shape, memory_format=fmt)
        made = [x, lib.empty_like(x), lib.zeros_like(x), lib.ones_like(x), lib.full_like(x, 2.0),
                lib.zeros_like(x, memory_format=lib.contiguous_format),
                lib.empty_like(lib.ones(shape), memory_format=fmt)]
        return made + [made[1] + made[3]]
    for k, t in zip(run(kiln), run(torch)):
        assert k.stride() == t.stride(), (k.stride(), t.stride())
    k_ones, t_ones = run(kiln)[3], run(torch)[3]
    np.testing.assert_array_equal(k_ones.numpy(), t_ones.numpy())


@pytest.mark.parametrize("make", ["zeros", "empty", "ones", "randn"])
@pytest.mark.parametrize("shape", [(0,), (2, 0), (0, 3), (2, 0, 3), (0, 0)])
def test_empty_tensors_have_torchs_dense_strides(make, shape):
    # NumPy gives a new empty array zero strides; torch a dense tensor's (size-0 dims as 1)
    k, t = getattr(kiln, make)(shape), getattr(torch, make)(shape)
    assert k.stride() == t.stride()
    assert k.is_contiguous() and k.is_contiguous(memory_format=kiln.contiguous_format)
    assert kiln.zeros(3, 4)[:, :0].stride() == torch.zeros(3, 4)[:, :0].stride()
