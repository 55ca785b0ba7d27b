"""Training loops as users write them, each with its step compiled (`torch.compile` on the step,
on a bound `training_step`, or `model.compile()`): a Lightning-style module and trainer, an
accelerate-style accumulation loop, EMA and AveragedModel updated inside the step, hand-written
and flagged optimizers, buffers updated in forward with train/eval toggles, parametrized
weights, distillation and a GAN alternation, param_groups edited between steps. Each kiln run
starts from torch's initial weights: losses agree with torch's to rtol 1e-5 and every value
(final parameters, buffers, optimizer state) to rtol 1e-5; the compiled run repeats eager's
losses to rtol 1e-4 and its values agree with torch's to rtol 1e-4."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_recipes import compiled_matches, same_run


def compiled_like_torch(program: str, whole: bool = True) -> tuple[dict, dict, dict]:
    """torch's run, kiln's eager run and kiln's compiled run (with `whole`, none of its steps
    fell back to eager); the compiled run's values (final weights, buffers, state) agree with
    torch's too."""
    t, k = same_run(program)
    c = compiled_matches(program, k, t, whole=whole)
    for name, tv in t["values"].items():
        if isinstance(tv, (str, bool, int)):
            assert c["values"][name] == tv, f"{program} compiled: {name}"
            continue
        np.testing.assert_allclose(_as_array(c["values"][name]).astype(np.float64),
                                   _as_array(tv).astype(np.float64), rtol=1e-4, atol=1e-5,
                                   err_msg=f"{program} compiled: {name}")
    return t, k, c


def test_lightning_style_trainer_compiling_training_step():
    # the module keeps its log (a dict of growing lists, as `self.log` does) among its
    # attributes, which the step never names, and the step never reads `batch_idx`: one trace
    # replays for every batch (each call used to retrace to the recompile limit, then run
    # eagerly)
    t, k, c = compiled_like_torch("lightning_loop")
    assert k["values"]["global_step"] == 12 and k["values"]["logged"] == "train_loss:12,val_loss:3"


def test_accelerate_style_accumulation_clipping_and_warmup_cosine():
    t, k, c = compiled_like_torch("accelerate_loop")
    assert len(k["values"]["lrs"]) == 6 and k["values"]["grads_none"]


def test_ema_and_averaged_model_updated_inside_the_compiled_step():
    # AveragedModel.update_parameters read its count into Python: the step ran eagerly
    t, k, c = compiled_like_torch("ema_averaging")
    assert k["values"]["n_averaged"] == 15


def test_hand_written_optimizer_with_closure_and_flagged_adams():
    compiled_like_torch("custom_optimizer")


def test_buffers_updated_in_forward_with_train_eval_toggles():
    # BatchNorm(momentum=None) read num_batches_tracked into Python: the model ran eagerly
    t, k, c = compiled_like_torch("buffer_updates")
    assert int(k["values"]["norm.calls"]) == 12 and int(k["values"]["bn.num_batches_tracked"]) == 12


def test_weight_norm_spectral_norm_and_parametrize_trained_compiled():
    t, k, c = compiled_like_torch("parametrized_training")
    # (removed parametrizations register the plain weight after the bias, as in torch)
    assert k["values"]["symmetric"]
    assert k["values"]["plain_params"].startswith("fc1.bias,fc1.weight")


def test_distillation_and_gan_alternation_compiled():
    t, k, c = compiled_like_torch("distill_gan")
    # (the teacher keeps its pretraining grads: frozen, it gets no new ones)
    assert not k["values"]["teacher_grads_none"] and k["values"]["disc_grads_none"]


def test_param_groups_edited_by_hand_between_compiled_steps():
    t, k, c = compiled_like_torch("param_group_edits")
    assert _as_array(c["values"]["lrs"]).tolist() == _as_array(t["values"]["lrs"]).tolist()
