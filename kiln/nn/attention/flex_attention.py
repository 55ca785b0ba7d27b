"""`kiln.nn.attention.flex_attention`: attention with a user score_mod and a mask_mod (BlockMask).

torch's flex_attention compiles score_mod/mask_mod into a fused Triton kernel; its eager (CPU)
path computes the dense scores, applies the mods through four nested vmaps over scalars, masks
with the element mask of mask_mod and takes a "safe" softmax (fully masked rows give zeros).
kiln runs that dense computation with its own ops, so it is differentiable (q, k, v and any
tensor a mod captures) and traces under `kiln.compile` like any composite.

The mod contract: kiln calls a mod ONCE with broadcast index tensors instead of vmapping it over
scalars: b:[B,1,1,1], h:[1,H,1,1], q_idx:[1,1,L,1], kv_idx:[1,1,1,S] (int64) and, for a
score_mod, score:[B,H,L,S]. For an elementwise mod (arithmetic, comparisons, torch.where,
tanh/exp, indexing a captured tensor with the indices) this gives the values vmap gives; a mod
that reduces over `score` or branches in Python on a tensor's value does not fit the contract.
The result must broadcast to [B,H,L,S]; otherwise the call raises, naming the mod.

A BlockMask is kept as torch keeps it (kv_num_blocks/kv_indices of the blocks with some
allowed entry, full_kv_* of the blocks with all entries allowed, and the q_* transposes); as in
torch's eager path, the attention itself uses the exact element mask of `block_mask.mask_mod`
and does not consult the block lists (a BlockMask built `from_kv_blocks` with noop_mask
attends everywhere there, where torch's GPU kernel would skip the absent blocks).
`create_nested_block_mask` is absent: kiln has no nested (jagged) tensors yet.
"""

from __future__ import annotations

import inspect
import itertools
import math
import warnings
from typing import Callable, NamedTuple

import kiln
from kiln import Tensor

__all__ = ["BlockMask", "flex_attention", "AuxOutput", "AuxRequest", "FlexKernelOptions",
           "create_block_mask", "create_mask", "or_masks", "and_masks", "noop_mask"]

_score_mod_signature = Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]
_mask_mod_signature = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]
FlexKernelOptions = dict    # Triton tuning knobs (BLOCK_M, num_warps, ...): kiln has no kernel

_DEFAULT_SPARSE_BLOCK_SIZE = 128
_LARGE_SPARSE_BLOCK_SIZE = 1 << 30      # the "one block covers everything" mask of no block_mask


class AuxRequest(NamedTuple):
    """Which auxiliary outputs flex_attention should return besides the output."""
    lse: bool = False
    max_scores: bool = False


class AuxOutput(NamedTuple):
    """flex_attention's auxiliary outputs; a field not requested is None."""
    lse: Tensor | None = None
    max_scores: Tensor | None = None


# ---- mask_mods ------------------------------------------------------------------------------

def noop_mask(batch: Tensor, head: Tensor, token_q: Tensor, token_kv: Tensor) -> Tensor:
    """The mask_mod that allows every position."""
    return batch.new_ones((), dtype=kiln.bool, device=batch.device)


def or_masks(*mask_mods: _mask_mod_signature) -> _mask_mod_signature:
    """The mask_mod allowing a position when any of `mask_mods` allows it."""
    if not all(callable(mod) for mod in mask_mods):
        raise RuntimeError(f"All inputs should be callable mask_mods: {mask_mods}")

    def or_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = b.new_zeros((), dtype=kiln.bool)
        for mod in mask_mods:
            result = result | mod(b, h, q_idx, kv_idx)
        return result
    return or_mask


