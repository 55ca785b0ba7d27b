"""Sequence, reinforcement-learning, recommender and tabular training programs, each written as
its community writes it and run under torch and kiln: TD3 (twin critics, clipped target policy
smoothing by `randn_like(...).clamp`, `torch.min` of the twin targets, delayed actor updates,
Polyak averaging through `.data.copy_`, a seeded NumPy replay buffer), SASRec (`padding_idx=0`
items, learned positions, causal `nn.MultiheadAttention` with a bool `attn_mask` and a
`key_padding_mask`, a timeline mask, BCE on positives and sampled negatives at
`torch.where(pos != 0)`, HR@10 by argsort twice), a PatchTST-like forecaster (RevIN with
detached statistics, patches by `Tensor.unfold`, a norm-first GELU `TransformerEncoder`,
`ReduceLROnPlateau` on the validation MSE), a TabNet-flavoured classifier (sparsemax as a custom
`autograd.Function`, ghost batch norm by `chunk`, `F.glu` blocks, prior scales, the masks'
entropy, StepLR) and a GRU encoder-decoder decoded greedily and by beam search (`topk` over
beam * vocabulary, `//` and `%`, `index_select`, `masked_fill` of finished beams, a length
penalty). Each kiln run starts from torch's initial weights (kiln draws PyTorch's random
numbers, so the smoothing noise and negatives are torch's too): losses agree with torch's step
by step, final values too, and the compiled run repeats eager's losses (rtol 1e-4), with no step
falling back to eager unless said, and then for a reason the warning names."""

import numpy as np

from tests.scripts.harness import _as_array
from tests.scripts.test_applied_training import applied_run
from tests.scripts.test_attention_flow_sequence_training import _line_of


def test_td3_twin_critics_target_smoothing_delayed_actor_and_polyak_data_copy():
    t, k, c, notes = applied_run("td3", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    # the actor and the targets move every second critic update
    assert len(k["losses"]) == 60 and v["n_actor_updates"] == 30
    # the smoothing noise is clipped at 0.5 (|N(0, 0.2)| > 0.5 about 1.2% of the time)
    assert float(v["noise_max"]) == 0.5 and 0.0 < float(v["noise_at_clip"]) < 0.05
    # Polyak averaging: the targets trail the online networks, by the same amount in torch
    assert float(v["target_gap"]) > 1e-3
    np.testing.assert_allclose(_as_array(c["values"]["critic_target"]),
                               _as_array(t["values"]["critic_target"]), rtol=1e-4, atol=1e-5)


def test_sasrec_causal_mha_padding_masks_where_indices_bce_and_hit_rate():
    # `torch.where(pos != 0)` gives index tensors as long as the batch's targets: a
    # data-dependent shape, so the compiled step runs eagerly at that line (torch.compile
    # breaks the graph there too)
    t, k, c, notes = applied_run("sasrec", whole=False, values_rtol=1e-4, values_atol=1e-5)
    assert len(notes) == 1, notes
    assert "torch.where(condition)" in notes[0] and "runs eagerly" in notes[0]
    assert _line_of("sasrec", "indices = torch.where(pos != 0)") in notes[0]
    v = k["values"]
    # the true item's rank among 21 candidates: the same ranks, so the same HR@10 and NDCG@10
    np.testing.assert_array_equal(_as_array(v["ranks"]), _as_array(t["values"]["ranks"]))
    assert float(v["hr_at_10"]) == float(t["values"]["hr_at_10"]) > 0.5
    # padded positions: zero after the timeline mask, the last LayerNorm's bias after it
    assert v["padded_feats_zero"]
    assert float(np.abs(_as_array(v["pad_row"])).max()) == 0.0   # padding_idx stays zero
    assert k["losses"][-1] < 0.75 * k["losses"][0]


def test_sasrec_with_target_indices_from_the_loader_compiles_whole():
    # the same indices computed outside the step: each batch's index tensors have their own
    # length, so each batch compiles once, and the step never falls back
    t, k, c, notes = applied_run("sasrec", values_rtol=1e-4, values_atol=1e-5,
                                 indices_outside=True)
    assert notes == []
    np.testing.assert_array_equal(_as_array(c["values"]["ranks"]), _as_array(t["values"]["ranks"]))


def test_patchtst_revin_unfold_patches_norm_first_encoder_and_plateau_schedule():
    t, k, c, notes = applied_run("patchtst", values_rtol=1e-4, values_atol=1e-4)
    v = k["values"]
    # (SEQ_LEN + STRIDE - PATCH_LEN) // STRIDE + 1 patches of 6 per series, after padding
    assert v["patch_shape"] == "(4, 3, 8, 6)"
    x = _as_array(v["patches"])
    np.testing.assert_array_equal(x[:, :, 1:, :3], x[:, :, :-1, 3:])   # stride 3 overlaps
    assert float(v["roundtrip_err"]) < 1e-5            # RevIN's denorm undoes its norm
    # the plateau halves the rate where the validation MSE stops improving by 20%
    np.testing.assert_allclose(_as_array(v["lrs"]), _as_array(t["values"]["lrs"]), rtol=1e-7)
    assert _as_array(v["lrs"])[-1] < 3e-3
    assert k["values"]["val_mse"][-1] < 0.5 * k["values"]["val_mse"][0]


def test_tabnet_sparsemax_function_ghost_batch_norm_glu_priors_and_entropy():
    # one shared and one independent GLU layer per step, two steps: deeper stacks of ghost
    # batch norms over 8 rows make the run chaotic (torch from its own weights perturbed by
    # 1e-7 then moves the ninth loss by 3e-3, measured), too sensitive to compare two libraries
    t, k, c, notes = applied_run("tabnet", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    # each step's mask is a distribution with exact zeros, where torch's has them
    np.testing.assert_allclose(_as_array(v["mask_rows_sum"]), 1.0, rtol=1e-5)
    assert k["mask_zeros"] == t["mask_zeros"] == c["mask_zeros"] > 0
    # sparsemax of a clear winner is one-hot; of a constant row, uniform
    np.testing.assert_allclose(_as_array(v["sparsemax"]),
                               [[0, 0, 0, 0, 1], [0.2] * 5], atol=1e-7)
    # the backward over the support {0, 2, 3}: the weights minus their mean there
    np.testing.assert_allclose(_as_array(v["sparsemax_grad"]),
                               [[1 - 1 / 6, 0, -1 - 1 / 6, 0.5 - 1 / 6]], rtol=1e-12)
    np.testing.assert_allclose(_as_array(v["lrs"]), [1e-2, 5e-3, 5e-3, 2.5e-3], rtol=1e-7)
    assert k["losses"][-1] < 0.8 * k["losses"][0] and float(v["accuracy"]) > 0.5


def test_gru_seq2seq_teacher_forcing_then_greedy_and_beam_search_decoding():
    t, k, c, notes = applied_run("beam_search", values_rtol=1e-4, values_atol=1e-5)
    # the decoded sequences are torch's, eager and compiled alike
    for run in (k, c):
        assert run["values"]["beams"] == t["values"]["beams"]
        np.testing.assert_array_equal(_as_array(run["values"]["greedy"]),
                                      _as_array(t["values"]["greedy"]))
    v = k["values"]
    # topk keeps the beams best first by log-probability; the length penalty may reorder them
    assert np.all(np.diff(_as_array(v["raw_scores"]), axis=1) <= 0)
    assert np.isfinite(_as_array(v["beam_scores"])).any(axis=1).all()    # each one finished
    assert v["beam_exact"] >= 1 and v["greedy_exact"] >= 1
    assert k["losses"][-1] < 0.4 * k["losses"][0]
