"""kiln.nn.attention.varlen against torch 2.13.

torch's varlen_attn runs only on CUDA (its CPU build has no flash kernel), so values and
gradients are compared with torch computing the same attention sequence by sequence with
`F.scaled_dot_product_attention` (causal diagonals aligned bottom right, as the kernel aligns
them, through torch's own `causal_lower_right`), and torch's varlen_attn itself is run on
meta tensors for output shapes, dtypes and its input checks.
"""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention.bias import causal_lower_right
from torch.nn.attention.varlen import AuxRequest as TorchAuxRequest
from torch.nn.attention.varlen import varlen_attn as torch_varlen_attn

import kiln
from kiln.nn.attention.varlen import AuxRequest, varlen_attn, varlen_attn_out

TOL = dict(rtol=1e-5, atol=1e-5)


def packed(lengths_q, lengths_k, heads_q=4, heads_kv=4, dim=8, dim_v=8, dtype=np.float32,
           seed=0):
    rng = np.random.default_rng(seed)
    cu_q, cu_k = np.cumsum([0] + lengths_q), np.cumsum([0] + lengths_k)
    q = rng.normal(size=(cu_q[-1], heads_q, dim)).astype(dtype)
    k = rng.normal(size=(cu_k[-1], heads_kv, dim)).astype(dtype)
    v = rng.normal(size=(cu_k[-1], heads_kv, dim_v)).astype(dtype)
    return q, k, v, cu_q.astype(np.int32), cu_k.astype(np.int32)


def torch_reference(q, k, v, cu_q, cu_k, window=(-1, -1), scale=None, enable_gqa=False,
                    seqused_k=None):
    """Per sequence, torch's SDPA over (H, L, D) with the window as a boolean mask; the lse
    from torch's logsumexp of the same masked scores."""
    outs, lses = [], []
    for i in range(len(cu_q) - 1):
        qs = q[cu_q[i]:cu_q[i + 1]].transpose(0, 1)
        used = cu_k[i + 1] - cu_k[i] if seqused_k is None else int(seqused_k[i])
        ks = k[cu_k[i]:cu_k[i] + used].transpose(0, 1)
        vs = v[cu_k[i]:cu_k[i] + used].transpose(0, 1)
        lq, lk = qs.shape[1], ks.shape[1]
        mask = window_mask(lq, lk, window)
        outs.append(F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, scale=scale,
                                                   enable_gqa=enable_gqa).transpose(0, 1))
        if enable_gqa:
            ks = ks.repeat_interleave(qs.shape[0] // ks.shape[0], dim=0)
        scores = qs @ ks.transpose(-2, -1) * (scale or 1 / math.sqrt(qs.shape[-1]))
        lses.append(scores.masked_fill(~mask, -math.inf).logsumexp(-1))
    return torch.cat(outs), torch.cat(lses, dim=-1)


def window_mask(lq: int, lk: int, window) -> torch.Tensor:
    """torch's causal_lower_right mask for (-1, 0); otherwise the kernel's documented window
    (query i sees keys i + lk - lq - left ... i + lk - lq + right), in torch."""
    if tuple(window) == (-1, 0):
        return causal_lower_right(lq, lk)._materialize()
    i = torch.arange(lq).unsqueeze(-1) + lk - lq
    j = torch.arange(lk)
    mask = torch.ones(lq, lk, dtype=torch.bool)
    if window[0] >= 0:
        mask &= j >= i - window[0]
    if window[1] >= 0:
        mask &= j <= i + window[1]
    return mask


def compare(data, window=(-1, -1), scale=None, enable_gqa=False, seqused_k=None, tol=TOL):
    q, k, v, cu_q, cu_k = data
    tq, tk, tv = (torch.tensor(x, requires_grad=True) for x in (q, k, v))
    t_out, t_lse = torch_reference(tq, tk, tv, cu_q, cu_k, window, scale, enable_gqa, seqused_k)
    kq, kk, kv = (kiln.tensor(x, requires_grad=True) for x in (q, k, v))
    k_out, k_lse = varlen_attn(kq, kk, kv, kiln.tensor(cu_q), kiln.tensor(cu_k),
                               int(np.diff(cu_q).max()), int(np.diff(cu_k).max()),
                               return_aux=AuxRequest(lse=True), scale=scale,
                               window_size=window, enable_gqa=enable_gqa,
                               seqused_k=None if seqused_k is None else kiln.tensor(seqused_k))
    weight = np.linspace(-1, 1, t_out.numel()).reshape(tuple(t_out.shape)).astype(q.dtype)
    (t_out * torch.tensor(weight)).sum().backward()
    (k_out * kiln.tensor(weight)).sum().backward()
    meta_out, meta_lse = torch_meta(data, enable_gqa)
    assert tuple(k_out.shape) == tuple(meta_out.shape) == tuple(t_out.shape)
    assert tuple(k_lse.shape) == tuple(meta_lse.shape)
    assert k_out.dtype.name == str(meta_out.dtype)[6:] and k_lse.dtype.name == "float32" == \
        str(meta_lse.dtype)[6:]
    # the lse is float32 for every input dtype (torch's meta result), so compared at fp32
    for what, kx, tx in (("out", k_out, t_out), ("lse", k_lse, t_lse),
                         ("grad q", kq.grad, tq.grad), ("grad k", kk.grad, tk.grad),
                         ("grad v", kv.grad, tv.grad)):
        np.testing.assert_allclose(kx.detach().numpy(), tx.detach().to(torch.float64).numpy(),
                                   err_msg=what, **(TOL if what == "lse" else tol))


def torch_meta(data, enable_gqa=False):
    """torch's own varlen_attn on meta tensors: the shapes and dtypes it returns."""
    q, k, v, cu_q, cu_k = (torch.tensor(x, device="meta") for x in data)
    return torch_varlen_attn(q, k, v, cu_q, cu_k, 8, 8, enable_gqa=enable_gqa,
                             return_aux=TorchAuxRequest(lse=True))


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0), (2, 0), (1, 1)])
def test_equal_lengths_match_per_sequence_sdpa(window):
    compare(packed([3, 7, 1, 5], [3, 7, 1, 5]), window=window)


