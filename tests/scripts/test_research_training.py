"""Training programs in the patterns of well-known research code, each written as its users
write it and run under torch and kiln: WGAN-GP (gradient penalty by `autograd.grad` with
create_graph, critic steps flipping `requires_grad`), MAML (second- and first-order, through
`torch.func.functional_call`), a VQ-VAE (straight-through estimator, EMA codebook, dead-code
restarts), a Mixture-of-Experts layer (top-k routing by `nonzero`, and GShard's static
dispatch), SimCLR's NT-Xent loss, LoRA fine-tuning by module surgery, a RealNVP flow, and a BPR
matrix factorization with sparse embeddings and SparseAdam. Each kiln run starts from torch's
initial weights (kiln draws PyTorch's random numbers, so noise, interpolation weights and
negative samples are torch's too): losses agree with torch's step by step, final values too,
and the compiled run repeats eager's losses (rtol 1e-4), with no step falling back to eager
unless said."""

import numpy as np
import pytest

from tests.scripts.harness import _as_array
from tests.scripts.test_popular_training import compiled_like_torch


def test_wgan_gp_gradient_penalty_and_alternating_requires_grad():
    # `autograd.grad(..., only_inputs=True)` was a TypeError; compiled, each critic step after
    # a generator step traced again (the requires_grad guard held the flag the call left)
    t, k, c = compiled_like_torch("wgan_gp", values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["critic_grad_flags"] == "False,False,False,False,False,False"
    assert len(k["losses"]) == 16


def test_maml_second_and_first_order_meta_steps():
    # first-order MAML's outer backward raised "Trying to backward through the graph a second
    # time": the inner autograd.grad freed the fast weights' own graph
    t, k, c = compiled_like_torch("maml", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert float(v["after"]) < float(v["before"])       # adaptation helps on a new task


def test_vqvae_straight_through_ema_codebook_and_dead_code_restarts():
    # compiled, the dead-code restart `embedding.data = torch.where(...)` was skipped by every
    # replay: the codebook kept the trace's restart, and the losses left eager's at step 3
    t, k, c = compiled_like_torch("vqvae", values_rtol=1e-4, values_atol=1e-5)
    for name in ("codes", "usage"):
        np.testing.assert_array_equal(_as_array(c["values"][name]),
                                      _as_array(t["values"][name]))


def test_mixture_of_experts_top_k_routing_capacity_and_balancing_loss():
    # the dense-dispatch steps compile; the indexed ones route by nonzero (a data-dependent
    # shape, as under torch.compile) and run eagerly with kiln's warning
    t, k, c = compiled_like_torch("moe", whole=False, values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["drops"].tolist() == t["values"]["drops"].tolist()


def test_simclr_nt_xent_two_spellings():
    # the gathered spelling indexes with a boolean mask (a data-dependent shape): those steps
    # run eagerly with kiln's warning; the masked_fill spelling compiles
    t, k, c = compiled_like_torch("simclr", whole=False, values_rtol=1e-4, values_atol=1e-5)
    both = _as_array(k["values"]["both_losses"])
    assert both[0] == pytest.approx(both[1], rel=1e-5)


def test_lora_surgery_frozen_base_adapter_state_dict_and_merge():
    t, k, c = compiled_like_torch("lora", values_rtol=1e-4, values_atol=1e-5)
    v = k["values"]
    assert v["lora_keys"] == t["values"]["lora_keys"] and v["counts"] == "512/2467"
    assert v["merge_diff"] and v["frozen_grad"] == "None"


def test_realnvp_coupling_flow_log_det_and_sampling():
    t, k, c = compiled_like_torch("realnvp", values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["roundtrip_err"]


def test_bpr_matrix_factorization_sparse_embeddings_and_sparse_adam():
    # sparse gradients stay eager (compiled code would make them dense): kiln's warning
    t, k, c = compiled_like_torch("mf_bpr", whole=False, values_rtol=1e-4, values_atol=1e-5)
    assert k["values"]["grad_is_sparse"]
