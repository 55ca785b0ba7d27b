"""nn.utils beyond clipping: parametrizations (weight_norm, spectral_norm, custom ones), the
hook-based weight_norm/spectral_norm, BatchNorm fusion, get_total_norm, skip_init; against
torch with copied weights and buffers."""

import numpy as np
import pytest
import torch

import kiln
from tests.nn.layer_parity import check_layer, torch_to_kiln_state


def _pw(nn, fn, *args, **kwargs):
    return getattr(nn.utils.parametrizations, fn)(*args, **kwargs)


LAYERS = [
    (lambda nn: _pw(nn, "weight_norm", nn.Linear(4, 3)), [(2, 4)]),
    (lambda nn: _pw(nn, "weight_norm", nn.Conv2d(2, 3, 2), dim=1), [(1, 2, 4, 4)]),
    (lambda nn: _pw(nn, "weight_norm", nn.Linear(4, 3), dim=None), [(2, 4)]),
    (lambda nn: _pw(nn, "spectral_norm", nn.Linear(4, 3)), [(2, 4)]),
    (lambda nn: _pw(nn, "spectral_norm", nn.ConvTranspose2d(2, 3, 2)), [(1, 2, 3, 3)]),
    (lambda nn: nn.utils.weight_norm(nn.Linear(4, 3)), [(2, 4)]),
    (lambda nn: nn.utils.weight_norm(nn.Conv1d(2, 3, 2), dim=None), [(1, 2, 5)]),
    (lambda nn: nn.utils.spectral_norm(nn.Linear(4, 3)), [(2, 4)]),
]


@pytest.mark.parametrize("make,inputs", LAYERS, ids=range(len(LAYERS)))
@pytest.mark.parametrize("train", [False, True])
def test_normalized_layer_matches_torch(make, inputs, train):
    t_layer, k_layer = check_layer(make, inputs, train=train)
    # the power iteration's vectors advance identically in training mode
    for key, value in t_layer.state_dict().items():
        np.testing.assert_allclose(k_layer.state_dict()[key].numpy(), value.numpy(),
                                   rtol=1e-9, atol=1e-12, err_msg=key)


def test_parametrized_module_keys_class_and_removal_match_torch():
    for lib in (torch, kiln):
        layer = lib.nn.Linear(3, 2)
        lib.nn.utils.parametrizations.weight_norm(layer)
        assert type(layer).__name__ == "ParametrizedLinear"
        assert lib.nn.utils.parametrize.is_parametrized(layer, "weight")
    t, k = torch.nn.Linear(3, 2), kiln.nn.Linear(3, 2)
    torch.nn.utils.parametrizations.weight_norm(t)
    kiln.nn.utils.parametrizations.weight_norm(k)
    assert list(k.state_dict()) == list(t.state_dict())
    k.load_state_dict(torch_to_kiln_state(t))
    kiln.nn.utils.parametrize.remove_parametrizations(k, "weight")
    torch.nn.utils.parametrize.remove_parametrizations(t, "weight")
    assert type(k) is kiln.nn.Linear and list(k.state_dict()) == list(t.state_dict())
    np.testing.assert_allclose(k.weight.detach().numpy(), t.weight.detach().numpy(), rtol=1e-6)



def test_removal_keeps_parameters_and_buffers_as_torch():
    # where the removed weight lands (a parameter or a buffer) follows torch: weight_norm's
    # value computed under no_grad needs no grad, so torch keeps it as a buffer (kiln made a
    # parameter); a single original keeps its own kind (a buffer stayed a buffer in torch only)
    class Double(torch.nn.Module):
        def forward(self, x):
            return 2 * x

    class KDouble(kiln.nn.Module):
        def forward(self, x):
            return 2 * x

    def kinds(lib, double, grad_mode, parametrization):
        layer = lib.nn.Linear(3, 2)
        if parametrization == "weight_norm":
            lib.nn.utils.parametrizations.weight_norm(layer)
        else:
            del layer.weight
            layer.register_buffer("weight", lib.ones(2, 3))
            lib.nn.utils.parametrize.register_parametrization(layer, "weight", double())
        with grad_mode():
            lib.nn.utils.parametrize.remove_parametrizations(layer, "weight")
        return ([n for n, _ in layer.named_parameters()], [n for n, _ in layer.named_buffers()],
                type(layer.weight).__name__, layer.weight.requires_grad)

    for grad_mode in ("no_grad", "enable_grad"):
        for parametrization in ("weight_norm", "buffer"):
            t = kinds(torch, Double, getattr(torch, grad_mode), parametrization)
            k = kinds(kiln, KDouble, getattr(kiln, grad_mode), parametrization)
            assert k == t, (grad_mode, parametrization, k, t)

def test_custom_parametrization_with_right_inverse_and_assignment():
    class Symmetric(kiln.nn.Module):
        def forward(self, x):
            return x.triu() + x.triu(1).transpose(-1, -2)

        def right_inverse(self, a):
            return a.triu()

    layer = kiln.nn.Linear(3, 3)
    kiln.nn.utils.parametrize.register_parametrization(layer, "weight", Symmetric())
    w = layer.weight.detach().numpy()
    np.testing.assert_allclose(w, w.T)
    target = np.arange(9.0).reshape(3, 3)
    target = target + target.T
    layer.weight = kiln.tensor(target, dtype=kiln.float32)
    np.testing.assert_allclose(layer.weight.detach().numpy(), target)
    out = layer(kiln.ones(1, 3)).sum()
    out.backward()
    original = layer.parametrizations.weight.original
    assert original.grad is not None
    with kiln.nn.utils.parametrize.cached():
        assert layer.weight is layer.weight
    opt = kiln.optim.SGD(layer.parameters(), lr=0.1)
    opt.step()
    w = layer.weight.detach().numpy()
    np.testing.assert_allclose(w, w.T)


