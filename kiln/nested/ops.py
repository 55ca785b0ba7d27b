"""What each public function does on jagged nested tensors: the handler table of
`NestedTensor.__torch_function__`.

Each handler takes the call's own arguments, computes on the NJTs' packed values with plain kiln
ops (so autograd sees ordinary ops and gradients flow to the values), and wraps the results with
the input's offsets. Dims are given in the outer (B, ..., j, ...) numbering and moved to the
values' numbering (one less: the batch dim has no values dim; the ragged dim is the packed one).
Functions that work sequence by sequence (attention, softmax and reductions over the ragged dim,
padding) loop over the sequences in Python: simple, and fine for the batch sizes of a script.
"""

from __future__ import annotations

import math

import kiln
from kiln.nested.tensor import NestedTensor, _outer_dim, wrap
from kiln.tracer.tensor import Tensor
from kiln.tracer.torch_function import DisableTorchFunctionSubclass, as_subclass

F = kiln.nn.functional


def dispatch(func, args: tuple, kwargs: dict):
    """Run `func` on NJTs through its handler, or refuse it by name."""
    name = func_name(func)
    handler = HANDLERS.get(name) or (foreach if name.startswith("_foreach_") else None)
    if handler is None:
        raise NotImplementedError(f"kiln.nested: {name} is not supported on jagged nested "
                                  "tensors")
    with DisableTorchFunctionSubclass():
        return handler(func, name, args, kwargs)


def func_name(func) -> str:
    """`func`'s public name: "add" for kiln.add and Tensor.add, "grad" for the property."""
    owner = getattr(func, "__self__", None)
    if isinstance(owner, property):
        names = [n for n, v in vars(Tensor).items() if v is owner]
        return names[0] if names else owner.fget.__name__
    return getattr(func, "__name__", repr(func))


def values_of(nt: NestedTensor) -> Tensor:
    return as_subclass(nt, Tensor)


def _same_layout(op: str, ref: NestedTensor, other: NestedTensor) -> None:
    if other._jagged is not ref._jagged or other._ragged_idx != ref._ragged_idx:
        raise RuntimeError(f"kiln.nested: {op}(): nested tensors of shapes {tuple(ref.shape)} "
                           f"and {tuple(other.shape)} do not share their offsets (build one "
                           "from the other's offsets with nested_tensor_from_jagged)")


# ----------------------------------------------------------------------------- pointwise

def _dense_as_values(op: str, ref: NestedTensor, dense: Tensor) -> Tensor:
    """A dense operand broadcast against an NJT, in the values' numbering. Aligned on the right
    with the outer shape, it may cover the ragged dim only with size 1 (the same for every
    row) or, at full rank, with the longest length (a padded tensor: each sequence takes its
    first rows, as PyTorch does); at full rank its batch dim is 1 or B (one slice each)."""
    ragged, batch = ref._ragged_idx, ref._jagged.batch
    at = ragged - (ref.dim() - dense.ndim)          # the ragged dim in dense's numbering
    longest = max(ref._jagged.lengths, default=0)
    size = dense.shape[at] if 0 <= at < dense.ndim else 1
    if dense.ndim > ref.dim() or size not in (1, longest) or size != 1 and \
            dense.ndim < ref.dim() or dense.ndim == ref.dim() and dense.shape[0] not in (1, batch):
        raise RuntimeError(f"kiln.nested: {op}(): cannot broadcast a dense tensor of shape "
                           f"{tuple(dense.shape)} with a nested tensor of shape "
                           f"{tuple(ref.shape)}: the dense one may cover the ragged dim {ragged} "
                           f"only with size 1 (or {longest}, padded, with the batch dim too), "
                           f"and the batch dim only with 1 or {batch}")
    if dense.ndim < ref.dim():
        return dense
    if size != 1:
        rows = [dense[b].narrow(ragged - 1, 0, n) for b, n in enumerate(ref._jagged.lengths)]
        return kiln.cat(rows, ragged - 1)
    per_batch = dense.squeeze(ragged)
    if dense.shape[0] == 1:
        return per_batch[0].unsqueeze(ragged - 1)
    rows = kiln.repeat_interleave(kiln.arange(batch), kiln.tensor(ref._jagged.lengths))
    return per_batch[rows].movedim(0, ragged - 1)


