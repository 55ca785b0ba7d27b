"""Widely copied training code from outside pytorch/examples, each written as its users write it
and run under torch and kiln: CleanRL's PPO, a DDPM step with a tiny U-Net and EMA, CLIP's
contrastive loss with a clamped temperature, a timm-style trainer (no-decay groups, mixup and
cutmix, bfloat16 autocast, model EMA, checkpoint resume), makemore's bigrams and hand-written
backprop, a Hugging Face style BERT fine-tuning loop, and a ViT from scratch. Each kiln run
starts from torch's initial weights (kiln draws PyTorch's random numbers, so dropout masks,
timesteps, noise and shuffles are torch's too): losses agree with torch's step by step, final
values too, and the compiled run repeats eager's losses (rtol 1e-4) with no step falling back
to eager unless said."""

import numpy as np
import pytest

from tests.scripts.harness import _as_array
from tests.scripts.test_recipes import compiled_matches, same_run
from tests.torch_streams import MKL_REASON, pytorch_uses_mkl_stream

# dropout masks are drawn as PyTorch draws them except on Intel CPUs (MKL's stream)
torch_dropout = pytest.mark.skipif(pytorch_uses_mkl_stream(), reason=MKL_REASON)


def compiled_like_torch(program: str, whole: bool = True, rtol: float = 1e-5,
                        values_rtol: float = 1e-5, values_atol: float = 1e-6,
                        compiled_rtol: float = 1e-4,
                        eager_rtol: float = 1e-4) -> tuple[dict, dict, dict]:
    """torch's run, kiln's eager run from torch's weights, and kiln's compiled run, whose
    losses repeat the eager run's (to `eager_rtol`) and whose values agree with torch's too
    (to `compiled_rtol`)."""
    t, k = same_run(program, rtol=rtol, values_rtol=values_rtol, values_atol=values_atol)
    c = compiled_matches(program, k, t, whole=whole, rtol=eager_rtol)
    for name, tv in t["values"].items():
        if isinstance(tv, (str, bool, int)):
            assert c["values"][name] == tv, f"{program} compiled: {name}"
            continue
        np.testing.assert_allclose(_as_array(c["values"][name]).astype(np.float64),
                                   _as_array(tv).astype(np.float64), rtol=compiled_rtol,
                                   atol=max(values_atol, 1e-5),
                                   err_msg=f"{program} compiled: {name}")
    return t, k, c


def test_cleanrl_ppo_update_compiled():
    # `from torch.distributions.categorical import Categorical` was a ModuleNotFoundError, and
    # Categorical's argument check read a tensor into Python: the update ran eagerly
    t, k, c = compiled_like_torch("ppo_cleanrl")
    assert len(k["losses"]) == 24
    # the actions were sampled from the policy: the same rewards, so the same draws
    np.testing.assert_array_equal(_as_array(k["values"]["episode_returns"]),
                                  _as_array(t["values"]["episode_returns"]))


def test_ddpm_training_step_ema_and_sampling_loop():
    t, k, c = compiled_like_torch("ddpm", values_atol=1e-5)
    assert k["values"]["sample"].shape == (2, 1, 8, 8)


def test_clip_contrastive_training_with_a_clamped_logit_scale():
    t, k, c = compiled_like_torch("clip_contrastive", values_rtol=1e-4)
    scales = _as_array(k["values"]["scales"])
    assert scales[1] == pytest.approx(9.0) and scales.max() > 9.0 - 1e-4   # the clamp acted
    assert k["values"]["zero_shot_correct"] >= 6


def test_timm_style_trainer_bfloat16_mixup_ema_and_resume():
    # bfloat16 autocast: the first loss is torch's bit for bit (kiln's log_softmax rounded
    # once where torch's CPU kernel rounds the sum and its log: 2e-4 apart from the first
    # step); later ones differ by bfloat16 gradients torch rounds more often (measured max
    # 8e-4 relative; the second was equal on AVX-512 CPUs, 2.5e-4 apart on an AVX2 one).
    # running statistics of bfloat16 activations (~0.2, a bfloat16 step 1e-3 there) differ by
    # a few steps where torch's bfloat16 products do, by CPU (3.3e-3 on an AVX2 EPYC).
    # The compiled step (no fallback) computes a fused chain in float and rounds it to
    # bfloat16 once where eager rounds each op: its losses are eager's to bfloat16 rounding
    # (measured 1.0e-3 relative after 8 equal steps)
    t, k, c = compiled_like_torch("timm_trainer", rtol=2e-3, values_rtol=1e-2,
                                  values_atol=5e-3, compiled_rtol=1e-2, eager_rtol=4e-3)
    np.testing.assert_array_equal(k["losses"][:1], t["losses"][:1])
    assert k["values"]["weight_decays"] == "0.0,0.05" and k["values"]["group_sizes"] == "6,3"
    assert len(k["losses"]) == 16


def test_makemore_bigrams_mlp_and_manual_backprop():
    # `P.sum(1, keepdims=True)` raised TypeError (PyTorch takes NumPy's keepdims=)
    t, k, c = compiled_like_torch("makemore")
    v = k["values"]
    assert v["samples"] == t["values"]["samples"] and v["counts_dtype"] == "int32"
    assert v["approx_all"] and float(v["max_manual_diff"]) < 1e-6
    assert float(v["dlogits_fast_diff"]) < 1e-7


@torch_dropout
def test_hf_style_bert_finetuning_with_accumulation_and_f1():
    # batch_first attention's output is a transposed tensor: kiln's dropout drew its mask in
    # logical order where PyTorch draws in memory order (6.8e-4 apart at the first step)
    t, k, c = compiled_like_torch("bert_finetune")
    assert k["values"]["global_step"] == 8


@torch_dropout
def test_vit_from_scratch_conv_and_unfold_patches_sdpa_and_mha():
    t, k, c = compiled_like_torch("vit")
    assert len(k["losses"]) == 16
