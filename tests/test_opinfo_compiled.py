"""kiln.compile against kiln eager on PyTorch's OpInfo samples (`tests/opinfo_sweep.py
--compiled`), for the ops training code uses most: the first 4 samples of each, float32 values
and float64 values with gradients through a compiled backward. The compiled call (a replay)
must equal eager, with no fallback to eager. The last nine are ops whose kiln code once read
values into Python (index_fill aside, which already traced); ctc_loss, fixed too, is tested in
test_compile_no_breaks.py (its 50-step recurrence takes ~10 s per sample to compile).
`python -m tests.opinfo_sweep --compiled [--grad --dtype float64]` runs the first 12 samples of
every op (~10 min each mode)."""

import pytest

pytest.importorskip("expecttest")     # torch's OpInfo module imports it

import torch  # noqa: E402

from tests import opinfo_sweep  # noqa: E402

OPS = """add sub mul div.no_rounding_mode div.floor_rounding pow exp log sin tanh sigmoid rsqrt abs
clamp where maximum sum mean var std amax max.reduction_with_dim argmax logsumexp cumsum prod
matmul bmm addmm einsum softmax log_softmax cat stack reshape permute transpose expand squeeze
unsqueeze flatten select index_select gather scatter_add masked_fill tril roll flip repeat
chunk split nn.functional.linear nn.functional.relu nn.functional.gelu nn.functional.silu
nn.functional.leaky_relu nn.functional.dropout nn.functional.layer_norm nn.functional.batch_norm
nn.functional.group_norm nn.functional.conv1d nn.functional.conv2d nn.functional.conv_transpose2d
nn.functional.max_pool2d nn.functional.avg_pool2d nn.functional.adaptive_avg_pool2d
nn.functional.embedding nn.functional.cross_entropy nn.functional.nll_loss nn.functional.mse_loss
nn.functional.smooth_l1_loss nn.functional.binary_cross_entropy_with_logits nn.functional.kl_div
nn.functional.scaled_dot_product_attention nn.functional.pad.constant
nn.functional.interpolate.nearest nn.functional.normalize
histc cummax cummin index_fill signal.windows.kaiser nn.functional.multi_margin_loss
nn.functional.multilabel_margin_loss nn.functional.fractional_max_pool2d
nn.functional.fractional_max_pool3d""".split()
BY_LABEL = {opinfo_sweep.label(op): op for op in opinfo_sweep.ops()}
MODES = {"float32": (torch.float32, False), "float64_grad": (torch.float64, True)}


@pytest.fixture(autouse=True)
def _few_samples(monkeypatch, tmp_path):
    monkeypatch.setattr(opinfo_sweep, "COMPILED_SAMPLES", 4)
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path))


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("name", OPS)
def test_compiled_equals_eager(name, mode):
    dtype, grad = MODES[mode]
    counts, first = opinfo_sweep.check(BY_LABEL[name], dtype, grad, compiled=True)
    assert counts.get("ok"), f"{name}: no sample ran ({dict(counts)})"
    bad = [k for k in ("wrong", "error", "timeout", "fallback", "missing") if k in counts]
    assert not bad, f"{name} ({mode}): {dict(counts)}; {bad[0]}: {first.get(bad[0], '')}"
