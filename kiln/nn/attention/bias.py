"""`kiln.nn.attention.bias`: causal masks scaled_dot_product_attention takes as `attn_mask`
without materializing them (CausalBias, causal_upper_left, causal_lower_right).

UPPER_LEFT is `is_causal=True`'s mask (query i sees keys 0..i); LOWER_RIGHT aligns the diagonal
to the last key (query i sees keys 0..i + S - L), the mask of a decoding step over a cache.
kiln's math implementation runs LOWER_RIGHT with the materialized boolean mask.
"""

from __future__ import annotations

import warnings
from enum import IntEnum

import kiln
from kiln import Tensor

__all__ = ["CausalVariant", "CausalBias", "causal_upper_left", "causal_lower_right"]


class CausalVariant(IntEnum):
    """Where the causal mask's diagonal starts: the top-left or the bottom-right corner."""
    UPPER_LEFT = 1
    LOWER_RIGHT = 2


class CausalBias(Tensor):
    """A causal mask of `seq_len_q` x `seq_len_kv`: a Tensor subclass, as PyTorch's is (a
    boolean tensor of the mask), that scaled_dot_product_attention reads by its variant."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = kiln._C._disabled_torch_function_impl

    __slots__ = ("variant", "seq_len_q", "seq_len_kv")

    def __new__(cls, variant: CausalVariant, seq_len_q: int, seq_len_kv: int) -> "CausalBias":
        if not isinstance(variant, CausalVariant):
            raise TypeError(f"CausalBias: variant must be a CausalVariant, got "
                            f"{type(variant).__name__}")
        if seq_len_q > seq_len_kv and variant == CausalVariant.LOWER_RIGHT:
            warnings.warn("Lower right causal bias will produce NaNs in the output when "
                          "seq_len_q > seq_len_kv!", stacklevel=3)
        mask = _causal_mask(variant, seq_len_q, seq_len_kv, "cpu")
        bias = Tensor._make(mask._data, mask.dtype, mask.device, cls)
        bias.variant, bias.seq_len_q, bias.seq_len_kv = variant, seq_len_q, seq_len_kv
        return bias

    def __init__(self, variant: CausalVariant, seq_len_q: int, seq_len_kv: int) -> None:
        pass      # all set up in __new__; Tensor.__init__ would wrap the data again

    def _materialize(self, device=None) -> Tensor:
        """The boolean mask (True: the key takes part), a plain tensor."""
        return _causal_mask(self.variant, self.seq_len_q, self.seq_len_kv,
                            device if device is not None else "cpu")

    def _sdpa_arguments(self, is_causal: bool, device) -> tuple[Tensor | None, bool]:
        """(attn_mask, is_causal) to run scaled_dot_product_attention with in its place."""
        if is_causal:
            raise ValueError("CausalBias should not be used with causal=True")
        if self.seq_len_q == self.seq_len_kv or self.variant == CausalVariant.UPPER_LEFT:
            return None, True
        return self._materialize(device), False

    def __repr__(self) -> str:
        return repr(self._materialize())


def _causal_mask(variant: CausalVariant, seq_len_q: int, seq_len_kv: int, device) -> Tensor:
    ones = kiln.ones(seq_len_q, seq_len_kv, dtype=kiln.bool, device=device)
    if variant == CausalVariant.UPPER_LEFT:
        return kiln.tril(ones)
    return kiln.tril(ones, diagonal=seq_len_kv - seq_len_q)


def _size(size: tuple, name: str) -> tuple[int, int]:
    if len(size) != 2:
        raise ValueError(f"{name}: a causal bias is 2-D, got size {size}")
    return int(size[0]), int(size[1])


def causal_upper_left(*size) -> CausalBias:
    """The mask of `is_causal=True`: query i attends to keys 0..i."""
    return CausalBias(CausalVariant.UPPER_LEFT, *_size(size, "causal_upper_left"))


def causal_lower_right(*size) -> CausalBias:
    """The causal mask aligned to the last key: query i attends to keys 0..i + (S - L)."""
    return CausalBias(CausalVariant.LOWER_RIGHT, *_size(size, "causal_lower_right"))
