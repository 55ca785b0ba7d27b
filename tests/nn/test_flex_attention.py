"""kiln.nn.attention.flex_attention against torch 2.13 on the CPU.

Forward values, dtypes and shapes are compared with torch's own `flex_attention`. torch's CPU
flex_attention refuses inputs that require grad, so gradients (q, k, v and a tensor a score_mod
captures) are compared with torch's eager math implementation (`math_attention`, the function
its CPU path runs) under torch's autograd. BlockMask fields, reprs and masks are compared with
torch's `create_block_mask` / `create_mask`.
"""

from __future__ import annotations

import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
import torch.nn.attention.flex_attention as tflex
from torch._higher_order_ops.flex_attention import math_attention

import kiln
import kiln.nn.attention.flex_attention as kflex

LIBS = {"torch": (torch, tflex), "kiln": (kiln, kflex)}
TOL = dict(rtol=1e-5, atol=1e-5)
BLOCK_FIELDS = ("kv_num_blocks", "kv_indices", "full_kv_num_blocks", "full_kv_indices",
                "q_num_blocks", "q_indices", "full_q_num_blocks", "full_q_indices")

pytestmark = pytest.mark.filterwarnings(
    "ignore:flex_attention called without torch.compile")


# ---- score_mods and mask_mods, written once for both libraries (`lib` is torch or kiln) ----

def alibi(lib, captured):
    heads = captured["heads"]

    def alibi_mod(score, b, h, q_idx, kv_idx):       # the tutorial's, with its head count
        scale = lib.exp2(-((h + 1) * 8.0 / heads))
        return score + (q_idx - kv_idx) * scale
    return alibi_mod


def relative_position(lib, captured):
    def relative_positional(score, b, h, q_idx, kv_idx):
        return score + (q_idx - kv_idx) * 0.1
    return relative_positional


def learned_head_bias(lib, captured):
    bias = captured["head_bias"]

    def head_bias(score, b, h, q_idx, kv_idx):
        return score + bias[h]
    return head_bias


def learned_relative_table(lib, captured):
    table = captured["table"]        # [H, L + S - 1], indexed by head and relative position

    def relative_table(score, b, h, q_idx, kv_idx):
        return score + table[h, q_idx - kv_idx + captured["S"] - 1]
    return relative_table


def soft_cap(lib, captured):
    def tanh_softcap(score, b, h, q_idx, kv_idx):
        return 3.0 * lib.tanh(score / 3.0)
    return tanh_softcap


