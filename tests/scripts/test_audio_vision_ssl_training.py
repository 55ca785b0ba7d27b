"""Training programs from audio, vision and self-supervised learning, each written as its
community writes it and run under torch and kiln: a WaveNet (mu-law companding, dilated causal
Conv1d by left `F.pad`, gated units, residual and skip 1x1 convolutions, Categorical
generation), a log-mel spectrogram classifier (`torch.stft` complex, a hand-built mel
filterbank, SpecAugment masks by `masked_fill`), Swin window attention (window partition and
reverse, shifted windows by `torch.roll`, a relative position bias table behind an index buffer,
the shifted windows' mask built once), ConvNeXt blocks (7x7 depthwise convolutions, channels-last
LayerNorm, layer scale, DropPath by `bernoulli_`, AdamW parameter groups, per-iteration
CosineAnnealingLR), FixMatch (weak and strong augmentations, confidence-masked pseudo labels, an
EMA model), BYOL (online and target networks, a BatchNorm1d predictor, momentum updates by
`_foreach_` ops and `lerp_`), learning to rank (ListNet, pairwise margin ranking over
`torch.combinations`, NDCG@k) and an LSTM autoencoder for anomaly detection (GaussianNLLLoss,
OneCycleLR then ReduceLROnPlateau, a `torch.quantile` threshold). Each kiln run starts from
torch's initial weights (kiln draws PyTorch's random numbers, so masks, drops and samples are
torch's too): losses agree with torch's step by step, final values too, and the compiled run
repeats eager's losses (rtol 1e-4), with no step falling back to eager unless said, and then for
a reason the warning names."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_applied_training import applied_run


def test_wavenet_mu_law_dilated_causal_gated_stack_and_categorical_generation():
    # the compiled sampling step (Categorical's multinomial) read the probabilities into
    # Python, a graph break: now it compiles whole, its draws torch's
    t, k, c, notes = applied_run("wavenet", values_rtol=1e-4, values_atol=1e-5)
    assert k["losses"][-1] < k["losses"][0]
    # the same logits, so the same draws: the generated samples are torch's exactly
    np.testing.assert_array_equal(_as_array(c["values"]["generated"]),
                                  _as_array(t["values"]["generated"]))
    assert float(k["values"]["roundtrip"]) < 0.02          # mu-law decode inverts encode


def test_spectrogram_classifier_stft_mel_filterbank_and_spec_augment():
    # the masks' spans are torch's draws; the front end, compiled alone, holds complex numbers
    # (compiled code has none): it runs eagerly and says so; the training step compiles whole
    t, k, c, notes = applied_run("spectrogram_classifier", whole=False, values_rtol=1e-4,
                                 values_atol=1e-4)
    assert len(notes) == 1 and "complex" in notes[0] and "runs eagerly" in notes[0], notes
    assert notes[0].startswith("kiln.compile: LogMelSpectrogram computes"), notes
    assert k["values"]["lrs"] == t["values"]["lrs"]
    assert k["losses"][-1] < k["losses"][0]


def test_swin_shifted_window_attention_relative_position_bias_and_mask_buffer():
    t, k, c, notes = applied_run("swin", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    # the last stage's window covers its whole map: no shift, so its mask buffer is None
    assert v["buffers"] == t["values"]["buffers"] and v["buffers"].count("attn_mask") == 1
    assert set(np.unique(_as_array(v["attn_mask"]))) == {-100.0, 0.0}
    assert k["losses"][-1] < k["losses"][0]


def test_convnext_depthwise_channels_last_norm_layer_scale_drop_path_and_adamw_groups():
    # DropPath's per-sample `bernoulli_` draws are torch's, in eager and compiled runs alike
    t, k, c, notes = applied_run("convnext", values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["group_sizes"] == t["values"]["group_sizes"] == "33/15"
    assert k["losses"][-1] < k["losses"][0]


def test_fixmatch_weak_strong_augmentations_confidence_masked_pseudo_labels_and_ema():
    # the flips, shifts, jitter and Cutout boxes are torch's draws, inside the compiled step too;
    # compiled losses leave eager's by 1 ulp at step 3 and ~1e-5 by step 12 (float32 rounding
    # through BatchNorm on small batches), which the EMA's eval logits carry as ~3e-5
    t, k, c, notes = applied_run("fixmatch", values_rtol=1e-4, values_atol=1e-4)
    rates = _as_array(k["values"]["mask_rates"])
    assert rates[0] == 0.0 and rates[-1] > 0.3            # confidence grows past the threshold
    assert int(k["values"]["n_averaged"]) == 12
    # AveragedModel(avg_fn) and the hand-written EMA differ only by their first update
    drift = np.abs(_as_array(k["values"]["ema_fc"]) - _as_array(k["values"]["averaged_fc"]))
    assert 0 < drift.max() < 0.01


def test_byol_target_momentum_by_foreach_and_lerp_and_simsiam_loss():
    # the momentum, a new Python float each step, was read into Python by `lerp_`'s choice of
    # formula: every step traced again until the recompile limit sent the step to eager
    t, k, c, notes = applied_run("byol", values_rtol=1e-4, values_atol=1e-5)
    assert k["losses"][-1] < 0.5 * k["losses"][0]
    assert float(k["values"]["spread"]) > 0.01              # no collapse
    assert -1.0 <= float(k["values"]["simsiam"]) < 0.0


def test_learning_to_rank_listnet_pairwise_margin_ranking_and_ndcg():
    t, k, c, notes = applied_run("learning_to_rank", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert v["n_pairs"] == 45
    np.testing.assert_array_equal(_as_array(c["values"]["top_docs"]),
                                  _as_array(t["values"]["top_docs"]))
    ndcgs = _as_array(v["ndcgs"])
    assert ndcgs[-1] > float(v["random_ndcg"]) and 0 < ndcgs.min() and ndcgs.max() <= 1


def test_lstm_autoencoder_gaussian_nll_one_cycle_then_plateau_and_quantile_threshold():
    # GaussianNLLLoss's check for a negative `var` read `(var < 0).any()` into Python: a graph
    # break that ran the whole step eagerly; traced, the check is a graph node
    t, k, c, notes = applied_run("lstm_anomaly", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    lrs = _as_array(v["lrs"])
    assert lrs.max() > 9e-3 and lrs[6] < 1e-6               # the one cycle went up and down
    assert v["flagged"] == t["values"]["flagged"] >= 6 and v["false_alarms"] <= 1