def test_remove_hook_norms_restore_plain_parameters():
    for remove, add in [("remove_weight_norm", "weight_norm"),
                        ("remove_spectral_norm", "spectral_norm")]:
        layer = getattr(kiln.nn.utils, add)(kiln.nn.Linear(3, 2))
        layer(kiln.ones(1, 3))
        before = layer.weight.detach().numpy().copy()
        getattr(kiln.nn.utils, remove)(layer)
        assert [n for n, _ in layer.named_parameters()] == ["bias", "weight"] or \
            sorted(n for n, _ in layer.named_parameters()) == ["bias", "weight"]
        np.testing.assert_allclose(layer.weight.detach().numpy(), before, rtol=1e-6)


@pytest.mark.parametrize("transpose", [False, True])
def test_fuse_conv_bn_eval_matches_torch(transpose):
    conv_cls = "ConvTranspose2d" if transpose else "Conv2d"
    x = np.random.default_rng(0).normal(size=(2, 3, 5, 5))
    outs = []
    t_conv = t_bn = None
    for lib in (torch, kiln):
        lib.manual_seed(0)
        conv = getattr(lib.nn, conv_cls)(3, 4, 3).double().eval()
        bn = lib.nn.BatchNorm2d(4).double().eval()
        if lib is kiln:
            conv.load_state_dict(torch_to_kiln_state(t_conv))
            bn.load_state_dict(torch_to_kiln_state(t_bn))
        else:
            with torch.no_grad():
                bn.running_mean.uniform_(-1, 1)
                bn.running_var.uniform_(0.5, 2)
                bn.weight.uniform_(0.5, 2)
                bn.bias.uniform_(-1, 1)
            t_conv, t_bn = conv, bn
        fused = lib.nn.utils.fuse_conv_bn_eval(conv, bn, transpose=transpose)
        outs.append((fused(lib.tensor(x)).detach().numpy(),
                     bn(conv(lib.tensor(x))).detach().numpy()))
    np.testing.assert_allclose(outs[1][0], outs[0][0], rtol=1e-10)
    np.testing.assert_allclose(outs[1][0], outs[1][1], rtol=1e-10)


def test_fuse_linear_bn_eval_and_total_norm_match_torch():
    t_lin, t_bn = torch.nn.Linear(3, 4).double().eval(), torch.nn.BatchNorm1d(4).double().eval()
    with torch.no_grad():
        t_bn.running_mean.uniform_(-1, 1)
        t_bn.running_var.uniform_(0.5, 2)
    k_lin, k_bn = kiln.nn.Linear(3, 4).double().eval(), kiln.nn.BatchNorm1d(4).double().eval()
    k_lin.load_state_dict(torch_to_kiln_state(t_lin))
    k_bn.load_state_dict(torch_to_kiln_state(t_bn))
    x = np.random.default_rng(0).normal(size=(5, 3))
    t = torch.nn.utils.fuse_linear_bn_eval(t_lin, t_bn)(torch.tensor(x)).detach().numpy()
    k = kiln.nn.utils.fuse_linear_bn_eval(k_lin, k_bn)(kiln.tensor(x)).detach().numpy()
    np.testing.assert_allclose(k, t, rtol=1e-10)
    arrays = [np.random.default_rng(i).normal(size=(3, 4)) for i in range(3)]
    for p in (2.0, 1.0, float("inf")):
        kt = kiln.nn.utils.get_total_norm([kiln.tensor(a) for a in arrays], p)
        tt = torch.nn.utils.get_total_norm([torch.tensor(a) for a in arrays], p)
        np.testing.assert_allclose(float(kt), float(tt), rtol=1e-12)
    kp = [kiln.nn.Parameter(kiln.zeros(3, 4, dtype=kiln.float64)) for _ in arrays]
    for p, a in zip(kp, arrays):
        p.grad = kiln.tensor(a)
    kiln.nn.utils.clip_grads_with_norm_(kp, 1.0, kiln.nn.utils.get_total_norm(
        [p.grad for p in kp]))
    assert float(kiln.nn.utils.get_total_norm([p.grad for p in kp])) == pytest.approx(1.0,
                                                                                      rel=1e-5)


def test_skip_init_leaves_the_random_stream_alone():
    kiln.manual_seed(3)
    layer = kiln.nn.utils.skip_init(kiln.nn.Linear, 4, 5)
    after = kiln.rand(3).numpy()
    kiln.manual_seed(3)
    np.testing.assert_array_equal(kiln.rand(3).numpy(), after)
    assert tuple(layer.weight.shape) == (5, 4)


def test_clip_grad_norm_takes_a_generator_like_torch():
    """model.parameters() is a generator: it must be read once for the norm and the clip."""
    grads = [np.full((2, 2), 3.0), np.full((3,), -4.0)]
    results = []
    for lib in (torch, kiln):
        model = lib.nn.Sequential(lib.nn.Linear(2, 2, bias=False), lib.nn.Linear(2, 3))
        params = [model[0].weight, model[1].bias]
        for p, g in zip(params, grads):
            p.grad = lib.tensor(g, dtype=p.dtype)
        total = lib.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        results.append((float(total), [p.grad.numpy().copy() for p in params]))
    assert results[1][0] == pytest.approx(results[0][0], rel=1e-6)
    for k, t in zip(results[1][1], results[0][1]):
        np.testing.assert_allclose(k, t, rtol=1e-5)