def pointwise(func, name: str, args: tuple, kwargs: dict):
    """Elementwise functions of NJTs (sharing offsets), dense tensors and numbers."""
    nested = [a for a in (*args, *kwargs.values()) if isinstance(a, NestedTensor)]
    ref = nested[0]
    for other in nested[1:]:
        _same_layout(name, ref, other)

    def convert(a):
        if isinstance(a, NestedTensor):
            return values_of(a)
        if isinstance(a, Tensor) and a.ndim > 0:
            return _dense_as_values(name, ref, a)
        return a

    out = func(*map(convert, args), **{k: convert(v) for k, v in kwargs.items()})
    return _wrap_like(ref, out)


def _wrap_like(ref: NestedTensor, out, ragged_idx: int | None = None):
    ragged = ref._ragged_idx if ragged_idx is None else ragged_idx
    if isinstance(out, (tuple, list)):
        return type(out)(_wrap_like(ref, o, ragged) for o in out)
    return wrap(out, ref._jagged, ragged) if isinstance(out, Tensor) else out


POINTWISE = """
abs neg negative exp exp2 expm1 log log1p log2 sqrt rsqrt sin cos tan tanh sigmoid erf
reciprocal square sign floor ceil round trunc clamp clip positive relu relu6 gelu silu mish
elu selu celu leaky_relu softplus softsign hardswish hardsigmoid hardtanh logsigmoid tanhshrink
add sub subtract mul multiply div divide true_divide pow maximum minimum where eq ne lt le gt ge
__rsub__ __rtruediv__ __rpow__ __floordiv__ __rfloordiv__ __mod__ __rmod__ remainder
clone detach contiguous to float double half bfloat16 type type_as dropout nan_to_num
""".split()


# ----------------------------------------------------------------------------- by dim

def _values_dim(op: str, nt: NestedTensor, dim: int, *, ragged_ok: bool = False) -> int:
    """An outer dim in the values' numbering, refusing the batch dim (and the ragged one)."""
    d = _outer_dim(nt, dim, op)
    if d == 0:
        raise RuntimeError(f"kiln.nested: {op}(): not supported on the batch dim (dim 0) of a "
                           f"nested tensor of shape {tuple(nt.shape)}")
    if d == nt._ragged_idx and not ragged_ok:
        raise RuntimeError(f"kiln.nested: {op}(): not supported on the ragged dim {d} of a "
                           f"nested tensor of shape {tuple(nt.shape)}")
    return d - 1


def _arg(args: tuple, kwargs: dict, index: int, name: str, default=None):
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def split_like(func, name, args, kwargs):
    """chunk / split along a non-ragged, non-batch dim: NJTs on the pieces."""
    nt, pieces = args[0], args[1] if len(args) > 1 else None
    key = "chunks" if name == "chunk" else "split_size_or_sections"
    pieces = kwargs.get(key, kwargs.get("split_size", pieces))
    dim = _values_dim(name, nt, _arg(args, kwargs, 2, "dim", 0))
    out = func(values_of(nt), pieces, dim)
    return _wrap_like(nt, tuple(out))


def transpose(func, name, args, kwargs):
    nt = args[0]
    d0 = _values_dim(name, nt, _arg(args, kwargs, 1, "dim0"), ragged_ok=True)
    d1 = _values_dim(name, nt, _arg(args, kwargs, 2, "dim1"), ragged_ok=True)
    ragged = nt._ragged_idx - 1
    moved = d1 if ragged == d0 else d0 if ragged == d1 else ragged
    return _wrap_like(nt, values_of(nt).transpose(d0, d1), moved + 1)