@pytest.mark.parametrize("window", [(-1, -1), (-1, 0)])
def test_different_query_and_key_lengths(window):
    """Fewer queries than keys per sequence (a decoding step over a cache): the causal
    diagonal ends at the last key, as torch's causal_lower_right."""
    compare(packed([2, 4, 1], [5, 4, 3]), window=window)


def test_gqa_scale_float64_and_seqused_k():
    compare(packed([4, 6], [4, 6], heads_q=6, heads_kv=2), window=(-1, 0), enable_gqa=True,
            scale=0.25)
    compare(packed([3, 5], [3, 5], dtype=np.float64), window=(-1, 0),
            tol=dict(rtol=1e-12, atol=1e-12))
    compare(packed([3, 5], [6, 5]), seqused_k=np.array([4, 2]))


@pytest.mark.filterwarnings("ignore:Lower right causal bias will produce NaNs")
def test_queries_that_see_no_key_give_zeros_and_infinite_lse():
    """Causal with more queries than keys: the first queries of the sequence see nothing (the
    kernel writes zeros and lse +inf); the other rows and all gradients agree with torch."""
    q, k, v, cu_q, cu_k = packed([5, 2], [2, 2])
    kq = kiln.tensor(q, requires_grad=True)
    out, lse = varlen_attn(kq, kiln.tensor(k), kiln.tensor(v), kiln.tensor(cu_q),
                           kiln.tensor(cu_k), 5, 2, window_size=(-1, 0),
                           return_aux=AuxRequest(lse=True))
    assert (out[:3] == 0).all().item() and (lse[:, :3] == math.inf).all().item()
    tq = torch.tensor(q, requires_grad=True)
    t_out, t_lse = torch_reference(tq, torch.tensor(k), torch.tensor(v), cu_q, cu_k, (-1, 0))
    seen = list(range(3, 7))
    np.testing.assert_allclose(out[seen].detach().numpy(), t_out[seen].detach().numpy(), **TOL)
    np.testing.assert_allclose(lse[:, seen].detach().numpy(), t_lse[:, seen].detach().numpy(),
                               **TOL)
    out[seen].sum().backward()
    t_out[seen].sum().backward()
    np.testing.assert_allclose(kq.grad.numpy(), tq.grad.numpy(), **TOL)


def test_out_variant_and_compiled_matches_eager():
    q, k, v, cu_q, cu_k = packed([3, 5], [3, 5])
    cu = kiln.tensor(cu_q)
    out = kiln.empty(*q.shape)
    result = varlen_attn_out(out, kiln.tensor(q), kiln.tensor(k), kiln.tensor(v), cu, cu, 5, 5)
    expected = varlen_attn(kiln.tensor(q), kiln.tensor(k), kiln.tensor(v), cu, cu, 5, 5)
    assert result is out
    np.testing.assert_array_equal(out.numpy(), expected.numpy())

    # 16 queries, the first 3 of which see no key (causal over 7 queries and 4 keys)
    cu_q, cu_k = (kiln.tensor(cu) for cu in packed([7, 9], [4, 9])[3:])

    def attend(q, k, v, cu_q, cu_k):
        return varlen_attn(q, k, v, cu_q, cu_k, 9, 9, window_size=(-1, 0)).sum(-1)
    compiled = kiln.compile(attend, fullgraph=True)
    for call in range(3):                       # the first call traces (and runs eagerly)
        grads = []
        for fn in (attend, compiled):
            args = [kiln.tensor(x, requires_grad=True)
                    for x in packed([7, 9], [4, 9], seed=call)[:3]]
            result = fn(*args, cu_q, cu_k)
            (result * result).sum().backward()
            grads.append([result] + [a.grad for a in args])
        for replayed, eager in zip(grads[1], grads[0]):
            np.testing.assert_allclose(replayed.detach().numpy(), eager.detach().numpy(),
                                       rtol=1e-5, atol=1e-5, err_msg=f"call {call}")
    assert len(compiled.entries) == 1 and compiled.retraces == 0


