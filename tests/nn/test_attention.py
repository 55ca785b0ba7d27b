"""kiln.nn.attention: sdpa_kernel sets and restores the same backend flags as torch's, the
attention it runs under SDPBackend.MATH is torch's, and with MATH off kiln (which has only the
math implementation) refuses to run instead of pretending; nn.attention.bias's causal masks
give torch's attention."""

import numpy as np
import pytest
import torch
import torch.nn.attention as tattn
import torch.nn.attention.bias as tbias

import kiln
import kiln.nn.attention as kattn
import kiln.nn.attention.bias as kbias

FLAGS = ("math", "flash", "mem_efficient", "cudnn")


def flags(lib) -> dict:
    return {name: getattr(lib.backends.cuda, f"{name}_sdp_enabled")() for name in FLAGS}


@pytest.mark.parametrize("selection", [["MATH"], ["FLASH_ATTENTION"],
                                       ["MATH", "EFFICIENT_ATTENTION"], [], "CUDNN_ATTENTION"])
def test_sdpa_kernel_sets_and_restores_torchs_flags(selection):
    def backends(module):
        if isinstance(selection, str):
            return getattr(module.SDPBackend, selection)
        return [getattr(module.SDPBackend, name) for name in selection]
    assert flags(kiln) == flags(torch)
    with tattn.sdpa_kernel(backends(tattn)), kattn.sdpa_kernel(backends(kattn)):
        assert flags(kiln) == flags(torch)
    assert flags(kiln) == flags(torch)
    assert {k: int(v) for k, v in kattn.SDPBackend.__members__.items()} == \
        {k: int(v) for k, v in tattn.SDPBackend.__members__.items()}


def test_sdpa_under_math_matches_torch_and_refuses_without_math():
    rng = np.random.default_rng(0)
    q, k, v = (rng.normal(size=(2, 2, 4, 3)) for _ in range(3))
    outs = []
    for lib, attn in ((torch, tattn), (kiln, kattn)):
        with attn.sdpa_kernel(attn.SDPBackend.MATH):
            outs.append(lib.nn.functional.scaled_dot_product_attention(
                *(lib.tensor(a) for a in (q, k, v)), is_causal=True).numpy())
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-12)
    with kattn.sdpa_kernel([kattn.SDPBackend.FLASH_ATTENTION]):
        with pytest.raises(RuntimeError, match="SDPBackend.MATH"):
            kiln.nn.functional.scaled_dot_product_attention(kiln.tensor(q), kiln.tensor(k),
                                                            kiln.tensor(v))
    assert kiln.backends.cuda.math_sdp_enabled()
    with pytest.raises(TypeError, match="SDPBackend"):
        with kattn.sdpa_kernel("math"):
            pass


def test_causal_biases_give_torchs_attention_and_masks():
    """nn.attention.bias: causal_upper_left (is_causal's mask) and causal_lower_right (aligned
    to the last key) as attn_mask, for a query shorter than the keys and for equal lengths;
    their materialized masks, outputs and gradients agree with torch's."""
    rng = np.random.default_rng(1)
    for lq, lk in ((3, 5), (4, 4)):
        q, k, v = rng.normal(size=(2, 2, lq, 3)), rng.normal(size=(2, 2, lk, 3)), \
            rng.normal(size=(2, 2, lk, 3))
        for name in ("causal_upper_left", "causal_lower_right"):
            outs = []
            for lib, mod in ((torch, tbias), (kiln, kbias)):
                bias = getattr(mod, name)(lq, lk)
                args = [lib.tensor(a, requires_grad=True) for a in (q, k, v)]
                out = lib.nn.functional.scaled_dot_product_attention(*args, bias)
                (out * lib.tensor(np.arange(out.numel()).reshape(out.shape) / 7)).sum().backward()
                outs.append([bias._materialize().numpy(), out.detach().numpy()] +
                            [a.grad.numpy() for a in args])
            for kv, tv in zip(outs[1], outs[0]):
                np.testing.assert_allclose(kv, tv, rtol=1e-12, atol=1e-14,
                                           err_msg=f"{name} {lq}x{lk}")
    with pytest.raises(ValueError, match="causal=True"):
        x = kiln.ones(1, 2, 3)
        kiln.nn.functional.scaled_dot_product_attention(x, x, x, kbias.causal_upper_left(2, 2),
                                                        is_causal=True)



def test_backend_prints_like_torch():
    assert str(kattn.SDPBackend.MATH) == str(tattn.SDPBackend.MATH) == "SDPBackend.MATH"


def test_causal_biases_are_tensors_that_print_as_torchs():
    # SDPA tutorial: `assert issubclass(type(upper_left_bias), torch.Tensor)` failed (kiln's
    # CausalBias was a plain object), then print(upper_left_bias) shows the boolean mask
    for k_make, t_make in ((kbias.causal_upper_left, tbias.causal_upper_left),
                           (kbias.causal_lower_right, tbias.causal_lower_right)):
        k, t = k_make(2, 10), t_make(2, 10)
        assert isinstance(k, kiln.Tensor) and isinstance(t, torch.Tensor)
        assert type(k).__name__ == type(t).__name__ == "CausalBias"
        assert repr(k).replace("kiln.", "torch.") == repr(t)
        assert tuple(k.shape) == (2, 10) and k.dtype is kiln.bool
        q = np.random.default_rng(0).normal(size=(2, 3, 2, 4))
        kv = np.random.default_rng(1).normal(size=(2, 3, 10, 4))
        k_out = kiln.nn.functional.scaled_dot_product_attention(
            kiln.tensor(q), kiln.tensor(kv), kiln.tensor(kv), k)
        t_out = torch.nn.functional.scaled_dot_product_attention(
            torch.tensor(q), torch.tensor(kv), torch.tensor(kv), t)
        np.testing.assert_allclose(k_out.numpy(), t_out.numpy(), rtol=1e-10)
