"""pytorch/examples' tensor_parallelism llama2_model as one process: complex rotary embeddings
(polar, view_as_complex/view_as_real), RMSNorm, grouped-query causal SDPA, SwiGLU, AdamW."""

import numpy as np

from tests.scripts.harness import check_same_losses


def test_llama2_same_losses_and_logits_as_torch():
    # compiled code has no complex dtype: the step runs eagerly with kiln.compile's message,
    # and the compiled run must still repeat the eager losses
    t, k = check_same_losses("llama2", rtol=2e-5, atol=1e-5)
    assert k["n_params"] == t["n_params"] and k["freqs_shape"] == t["freqs_shape"]
    assert k["freqs_dtype"].split(".")[-1] == t["freqs_dtype"].split(".")[-1] == "complex64"
    np.testing.assert_allclose(k["logits"].numpy(), t["logits"].numpy(), rtol=1e-4, atol=1e-4)
