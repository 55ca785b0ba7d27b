"""torch.ao.quantization.FakeQuantize against torch's: the observer's statistics, the scale and
zero point buffers, the fake-quantized values and straight-through gradients over several
batches, the enable/disable switches (methods and model.apply functions), the default
factories, and a per-channel state_dict loaded into a fresh module. kiln had no FakeQuantize
(`torch.ao.quantization.FakeQuantize` was an AttributeError)."""

import numpy as np
import pytest
import torch
import torch.ao.quantization as tq

import kiln
import kiln.ao.quantization as kq


def _batches(seed: int, shape=(6, 4)) -> list:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(shape) * rng.uniform(0.5, 3) + rng.uniform(-1, 1))
            .astype(np.float32) for _ in range(4)]


FACTORIES = ["default_fake_quant", "default_weight_fake_quant",
             "default_per_channel_weight_fake_quant"]


@pytest.mark.parametrize("factory", FACTORIES)
def test_fake_quantize_matches_torch_over_batches_and_switches(factory):
    t_fq, k_fq = getattr(tq, factory)(), getattr(kq, factory)()
    for i, x in enumerate(_batches(FACTORIES.index(factory))):
        if i == 2:                                    # observation frozen from batch 2 on
            t_fq.disable_observer()
            k_fq.disable_observer()
        xt = torch.tensor(x, requires_grad=True)
        xk = kiln.tensor(x, requires_grad=True)
        out_t, out_k = t_fq(xt), k_fq(xk)
        np.testing.assert_array_equal(out_k.detach().numpy(), out_t.detach().numpy())
        g = np.linspace(-1, 1, x.size, dtype=np.float32).reshape(x.shape)
        out_t.backward(torch.tensor(g))
        out_k.backward(kiln.tensor(g))
        np.testing.assert_array_equal(xk.grad.numpy(), xt.grad.numpy())
        np.testing.assert_array_equal(k_fq.scale.numpy(), t_fq.scale.numpy())
        np.testing.assert_array_equal(k_fq.zero_point.numpy(), t_fq.zero_point.numpy())
        assert str(k_fq.zero_point.dtype)[5:] == str(t_fq.zero_point.dtype)[6:]
    assert (k_fq.quant_min, k_fq.quant_max) == (t_fq.quant_min, t_fq.quant_max)
    assert list(k_fq.state_dict()) == list(t_fq.state_dict())
    # the module-level switches, as model.apply uses them
    kiln.nn.Sequential(k_fq).apply(kq.disable_fake_quant)
    torch.nn.Sequential(t_fq).apply(tq.disable_fake_quant)
    x = _batches(9)[0]
    np.testing.assert_array_equal(k_fq(kiln.tensor(x)).numpy(), x)
    assert k_fq.fake_quant_enabled.tolist() == t_fq.fake_quant_enabled.tolist() == [0]
    kiln.nn.Sequential(k_fq).apply(kq.enable_observer)
    assert k_fq.observer_enabled.tolist() == [1]


def test_per_channel_state_dict_loads_into_a_fresh_module():
    trained = kq.default_per_channel_weight_fake_quant()
    x = _batches(3, (5, 7))[0]
    trained(kiln.tensor(x))
    fresh = kq.default_per_channel_weight_fake_quant()
    fresh.load_state_dict(trained.state_dict())
    assert tuple(fresh.scale.shape) == (5,)
    fresh.disable_observer()
    np.testing.assert_array_equal(fresh(kiln.tensor(x)).numpy(), trained(kiln.tensor(x)).numpy())
