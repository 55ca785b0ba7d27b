"""Training programs from tabular learning, language-model pretraining, metric learning, video
prediction and forecasting, each written as its community writes it and run under torch and kiln: an
FT-Transformer (per-feature numerical tokens, categorical embeddings behind per-column offsets, a
CLS token, a pre-norm TransformerEncoder, BCEWithLogitsLoss with pos_weight, AUROC by argsort and
cumsum), a T5-style encoder (relative position buckets into an embedding bias, RMSNorm by hand,
scaled_dot_product_attention with a float mask, span corruption, label-smoothed cross-entropy
ignoring -100, Adafactor under a linear warmup LambdaLR stepped inside the compiled step), metric
learning (batch-hard triplets over cdist with label masks, TripletMarginLoss, an ArcFace head),
ConvLSTM video prediction (four gates from one Conv2d, a Python loop over time, scheduled sampling
by `torch.rand(()) < p`) and N-BEATS (windows by `unfold`, trend and seasonality bases, a pinball
loss, NAdam, clip_grad_value_, sMAPE). Each kiln run starts from torch's initial weights (kiln draws
PyTorch's random numbers, so dropout, spans, batches and coin flips are torch's too): losses agree
with torch's step by step, final values too, and the compiled run repeats eager's losses (rtol
1e-4), with no step falling back to eager."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_applied_training import applied_run


def test_ft_transformer_feature_tokens_cls_pre_norm_encoder_pos_weight_and_auroc():
    t, k, c, notes = applied_run("ft_transformer", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert v["groups"] == "10/23"
    assert _as_array(v["offsets"]).tolist() == [0, 3, 8]
    assert float(v["perfect_auroc"]) == 1.0
    assert k["losses"][-1] < k["losses"][0]


def test_t5_relative_buckets_rmsnorm_sdpa_bias_span_corruption_and_warmup_in_the_step():
    # Adafactor read its step count and two norms into Python, a graph break that ran every
    # step eagerly; the LambdaLR's step sits inside the compiled step too: the learning rate is
    # lifted, so one trace serves the warmup and the decay
    t, k, c, notes = applied_run("t5_encoder", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    buckets = _as_array(v["buckets"])
    assert buckets.min() == 0 and buckets.max() == 15 and v["tied"]
    lrs = _as_array(v["lrs"])
    assert np.argmax(lrs) == 3 and lrs[-1] == 0.0           # warmup to step 4, then down to 0
    assert k["losses"][-1] < k["losses"][0]


def test_metric_learning_batch_hard_triplets_triplet_margin_loss_and_arcface():
    t, k, c, notes = applied_run("metric_learning", values_rtol=1e-4, values_atol=1e-5)
    recalls = _as_array(k["values"]["recalls"])
    assert recalls[-1] > 0.8


def test_convlstm_split_gates_unrolled_forecast_and_scheduled_sampling():
    # the coin `torch.rand(()) < p` is drawn inside the compiled step as eager draws it, and the
    # teacher-forcing ratio, a new Python float each epoch, is lifted
    t, k, c, notes = applied_run("convlstm", values_rtol=1e-4, values_atol=1e-5)
    assert _as_array(k["values"]["ratios"]).tolist() == [1.0, 0.6000000238418579,
                                                         0.20000000298023224]
    assert k["losses"][-1] < k["losses"][0]


def test_nbeats_unfold_windows_trend_seasonality_bases_pinball_nadam_and_smape():
    t, k, c, notes = applied_run("nbeats", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert v["n_windows"] == 86 and v["window_shape"] == "(10, 30)"
    smapes = _as_array(v["smapes"])
    assert smapes[-1] < smapes[0]
    assert k["losses"][-1] < 0.6 * k["losses"][0]