def causal(lib, captured):
    def causal_mask(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx
    return causal_mask


def sliding_window(lib, captured):
    def sliding_window_causal(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx <= 3)
    return sliding_window_causal


def prefix_lm(lib, captured):
    def prefix_mask(b, h, q_idx, kv_idx):
        return kv_idx <= 2
    return LIBS[lib.__name__][1].or_masks(prefix_mask, causal(lib, captured))


def document(lib, captured):
    document_id = captured["document_id"]

    def document_causal(b, h, q_idx, kv_idx):
        return (document_id[b, q_idx] == document_id[b, kv_idx]) & (q_idx >= kv_idx)
    return document_causal


def windowed_documents(lib, captured):
    return LIBS[lib.__name__][1].and_masks(document(lib, captured),
                                           sliding_window(lib, captured))


def head_dependent(lib, captured):
    def odd_heads_causal(b, h, q_idx, kv_idx):
        return (h % 2 == 0) | (q_idx >= kv_idx)
    return odd_heads_causal


def captured_tensors(lib, B: int, H: int, L: int, S: int, requires_grad: bool) -> dict:
    """The tensors mods capture: made from the same numbers for both libraries."""
    rng = np.random.default_rng(7)
    documents = np.sort(rng.integers(0, 3, size=(B, max(L, S))), axis=1)
    return {"heads": H, "S": S,
            "head_bias": lib.tensor(rng.normal(size=H), requires_grad=requires_grad),
            "table": lib.tensor(rng.normal(size=(H, L + S - 1)), requires_grad=requires_grad),
            "document_id": lib.tensor(documents)}


def inputs(lib, shapes, dtype=np.float32, requires_grad=False, seed=0):
    rng = np.random.default_rng(seed)
    return [lib.tensor(rng.normal(size=s).astype(dtype), requires_grad=requires_grad)
            for s in shapes]


def torch_math(q, k, v, score_mod, block_mask, scale):
    """torch's eager math attention (differentiable): out, lse and max score in natural log."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else scale
    block_mask = block_mask if block_mask is not None else \
        tflex._create_empty_block_mask(q, k)
    out, lse, max_scores = math_attention(q, k, v, score_mod or tflex._identity,
                                          block_mask.as_tuple(), scale, {})
    return out, lse * math.log(2), max_scores * math.log(2)


def check_against_torch(shapes, score_mod=None, mask_mod=None, B_mask="B", H_mask="H",
                        scale=None, enable_gqa=False, grads=True, dtype=np.float32, tol=TOL):
    """Run flex_attention with the same data and mods in both libraries; compare the output
    and lse with torch's flex_attention and the gradients with torch's math attention."""
    (B, Hq, L, _), (_, _, S, _) = shapes[0], shapes[1]
    results = {}
    for name, (lib, flex) in LIBS.items():
        captured = captured_tensors(lib, B, Hq, L, S, requires_grad=grads)
        q, k, v = inputs(lib, shapes, dtype, requires_grad=grads)
        smod = score_mod(lib, captured) if score_mod else None
        block_mask = None
        if mask_mod is not None:
            block_mask = flex.create_block_mask(
                mask_mod(lib, captured), B if B_mask == "B" else None,
                Hq if H_mask == "H" else None, L, S, device="cpu", BLOCK_SIZE=4)
        if name == "torch":
            with torch.no_grad():
                out, aux = flex.flex_attention(q.detach(), k.detach(), v.detach(), smod,
                                               block_mask, scale, enable_gqa,
                                               return_aux=flex.AuxRequest(lse=True))
            if grads:
                out_grad, _, _ = torch_math(q, k, v, smod, block_mask, scale)
        else:
            out, aux = flex.flex_attention(q, k, v, smod, block_mask, scale, enable_gqa,
                                           return_aux=flex.AuxRequest(lse=True))
            out_grad = out
        leaves = [q, k, v] + [captured[n] for n in ("head_bias", "table")]
        if grads:
            weight = lib.tensor(np.linspace(-1, 1, out.numel()).reshape(tuple(out.shape))
                                .astype(dtype))
            (out_grad * weight).sum().backward()
        results[name] = (out, aux.lse, [x.grad for x in leaves])
    (t_out, t_lse, t_grads), (k_out, k_lse, k_grads) = results["torch"], results["kiln"]
    for what, kx, tx in [("out", k_out, t_out), ("lse", k_lse, t_lse)] + \
            [(f"grad {n}", kg, tg) for n, kg, tg in zip("qkv", k_grads[:3], t_grads[:3])] + \
            [(f"grad of captured {n}", kg, tg) for n, kg, tg
             in zip(("head_bias", "table"), k_grads[3:], t_grads[3:]) if tg is not None]:
        assert kx is not None, what
        assert tuple(kx.shape) == tuple(tx.shape), what
        assert kx.dtype.name == str(tx.dtype).removeprefix("torch."), what
        np.testing.assert_allclose(kx.detach().float().numpy(), tx.detach().float().numpy(),
                                   err_msg=what, **tol)
    return results


# ---- values and gradients ---------------------------------------------------------------------

SHAPES = [(2, 4, 9, 8), (2, 4, 11, 8), (2, 4, 11, 6)]


@pytest.mark.parametrize("score_mod", [None, alibi, relative_position, learned_head_bias,
                                       learned_relative_table, soft_cap])
def test_score_mods_match_torch(score_mod):
    results = check_against_torch(SHAPES, score_mod=score_mod)
    if score_mod in (learned_head_bias, learned_relative_table):
        assert results["kiln"][2][3 if score_mod is learned_head_bias else 4] is not None


@pytest.mark.parametrize("mask_mod", [causal, sliding_window, prefix_lm, document,
                                      windowed_documents, head_dependent])
def test_mask_mods_match_torch(mask_mod):
    shapes = [(2, 4, 10, 8), (2, 4, 10, 8), (2, 4, 10, 8)]
    check_against_torch(shapes, mask_mod=mask_mod)


@pytest.mark.parametrize("B_mask,H_mask", [(None, None), ("B", None), (None, "H")])
def test_block_mask_broadcast_over_batch_and_heads(B_mask, H_mask):
    shapes = [(2, 4, 10, 8)] * 3
    check_against_torch(shapes, score_mod=alibi, mask_mod=causal, B_mask=B_mask, H_mask=H_mask)


def test_score_mod_with_mask_gqa_and_scale():
    shapes = [(2, 6, 7, 8), (2, 2, 9, 8), (2, 2, 9, 5)]
    check_against_torch(shapes, score_mod=learned_head_bias, mask_mod=sliding_window,
                        scale=0.3, enable_gqa=True)


def test_float64_and_bfloat16_dtypes():
    shapes = [(1, 2, 5, 4)] * 3
    check_against_torch(shapes, score_mod=soft_cap, mask_mod=causal, dtype=np.float64,
                        tol=dict(rtol=1e-12, atol=1e-12))
    # bfloat16: scores in float32, probabilities cast to bfloat16 before @ v, as in torch
    outs = []
    for lib, flex in LIBS.values():
        q, k, v = (x.to(lib.bfloat16) for x in inputs(lib, shapes))
        out, aux = flex.flex_attention(q, k, v, return_aux=flex.AuxRequest(lse=True))
        outs.append((out, aux.lse))
    (t_out, t_lse), (k_out, k_lse) = outs
    assert (k_out.dtype.name, k_lse.dtype.name) == ("bfloat16", "float32") == \
        (str(t_out.dtype)[6:], str(t_lse.dtype)[6:])
    np.testing.assert_allclose(k_out.float().numpy(), t_out.float().numpy(), atol=1e-2)
    np.testing.assert_allclose(k_lse.numpy(), t_lse.numpy(), rtol=1e-5, atol=1e-5)


def late_rows_see_nothing(lib, captured):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx < 3) & (kv_idx <= q_idx)
    return mask_mod


def first_row_scored_out(lib, captured):
    def score_mod(score, b, h, q_idx, kv_idx):      # masking by score: row 5 all -inf
        return lib.where(q_idx == 5, -float("inf"), score)
    return score_mod


@pytest.mark.parametrize("mods", [(None, late_rows_see_nothing),
                                  (first_row_scored_out, late_rows_see_nothing),
                                  (first_row_scored_out, None)])
def test_fully_masked_rows_give_zeros_and_minus_infinite_lse(mods):
    """Rows that see no key, by the mask or because score_mod sent every score to -inf."""
    score_mod, mask_mod = mods
    results = {}
    for name, (lib, flex) in LIBS.items():
        q, k, v = inputs(lib, [(1, 2, 6, 4)] * 3, requires_grad=True)
        smod = score_mod(lib, {}) if score_mod else None
        mask = flex.create_block_mask(mask_mod(lib, {}), 1, None, 6, 6, device="cpu") \
            if mask_mod else None
        if name == "torch":
            with torch.no_grad():
                out, aux = flex.flex_attention(q.detach(), k.detach(), v.detach(), smod,
                                               block_mask=mask,
                                               return_aux=flex.AuxRequest(lse=True))
            differentiable = torch_math(q, k, v, smod, mask, None)[0]
        else:
            out, aux = flex.flex_attention(q, k, v, smod, block_mask=mask,
                                           return_aux=flex.AuxRequest(lse=True))
            differentiable = out
        differentiable.sum().backward()
        results[name] = [out, aux.lse, q.grad, k.grad, v.grad]
    for kx, tx in zip(results["kiln"], results["torch"]):
        np.testing.assert_allclose(kx.detach().numpy(), tx.detach().numpy(), **TOL)
    k_out, k_lse = results["kiln"][:2]
    empty = slice(3, None) if mask_mod else slice(5, None)
    assert (k_out[:, :, empty] == 0).all().item()
    assert kiln.isneginf(k_lse[:, :, empty]).all().item()
    assert kiln.isfinite(results["kiln"][2]).all().item()


def test_return_lse_return_aux_and_max_scores():
    q, k, v = inputs(kiln, [(1, 2, 5, 4)] * 3)
    tq, tk, tv = inputs(torch, [(1, 2, 5, 4)] * 3)
    with pytest.warns(FutureWarning, match="return_lse is deprecated"):
        out, lse = kflex.flex_attention(q, k, v, return_lse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        t_out, t_lse = tflex.flex_attention(tq, tk, tv, return_lse=True)
    np.testing.assert_allclose(lse.numpy(), t_lse.numpy(), **TOL)
    out, aux = kflex.flex_attention(q, k, v, return_aux=kflex.AuxRequest())
    assert isinstance(aux, kflex.AuxOutput) and aux == (None, None)
    # torch's CPU path refuses max_scores; its math implementation defines them
    _, aux = kflex.flex_attention(q, k, v, score_mod=soft_cap(kiln, {}),
                                  return_aux=kflex.AuxRequest(lse=True, max_scores=True))
    _, t_lse, t_max = torch_math(tq, tk, tv, soft_cap(torch, {}), None, None)
    np.testing.assert_allclose(aux.max_scores.numpy(), t_max.numpy(), **TOL)
    np.testing.assert_allclose(aux.lse.numpy(), t_lse.numpy(), **TOL)
    with pytest.raises(ValueError, match="Cannot specify both return_lse and return_aux"):
        kflex.flex_attention(q, k, v, return_lse=True, return_aux=kflex.AuxRequest(lse=True))


def test_key_value_batch_one_broadcasts_with_a_block_mask_of_the_query_batch():
    outs = []
    for lib, flex in LIBS.values():
        q, k, v = inputs(lib, [(3, 2, 6, 4), (1, 2, 6, 4), (1, 2, 6, 4)])
        mask = flex.create_block_mask(causal(lib, {}), 3, None, 6, 6, device="cpu")
        outs.append(flex.flex_attention(q, k, v, block_mask=mask))
    np.testing.assert_allclose(outs[1].numpy(), outs[0].numpy(), **TOL)


def test_compiled_matches_eager():
    """flex_attention inside a compiled function (score_mod capturing a learned bias, a document
    mask with rows that see nothing): the replayed program's output and gradients equal eager
    ones on the following calls (the first call is the trace, which runs eagerly)."""
    captured = captured_tensors(kiln, 2, 4, 16, 16, requires_grad=True)
    smod, mask = learned_head_bias(kiln, captured), windowed_documents(kiln, captured)
    block_mask = kflex.create_block_mask(and_late_rows_empty(mask), 2, None, 16, 16,
                                         device="cpu", BLOCK_SIZE=4)

    def attend(q, k, v):
        return kflex.flex_attention(q, k, v, score_mod=smod, block_mask=block_mask).sum(-1)

    compiled = kiln.compile(attend, fullgraph=True)
    for seed in range(3):
        results = []
        for fn in (attend, compiled):
            captured["head_bias"].grad = None
            q, k, v = inputs(kiln, [(2, 4, 16, 8)] * 3, requires_grad=True, seed=seed)
            out = fn(q, k, v)
            (out * out).sum().backward()
            results.append([out, q.grad, k.grad, v.grad, captured["head_bias"].grad])
        for replayed, eager in zip(results[1], results[0]):
            np.testing.assert_allclose(replayed.detach().numpy(), eager.detach().numpy(),
                                       rtol=1e-5, atol=1e-6, err_msg=f"call {seed}")
    assert len(compiled.entries) == 1 and compiled.retraces == 0


def and_late_rows_empty(mask_mod):
    return kflex.and_masks(mask_mod, lambda b, h, q_idx, kv_idx: q_idx < 12)


def test_compiled_flex_attention_with_a_block_mask_argument():
    """torch's recommended spelling, `torch.compile(flex_attention)`, the BlockMask passed on
    each call; replays equal eager calls."""
    compiled = kiln.compile(kflex.flex_attention)
    block_mask = kflex.create_block_mask(and_late_rows_empty(causal(kiln, {})), None, None,
                                         16, 16, device="cpu", BLOCK_SIZE=4)
    score_mod = alibi(kiln, {"heads": 4})
    for seed in range(3):
        q, k, v = inputs(kiln, [(2, 4, 16, 8)] * 3, seed=seed)
        eager = kflex.flex_attention(q, k, v, score_mod=score_mod, block_mask=block_mask)
        replayed = compiled(q, k, v, score_mod=score_mod, block_mask=block_mask)
        np.testing.assert_allclose(replayed.numpy(), eager.numpy(), rtol=1e-5, atol=1e-6,
                                   err_msg=f"call {seed}")
    assert len(compiled.entries) == 1 and compiled.retraces == 0


# ---- BlockMask --------------------------------------------------------------------------------

@pytest.mark.parametrize("mask_mod,B,H,L,S,block", [
    (causal, 4, 2, 300, 260, 64), (causal, None, None, 5, 7, 128),
    (sliding_window, 2, None, 130, 129, (64, 32)), (document, 2, 3, 24, 24, 8),
    (prefix_lm, None, 2, 17, 33, (16, 8))])
def test_block_mask_fields_match_torch(mask_mod, B, H, L, S, block):
    masks = {}
    for name, (lib, flex) in LIBS.items():
        captured = captured_tensors(lib, B or 1, H or 1, L, S, requires_grad=False)
        masks[name] = flex.create_block_mask(mask_mod(lib, captured), B, H, L, S,
                                             device="cpu", BLOCK_SIZE=block)
    t, k = masks["torch"], masks["kiln"]
    assert_same_block_mask(k, t)
    assert k.shape == t.shape and k.BLOCK_SIZE == t.BLOCK_SIZE and k.numel() == t.numel()
    assert k.sparsity() == pytest.approx(t.sparsity(), abs=1e-12)
    assert str(k) == str(t)
    assert repr(k).replace("kiln.Size", "Size") == repr(t).replace("torch.Size", "Size")
    assert k.to_string(grid_size=3, limit=2) == t.to_string(grid_size=3, limit=2)
    assert k.to_string(grid_size=-1) == t.to_string(grid_size=-1)
    np.testing.assert_array_equal(k.to_dense().numpy(), t.to_dense().numpy())
    if B is not None:
        for index in (0, -1, (slice(0, 2), 0), (1, slice(None), torch.tensor([0]))):
            k_index = tuple(kiln.tensor(i.numpy()) if isinstance(i, torch.Tensor) else i
                            for i in index) if isinstance(index, tuple) else index
            assert_same_block_mask(k[k_index], t[index])


def assert_same_block_mask(k, t):
    for field in BLOCK_FIELDS:
        kx, tx = getattr(k, field), getattr(t, field)
        assert (kx is None) == (tx is None), field
        if tx is not None:
            assert kx.dtype.name == str(tx.dtype)[6:], field
            np.testing.assert_array_equal(kx.numpy(), tx.numpy(), err_msg=field)


def test_block_mask_without_separate_full_blocks_and_from_kv_blocks():
    t = tflex.create_block_mask(causal(torch, {}), 1, 1, 16, 16, device="cpu", BLOCK_SIZE=4,
                                separate_full_blocks=False)
    k = kflex.create_block_mask(causal(kiln, {}), 1, 1, 16, 16, device="cpu", BLOCK_SIZE=4,
                                separate_full_blocks=False)
    assert_same_block_mask(k, t)
    t2 = tflex.BlockMask.from_kv_blocks(t.kv_num_blocks, t.kv_indices, BLOCK_SIZE=4)
    k2 = kflex.BlockMask.from_kv_blocks(kiln.tensor(t.kv_num_blocks.numpy()),
                                        kiln.tensor(t.kv_indices.numpy()), BLOCK_SIZE=4)
    assert_same_block_mask(k2, t2)
    assert k2.shape == t2.shape and k2.mask_mod is kflex.noop_mask
    # only some blocks listed, noop_mask: torch's eager attention (and kiln's) reads the element
    # mask of mask_mod alone, so every position takes part
    t3 = tflex.BlockMask.from_kv_blocks(torch.tensor([[[1, 1]]], dtype=torch.int32),
                                        torch.tensor([[[[0, 1], [1, 0]]]], dtype=torch.int32),
                                        BLOCK_SIZE=4)
    k3 = kflex.BlockMask.from_kv_blocks(kiln.tensor(t3.kv_num_blocks.numpy()),
                                        kiln.tensor(t3.kv_indices.numpy()), BLOCK_SIZE=4)
    tq, kq = inputs(torch, [(1, 1, 8, 4)])[0], inputs(kiln, [(1, 1, 8, 4)])[0]
    np.testing.assert_allclose(kflex.flex_attention(kq, kq, kq, block_mask=k3).numpy(),
                               tflex.flex_attention(tq, tq, tq, block_mask=t3).numpy(), **TOL)


def test_score_mod_returning_integers_is_promoted_like_torch():
    outs = []
    for lib, flex in LIBS.values():
        q, k, v = inputs(lib, [(1, 2, 5, 4)] * 3)

        def positions_only(score, b, h, q_idx, kv_idx):
            return q_idx - kv_idx
        outs.append(flex.flex_attention(q, k, v, score_mod=positions_only,
                                        return_aux=flex.AuxRequest(lse=True)))
    (t_out, t_aux), (k_out, k_aux) = outs
    assert k_aux.lse.dtype.name == str(t_aux.lse.dtype)[6:]
    np.testing.assert_allclose(k_out.numpy(), t_out.numpy(), **TOL)
    np.testing.assert_allclose(k_aux.lse.numpy(), t_aux.lse.numpy(), **TOL)


@pytest.mark.parametrize("mod", [causal, document, "score"])
def test_create_mask_matches_torch(mod):
    masks = []
    for lib, flex in LIBS.values():
        captured = captured_tensors(lib, 2, 3, 6, 7, requires_grad=False)
        if mod == "score":
            def fn(score, b, h, q_idx, kv_idx):
                return lib.where(q_idx + h >= kv_idx, score, -float("inf"))
        else:
            fn = mod(lib, captured)
        masks.append(flex.create_mask(fn, 2, 3, 6, 7, device="cpu"))
    assert masks[1].dtype is kiln.bool and masks[0].dtype is torch.bool
    np.testing.assert_array_equal(masks[1].numpy(), masks[0].numpy())


def test_noop_and_combined_masks():
    for lib, flex in LIBS.values():
        b, h, q, kv = (lib.arange(n) for n in (1, 1, 3, 3))
        assert flex.noop_mask(b, h, q, kv).shape == () and flex.noop_mask(b, h, q, kv).item()
    with pytest.raises(RuntimeError, match="callable"):
        kflex.and_masks(causal(kiln, {}), 3)


# ---- errors -----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["head_dim", "heads", "gqa", "rank", "mask_length"])
def test_bad_inputs_raise_like_torch(case):
    shapes = {"head_dim": [(1, 2, 4, 8), (1, 2, 4, 6), (1, 2, 4, 6)],
              "heads": [(1, 4, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)],
              "gqa": [(1, 3, 4, 8), (1, 2, 4, 8), (1, 2, 4, 8)],
              "rank": [(2, 4, 8)] * 3, "mask_length": [(1, 2, 4, 8)] * 3}[case]
    errors = []
    for lib, flex in LIBS.values():
        q, k, v = inputs(lib, shapes)
        mask = flex.create_block_mask(causal(lib, {}), 1, 1, 5, 4, device="cpu") \
            if case == "mask_length" else None
        with pytest.raises(Exception) as caught:
            flex.flex_attention(q, k, v, block_mask=mask, enable_gqa=case == "gqa")
        errors.append(caught.value)
    assert type(errors[1]) is type(errors[0])
    assert "flex_attention" in str(errors[1])


def test_score_mod_of_the_wrong_shape_and_sliced_mask_mod_are_refused():
    q, k, v = inputs(kiln, [(1, 2, 4, 8)] * 3)

    def summed(score, b, h, q_idx, kv_idx):      # reduces over scores: not elementwise
        return score.sum(-1)
    with pytest.raises(ValueError, match=r"flex_attention: score_mod returned shape"):
        kflex.flex_attention(q, k, v, score_mod=summed)
    mask = kflex.create_block_mask(causal(kiln, {}), 2, 2, 4, 4, device="cpu")
    with pytest.raises(RuntimeError, match="sliced BlockMask"):
        kflex.flex_attention(q, k, v, block_mask=mask[0])
    with pytest.raises(TypeError, match="create_block_mask requires a mask_mod"):
        kflex.create_block_mask(soft_cap(kiln, {}), 1, 1, 4, 4)


# ---- the tutorial's snippets, as an unmodified script -----------------------------------------

TUTORIAL = '''
import sys
import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.attention.flex_attention import flex_attention, create_block_mask, BlockMask

data = np.load(sys.argv[1])
query, key, value = (torch.tensor(data[n]) for n in ("query", "key", "value"))


def alibi_mod(score, b, h, q_idx, kv_idx):
    scale = torch.exp2(-((h + 1) * 8.0 / 8))
    return score + (q_idx - kv_idx) * scale


out_flex2 = flex_attention(query, key, value, score_mod=alibi_mod)


def causal_mask(b, h, q_idx, kv_idx):
    return q_idx >= kv_idx


block_mask = create_block_mask(causal_mask, 1, 1, query.size(-2), key.size(-2), device="cpu")
assert isinstance(block_mask, BlockMask)
out_flex = flex_attention(query, key, value, block_mask=block_mask)
out_sdpa = F.scaled_dot_product_attention(query, key, value, is_causal=True)
np.savez(sys.argv[2], alibi=out_flex2.numpy(), causal=out_flex.numpy(), sdpa=out_sdpa.numpy())
'''


def test_tutorial_snippets_run_as_torch_script(tmp_path):
    rng = np.random.default_rng(3)
    data = {n: rng.normal(size=(2, 8, 5, 16)).astype(np.float32)
            for n in ("query", "key", "value")}
    np.savez(tmp_path / "in.npz", **data)
    script = tmp_path / "flex_tutorial.py"
    script.write_text(TUTORIAL)
    results = {}
    for name, runner in (("torch", [sys.executable]), ("kiln", [sys.executable, "-m", "kiln",
                                                                "run"])):
        out = tmp_path / f"{name}.npz"
        subprocess.run(runner + [str(script), str(tmp_path / "in.npz"), str(out)], check=True,
                       capture_output=True)
        results[name] = np.load(out)
    for field in ("alibi", "causal", "sdpa"):
        np.testing.assert_allclose(results["kiln"][field], results["torch"][field], **TOL)
    np.testing.assert_allclose(results["kiln"]["causal"], results["kiln"]["sdpa"], **TOL)