def unflatten(func, name, args, kwargs):
    nt = args[0]
    dim = _values_dim(name, nt, _arg(args, kwargs, 1, "dim"))
    sizes = list(_arg(args, kwargs, 2, "sizes"))
    ragged = nt._ragged_idx + (len(sizes) - 1 if dim < nt._ragged_idx - 1 else 0)
    return _wrap_like(nt, values_of(nt).unflatten(dim, sizes), ragged)


def flatten(func, name, args, kwargs):
    nt = args[0]
    start = _outer_dim(nt, _arg(args, kwargs, 1, "start_dim", 0), name)
    end = _outer_dim(nt, _arg(args, kwargs, 2, "end_dim", -1), name)
    if start > end:
        raise RuntimeError(f"kiln.nested: flatten(): start_dim {start} comes after end_dim "
                           f"{end} (shape {tuple(nt.shape)})")
    if start == end:
        return nt
    if start <= nt._ragged_idx <= end:
        raise RuntimeError(f"kiln.nested: flatten(): dims {start}..{end} of a nested tensor of "
                           f"shape {tuple(nt.shape)} include the batch or ragged dim; only "
                           "dims after the batch dim that leave out the ragged dim flatten")
    ragged = nt._ragged_idx - (end - start if end < nt._ragged_idx else 0)
    return _wrap_like(nt, values_of(nt).flatten(start - 1, end - 1), ragged)


def last_dims(func, name, args, kwargs):
    """linear and the norms work on trailing dims, which must leave out the ragged dim."""
    nt = args[0]
    if not isinstance(nt, NestedTensor):
        raise NotImplementedError(f"kiln.nested: {name} with a nested tensor as other than "
                                  "its input is not supported")
    shape = _arg(args, kwargs, 1, "normalized_shape", ()) if "norm" in name else (1,)
    covered = len((shape,) if isinstance(shape, int) else shape)
    if nt.dim() - covered <= nt._ragged_idx:
        raise RuntimeError(f"kiln.nested: {name}(): on a nested tensor of shape "
                           f"{tuple(nt.shape)} it may only cover dims after the ragged dim "
                           f"{nt._ragged_idx}, got {covered} trailing dims")
    for other in (*args[1:], *kwargs.values()):
        if isinstance(other, NestedTensor):
            raise NotImplementedError(f"kiln.nested: {name} with a nested weight or bias is "
                                      "not supported")
    return _wrap_like(nt, func(values_of(nt), *args[1:], **kwargs))


def matmul(func, name, args, kwargs):
    """NJT @ dense matrix: the NJT's last dim contracts, as in a Linear."""
    nt, other = args[0], _arg(args, kwargs, 1, "other")
    if not isinstance(nt, NestedTensor) or isinstance(other, NestedTensor) or \
            not isinstance(other, Tensor):
        raise NotImplementedError(f"kiln.nested: {name} is supported only as nested @ a dense "
                                  "matrix")
    if other.ndim != 2:
        raise RuntimeError(f"kiln.nested: {name}(): not supported between a nested tensor of "
                           f"shape {tuple(nt.shape)} and a dense one of shape "
                           f"{tuple(other.shape)} (expected a matrix)")
    if nt._ragged_idx == nt.dim() - 1:
        raise RuntimeError(f"kiln.nested: {name}(): the last dim of a nested tensor of shape "
                           f"{tuple(nt.shape)} is its ragged dim; it cannot contract")
    return _wrap_like(nt, func(values_of(nt), other))


def cat(func, name, args, kwargs):
    tensors = list(_arg(args, kwargs, 0, "tensors"))
    dim = _arg(args, kwargs, 1, "dim", 0)
    ref = next(t for t in tensors if isinstance(t, NestedTensor))
    for t in tensors:
        if not isinstance(t, NestedTensor):
            raise NotImplementedError(f"kiln.nested: {name}() of nested and dense tensors is "
                                      "not supported")
        _same_layout(name, ref, t)
    d = _values_dim(name, ref, dim)
    return _wrap_like(ref, func([values_of(t) for t in tensors], d))


