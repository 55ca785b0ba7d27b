"""Attention and Transformer layers: MultiheadAttention, TransformerEncoderLayer/Encoder."""

from __future__ import annotations

import copy
import warnings
from typing import Callable

import kiln
from kiln import Tensor
from kiln.nn import functional as F
from kiln.nn import init
from kiln.nn.containers import ModuleList
from kiln.nn.dropout import Dropout
from kiln.nn.linear import Linear
from kiln.nn.module import Module
from kiln.nn.normalization import LayerNorm
from kiln.nn.parameter import Parameter


class NonDynamicallyQuantizableLinear(Linear):
    """A Linear; PyTorch gives MultiheadAttention.out_proj this class, so reprs match."""


class MultiheadAttention(Module):
    """Multi-head attention with PyTorch's parameter layout (in_proj_weight, out_proj)."""

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 add_bias_kv: bool = False, add_zero_attn: bool = False, kdim: int | None = None,
                 vdim: int | None = None, batch_first: bool = False, device=None,
                 dtype=None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0:
            raise ValueError(f"embed_dim and num_heads must be greater than 0, got "
                             f"embed_dim={embed_dim} and num_heads={num_heads} instead")
        self.embed_dim, self.num_heads, self.dropout = embed_dim, num_heads, dropout
        self.kdim = kdim if kdim is not None else embed_dim
        self.vdim = vdim if vdim is not None else embed_dim
        self._qkv_same_embed_dim = self.kdim == embed_dim and self.vdim == embed_dim
        self.batch_first = batch_first
        self.head_dim = embed_dim // num_heads
        if self.head_dim * num_heads != embed_dim:
            raise AssertionError("embed_dim must be divisible by num_heads")
        empty = lambda *shape: Parameter(kiln.empty(*shape, dtype=dtype, device=device))
        if self._qkv_same_embed_dim:
            self.in_proj_weight = empty(3 * embed_dim, embed_dim)
            for name in ("q_proj_weight", "k_proj_weight", "v_proj_weight"):
                self.register_parameter(name, None)
        else:
            self.q_proj_weight = empty(embed_dim, embed_dim)
            self.k_proj_weight = empty(embed_dim, self.kdim)
            self.v_proj_weight = empty(embed_dim, self.vdim)
            self.register_parameter("in_proj_weight", None)
        if bias:
            self.in_proj_bias = empty(3 * embed_dim)
        else:
            self.register_parameter("in_proj_bias", None)
        self.out_proj = NonDynamicallyQuantizableLinear(embed_dim, embed_dim, bias=bias,
                                                        device=device, dtype=dtype)
        if add_bias_kv:
            self.bias_k, self.bias_v = empty(1, 1, embed_dim), empty(1, 1, embed_dim)
        else:
            self.bias_k = self.bias_v = None
        self.add_zero_attn = add_zero_attn
        self._reset_parameters()

    def _reset_parameters(self) -> None:
        if self._qkv_same_embed_dim:
            init.xavier_uniform_(self.in_proj_weight)
        else:
            init.xavier_uniform_(self.q_proj_weight)
            init.xavier_uniform_(self.k_proj_weight)
            init.xavier_uniform_(self.v_proj_weight)
        if self.in_proj_bias is not None:
            init.constant_(self.in_proj_bias, 0.0)
            init.constant_(self.out_proj.bias, 0.0)
        if self.bias_k is not None:
            init.xavier_normal_(self.bias_k)
            init.xavier_normal_(self.bias_v)

    def forward(self, query: Tensor, key: Tensor, value: Tensor,
                key_padding_mask: Tensor | None = None, need_weights: bool = True,
                attn_mask: Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple:
        if query.is_nested and query.layout is kiln.strided:
            return self._strided_nested_forward(query, key, value, key_padding_mask, attn_mask,
                                                need_weights, average_attn_weights)
        batched = query.ndim == 3
        if self.batch_first and batched:
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        out, weights = F.multi_head_attention_forward(
            query, key, value, self.embed_dim, self.num_heads, self.in_proj_weight,
            self.in_proj_bias, self.bias_k, self.bias_v, self.add_zero_attn, self.dropout,
            self.out_proj.weight,
            self.out_proj.bias, training=self.training, key_padding_mask=key_padding_mask,
            need_weights=need_weights, attn_mask=attn_mask,
            use_separate_proj_weight=not self._qkv_same_embed_dim,
            q_proj_weight=self.q_proj_weight, k_proj_weight=self.k_proj_weight,
            v_proj_weight=self.v_proj_weight, average_attn_weights=average_attn_weights,
            is_causal=is_causal and attn_mask is None)
        if self.batch_first and batched:
            out = out.transpose(0, 1)
        return out, weights

    def _strided_nested_forward(self, query, key, value, key_padding_mask, attn_mask,
                                need_weights: bool, average_attn_weights: bool) -> tuple:
        """Self-attention over a strided nested tensor (batch_first), one component at a time.
        PyTorch runs nested inputs only on its inference fast path, so the same conditions
        apply; the weights come back zero-padded to the longest sequence, as there."""
        why = None
        if query.dim() != 3:
            why = f"the input is not batched (query.dim() is {query.dim()}, not 3)"
        elif not (query is key and key is value):
            why = "query, key and value are not the same tensor (self-attention)"
        elif self.training:
            why = "training is enabled"
        elif self.num_heads % 2:
            why = "num_heads is odd"
        elif not self.batch_first:
            why = "batch_first is False"
        elif not self._qkv_same_embed_dim:
            why = "kdim or vdim differs from embed_dim"
        elif key_padding_mask is not None or attn_mask is not None:
            why = "a mask was given"
        elif kiln.is_grad_enabled() and (query.requires_grad or
                                         any(p.requires_grad for p in self.parameters())):
            why = "grad is enabled and the query or the projection weights require grad"
        if why is not None:
            raise AssertionError("MultiheadAttention does not support a nested tensor outside "
                                 f"of PyTorch's inference fast path, not taken because {why}")
        outs, weights = [], []
        for x in query.unbind():
            x = x.unsqueeze(0)
            out, w = self.forward(x, x, x, need_weights=need_weights,
                                  average_attn_weights=average_attn_weights)
            outs.append(out.squeeze(0))
            weights.append(w)
        if not need_weights:
            return kiln.nested.as_nested_tensor(outs), None
        longest = max(w.shape[-1] for w in weights)
        padded = [F.pad(w, [0, longest - w.shape[-1], 0, longest - w.shape[-1]]) for w in weights]
        return kiln.nested.as_nested_tensor(outs), kiln.cat(padded)


def _activation(activation) -> Callable:
    if activation == "relu":
        return F.relu
    if activation == "gelu":
        return F.gelu
    if callable(activation):
        return activation
    raise RuntimeError(f"activation should be relu/gelu, not {activation}")


class TransformerEncoderLayer(Module):
    """Self-attention then a feed-forward block, each with residual, dropout and LayerNorm
    (post-norm by default, pre-norm with norm_first=True)."""

    def __init__(self, d_model: int, nhead: int, dim_feedforward: int = 2048,
                 dropout: float = 0.1, activation="relu", layer_norm_eps: float = 1e-5,
                 batch_first: bool = False, norm_first: bool = False, bias: bool = True,
                 device=None, dtype=None) -> None:
        super().__init__()
        kw = {"device": device, "dtype": dtype}
        self.self_attn = MultiheadAttention(d_model, nhead, dropout=dropout, bias=bias,
                                            batch_first=batch_first, **kw)
        self.linear1 = Linear(d_model, dim_feedforward, bias=bias, **kw)
        self.dropout = Dropout(dropout)
        self.linear2 = Linear(dim_feedforward, d_model, bias=bias, **kw)
        self.norm_first = norm_first
        self.norm1 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.norm2 = LayerNorm(d_model, eps=layer_norm_eps, bias=bias, **kw)
        self.dropout1 = Dropout(dropout)
        self.dropout2 = Dropout(dropout)
        self.activation = _activation(activation)
        # torch's name for what TransformerEncoder's fast path checks: 1 relu, 2 gelu, 0 other
        self.activation_relu_or_gelu = (
            1 if self.activation is F.relu or isinstance(self.activation, kiln.nn.ReLU) else
            2 if self.activation is F.gelu or isinstance(self.activation, kiln.nn.GELU) else 0)

    def _sa_block(self, x: Tensor, attn_mask, key_padding_mask, is_causal: bool) -> Tensor:
        x = self.self_attn(x, x, x, attn_mask=attn_mask, key_padding_mask=key_padding_mask,
                           need_weights=False, is_causal=is_causal)[0]
        return self.dropout1(x)

    def _ff_block(self, x: Tensor) -> Tensor:
        x = self.linear2(self.dropout(self.activation(self.linear1(x))))
        return self.dropout2(x)

    def forward(self, src: Tensor, src_mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
        x = src
        if self.norm_first:
            x = x + self._sa_block(self.norm1(x), src_mask, src_key_padding_mask, is_causal)
            x = x + self._ff_block(self.norm2(x))
        else:
            x = self.norm1(x + self._sa_block(x, src_mask, src_key_padding_mask, is_causal))
            x = self.norm2(x + self._ff_block(x))
        return x


def _why_no_nested_tensor(layer) -> str:
    """Why torch's TransformerEncoder would not take its nested-tensor fast path with this
    layer (its message), or ''."""
    if not isinstance(layer, TransformerEncoderLayer):
        return "encoder_layer was not TransformerEncoderLayer"
    attn = layer.self_attn
    if layer.norm_first:
        return "encoder_layer.norm_first was True"
    if not attn.batch_first:
        return ("encoder_layer.self_attn.batch_first was not True(use batch_first for better "
                "inference performance)")
    if not attn._qkv_same_embed_dim:
        return "encoder_layer.self_attn._qkv_same_embed_dim was not True"
    if attn.in_proj_bias is None:
        return "encoder_layer.self_attn was passed bias=False"
    if not layer.activation_relu_or_gelu:
        return "encoder_layer.activation_relu_or_gelu was not True"
    if layer.norm1.eps != layer.norm2.eps:
        return "encoder_layer.norm1.eps was not equal to encoder_layer.norm2.eps"
    if attn.num_heads % 2 == 1:
        return "encoder_layer.self_attn.num_heads is odd"
    return ""


class TransformerEncoder(Module):
    """A stack of `num_layers` deep copies of one encoder layer, then an optional norm.

    In eval mode without autograd, with a left-aligned `src_key_padding_mask`, PyTorch runs the
    layers on a nested tensor and pads the result back with zeros: the padded positions of the
    output are 0 (then the norm's), which this reproduces (`_padded_by_fast_path`)."""

    def __init__(self, encoder_layer: TransformerEncoderLayer, num_layers: int,
                 norm: Module | None = None, enable_nested_tensor: bool = True,
                 mask_check: bool = True) -> None:
        super().__init__()
        self.layers = ModuleList([copy.deepcopy(encoder_layer) for _ in range(num_layers)])
        self.num_layers = num_layers
        self.norm = norm
        self.enable_nested_tensor = self.use_nested_tensor = enable_nested_tensor
        self.mask_check = mask_check
        why_not = _why_no_nested_tensor(encoder_layer)
        if enable_nested_tensor and why_not:
            warnings.warn(f"enable_nested_tensor is True, but self.use_nested_tensor is False "
                          f"because {why_not}", stacklevel=2)
            self.use_nested_tensor = False

    def _padded_by_fast_path(self, src: Tensor, mask, key_padding_mask) -> Tensor | None:
        """The positions torch's inference fast path leaves zero (True where padded), or None
        where it would not take that path. Its one check of values, that the mask is
        left-aligned (`mask_check`), is a tensor here, never read into Python, so a compiled
        call gives eager's zeros (torch.compile skips the path instead)."""
        first = self.layers[0]
        # the flag last: read while tracing, it is guarded, which only matters where the path
        # would otherwise be taken
        if not getattr(self, "use_nested_tensor", False) or first.training or \
                src.ndim != 3 or key_padding_mask is None or src.is_nested or \
                mask is not None or kiln.is_autocast_enabled() or \
                src.device.type not in ("cpu", "cuda") or \
                not kiln.backends.mha.get_fastpath_enabled():
            return None
        attn = first.self_attn
        params = (src, attn.in_proj_weight, attn.in_proj_bias, attn.out_proj.weight,
                  attn.out_proj.bias, first.norm1.weight, first.norm1.bias, first.norm2.weight,
                  first.norm2.bias, first.linear1.weight, first.linear1.bias,
                  first.linear2.weight, first.linear2.bias)
        if kiln.is_grad_enabled() and any(p is not None and p.requires_grad for p in params):
            return None
        padded = key_padding_mask if key_padding_mask.dtype is kiln.bool else \
            key_padding_mask != 0
        if getattr(self, "mask_check", True):
            # not left-aligned (a kept position after a padded one): torch takes the masked path
            keep = padded.logical_not()
            prefix = kiln.arange(keep.shape[-1], device=keep.device) < keep.sum(-1, keepdim=True)
            padded = padded & (keep == prefix).all()
        return padded

    def forward(self, src: Tensor, mask: Tensor | None = None,
                src_key_padding_mask: Tensor | None = None,
                is_causal: bool | None = None) -> Tensor:
        padded = self._padded_by_fast_path(src, mask, src_key_padding_mask)
        output = src
        for layer in self.layers:
            output = layer(output, src_mask=mask, src_key_padding_mask=src_key_padding_mask,
                           is_causal=bool(is_causal))
        if padded is not None:
            output = output.masked_fill(padded.unsqueeze(-1), 0.0)
        return self.norm(output) if self.norm is not None else output