@pytest.mark.parametrize("case", ["heads", "gqa"])
def test_head_errors_match_torch(case):
    heads_q, heads_kv = (4, 2) if case == "heads" else (3, 2)
    data = packed([3], [3], heads_q=heads_q, heads_kv=heads_kv)
    errors = []
    for lib, fn in ((torch, torch_varlen_attn), (kiln, varlen_attn)):
        q, k, v, cu_q, cu_k = (lib.tensor(x) for x in data)
        with pytest.raises(ValueError) as caught:
            fn(q, k, v, cu_q, cu_k, 3, 3, enable_gqa=case == "gqa")
        errors.append(str(caught.value))
    assert errors[0] == errors[1]


def test_bad_shapes_and_paged_cache_are_refused():
    q, k, v, cu_q, cu_k = (kiln.tensor(x) for x in packed([3], [3]))
    with pytest.raises(ValueError, match=r"varlen_attn: query \(3, 4, 8\) and key \(3, 4, 6\)"):
        varlen_attn(q, k[..., :6], v, cu_q, cu_k, 3, 3)
    with pytest.raises(ValueError, match="varlen_attn: query, key and value must be packed 3-D"):
        varlen_attn(q.unsqueeze(0), k, v, cu_q, cu_k, 3, 3)
    with pytest.raises(ValueError, match="window_size must have length 2"):
        varlen_attn(q, k, v, cu_q, cu_k, 3, 3, window_size=(1,))
    with pytest.raises(ValueError, match="varlen_attn: cu_seq_q must be a 1-D integer tensor"):
        varlen_attn(q, k, v, cu_q.float(), cu_k, 3, 3)
    with pytest.raises(ValueError, match="must delimit the same number of sequences"):
        varlen_attn(q, k, v, cu_q, kiln.tensor([0, 1, 3]), 3, 3)
    with pytest.raises(NotImplementedError, match="block_table"):
        varlen_attn(q, k, v, cu_q, cu_k, 3, 3, block_table=kiln.zeros(1, 1, dtype=kiln.int32))


TUTORIAL = '''
import sys
import numpy as np
import torch
import torch.nn as nn
from torch.nn.attention.varlen import varlen_attn

tokens = torch.tensor(np.load(sys.argv[1]))
eos_positions = (tokens == 2).nonzero(as_tuple=True)[0].to(torch.int32)
s = torch.cat([torch.tensor([0], dtype=torch.int32), eos_positions + 1])
s = torch.unique_consecutive(s)
seq_lengths = torch.diff(s)
q = torch.randn(64, 4, 32)
attn_out = varlen_attn(query=q, key=q, value=q, cu_seq_q=s, cu_seq_k=s, max_q=64, max_k=64,
                       is_causal=True)
np.savez(sys.argv[2], q=q.numpy(), s=s.numpy(), lengths=seq_lengths.numpy(),
         out=attn_out.numpy())
'''


def test_tutorial_snippet_runs_as_torch_script(tmp_path):
    """The varlen tutorial's lines under `kiln run` (its tokens end at the last EOS, as the
    tutorial's offsets assume); the result equals torch's per-sequence causal SDPA."""
    tokens = np.random.default_rng(5).integers(0, 8, size=64)
    tokens[-1] = 2
    np.save(tmp_path / "tokens.npy", tokens)
    script = tmp_path / "varlen_tutorial.py"
    script.write_text(TUTORIAL)
    subprocess.run([sys.executable, "-m", "kiln", "run", str(script),
                    str(tmp_path / "tokens.npy"), str(tmp_path / "out.npz")],
                   check=True, capture_output=True)
    result = np.load(tmp_path / "out.npz")
    q, s = torch.tensor(result["q"]), result["s"]
    np.testing.assert_array_equal(result["lengths"], np.diff(s))
    expected, _ = torch_reference(q, q, q, s, s, window=(-1, 0))
    np.testing.assert_allclose(result["out"], expected.numpy(), **TOL)