def reshape(func, name, args, kwargs):
    """reshape / view of an NJT (B, j, ...) that keeps the batch and ragged dims (given as
    themselves, `x.size(i)`, or -1) and reshapes the dims after them."""
    nt = args[0]
    sizes = tuple(args[1:]) or tuple(kwargs.get("shape", kwargs.get("size", ())))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    jagged = nt._jagged
    row = math.prod(nt._data.shape[1:])                 # elements per row of the values
    known = math.prod(n for n in sizes[2:] if n != -1)
    fits = row % known == 0 if -1 in sizes[2:] else row == known
    if nt._ragged_idx != 1 or len(sizes) < 2 or sizes[0] not in (-1, jagged.batch) or \
            not (sizes[1] is jagged.symbol or sizes[1] == -1) or not known or not fits:
        raise RuntimeError(f"kiln.nested: {name}(): cannot {name} a nested tensor of shape "
                           f"{tuple(nt.shape)} as {sizes}: only the dims after the ragged dim "
                           "may change (keep the batch and ragged dims, or pass -1 for them)")
    return _wrap_like(nt, func(values_of(nt), (jagged.bounds[-1], *sizes[2:])))


def unsqueeze(func, name, args, kwargs):
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if not -nt.dim() - 1 <= dim <= nt.dim():
        raise IndexError(f"kiln.nested: unsqueeze(): dim {dim} is out of range for a nested "
                         f"tensor of shape {tuple(nt.shape)}")
    d = dim % (nt.dim() + 1)
    if d == 0:
        raise RuntimeError(f"kiln.nested: unsqueeze(): not supported on the batch dim (dim 0) "
                           f"of a nested tensor of shape {tuple(nt.shape)}")
    ragged = nt._ragged_idx + (1 if d <= nt._ragged_idx else 0)
    return _wrap_like(nt, values_of(nt).unsqueeze(d - 1), ragged)


def getitem(func, name, args, kwargs):
    """`nt[i]` is the i-th sequence; `nt[..., index]` indexes the dims after the ragged one."""
    nt, index = args
    if isinstance(index, int):
        return unbind(nt)[index]
    trailing = nt.dim() - 1 - nt._ragged_idx
    if isinstance(index, tuple) and index[:1] == (Ellipsis,) and Ellipsis not in index[1:] \
            and len(index) - 1 <= trailing and \
            all(isinstance(i, (int, slice)) for i in index[1:]):
        return _wrap_like(nt, values_of(nt)[index])
    raise NotImplementedError(f"kiln.nested: indexing a nested tensor of shape "
                              f"{tuple(nt.shape)} with {index!r} is not supported (supported: "
                              "an int for one sequence, or [..., i] over the dims after the "
                              "ragged dim)")


# ----------------------------------------------------------------------------- per sequence

def pieces(nt: NestedTensor) -> list:
    """Each sequence's slice of the values (views: gradients flow back)."""
    values, axis = values_of(nt), nt._ragged_idx - 1
    return [values.narrow(axis, start, length)
            for start, length in zip(nt._jagged.bounds, nt._jagged.lengths)]


def unbind(nt: NestedTensor, dim: int = 0) -> tuple:
    if _outer_dim(nt, dim, "unbind") != 0:
        raise RuntimeError(f"kiln.nested: unbind(): only the batch dim (0) is supported, got "
                           f"{dim} (shape {tuple(nt.shape)})")
    with DisableTorchFunctionSubclass():
        return tuple(pieces(nt))


