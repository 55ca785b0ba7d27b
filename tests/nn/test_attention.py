"""kiln.nn.attention: sdpa_kernel sets and restores the same backend flags as torch's, the
attention it runs under SDPBackend.MATH is torch's, and with MATH off kiln (which has only the
math implementation) refuses to run instead of pretending."""

import numpy as np
import pytest
import torch
import torch.nn.attention as tattn

import kiln
import kiln.nn.attention as kattn

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
