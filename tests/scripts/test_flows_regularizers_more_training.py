"""Training programs with a masked autoregressive flow, a quasi-Newton optimizer, activation
checkpointing with gradient accumulation, a spectrally normalized GAN and elastic weight
consolidation, each written as its community writes it and run under torch and kiln: a MAF (MADE
layers as `nn.Linear` subclasses multiplying a `mask` buffer into the weight, degrees by a seeded
`torch.randperm`, affine log-dets, `x.flip(-1)` between layers, a `Normal` base, sampling by the
inverse pass in a loop); `torch.optim.LBFGS` with a closure (a float64 MLP with the strong-Wolfe
line search, a float32 logistic regression without), the closure's loss body or the whole closure
compiled; a stack of transformer blocks under `checkpoint(block, x, use_reentrant=False)` trained
with gradient accumulation over four micro-batches (`zero_grad(set_to_none=True)`), the
micro-step compiled; an SN-GAN (`parametrizations.spectral_norm` on the discriminator's convs and
linear, the hinge loss, Adam betas (0.0, 0.9), n_critic=2); and elastic weight consolidation (a
diagonal Fisher of squared log-likelihood gradients keyed by parameter name, the quadratic
penalty on task B). Each kiln run starts from torch's initial weights: losses agree with torch's
step by step, final values too, and the compiled run repeats eager's losses (rtol 1e-4), with no
step falling back to eager."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_applied_training import applied_run
from tests.scripts.test_recipes import compiled_matches


def test_masked_autoregressive_flow_made_masks_flip_normal_base_and_inverse_sampling():
    t, k, c, notes = applied_run("maf", values_rtol=1e-4, values_atol=1e-5)
    assert notes == []
    v = k["values"]
    # the masks and orders come from torch's seeded generator: the same bits
    np.testing.assert_array_equal(_as_array(v["masks"]), _as_array(t["values"]["masks"]))
    np.testing.assert_array_equal(_as_array(v["orders"]), _as_array(t["values"]["orders"]))
    # autoregressive: no output sees an input of its own degree or later, yet some see earlier
    assert float(v["leak"]) == 0.0 and float(v["seen"]) > 0.0
    # sampling inverts the flow: the samples map back to the base draws
    assert float(v["inverse_err"]) < 1e-5
    assert float(c["values"]["inverse_err"]) < 1e-5
    assert k["losses"][-1] < 0.8 * k["losses"][0]


def test_lbfgs_closure_strong_wolfe_and_fixed_step_with_compiled_loss_or_closure():
    # every closure evaluation's loss, the line search's trial points included, is torch's
    t, k, c, notes = applied_run("lbfgs", rtol=1e-5, values_rtol=1e-5, values_atol=1e-6)
    assert notes == []
    v = k["values"]
    # the line search evaluates more than once per iteration; the fixed step exactly once
    assert v["func_evals"] == v["n_wolfe_evals"] > v["n_iter"] >= 4
    assert v["n_plain_evals"] == 3 * 4
    # each step returns the loss at its starting point, and the fit improves step by step
    wolfe_steps = _as_array(v["wolfe_steps"])
    assert wolfe_steps[0] == k["losses"][0] and np.all(np.diff(wolfe_steps) < 0)
    assert k["losses"][v["n_wolfe_evals"] - 1] < 0.02 * k["losses"][0]
    # compiling the whole closure (zero_grad, loss, backward) instead: eager's path, no break
    whole = compiled_matches("lbfgs", k, t, compile_closure=True)
    assert whole["values"]["n_iter"] == v["n_iter"]


def test_checkpointed_transformer_blocks_with_gradient_accumulation_over_micro_batches():
    t, k, c, notes = applied_run("checkpoint_accum", values_rtol=1e-4, values_atol=1e-6)
    assert notes == []
    v = k["values"]
    # checkpointing changes no gradient, and four scaled micro-batches give the full batch's
    assert float(v["grad_gap"]) == 0.0 and float(v["full_gap"]) < 1e-6
    assert v["cleared"]                             # set_to_none=True left every grad None
    # use_reentrant=True with frozen embeddings: a warning, and no block gets a gradient
    assert v["reentrant_warned"] and v["blocks_without_grad"] == v["n_block_params"] > 0
    # each window's loss (every fifth entry) is the sum of its four scaled micro losses
    losses = np.array(k["losses"]).reshape(3, 5)
    np.testing.assert_allclose(losses[:, 4], losses[:, :4].sum(axis=1), rtol=1e-6)
    assert losses[-1, 4] < losses[0, 4]


def test_sngan_spectral_norm_parametrization_hinge_loss_and_two_critic_steps():
    t, k, c, notes = applied_run("sngan", values_rtol=1e-4, values_atol=1e-6)
    assert notes == []
    v = k["values"]
    assert v["keys"] == ("net.0.bias,net.0.parametrizations.weight.original,"
                         "net.0.parametrizations.weight.0._u,net.0.parametrizations.weight.0._v")
    # the power iterations keep each layer's largest singular value near 1
    np.testing.assert_allclose(_as_array(v["sigmas"]), 1.0, atol=0.1)
    # the weight in use is the original divided by one number, u's estimate of sigma
    ratio = _as_array(v["original"]) / _as_array(v["eval_weight"])
    np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)
    # a critic's hinge loss is 2 with D at zero; both critic steps precede each generator step
    losses = np.array(k["losses"]).reshape(4, 3)
    assert np.all(losses[:, :2] >= 0.0) and losses[0, 0] > 1.5


def test_elastic_weight_consolidation_fisher_dict_penalty_and_forgetting():
    t, k, c, notes = applied_run("ewc", values_rtol=1e-4, values_atol=1e-7)
    assert notes == []
    v = k["values"]
    # two classes: the output bias's log-softmax gradients are +-g, so equal Fisher entries
    fisher_b2 = _as_array(v["fisher_b2"])
    assert fisher_b2[0] == fisher_b2[1] > 0 and float(_as_array(v["fisher_w1"]).min()) >= 0
    # the penalty kept the task-A weights close and task A mostly remembered; without it,
    # fine-tuning on B forgets A
    assert float(v["penalty_ewc"]) < 0.1 * float(v["penalty_naive"])
    assert float(v["acc_a_before"]) > 0.9 and float(v["acc_b_ewc"]) > 0.8
    assert float(v["acc_a_ewc"]) > float(v["acc_a_naive"]) + 0.2
    for name in ("acc_a_ewc", "acc_b_ewc", "acc_a_naive", "acc_b_naive"):
        assert float(c["values"][name]) == float(t["values"][name]), name
