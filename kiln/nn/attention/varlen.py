"""`kiln.nn.attention.varlen`: attention over packed variable-length sequences (varlen_attn).

Sequences are packed along the token axis, q [T_q, H, D], k/v [T_k, H_kv, D], and delimited
by cumulative offsets cu_seq_q / cu_seq_k ([N + 1], starting at 0): sequence i is tokens
cu_seq[i]:cu_seq[i + 1]. Each query attends only to the keys of its own sequence, within
`window_size` (left, right) of its diagonal; -1 is unbounded, (-1, 0) is causal. As in the
flash-attention kernel torch calls, the diagonal is aligned to the bottom right: local query i
of a sequence with Lq queries and Lk keys sees local keys i + Lk - Lq - left ... i + Lk - Lq +
right. A query that sees no key gives zeros and lse +inf (the kernel's convention).

kiln computes one masked attention over all packed tokens (a block-diagonal mask built from
the offsets with tensor ops) instead of a loop over sequences: it needs no `.item()`, so it
traces under `kiln.compile` and differentiates like any composite, at the price of a
[H, T_q, T_k] score matrix. torch runs varlen_attn only on CUDA; its CPU build refuses.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import kiln
from kiln import Tensor
from kiln.nn.attention.flex_attention import _safe_attention, _working_dtype

__all__ = ["varlen_attn", "varlen_attn_out", "AuxRequest"]


class AuxRequest(NamedTuple):
    """Which auxiliary outputs varlen_attn should return besides the output."""
    lse: bool = False


def varlen_attn(query: Tensor, key: Tensor, value: Tensor, cu_seq_q: Tensor,
                cu_seq_k: Tensor | None, max_q: int, max_k: int, *,
                return_aux: AuxRequest | None = None, scale: float | None = None,
                window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False,
                seqused_k: Tensor | None = None, block_table: Tensor | None = None,
                num_splits: int | None = None, is_causal: bool = False):
    """Attention within each packed sequence: [T_q, H, D] -> [T_q, H, Dv], and with
    return_aux=AuxRequest(lse=True) also the float32 logsumexp [H, T_q]. seqused_k[i] keeps
    only the first seqused_k[i] keys of sequence i. max_q/max_k (the kernel's launch bounds)
    and num_splits (its split-KV choice) do not change the result. `is_causal=True` is the
    tutorial's (an earlier torch release's) spelling of window_size=(-1, 0)."""
    window = _window(window_size, is_causal)
    _check_inputs(query, key, value, cu_seq_q, cu_seq_k, enable_gqa, block_table)
    allowed = _packed_mask(cu_seq_q, cu_seq_k, query.shape[0], key.shape[0], window, seqused_k)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = kiln.repeat_interleave(key, groups, dim=1)
        value = kiln.repeat_interleave(value, groups, dim=1)
    work = _working_dtype(query.dtype)
    q, k = query.to(work).permute(1, 0, 2), key.to(work).permute(1, 2, 0)
    scores = kiln.matmul(q, k) * scale                                     # [H, T_q, T_k]
    out, lse, _ = _safe_attention(scores, allowed, value.to(query.dtype).permute(1, 0, 2),
                                  math.inf)
    out = out.permute(1, 0, 2)
    if return_aux is not None and return_aux.lse:
        return out, lse.to(kiln.float32)
    return out


def varlen_attn_out(out: Tensor, query: Tensor, key: Tensor, value: Tensor, cu_seq_q: Tensor,
                    cu_seq_k: Tensor | None, max_q: int, max_k: int, *,
                    return_aux: AuxRequest | None = None, scale: float | None = None,
                    window_size: tuple[int, int] = (-1, -1), enable_gqa: bool = False,
                    seqused_k: Tensor | None = None, block_table: Tensor | None = None,
                    num_splits: int | None = None):
    """varlen_attn written into `out` (returned, with the lse when asked for)."""
    result, lse = varlen_attn(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k,
                              return_aux=AuxRequest(lse=True), scale=scale,
                              window_size=window_size, enable_gqa=enable_gqa,
                              seqused_k=seqused_k, block_table=block_table,
                              num_splits=num_splits)
    out.copy_(result)
    return (out, lse) if return_aux is not None and return_aux.lse else out


def _window(window_size, is_causal: bool) -> tuple[int, int]:
    if len(window_size) != 2:
        raise ValueError(f"varlen_attn: window_size must have length 2, got {len(window_size)}")
    window = (int(window_size[0]), int(window_size[1]))
    if is_causal:
        if window not in ((-1, -1), (-1, 0)):
            raise ValueError(f"varlen_attn: is_causal=True means window_size=(-1, 0); got "
                             f"window_size={window} as well")
        return (-1, 0)
    return window


def _check_inputs(query: Tensor, key: Tensor, value: Tensor, cu_seq_q: Tensor,
                  cu_seq_k: Tensor | None, enable_gqa: bool, block_table) -> None:
    if block_table is not None:
        raise NotImplementedError("varlen_attn: block_table (a paged KV cache) is not "
                                  "implemented in kiln; pass key/value packed as [T_k, H, D]")
    if cu_seq_k is None:
        raise ValueError("varlen_attn: cu_seq_k is needed (None goes with block_table)")
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"varlen_attn: query, key and value must be packed 3-D (T, H, D), got "
                         f"shapes {tuple(query.shape)}, {tuple(key.shape)} and "
                         f"{tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1] or key.shape[:2] != value.shape[:2]:
        raise ValueError(f"varlen_attn: query {tuple(query.shape)} and key {tuple(key.shape)} "
                         f"must share the head dim, key and value {tuple(value.shape)} the "
                         f"tokens and heads")
    hq, hkv = query.shape[1], key.shape[1]
    if not enable_gqa and hq != hkv:
        raise ValueError(f"Expect query and key/value to have the same number of heads but got "
                         f"Hq={hq} and Hkv={hkv}. Try setting enable_gqa=True for GQA.")
    if enable_gqa and hq % hkv != 0:
        raise ValueError(f"Expect number of query heads to be a multiple of kv heads for GQA "
                         f"but got Hq={hq} and Hkv={hkv}.")
    for name, cu in (("cu_seq_q", cu_seq_q), ("cu_seq_k", cu_seq_k)):
        if cu.dim() != 1 or cu.dtype.is_floating_point:
            raise ValueError(f"varlen_attn: {name} must be a 1-D integer tensor of N + 1 "
                             f"offsets, got {cu.dtype} of shape {tuple(cu.shape)}")
    if cu_seq_q.shape != cu_seq_k.shape:
        raise ValueError(f"varlen_attn: cu_seq_q {tuple(cu_seq_q.shape)} and cu_seq_k "
                         f"{tuple(cu_seq_k.shape)} must delimit the same number of sequences")


def _token_positions(cu_seq: Tensor, total: int) -> tuple[Tensor, Tensor, Tensor]:
    """For each of `total` packed tokens: its sequence (N for tokens past the last offset),
    its position in that sequence, and whether it belongs to a sequence at all."""
    cu_seq = cu_seq.to(kiln.int64)
    tokens = kiln.arange(total, device=cu_seq.device)
    sequence = (tokens.unsqueeze(-1) >= cu_seq[1:]).sum(dim=-1)
    position = tokens - kiln.cat([cu_seq, cu_seq[-1:]])[sequence]
    inside = (position >= 0) & (sequence < cu_seq.shape[0] - 1)
    return sequence, position, inside


def _lengths(cu_seq: Tensor) -> Tensor:
    """Each sequence's length, with a 0 appended for the tokens past the last offset."""
    cu_seq = cu_seq.to(kiln.int64)
    return kiln.cat([cu_seq[1:] - cu_seq[:-1], cu_seq.new_zeros(1).to(kiln.int64)])