def to_padded_tensor(nt: NestedTensor, padding: float, output_size=None) -> Tensor:
    """The sequences padded with `padding` to the longest one. As in PyTorch, `output_size`
    sets only the ragged dim's padded length (entry `ragged_idx`; shorter cuts sequences)."""
    axis = nt._ragged_idx - 1
    target = max(nt._jagged.lengths, default=0)
    if output_size is not None:
        if len(output_size) <= nt._ragged_idx:
            raise RuntimeError(f"kiln.nested: to_padded_tensor(): output_size {output_size} has "
                               f"no entry for the ragged dim {nt._ragged_idx}")
        target = int(output_size[nt._ragged_idx])
    with DisableTorchFunctionSubclass():
        padded = []
        for piece in pieces(nt):
            piece = piece.narrow(axis, 0, min(target, piece.shape[axis]))
            widths = [0, 0] * (piece.ndim - 1 - axis) + [0, target - piece.shape[axis]]
            padded.append(F.pad(piece, widths, value=float(padding)))
        return kiln.stack(padded)


def softmax_like(func, name, args, kwargs):
    nt = args[0]
    dim = _values_dim(name, nt, _arg(args, kwargs, 1, "dim"), ragged_ok=True)
    rest = {k: v for k, v in kwargs.items() if k != "dim"}
    if dim != nt._ragged_idx - 1:
        return _wrap_like(nt, func(values_of(nt), dim, *args[2:], **rest))
    parts = [func(p, dim, *args[2:], **rest) for p in pieces(nt)]
    return _wrap_like(nt, kiln.cat(parts, dim))


def reduction(func, name, args, kwargs):
    """sum / mean / amax / amin over dims: over the trailing dims an NJT; over the ragged dim
    (with or without the batch dim) a dense tensor; over everything a 0-dim tensor."""
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    extra = {k: v for k, v in kwargs.items() if k not in ("dim", "keepdim")}
    if len(args) > 3:
        extra["dtype"] = args[3]
    if dim is None:
        return func(values_of(nt), **extra)
    dims = sorted({_outer_dim(nt, d, name) for d in ((dim,) if isinstance(dim, int) else dim)})
    ragged = nt._ragged_idx
    if 0 in dims and ragged not in dims:
        raise RuntimeError(f"kiln.nested: {name}(): reducing along the batch dim but not the "
                           f"ragged dim of a nested tensor of shape {tuple(nt.shape)} is not "
                           "supported")
    inner = [d - 1 for d in dims if d != 0]
    if ragged not in dims:
        out = func(values_of(nt), inner, keepdim=keepdim, **extra)
        if keepdim or sum(d < ragged for d in dims) == 0:
            return _wrap_like(nt, out)
        return _wrap_like(nt, out, ragged - sum(d < ragged for d in dims))
    if 0 in dims:
        out = func(values_of(nt), inner, keepdim=keepdim, **extra)
        return out.unsqueeze(0) if keepdim else out
    return kiln.stack([func(p, inner, keepdim=keepdim, **extra) for p in pieces(nt)])