def and_masks(*mask_mods: _mask_mod_signature) -> _mask_mod_signature:
    """The mask_mod allowing a position when all of `mask_mods` allow it."""
    if not all(callable(mod) for mod in mask_mods):
        raise RuntimeError(f"All inputs should be callable mask_mods: {mask_mods}")

    def and_mask(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        result = b.new_ones((), dtype=kiln.bool)
        for mod in mask_mods:
            result = result & mod(b, h, q_idx, kv_idx)
        return result
    return and_mask


def _sliced_mask_mod_error(batch: Tensor, head: Tensor, token_q: Tensor,
                           token_kv: Tensor) -> Tensor:
    """The mask_mod of a sliced BlockMask: slicing loses which positions mask_mod referred to."""
    raise RuntimeError("Cannot use mask_mod from a sliced BlockMask. When you slice a BlockMask "
                       "using [], the mask_mod attribute is reset; set it from the original "
                       "(unsliced) BlockMask's mask_mod.")


def _positional_arity(fn: Callable) -> int:
    """How many positional arguments without a default `fn` takes (4: mask_mod, 5: score_mod)."""
    code = getattr(fn, "__code__", None)
    if code is not None:
        return code.co_argcount - len(getattr(fn, "__defaults__", None) or ())
    return sum(1 for p in inspect.signature(fn).parameters.values()
               if p.default is inspect.Parameter.empty)


def _index_grid(B: int, H: int, L: int, S: int, device) -> tuple[Tensor, ...]:
    """b, h, q_idx, kv_idx as int64 tensors along their own axis of [B, H, L, S]."""
    return (kiln.arange(B, device=device).view(B, 1, 1, 1),
            kiln.arange(H, device=device).view(1, H, 1, 1),
            kiln.arange(L, device=device).view(1, 1, L, 1),
            kiln.arange(S, device=device).view(1, 1, 1, S))


def _apply_mod(op: str, name: str, mod: Callable, args: tuple, shape: tuple) -> Tensor:
    """`mod(*args)` broadcast to `shape`; a result of another shape is the mod's mistake."""
    result = mod(*args)
    if not isinstance(result, Tensor):
        raise TypeError(f"{op}: {name} must return a tensor, got {type(result).__name__}")
    try:
        if kiln.broadcast_shapes(tuple(result.shape), shape) == shape:
            return result.expand(*shape)
    except (RuntimeError, ValueError):
        pass
    raise ValueError(
        f"{op}: {name} returned shape {tuple(result.shape)}, which does not broadcast to the "
        f"scores' shape {shape}. kiln calls {name} once with broadcast indices b:[B,1,1,1], "
        f"h:[1,H,1,1], q_idx:[1,1,L,1], kv_idx:[1,1,1,S], so it must be elementwise in them")


def create_mask(mod_fn: Callable, B: int | None, H: int | None, Q_LEN: int, KV_LEN: int,
                device=None) -> Tensor:
    """The boolean [B, H, Q_LEN, KV_LEN] mask of a mask_mod, or of a score_mod (True where it
    does not send a zero score to -inf). B/H None mean 1 (the mask broadcasts over them)."""
    device = _default_device(device)
    B, H = 1 if B is None else B, 1 if H is None else H
    shape = (B, H, Q_LEN, KV_LEN)
    indices = _index_grid(B, H, Q_LEN, KV_LEN, device)
    arity = _positional_arity(mod_fn)
    if arity == 5:
        zeros = kiln.zeros(shape, device=device)
        return ~kiln.isneginf(_apply_mod("create_mask", "score_mod", mod_fn,
                                         (zeros, *indices), shape))
    if arity == 4:
        return _apply_mod("create_mask", "mask_mod", mod_fn, indices, shape).to(kiln.bool)
    raise TypeError(f"create_mask: mod_fn must take 4 (mask_mod: b, h, q_idx, kv_idx) or 5 "
                    f"(score_mod: score, b, h, q_idx, kv_idx) positional arguments, got {arity}")


def _default_device(device):
    """torch's default: the accelerator when there is one, else the CPU."""
    if device is not None:
        return device
    return kiln.accelerator.current_accelerator() or "cpu"


# ---- BlockMask ------------------------------------------------------------------------------

def _dense_to_ordered(dense: Tensor) -> tuple[Tensor, Tensor]:
    """Per row: how many blocks are set, and all column indices with the set ones first (in
    ascending order, then the unset ones ascending), as torch orders them."""
    dense = dense.to(kiln.int32)
    order = kiln.argsort(dense, dim=-1, descending=True, stable=True)
    return dense.sum(dim=-1).to(kiln.int32), order.to(kiln.int32)


def _ordered_to_dense(num_blocks: Tensor, indices: Tensor, num_cols: int) -> Tensor:
    """The int32 0/1 block matrix of (num_blocks, indices): the first num_blocks[r] entries
    of indices[r] are the set columns of row r."""
    entries = kiln.arange(indices.shape[-1], device=indices.device)
    valid = entries < num_blocks.unsqueeze(-1)                     # [..., rows, entries]
    columns = kiln.arange(num_cols, device=indices.device)
    hits = (indices.unsqueeze(-1) == columns) & valid.unsqueeze(-1)  # [..., rows, entries, cols]
    return hits.any(dim=-2).to(kiln.int32)


def _transpose_ordered(num_blocks: Tensor, indices: Tensor) -> tuple[Tensor, Tensor]:
    dense = _ordered_to_dense(num_blocks, indices, indices.shape[-1])
    return _dense_to_ordered(dense.transpose(-2, -1))


class BlockMask:
    """A block-sparse attention mask (torch's format): for each row of Q_BLOCK_SIZE queries,
    the KV_BLOCK_SIZE-wide key blocks that have an allowed entry (kv_num_blocks, kv_indices;
    the partial ones when full blocks are kept apart), the blocks entirely allowed
    (full_kv_num_blocks, full_kv_indices), their transposes for the backward (q_*), and the
    mask_mod that gives the exact element mask."""

    def __init__(self, seq_lengths: tuple[int, int], kv_num_blocks: Tensor, kv_indices: Tensor,
                 full_kv_num_blocks: Tensor | None, full_kv_indices: Tensor | None,
                 q_num_blocks: Tensor | None, q_indices: Tensor | None,
                 full_q_num_blocks: Tensor | None, full_q_indices: Tensor | None,
                 BLOCK_SIZE: tuple[int, int] = (_DEFAULT_SPARSE_BLOCK_SIZE,
                                                _DEFAULT_SPARSE_BLOCK_SIZE),
                 mask_mod: _mask_mod_signature = noop_mask) -> None:
        if kv_indices.dim() < 2:
            raise RuntimeError("BlockMask must have at least 2 dimensions")
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError("BlockMask: full_kv_num_blocks and full_kv_indices must be both "
                             "provided or omitted")
        self.seq_lengths = tuple(seq_lengths)
        self.kv_num_blocks, self.kv_indices = kv_num_blocks, kv_indices
        self.full_kv_num_blocks, self.full_kv_indices = full_kv_num_blocks, full_kv_indices
        self.q_num_blocks, self.q_indices = q_num_blocks, q_indices
        self.full_q_num_blocks, self.full_q_indices = full_q_num_blocks, full_q_indices
        self.BLOCK_SIZE = tuple(BLOCK_SIZE)
        self.mask_mod = mask_mod

    @classmethod
    def from_kv_blocks(cls, kv_num_blocks: Tensor, kv_indices: Tensor,
                       full_kv_num_blocks: Tensor | None = None,
                       full_kv_indices: Tensor | None = None,
                       BLOCK_SIZE: int | tuple[int, int] = _DEFAULT_SPARSE_BLOCK_SIZE,
                       mask_mod: _mask_mod_signature | None = None,
                       seq_lengths: tuple[int, int] | None = None,
                       compute_q_blocks: bool = True) -> "BlockMask":
        """A BlockMask from its kv block lists; the q_* lists are their transposes."""
        if kv_indices.dim() < 2:
            raise RuntimeError("BlockMask must have at least 2 dimensions")
        if (full_kv_num_blocks is None) != (full_kv_indices is None):
            raise ValueError("BlockMask.from_kv_blocks: full_kv_num_blocks and full_kv_indices "
                             "must be both provided or omitted")
        q_blocks, full_q_blocks = (None, None), (None, None)
        if compute_q_blocks:
            q_blocks = _transpose_ordered(kv_num_blocks, kv_indices)
            if full_kv_num_blocks is not None:
                full_q_blocks = _transpose_ordered(full_kv_num_blocks, full_kv_indices)
        if isinstance(BLOCK_SIZE, int):
            BLOCK_SIZE = (BLOCK_SIZE, BLOCK_SIZE)
        if seq_lengths is None:
            seq_lengths = (kv_indices.shape[-2] * BLOCK_SIZE[0],
                           kv_indices.shape[-1] * BLOCK_SIZE[1])
        return cls(seq_lengths, kv_num_blocks, kv_indices, full_kv_num_blocks, full_kv_indices,
                   *q_blocks, *full_q_blocks, BLOCK_SIZE=BLOCK_SIZE,
                   mask_mod=mask_mod if mask_mod is not None else noop_mask)

    def as_tuple(self, flatten: bool = True) -> tuple:
        """(seq lengths, the eight block tensors, block size, mask_mod), as torch lists them
        without its deterministic-backward fields."""
        lengths = self.seq_lengths if flatten else (self.seq_lengths,)
        sizes = self.BLOCK_SIZE if flatten else (self.BLOCK_SIZE,)
        return (*lengths, self.kv_num_blocks, self.kv_indices, self.full_kv_num_blocks,
                self.full_kv_indices, self.q_num_blocks, self.q_indices,
                self.full_q_num_blocks, self.full_q_indices, *sizes, self.mask_mod)

    @property
    def shape(self) -> tuple[int, ...]:
        """(*batch dims, Q_LEN, KV_LEN)."""
        return tuple(self.kv_indices.shape[:-2]) + self.seq_lengths

    def numel(self) -> int:
        """Elements of the mask, sparsity not accounted for."""
        return math.prod(self.shape)

    def sparsity(self) -> float:
        """Percentage of the mask's area in blocks that are skipped (torch's formula: it counts
        whole blocks, so lengths below a block give a negative number, as in torch)."""
        computed = int(self.kv_num_blocks.sum().item())
        if self.full_kv_num_blocks is not None:
            computed += int(self.full_kv_num_blocks.sum().item())
        computed_size = computed * self.BLOCK_SIZE[0] * self.BLOCK_SIZE[1]
        return 100 * (1 - computed_size / self.numel())

    def to_dense(self) -> Tensor:
        """The int32 0/1 matrix of computed blocks, [*batch dims, Q blocks, KV blocks]."""
        dense = _ordered_to_dense(self.kv_num_blocks, self.kv_indices, self.kv_indices.shape[-1])
        if self.full_kv_num_blocks is not None:
            dense = dense | _ordered_to_dense(self.full_kv_num_blocks, self.full_kv_indices,
                                              self.full_kv_indices.shape[-1])
        return dense

    def to_string(self, grid_size: int | tuple[int, int] = (20, 20), limit: int = 4) -> str:
        """The blocks drawn per (batch, head): '█' computed, ' ' skipped, '░' a mix (when a
        character stands for several blocks); grid_size=-1 draws every block."""
        dense = self.to_dense().cpu().numpy()
        *batch_dims, rows, cols = dense.shape
        if grid_size == -1:
            max_rows, max_cols = rows, cols
        elif isinstance(grid_size, int):
            max_rows = max_cols = grid_size
        else:
            max_rows, max_cols = grid_size
        row_step = max(1, -(-rows // max_rows))
        col_step = max(1, -(-cols // max_cols))
        drawings = []
        for count, batch_index in enumerate(itertools.product(*(range(n) for n in batch_dims))):
            if count == limit:
                drawings += ["...", "To print out more, set BlockMask.to_string(limit=N)",
                             "You can also index (BlockMask[batch, head]) to choose a specific "
                             "batch or head"]
                break
            grid = dense[batch_index]
            lines = [f"{batch_index}"]
            for r in range(0, rows, row_step):
                lines.append("".join(
                    _block_char(grid[r:r + row_step, c:c + col_step].mean()) * 2
                    for c in range(0, cols, col_step)))
            drawings.append("\n".join(lines) + "\n")
        return "\n".join(drawings)

    def __str__(self) -> str:
        return (f"BlockMask(shape={self.shape}, sparsity={self.sparsity():.2f}%, \n"
                f"{self.to_string().strip()}\n)")

    def __repr__(self) -> str:
        def shape_or_none(x: Tensor | None):
            return x.shape if x is not None else None
        mask_mod = getattr(self.mask_mod, "__name__", self.mask_mod)
        return (f"BlockMask(\n"
                f"    kv_num_blocks={self.kv_num_blocks.shape},\n"
                f"    kv_indices={self.kv_indices.shape},\n"
                f"    full_kv_num_blocks={shape_or_none(self.full_kv_num_blocks)},\n"
                f"    full_kv_indices={shape_or_none(self.full_kv_indices)},\n"
                f"    q_num_blocks={shape_or_none(self.q_num_blocks)},\n"
                f"    q_indices={shape_or_none(self.q_indices)},\n"
                f"    full_q_num_blocks={shape_or_none(self.full_q_num_blocks)},\n"
                f"    full_q_indices={shape_or_none(self.full_q_indices)},\n"
                f"    BLOCK_SIZE={self.BLOCK_SIZE},\n"
                f"    shape={self.shape},\n"
                f"    sparsity={self.sparsity():.2f}%,\n"
                f"    mask_mod={mask_mod}\n"
                f")")

    def __getitem__(self, index) -> "BlockMask":
        """The mask of some batches / heads / query-block rows (ints, slices or index tensors
        on the first three axes). As in torch, an integer keeps its axis (block_mask[0] has
        batch size 1), and the result's mask_mod refuses to run: set it from the original."""
        index = index if isinstance(index, tuple) else (index,)
        padded = (*index, slice(None), slice(None), slice(None))[:3]
        sizes = self.kv_num_blocks.shape[:3]
        index = tuple(slice(i % n, i % n + 1) if isinstance(i, int) else i
                      for i, n in zip(padded, sizes))
        full = (None, None)
        if self.full_kv_num_blocks is not None:
            full = (self.full_kv_num_blocks[index], self.full_kv_indices[index])
        return BlockMask.from_kv_blocks(
            self.kv_num_blocks[index], self.kv_indices[index], *full,
            BLOCK_SIZE=self.BLOCK_SIZE, mask_mod=_sliced_mask_mod_error,
            seq_lengths=self.seq_lengths, compute_q_blocks=self.q_indices is not None)

    def to(self, device) -> "BlockMask":
        """The same mask with its block tensors on `device`."""
        def moved(x: Tensor | None):
            return x.to(device) if x is not None else None
        tensors = [moved(x) for x in self.as_tuple()[2:10]]
        return BlockMask(self.seq_lengths, *tensors, BLOCK_SIZE=self.BLOCK_SIZE,
                         mask_mod=self.mask_mod)


def _block_char(fraction: float) -> str:
    if fraction == 1:
        return "█"
    return " " if fraction == 0 else "░"


def create_block_mask(mask_mod: _mask_mod_signature, B: int | None, H: int | None, Q_LEN: int,
                      KV_LEN: int, device=None,
                      BLOCK_SIZE: int | tuple[int, int] = _DEFAULT_SPARSE_BLOCK_SIZE,
                      _compile: bool = False, separate_full_blocks: bool = True) -> BlockMask:
    """The BlockMask of `mask_mod` (b, h, q_idx, kv_idx) -> bool over [B, H, Q_LEN, KV_LEN]
    (B/H None: 1, broadcast over the batch/heads). Blocks past the lengths are padded with
    masked entries. `_compile` (deprecated in torch) changes nothing here: the result is the
    same, computed eagerly."""
    if _positional_arity(mask_mod) != 4:
        raise TypeError(f"create_block_mask requires a mask_mod function (b, h, q_idx, kv_idx) "
                        f"-> bool; got {mask_mod}")
    if _compile:
        warnings.warn("_compile flag on create_block_mask was originally added to work around "
                      "a torch.compile limitation. That limitation has since been addressed. "
                      "So, to compile create_block_mask, we suggest doing "
                      "torch.compile(create_block_mask). This still works for now, but will "
                      "be removed in the future.", DeprecationWarning, stacklevel=2)
    q_block, kv_block = (BLOCK_SIZE, BLOCK_SIZE) if isinstance(BLOCK_SIZE, int) else BLOCK_SIZE
    mask = create_mask(mask_mod, B, H, Q_LEN, KV_LEN, device)
    partial, full = _blocks_of_mask(mask, q_block, kv_block, separate_full_blocks)
    full_lists = _dense_to_ordered(full) if full is not None else (None, None)
    return BlockMask.from_kv_blocks(*_dense_to_ordered(partial), *full_lists,
                                    BLOCK_SIZE=(q_block, kv_block), mask_mod=mask_mod,
                                    seq_lengths=(Q_LEN, KV_LEN))


def _blocks_of_mask(mask: Tensor, q_block: int, kv_block: int,
                    separate_full: bool) -> tuple[Tensor, Tensor | None]:
    """(blocks with some but, when `separate_full`, not all entries allowed; blocks with all
    allowed or None), as int8 [B, H, Q blocks, KV blocks]; the mask is padded to whole blocks."""
    B, H, L, S = mask.shape
    rows, cols = -(-L // q_block), -(-S // kv_block)
    mask = kiln.nn.functional.pad(mask, (0, cols * kv_block - S, 0, rows * q_block - L))
    counts = mask.view(B, H, rows, q_block, cols, kv_block).to(kiln.int32).sum(dim=(3, 5))
    if not separate_full:
        return (counts > 0).to(kiln.int8), None
    full = counts == q_block * kv_block
    return ((counts > 0) & ~full).to(kiln.int8), full.to(kiln.int8)


def _empty_block_mask(query: Tensor) -> BlockMask:
    """The mask of flex_attention without a block_mask: one block covering everything."""
    return BlockMask.from_kv_blocks(
        kiln.ones(1, 1, 1, dtype=kiln.int32, device=query.device),
        kiln.zeros(1, 1, 1, 1, dtype=kiln.int32, device=query.device),
        BLOCK_SIZE=_LARGE_SPARSE_BLOCK_SIZE, seq_lengths=(1, 1))


# ---- the attention --------------------------------------------------------------------------

def _safe_attention(scores: Tensor, allowed: Tensor, value: Tensor,
                    empty_lse: float) -> tuple[Tensor, Tensor, Tensor]:
    """softmax over the allowed scores of each row (last axis) times `value`: (out, lse,
    max_scores). A row whose scores are all -inf (nothing allowed, or a score_mod sent them
    there) gives zeros, lse `empty_lse` and max -inf; its scores are replaced by zeros before
    the softmax so no NaN reaches the gradients."""
    masked = scores.masked_fill(~allowed, -math.inf)
    row_max = masked.amax(dim=-1, keepdim=True)
    empty_row = kiln.isneginf(row_max)
    finite = masked.masked_fill(empty_row, 0.0)
    weights = kiln.softmax(finite, dim=-1).masked_fill(empty_row, 0.0)
    lse = kiln.logsumexp(finite, dim=-1).masked_fill(empty_row.squeeze(-1), empty_lse)
    return kiln.matmul(weights.to(value.dtype), value), lse, row_max.squeeze(-1)


def _working_dtype(dtype):
    """Scores are computed in float64 for float64 inputs and float32 otherwise, as in torch."""
    return kiln.float64 if dtype is kiln.float64 else kiln.float32


def flex_attention(query: Tensor, key: Tensor, value: Tensor,
                   score_mod: _score_mod_signature | None = None,
                   block_mask: BlockMask | None = None, scale: float | None = None,
                   enable_gqa: bool = False, return_lse: bool = False,
                   kernel_options: dict | None = None, *,
                   return_aux: AuxRequest | None = None):
    """softmax(score_mod(q k^T * scale) masked by block_mask.mask_mod) v for q [B, Hq, L, E],
    k [B, Hkv, S, E], v [B, Hkv, S, Ev] -> [B, Hq, L, Ev]. See the module docstring for how
    score_mod and mask_mod are called. Returns out, (out, lse) with return_lse (deprecated),
    or (out, AuxOutput) with return_aux (lse and the row max of the modded scores, natural
    log; torch's CPU build refuses max_scores). kernel_options tune torch's Triton kernel and
    are ignored."""
    _check_inputs(query, key, value, enable_gqa, block_mask)
    block_mask = block_mask if block_mask is not None else _empty_block_mask(query)
    if block_mask.mask_mod is _sliced_mask_mod_error:
        raise RuntimeError("flex_attention: Cannot use mask_mod from a sliced BlockMask; "
                           "set block_mask.mask_mod from the original BlockMask's mask_mod")
    _check_block_mask_lengths(block_mask, query, key)
    if return_lse and return_aux is not None:
        raise ValueError("Cannot specify both return_lse and return_aux. return_lse is "
                         "deprecated, please use return_aux=AuxRequest(lse=True) instead.")
    if return_lse:
        warnings.warn("return_lse is deprecated and will be removed in v2.10. Please use "
                      "return_aux=AuxRequest(lse=True) instead.", FutureWarning, stacklevel=2)
    scale = 1.0 / math.sqrt(query.shape[-1]) if scale is None else scale
    out, lse, max_scores = _flex_dense(query, key, value, score_mod, block_mask.mask_mod, scale)
    if return_aux is not None:
        return out, AuxOutput(lse=lse if return_aux.lse else None,
                              max_scores=max_scores if return_aux.max_scores else None)
    return (out, lse) if return_lse else out


def _flex_dense(query: Tensor, key: Tensor, value: Tensor, score_mod, mask_mod,
                scale: float) -> tuple[Tensor, Tensor, Tensor]:
    """The dense computation: scores in the working precision, the mods, the safe softmax."""
    groups = query.shape[1] // key.shape[1]
    if groups > 1:
        key = kiln.repeat_interleave(key, groups, dim=1)
        value = kiln.repeat_interleave(value, groups, dim=1)
    B, H, L, S = query.shape[0], query.shape[1], query.shape[2], key.shape[2]
    key = key.expand(B, *key.shape[1:])
    value = value.expand(B, *value.shape[1:])
    work = _working_dtype(query.dtype)
    scores = kiln.matmul(query.to(work), key.to(work).transpose(-2, -1)) * scale
    shape = (B, H, L, S)
    indices = _index_grid(B, H, L, S, query.device)
    if score_mod is not None:
        scores = _apply_mod("flex_attention", "score_mod", score_mod, (scores, *indices), shape)
        if not scores.dtype.is_floating_point:      # a mod returning positions, say
            scores = scores.to(work)
    allowed = _apply_mod("flex_attention", "mask_mod", mask_mod, indices, shape).to(kiln.bool)
    return _safe_attention(scores, allowed, value.to(query.dtype), -math.inf)


def _check_inputs(query: Tensor, key: Tensor, value: Tensor, enable_gqa: bool,
                  block_mask: BlockMask | None) -> None:
    """torch's checks, with its exception types; messages name flex_attention and the sizes."""
    for name, x in (("query", query), ("key", key), ("value", value)):
        if not isinstance(x, Tensor):
            raise TypeError(f"flex_attention: {name} must be a Tensor, got {type(x).__name__}")
    if query.device != key.device or query.device != value.device:
        raise ValueError(f"flex_attention: expected query, key and value on the same device, "
                         f"got {query.device}, {key.device} and {value.device}")
    if query.dim() != 4 or key.dim() != 4 or value.dim() != 4:
        raise NotImplementedError(
            f"flex_attention: query, key and value must be 4-D (B, H, L, E), got shapes "
            f"{tuple(query.shape)}, {tuple(key.shape)} and {tuple(value.shape)}")
    if query.shape[-1] != key.shape[-1]:
        raise ValueError(f"flex_attention: expected query and key to have the same embedding "
                         f"dimension but got E={query.shape[-1]} and E={key.shape[-1]} "
                         f"(query {tuple(query.shape)}, key {tuple(key.shape)})")
    if key.shape[:3] != value.shape[:3]:
        raise ValueError(f"flex_attention: key {tuple(key.shape)} and value "
                         f"{tuple(value.shape)} must agree in batch, heads and length")
    hq, hkv = query.shape[1], key.shape[1]
    if not enable_gqa and hq != hkv:
        raise ValueError(f"flex_attention: expected query and key/value to have the same number "
                         f"of heads but got Hq={hq} and Hkv={hkv}. Try setting enable_gqa=True "
                         f"for GQA.")
    if enable_gqa and hq % hkv != 0:
        raise ValueError(f"flex_attention: expected the number of query heads to be a multiple "
                         f"of kv heads for GQA but got Hq={hq} and Hkv={hkv}.")
    bq, bkv = query.shape[0], key.shape[0]
    if bq != bkv and (block_mask is None or bkv != 1
                      or block_mask.kv_num_blocks.shape[0] != bq):
        raise ValueError(f"flex_attention: expected query and key/value to have the same batch "
                         f"size, or key/value batch 1 with a block_mask of query's batch; got "
                         f"Bq={bq} and Bkv={bkv}")


def _check_block_mask_lengths(block_mask: BlockMask, query: Tensor, key: Tensor) -> None:
    if block_mask.BLOCK_SIZE == (_LARGE_SPARSE_BLOCK_SIZE, _LARGE_SPARSE_BLOCK_SIZE):
        return
    q_len, kv_len = query.shape[-2], key.shape[-2]
    if (q_len, kv_len) != block_mask.seq_lengths:
        raise ValueError(f"flex_attention: block_mask was created for block_mask.shape="
                         f"{block_mask.shape} but got q_len={q_len} and kv_len={kv_len}; "
                         f"create the block mask for these lengths")