def _packed_mask(cu_seq_q: Tensor, cu_seq_k: Tensor, total_q: int, total_k: int,
                 window: tuple[int, int], seqused_k: Tensor | None) -> Tensor:
    """[T_q, T_k] True where query token i may attend to key token j."""
    seq_q, pos_q, in_q = _token_positions(cu_seq_q, total_q)
    seq_k, pos_k, in_k = _token_positions(cu_seq_k, total_k)
    keys_of_query = _lengths(cu_seq_k)
    if seqused_k is not None:
        keys_of_query = kiln.cat([seqused_k.to(kiln.int64),
                                  seqused_k.new_zeros(1).to(kiln.int64)])
    keys_of_query = keys_of_query[seq_q].unsqueeze(-1)                      # [T_q, 1]
    diagonal = (pos_q + keys_of_query.squeeze(-1) - _lengths(cu_seq_q)[seq_q]).unsqueeze(-1)
    key_position = pos_k.unsqueeze(0)                                       # [1, T_k]
    allowed = (seq_q.unsqueeze(-1) == seq_k) & in_q.unsqueeze(-1) & in_k
    allowed = allowed & (key_position < keys_of_query)
    left, right = window
    if left >= 0:
        allowed = allowed & (key_position >= diagonal - left)
    if right >= 0:
        allowed = allowed & (key_position <= diagonal + right)
    return allowed.unsqueeze(0)                                             # [1, T_q, T_k]