def attention(func, name, args, kwargs):
    """scaled_dot_product_attention on NJTs of shape (B, H, j, D): each sequence attends
    within itself, one dense call per sequence."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    rest = {n: _arg(args, kwargs, i, n, d) for i, (n, d) in enumerate(
        (("attn_mask", None), ("dropout_p", 0.0), ("is_causal", False), ("scale", None),
         ("enable_gqa", False)), start=3)}
    if rest["attn_mask"] is not None:
        raise NotImplementedError("kiln.nested: scaled_dot_product_attention with an attn_mask "
                                  "on nested tensors is not supported (use is_causal)")
    if not all(isinstance(t, NestedTensor) for t in (q, k, v)):
        raise NotImplementedError("kiln.nested: scaled_dot_product_attention needs query, key "
                                  "and value all nested (or all dense)")
    if any(t.dim() != 4 or t._ragged_idx != 2 for t in (q, k, v)) or \
            len({t._jagged.batch for t in (q, k, v)}) != 1:
        raise RuntimeError("kiln.nested: scaled_dot_product_attention(): expected query, key "
                           "and value of shape (B, H, j, D) with the same B, got "
                           f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    outs = [func(qs, ks, vs, **rest) for qs, ks, vs in zip(pieces(q), pieces(k), pieces(v))]
    return _wrap_like(q, kiln.cat(outs, 1))


# ----------------------------------------------------------------------------- metadata

def on_self(func, name, args, kwargs):
    """Calls that read or set the NJT's own tensor state (requires_grad_, is_leaf, is_sparse,
    ...), the same on the packed values; a tensor result is the NJT itself."""
    out = func(*args, **kwargs)
    return args[0] if isinstance(out, Tensor) else out


ON_SELF = """
requires_grad requires_grad_ grad_fn retain_grad is_leaf register_hook is_sparse is_quantized
is_cuda is_cpu is_meta is_mps is_xpu is_complex is_floating_point is_signed element_size
get_device is_inference numel nelement
""".split()


def in_place(func, name, args, kwargs):
    """In-place pointwise ops (an optimizer's step on an NJT parameter): the target NJT's own
    packed tensor is written; other operands convert as for `pointwise`."""
    target = args[0]
    if not isinstance(target, NestedTensor):
        raise NotImplementedError(f"kiln.nested: {name} into a dense tensor from a nested one "
                                  "is not supported")

    def convert(a):
        if a is target:
            return a
        if isinstance(a, NestedTensor):
            _same_layout(name, target, a)
            return values_of(a)
        if isinstance(a, Tensor) and a.ndim > 0:
            return _dense_as_values(name, target, a)
        return a

    func(target, *map(convert, args[1:]), **{k: convert(v) for k, v in kwargs.items()})
    return target


IN_PLACE = """
add_ sub_ mul_ div_ addcmul_ addcdiv_ lerp_ copy_ zero_ fill_ clamp_ clamp_min_ clamp_max_
sqrt_ neg_ exp_ pow_ maximum_ relu_ sigmoid_ tanh_ uniform_ normal_ detach_
""".split()


def like(func, name, args, kwargs):
    """zeros_like / ones_like / ... of an NJT: an NJT on the same offsets."""
    return _wrap_like(args[0], func(values_of(args[0]), *args[1:], **kwargs))


def foreach(func, name, args, kwargs):
    """torch._foreach_* (optimizers' multi-tensor steps): NJTs in the lists take part as their
    packed values (each pairs with a same-offsets gradient or state of the packed shape);
    in-place forms write the NJTs themselves."""
    return func(*args, **kwargs)


def nested_grad(func, name, args, kwargs):
    """`.grad` and `.data`: the packed tensor as an NJT with the same offsets."""
    out = func(*args, **kwargs)
    return None if out is None else _wrap_like(args[0], out)


def method_unbind(func, name, args, kwargs):
    return unbind(args[0], _arg(args, kwargs, 1, "dim", 0))


HANDLERS: dict = {name: pointwise for name in POINTWISE}
HANDLERS.update({
    "chunk": split_like, "split": split_like, "transpose": transpose, "unflatten": unflatten,
    "flatten": flatten, "linear": last_dims, "layer_norm": last_dims, "rms_norm": last_dims,
    "matmul": matmul, "cat": cat, "concat": cat, "concatenate": cat,
    "softmax": softmax_like, "log_softmax": softmax_like,
    "sum": reduction, "mean": reduction, "amax": reduction, "amin": reduction,
    "scaled_dot_product_attention": attention, "unbind": method_unbind,
    "grad": nested_grad, "data": nested_grad, "unsqueeze": unsqueeze, "__getitem__": getitem,
    "reshape": reshape, "view": reshape,
})
HANDLERS.update({name: on_self for name in ON_SELF})
HANDLERS.update({name: in_place for name in IN_PLACE})
HANDLERS.update({name: like for name in ("zeros_like", "ones_like", "empty_like", "full_like",
                                         "rand_like", "randn_like")})
