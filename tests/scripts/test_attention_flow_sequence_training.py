"""Training programs with attention over padded inputs, retrieval, normalizing flows, flow
matching and packed sequences, each written as its community writes it and run under torch and
kiln: a Perceiver (a trunc_normal_ latent array cross-attending through
`nn.MultiheadAttention(batch_first=True, kdim=, vdim=)` with a `key_padding_mask`, Fourier
position features, einsum latent self-attention, AdamW with a LambdaLR warmup), a two-tower
retriever (`EmbeddingBag` mean, sum with `per_sample_weights`, max with `include_last_offset`,
in-batch negatives with accidental hits masked to -inf, Adagrad and Adam, recall@k by `topk`),
a Glow (ActNorm's data-dependent init behind an `initialized` buffer, invertible 1x1
convolutions by `linalg.slogdet` and by the LU parametrization, squeeze by view/permute,
`Normal` priors, bits per dimension), rectified flow matching (sinusoidal time embedding,
classifier-free guidance, an EMA by `mul_().add_(alpha=)`, Euler sampling under
`inference_mode`) and a bidirectional 2-layer GRU over `pack_padded_sequence(enforce_sorted=
False)` with masked mean pooling, `clip_grad_norm_` and StepLR. Each kiln run starts from torch's
initial weights (kiln draws PyTorch's random numbers, so dropout masks, noise and times are
torch's too): losses agree with torch's step by step, final values too, and the compiled run
repeats eager's losses (rtol 1e-4), with no step falling back to eager unless said, and then
for a reason the warning names."""

import numpy as np

from tests.scripts.harness import PROGRAMS, _as_array
from tests.scripts.test_applied_training import applied_run
from tests.scripts.test_popular_training import torch_dropout


def _line_of(program: str, text: str) -> str:
    """`program.py:N`, the line of the program's source holding `text`."""
    lines = (PROGRAMS / f"{program}.py").read_text().splitlines()
    return f"{program}.py:{next(i for i, line in enumerate(lines, 1) if text in line)}"


@torch_dropout
def test_perceiver_latent_cross_attention_key_padding_mask_einsum_heads_and_warmup():
    t, k, c, notes = applied_run("perceiver", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    # the padded keys get no attention weight, and whatever the padding holds changes nothing
    assert float(v["pad_weight"]) == 0.0 and v["padding_ignored"]
    np.testing.assert_allclose(_as_array(v["lrs"])[:6], 2e-3 * np.arange(2, 8).clip(max=6) / 6,
                               rtol=1e-6)
    assert v["latent_range"]                  # trunc_normal_ kept the latents inside (-2, 2)


def test_two_tower_embedding_bags_in_batch_negatives_and_recall_at_k():
    t, k, c, notes = applied_run("two_tower", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    # the same item twice in a held-out batch: masked to -inf off the diagonal, as torch's
    assert int(v["masked_hits"]) == int(t["values"]["masked_hits"]) > 0
    np.testing.assert_array_equal(_as_array(c["values"]["top"]), _as_array(t["values"]["top"]))
    assert float(v["recall_at_5"]) == float(t["values"]["recall_at_5"])
    assert k["losses"][-1] < 0.5 * k["losses"][0]


def test_glow_actnorm_buffer_guard_lu_and_slogdet_1x1_convs_multiscale_bits_per_dim():
    # ActNorm reads its `initialized` buffer with `.item()` on every call (rosinality's Glow):
    # data-dependent control flow, so the compiled step runs eagerly (torch.compile breaks the
    # graph there too) and kiln's warning names that line
    t, k, c, notes = applied_run("glow", whole=False, values_rtol=1e-4, values_atol=1e-4)
    assert len(notes) == 1, notes
    assert "item()" in notes[0] and _line_of("glow", "self.initialized.item()") in notes[0]
    assert "runs eagerly" in notes[0]
    v = k["values"]
    assert float(v["roundtrip_err"]) < 1e-5 and v["initialized"] == 1
    assert abs(float(v["lu_logdet_check"])) < 1e-5    # sum(log|s|) is the LU weight's log|det|
    assert k["losses"][-1] < k["losses"][0]


def test_glow_with_a_python_actnorm_flag_compiles_whole():
    # y0ast's ActNorm: a Python attribute says it is initialized (the buffer stays for the
    # state dict); the step compiles whole, slogdet in double and the LU weight included
    t, k, c, notes = applied_run("glow", values_rtol=1e-4, values_atol=1e-4, python_flag=True)
    assert notes == []
    assert float(c["values"]["roundtrip_err"]) < 1e-5


def test_flow_matching_guidance_dropout_ema_and_euler_sampling_under_inference_mode():
    t, k, c, notes = applied_run("flow_matching", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert not v["requires_grad"] and v["ema_grad"] == "None"


@torch_dropout
def test_packed_bidirectional_gru_masked_mean_pooling_clipping_and_step_lr():
    # pack_padded_sequence reads the lengths into Python (the packed batch sizes are
    # data-dependent): the compiled step runs eagerly at that line, as torch.compile breaks
    t, k, c, notes = applied_run("packed_gru", whole=False, values_rtol=1e-4, values_atol=1e-5)
    assert len(notes) == 1, notes
    assert _line_of("packed_gru", "packed = pack_padded_sequence(") in notes[0]
    assert "runs eagerly" in notes[0]
    v = k["values"]
    assert v["alone_matches"]                 # padding changes no sequence's logits
    assert float(np.abs(_as_array(v["emb_pad_row"])).max()) == 0.0   # padding_idx stays zero
    np.testing.assert_allclose(_as_array(v["lrs"]), [5e-3, 2.5e-3, 2.5e-3], rtol=1e-6)
    assert k["losses"][-1] < 0.5 * k["losses"][0]
