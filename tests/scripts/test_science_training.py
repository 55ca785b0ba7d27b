"""Scientific and less common training programs, each written as its community writes it and
run under torch and kiln: a PINN for Burgers' equation (derivatives by `autograd.grad` with
create_graph, Adam then L-BFGS with a strong-Wolfe line search), a neural ODE through a
hand-written RK4 solver, NeRF-style volume rendering with hierarchical sampling by
`searchsorted`, an exact Gaussian process (Cholesky, `cholesky_solve`, `solve_triangular`), a
Conv1d + GRU speech model under CTC with greedy decoding, U-Nets (transposed convolutions and
bilinear upsampling) under BCE + Dice, a TCN of weight-normed dilated causal convolutions,
TransE knowledge-graph embeddings (`max_norm` embeddings, margin ranking, negative sampling),
and ULMFiT-style gradual unfreezing with discriminative learning rates. Each kiln run starts
from torch's initial weights (kiln draws PyTorch's random numbers, so ray jitter, fine samples,
negative samples and shuffles are torch's too): losses agree with torch's step by step, final
values too, and the compiled run repeats eager's losses (rtol 1e-4) with no step falling back
to eager."""

import numpy as np
import pytest

from tests.scripts.harness import _as_array
from tests.scripts.test_popular_training import compiled_like_torch


def test_pinn_burgers_autograd_derivatives_adam_then_lbfgs_strong_wolfe():
    # float64: the L-BFGS iterates are torch's to rounding (its line search took the "no lower
    # than the previous trial" test one trial early and stopped zooming one evaluation short);
    # the compiled closure, which calls only zero_grad() of the optimizer, traced again after
    # every L-BFGS step (whose counters in `lbfgs.state` it was guarded on) and ran eagerly
    t, k, c = compiled_like_torch("pinn", rtol=1e-10, values_rtol=1e-9, values_atol=1e-12)
    v = k["values"]
    assert (v["n_evals"], v["n_iter"]) == (t["values"]["n_evals"], t["values"]["n_iter"])
    assert len(k["losses"]) == 15 and k["losses"][-1] < k["losses"][12]    # L-BFGS helped


def test_neural_ode_rk4_solver_windows_and_l1_loss():
    t, k, c = compiled_like_torch("neural_ode", values_rtol=1e-5, values_atol=1e-6)
    assert k["losses"][-1] < k["losses"][0]


def test_nerf_volume_rendering_cumprod_and_hierarchical_searchsorted_sampling():
    # the fine samples invert a nearly flat CDF (steps of ~2e-4): float32 rounding of its
    # cumulative sums moves them by up to 5e-4, so the losses agree to 2e-5, not 1e-5
    t, k, c = compiled_like_torch("tiny_nerf", rtol=2e-5, values_rtol=1e-4, values_atol=1e-5)
    assert k["losses"][-1] < 0.5 * k["losses"][0]


def test_exact_gp_cholesky_log_marginal_likelihood_and_prediction():
    # cdist's gradient at the kernel's zero diagonal was NaN: training diverged at step 2
    t, k, c = compiled_like_torch("exact_gp", rtol=1e-10, values_rtol=1e-9, values_atol=1e-12)
    v = k["values"]
    assert float(v["logdet"]) == pytest.approx(float(v["logdet_chol"]), rel=1e-9)
    assert np.all(_as_array(v["var"]) > 0)


def test_ctc_speech_model_conv_gru_greedy_decoding():
    t, k, c = compiled_like_torch("ctc_speech", values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["decoded"] == t["values"]["decoded"]
    assert k["values"]["errors"] == t["values"]["errors"]


def test_unet_transposed_and_bilinear_bce_dice_plateau():
    t, k, c = compiled_like_torch("unet_segmentation", values_rtol=1e-4, values_atol=1e-5)
    assert len(k["losses"]) == 12


def test_tcn_weight_norm_dilated_causal_convolutions():
    # remove_parametrizations under no_grad leaves the weight a buffer, as torch (kiln made a
    # parameter)
    t, k, c = compiled_like_torch("tcn", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert v["plain_weight"] == "Tensor"
    assert float(v["after_removal"]) == pytest.approx(float(v["test_loss"]), rel=1e-5)


def test_transe_max_norm_embeddings_margin_ranking_and_negative_sampling():
    t, k, c = compiled_like_torch("transe", values_rtol=1e-4, values_atol=1e-5)
    assert np.all(_as_array(k["values"]["entity_norms"]) <= 1 + 1e-6)


def test_gradual_unfreezing_add_param_group_discriminative_lrs_compiled():
    # each unfreezing traces once more (5 graphs); no replay trains the previous frozen set
    t, k, c = compiled_like_torch("gradual_unfreezing", values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["n_trainable"] == "[100, 724, 1348, 1972, 2236]"
    assert k["values"]["n_groups"] == 5
