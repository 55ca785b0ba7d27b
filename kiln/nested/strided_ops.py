"""What each public function does on strided nested tensors: the handler table of
`StridedNestedTensor.__torch_function__`.

The table holds what PyTorch 2.13's strided layout runs on CPU, with its limits (last-dim-only
reductions and chunks, no dense operands but 0-dim ones, contiguous inputs where PyTorch asks for
them); everything else is refused by name. Elementwise ops on operands of one layout run on the
flat buffer and keep the layout; the rest run component by component (a Python loop over the
batch, fine for a script's batch sizes) and pack the results end to end. Views (transpose,
unsqueeze, squeeze, chunk, split, view) are new layouts on an alias of the buffer. Dims are given
in the outer numbering (dim 0 is the batch; component dim d is outer dim d + 1).
"""

from __future__ import annotations

import math

import kiln
from kiln.nested.ops import _arg, func_name
from kiln.nested.strided import Layout, StridedNestedTensor, components, outer_dim, outer_ndim, \
    pack, wrap
from kiln.tracer.tensor import Tensor
from kiln.tracer.torch_function import DisableTorchFunctionSubclass, as_subclass

F = kiln.nn.functional


def dispatch(func, args: tuple, kwargs: dict):
    """Run `func` on strided nested tensors through its handler, or refuse it by name."""
    name = func_name(func)
    handler = HANDLERS.get(name)
    if handler is None:
        raise NotImplementedError(
            f"kiln.nested: {name} is not supported on strided nested tensors (PyTorch's strided "
            "layout lacks it too, or it is not provided; try layout=kiln.jagged, or unbind() "
            "and work per component)")
    with DisableTorchFunctionSubclass():
        return handler(func, name, args, kwargs)


def buffer_of(nt: StridedNestedTensor) -> Tensor:
    return as_subclass(nt, Tensor)


def parts(nt: StridedNestedTensor) -> list:
    return components(buffer_of(nt), nt._layout)


def _contiguous(op: str, *nts) -> None:
    for nt in nts:
        if isinstance(nt, StridedNestedTensor) and not nt._layout.is_contiguous():
            raise RuntimeError(f"kiln.nested: {op}(): needs a contiguous nested tensor (as in "
                               "PyTorch); call .contiguous() first")


def _from_parts(ref: StridedNestedTensor, outs: list) -> StridedNestedTensor:
    return pack(outs, ref._layout.rank, ref.dtype)


def _component_dim(op: str, nt: StridedNestedTensor, dim: int) -> int:
    """An outer dim as a component dim, refusing the batch dim."""
    d = outer_dim(nt, dim)
    if d == 0:
        raise RuntimeError(f"kiln.nested: {op}(): not supported along the batch dim (dim 0) of "
                           "a strided nested tensor")
    return d - 1


# ----------------------------------------------------------------------------- elementwise

def keep_layout(func, name, args, kwargs):
    """clone / detach / dropout: the buffer's op, same layout (a non-contiguous nested tensor
    stays one, as PyTorch's preserve_format does)."""
    nt = args[0]
    if name == "clone" and kwargs.get("memory_format") is kiln.contiguous_format:
        return pack([p.clone() for p in parts(nt)], nt._layout.rank, nt.dtype)
    return wrap(func(buffer_of(nt), *args[1:], **kwargs), nt._layout)


def convert(func, name, args, kwargs):
    """to / float / double / type ...: the buffer converted (a contiguous one, as PyTorch asks,
    unless nothing changes)."""
    nt = args[0]
    buffer = buffer_of(nt)
    out = func(buffer, *args[1:], **kwargs)
    if not isinstance(out, Tensor):         # type() with no dtype names the tensor type
        return out
    if out is buffer or out._data is buffer._data and out.dtype == buffer.dtype:
        return nt
    _contiguous(name, nt)
    return wrap(out, nt._layout)


KEEP_LAYOUT = ("clone", "detach", "dropout")
CONVERSIONS = "to float double half bfloat16 int long short bool type type_as cpu".split()


def unary(func, name, args, kwargs):
    """The unary ops PyTorch's strided layout has kernels for: on a contiguous buffer."""
    _contiguous(name, args[0])
    return keep_layout(func, name, args, kwargs)


UNARY = """
abs neg negative sqrt sin cos tanh relu sgn logical_not isnan isinf positive conj real
gelu silu softsign tanhshrink
""".split()


def _operand(name: str, ref: StridedNestedTensor, a, numbers_only: bool = False):
    if isinstance(a, StridedNestedTensor):
        if numbers_only:
            raise NotImplementedError(f"kiln.nested: {name}() between two strided nested "
                                      "tensors is not supported (as in PyTorch); compare with "
                                      "a number")
        if a._layout.sizes != ref._layout.sizes:
            raise RuntimeError(f"kiln.nested: {name}() does not broadcast nested tensors: "
                               f"component sizes {list(ref._layout.sizes)} and "
                               f"{list(a._layout.sizes)} differ")
        return a
    numbers_only = numbers_only and "eq" not in name     # eq also takes a 0-dim tensor
    if isinstance(a, Tensor) and (a.ndim > 0 or numbers_only):
        allowed = "a number" if numbers_only else "a nested tensor, a number or a 0-dim tensor"
        raise RuntimeError(f"kiln.nested: {name}(): the other operand must be {allowed} (as in "
                           f"PyTorch's strided layout), got a dense tensor of shape "
                           f"{tuple(a.shape)}; apply it per component after unbind(), or use "
                           "layout=kiln.jagged")
    return a


def binary(func, name, args, kwargs):
    """add / sub / mul / div / masked_fill with nested tensors of the same sizes, numbers and
    0-dim tensors; comparisons with numbers only. As in PyTorch, add and sub of two nested
    tensors give a contiguous result whatever their layouts; the others need one layout and
    keep it (the buffers' op), as does anything with numbers."""
    at = next(i for i, a in enumerate(args) if isinstance(a, StridedNestedTensor))
    ref, numbers_only = args[at], name in COMPARISONS
    args = [a if i == at else _operand(name, ref, a, numbers_only) for i, a in enumerate(args)]
    kwargs = {k: _operand(name, ref, v, numbers_only) for k, v in kwargs.items()}
    nested = [a for a in (*args, *kwargs.values()) if isinstance(a, StridedNestedTensor)]
    same_layout = all(n._layout == ref._layout for n in nested)
    if len(nested) > 1 and name in ADDITIVE:
        if not (same_layout and ref._layout.is_contiguous()):
            return _per_component(func, ref, args, kwargs)
    elif not same_layout:
        raise RuntimeError(f"kiln.nested: {name}(): nested operands need matching strides (as "
                           "in PyTorch); call .contiguous() on both")

    def to_buffer(a):
        return buffer_of(a) if isinstance(a, StridedNestedTensor) else a
    out = func(*map(to_buffer, args), **{k: to_buffer(v) for k, v in kwargs.items()})
    return wrap(out, ref._layout)


def _per_component(func, ref: StridedNestedTensor, args: list, kwargs: dict):
    batch = ref._layout.batch

    def per_component(a) -> list:
        return parts(a) if isinstance(a, StridedNestedTensor) else [a] * batch
    columns = [per_component(a) for a in args]
    named = {k: per_component(v) for k, v in kwargs.items()}
    return _from_parts(ref, [func(*(c[i] for c in columns), **{k: c[i] for k, c in named.items()})
                             for i in range(batch)])


ADDITIVE = ("add", "sub", "subtract")
COMPARISONS = ("eq", "__eq__", "gt", "ge")
BINARY = ("add", "sub", "subtract", "mul", "multiply", "div", "divide", "true_divide",
          "masked_fill", *COMPARISONS)


def in_place(func, name, args, kwargs):
    """add_ / mul_ / fill_ / copy_ / ... into a contiguous strided nested tensor's buffer, from
    numbers, 0-dim tensors or a nested tensor of the same layout."""
    target = args[0]
    if not isinstance(target, StridedNestedTensor):
        raise NotImplementedError(f"kiln.nested: {name} into a dense tensor from a nested one "
                                  "is not supported")
    _contiguous(name, target)

    def convert(a):
        a = _operand(name, target, a)
        if isinstance(a, StridedNestedTensor):
            if a._layout != target._layout:
                raise RuntimeError(f"kiln.nested: {name}(): the other nested tensor's strides "
                                   "differ from this one's (as PyTorch, call .contiguous() on "
                                   "both)")
            return buffer_of(a)
        return a

    func(target, *map(convert, args[1:]), **{k: convert(v) for k, v in kwargs.items()})
    return target


IN_PLACE = "add_ mul_ relu_ tanh_ abs_ neg_ fill_ zero_ copy_".split()


def like(func, name, args, kwargs):
    """zeros_like / ones_like / randn_like ...: a contiguous nested tensor of the same sizes."""
    nt = args[0]
    _contiguous(name, nt)
    return _from_parts(nt, [func(p, *args[1:], **kwargs) for p in parts(nt)])


def contiguous(func, name, args, kwargs):
    nt = args[0]
    return nt if nt._layout.is_contiguous() else _from_parts(nt, [p for p in parts(nt)])


# ----------------------------------------------------------------------------- per component

def softmax(func, name, args, kwargs):
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if outer_dim(nt, dim) == 0:
        raise RuntimeError("kiln.nested: softmax(): cannot apply softmax across the batch dim "
                           "(dim 0) of a nested tensor")
    rest = {k: v for k, v in kwargs.items() if k != "dim"}
    d = outer_dim(nt, dim) - 1
    return _from_parts(nt, [func(p, d, *args[2:], **rest) for p in parts(nt)])


def reduce_sum(func, name, args, kwargs):
    """sum over the last dim with keepdim=True: all PyTorch's strided layout reduces."""
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    keepdim = _arg(args, kwargs, 2, "keepdim", False)
    dtype = _arg(args, kwargs, 3, "dtype")
    if dim is None:
        raise NotImplementedError("kiln.nested: sum() over all elements of a strided nested "
                                  "tensor is not supported (as in PyTorch); sum(-1, "
                                  "keepdim=True) or unbind()")
    dims = [dim] if isinstance(dim, int) else list(dim)
    if len(dims) != 1:
        raise RuntimeError(f"kiln.nested: sum(): a strided nested tensor reduces one dim at a "
                           f"time, got dims {dims}")
    if outer_dim(nt, dims[0]) != outer_ndim(nt) - 1:
        raise RuntimeError(f"kiln.nested: sum(): a strided nested tensor reduces only along "
                           f"its last dim ({outer_ndim(nt) - 1}), got dim {dims[0]}")
    if not keepdim:
        raise RuntimeError("kiln.nested: sum(): a strided nested tensor needs keepdim=True")
    _contiguous(name, nt)
    return _from_parts(nt, [p.sum(-1, keepdim=True, dtype=dtype) for p in parts(nt)])


def layer_norm(func, name, args, kwargs):
    nt = args[0]
    shape = _arg(args, kwargs, 1, "normalized_shape")
    weight, bias = _arg(args, kwargs, 2, "weight"), _arg(args, kwargs, 3, "bias")
    eps = _arg(args, kwargs, 4, "eps", 1e-5)
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    if weight is None or bias is None:
        raise ValueError("kiln.nested: layer_norm() on a strided nested tensor needs a weight "
                         "and a bias (as in PyTorch)")
    rank = nt._layout.rank
    trailing = tuple(nt._layout.regular_size(d) for d in range(rank - len(shape), rank)) \
        if len(shape) <= rank else ()
    if trailing != shape:
        raise RuntimeError(f"kiln.nested: layer_norm(): normalized_shape {list(shape)} does "
                           f"not match the regular last dims of components of sizes "
                           f"{list(nt._layout.sizes)}")
    _contiguous(name, nt)
    return _from_parts(nt, [func(p, shape, weight, bias, eps) for p in parts(nt)])


def linear(func, name, args, kwargs):
    nt, weight = args[0], _arg(args, kwargs, 1, "weight")
    bias = _arg(args, kwargs, 2, "bias")
    if not isinstance(nt, StridedNestedTensor) or isinstance(weight, StridedNestedTensor) or \
            isinstance(bias, StridedNestedTensor):
        raise NotImplementedError("kiln.nested: linear() takes a nested input with a dense "
                                  "weight and bias")
    if outer_ndim(nt) != 3 or weight.ndim != 2 or nt._layout.regular_size(1) != weight.shape[1]:
        raise RuntimeError(f"kiln.nested: linear(): needs a 3-dim nested tensor whose last dim "
                           f"is regular and matches the weight's, got components of sizes "
                           f"{list(nt._layout.sizes)} and a weight of shape "
                           f"{tuple(weight.shape)}")
    _contiguous(name, nt)
    return _from_parts(nt, [func(p, weight, bias) for p in parts(nt)])


def matmul(func, name, args, kwargs):
    """nested @ nested (bmm: 3 dims; matmul: at least 3), component by component."""
    a, b = args[0], _arg(args, kwargs, 1, "mat2" if name == "bmm" else "other")
    if not (isinstance(a, StridedNestedTensor) and isinstance(b, StridedNestedTensor)):
        raise RuntimeError(f"kiln.nested: {name}(): expected both operands nested (PyTorch's "
                           "strided layout multiplies nested by nested only), got "
                           f"{type(a).__name__} and {type(b).__name__}")
    ranks = outer_ndim(a), outer_ndim(b)
    ok = ranks == (3, 3) if name == "bmm" else min(ranks) >= 3
    if not ok or a._layout.batch != b._layout.batch:
        raise RuntimeError(f"kiln.nested: {name}(): needs nested tensors of "
                           f"{'3' if name == 'bmm' else 'at least 3'} dims and one batch size, "
                           f"got components of sizes {list(a._layout.sizes)} and "
                           f"{list(b._layout.sizes)}")
    outs = []
    for i, (x, y) in enumerate(zip(parts(a), parts(b))):
        if x.shape[-1] != y.shape[-2]:
            raise RuntimeError(f"kiln.nested: {name}(): component {i} cannot be multiplied "
                               f"({tuple(x.shape)} and {tuple(y.shape)})")
        outs.append(kiln.matmul(x, y))
    return _from_parts(a, outs)


def attention(func, name, args, kwargs):
    """scaled_dot_product_attention of nested (L, E) or (H, L, D) components, each attending
    within itself; PyTorch's CPU path takes neither a mask nor is_causal here."""
    q, k, v = (_arg(args, kwargs, i, n) for i, n in enumerate(("query", "key", "value")))
    mask, dropout_p = _arg(args, kwargs, 3, "attn_mask"), _arg(args, kwargs, 4, "dropout_p", 0.0)
    is_causal, scale = _arg(args, kwargs, 5, "is_causal", False), _arg(args, kwargs, 6, "scale")
    if not all(isinstance(t, StridedNestedTensor) for t in (q, k, v)):
        raise RuntimeError("kiln.nested: scaled_dot_product_attention(): expected query, key "
                           "and value all nested")
    if mask is not None or is_causal:
        raise RuntimeError("kiln.nested: scaled_dot_product_attention(): nested query and key "
                           "take neither attn_mask nor is_causal (as in PyTorch)")
    if any(t._layout.rank == 0 or t._layout.regular_size(t._layout.rank - 1) is None
           for t in (q, k, v)):
        raise RuntimeError("kiln.nested: scaled_dot_product_attention(): the last dim of query, "
                           "key and value must be regular (the same in every component)")
    if len({t._layout.batch for t in (q, k, v)}) != 1:
        raise RuntimeError("kiln.nested: scaled_dot_product_attention(): query, key and value "
                           f"hold {q._layout.batch}, {k._layout.batch} and {v._layout.batch} "
                           "components; they must hold the same number")
    _contiguous(name, q, k, v)
    gqa = _arg(args, kwargs, 7, "enable_gqa", False)
    outs = [func(a, b, c, dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
            for a, b, c in zip(parts(q), parts(k), parts(v))]
    return _from_parts(q, outs)


# ----------------------------------------------------------------------------- views

def _view(nt: StridedNestedTensor, sizes, strides, starts=None, rank_change: int = 0):
    """A nested tensor on the same buffer with new per-component sizes, strides (and starts)."""
    layout = Layout(tuple(map(tuple, sizes)), tuple(map(tuple, strides)),
                    nt._layout.starts if starts is None else tuple(starts),
                    nt._layout.rank + rank_change)
    return wrap(buffer_of(nt), layout)


def transpose(func, name, args, kwargs):
    nt = args[0]
    if name == "mT":
        d0, d1 = -2, -1
    else:
        d0, d1 = _arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")
    d0, d1 = outer_dim(nt, d0), outer_dim(nt, d1)
    if 0 in (d0, d1):
        raise RuntimeError("kiln.nested: transpose(): the batch dim (dim 0) of a nested "
                           "tensor cannot be transposed")

    def swap(t):
        t = list(t)
        t[d0 - 1], t[d1 - 1] = t[d1 - 1], t[d0 - 1]
        return t
    layout = nt._layout
    return _view(nt, [swap(s) for s in layout.sizes], [swap(s) for s in layout.strides])


def unsqueeze(func, name, args, kwargs):
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    ndim = outer_ndim(nt) + 1
    if not -ndim <= dim < ndim:
        raise IndexError(f"kiln.nested: unsqueeze(): dim {dim} is out of range (expected in "
                         f"[{-ndim}, {ndim - 1}])")
    d = dim % ndim
    if d == 0:
        raise RuntimeError("kiln.nested: unsqueeze(): a nested tensor cannot gain a dim before "
                           "its batch dim (dim 0)")
    at = d - 1
    sizes, strides = [], []
    for size, stride in zip(nt._layout.sizes, nt._layout.strides):
        step = size[at] * stride[at] if at < len(size) else 1
        sizes.append((*size[:at], 1, *size[at:]))
        strides.append((*stride[:at], step, *stride[at:]))
    return _view(nt, sizes, strides, rank_change=1)


def squeeze(func, name, args, kwargs):
    nt = args[0]
    dim = _arg(args, kwargs, 1, "dim")
    if dim is None:
        raise RuntimeError("kiln.nested: squeeze(): a nested tensor needs the dim to squeeze "
                           "(as in PyTorch)")
    at = _component_dim(name, nt, dim)
    layout = nt._layout
    if not layout.sizes or any(s[at] != 1 for s in layout.sizes):
        return wrap(buffer_of(nt), layout)
    return _view(nt, [s[:at] + s[at + 1:] for s in layout.sizes],
                 [s[:at] + s[at + 1:] for s in layout.strides], rank_change=-1)


def reshape(func, name, args, kwargs):
    """reshape / view of every component. The batch size stays; -1 keeps a component's size
    in that position (PyTorch's nested rule: it does not infer; a reshape that adds dims keeps
    at most one)."""
    nt = args[0]
    sizes = tuple(args[1:]) or tuple(kwargs.get("shape", kwargs.get("size", ())))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        sizes = tuple(sizes[0])
    layout = nt._layout
    if not sizes or sizes[0] != layout.batch:
        raise RuntimeError(f"kiln.nested: {name}(): cannot change or infer the batch dim: "
                           f"expected {layout.batch} first, got {list(sizes)}")
    if len(sizes) - 1 > layout.rank and list(sizes[1:layout.rank + 1]).count(-1) > 1:
        raise RuntimeError(f"kiln.nested: {name}(): shape {list(sizes)} adds dims, so only one "
                           "of the existing dims may be -1 (as in PyTorch)")
    new_sizes = []
    for old in layout.sizes:
        new = []
        for i, n in enumerate(sizes[1:]):
            if n == -1 and i >= len(old):
                raise RuntimeError(f"kiln.nested: {name}(): -1 at dim {i + 1} has no "
                                   "component size to keep (nested tensors do not infer sizes)")
            new.append(old[i] if n == -1 else n)
        if math.prod(new) != math.prod(old):
            raise RuntimeError(f"kiln.nested: {name}(): shape {list(sizes)} is invalid for a "
                               f"component of {math.prod(old)} elements (sizes {old})")
        new_sizes.append(tuple(new))
    if new_sizes == [tuple(s) for s in layout.sizes]:
        return wrap(buffer_of(nt), layout)
    if layout.is_contiguous():
        return wrap(buffer_of(nt), Layout.packed(new_sizes, len(sizes) - 1))
    if name == "view":
        raise RuntimeError("kiln.nested: view(): the nested tensor is not contiguous; use "
                           "reshape()")
    return _from_parts(nt, [p.reshape(s) for p, s in zip(parts(nt), new_sizes)])


def _last_dim_pieces(name: str, nt: StridedNestedTensor, dim: int, widths: list) -> tuple:
    """Views of the last dim cut into `widths` (chunk and split along it)."""
    if outer_dim(nt, dim) != outer_ndim(nt) - 1:
        raise RuntimeError(f"kiln.nested: {name}(): a nested tensor splits only along its last "
                           f"dim ({outer_ndim(nt) - 1}), got dim {dim}")
    _contiguous(name, nt)
    layout, out, at = nt._layout, [], 0
    for width in widths:
        sizes = [(*s[:-1], width) for s in layout.sizes]
        starts = [start + at * st[-1] for start, st in zip(layout.starts, layout.strides)]
        out.append(_view(nt, sizes, layout.strides, starts))
        at += width
    return tuple(out)


def chunk(func, name, args, kwargs):
    nt = args[0]
    chunks, dim = _arg(args, kwargs, 1, "chunks"), _arg(args, kwargs, 2, "dim", 0)
    last = nt._layout.regular_size(nt._layout.rank - 1) if nt._layout.rank else None
    if outer_dim(nt, dim) == outer_ndim(nt) - 1 and (last is None or last % chunks):
        raise RuntimeError(f"kiln.nested: chunk(): the last dim ({last}) must be regular and "
                           f"divisible by chunks ({chunks})")
    width = last // chunks if last else 0
    return _last_dim_pieces(name, nt, dim, [width] * chunks)


def split(func, name, args, kwargs):
    nt = args[0]
    sizes = _arg(args, kwargs, 1, "split_size_or_sections", kwargs.get("split_size"))
    dim = _arg(args, kwargs, 2, "dim", 0)
    if isinstance(sizes, int):
        raise NotImplementedError("kiln.nested: split() of a nested tensor takes a list of "
                                  "sizes (as in PyTorch, split_with_sizes)")
    last = nt._layout.regular_size(nt._layout.rank - 1) if nt._layout.rank else None
    if outer_dim(nt, dim) == outer_ndim(nt) - 1 and sum(sizes) != last:
        raise RuntimeError(f"kiln.nested: split(): sizes {list(sizes)} do not add up to the "
                           f"last dim ({last})")
    return _last_dim_pieces(name, nt, dim, list(sizes))


# ----------------------------------------------------------------------------- components

def unbind(nt: StridedNestedTensor, dim: int = 0) -> tuple:
    if outer_dim(nt, dim) != 0:
        raise RuntimeError(f"kiln.nested: unbind(): a nested tensor unbinds only along dim 0, "
                           f"got {dim}")
    with DisableTorchFunctionSubclass():
        return tuple(parts(nt))


def narrow(func, name, args, kwargs):
    """Components start .. start + length - 1: a view (PyTorch narrows only along dim 0)."""
    nt = args[0]
    dim, start, length = (_arg(args, kwargs, i, n) for i, n in
                          enumerate(("dim", "start", "length"), start=1))
    if outer_dim(nt, dim) != 0:
        raise RuntimeError(f"kiln.nested: narrow(): a strided nested tensor narrows only along "
                           f"dim 0, got {dim}")
    _contiguous(name, nt)
    layout = nt._layout
    start = start % layout.batch if layout.batch else 0
    if start + length > layout.batch or length < 0:
        raise IndexError(f"kiln.nested: narrow(): components {start} .. {start + length - 1} "
                         f"are out of range for {layout.batch} components")
    pick = slice(start, start + length)
    return wrap(buffer_of(nt), Layout(layout.sizes[pick], layout.strides[pick],
                                      layout.starts[pick], layout.rank))


def method_unbind(func, name, args, kwargs):
    return unbind(args[0], _arg(args, kwargs, 1, "dim", 0))


def select(func, name, args, kwargs):
    nt, dim, index = args[0], _arg(args, kwargs, 1, "dim"), _arg(args, kwargs, 2, "index")
    if outer_dim(nt, dim) == 0:
        return _component(nt, index)
    return _select_view(nt, outer_dim(nt, dim) - 1, index)


def _select_view(nt: StridedNestedTensor, at: int, index: int) -> StridedNestedTensor:
    """Every component's entry `index` along component dim `at`: a view, as in PyTorch."""
    layout = nt._layout
    starts = []
    for size, stride, start in zip(layout.sizes, layout.strides, layout.starts):
        if not -size[at] <= index < size[at]:
            raise IndexError(f"kiln.nested: select(): index {index} is out of range for a "
                             f"component of sizes {size} along dim {at + 1}")
        starts.append(start + (index % size[at]) * stride[at])
    return _view(nt, [s[:at] + s[at + 1:] for s in layout.sizes],
                 [s[:at] + s[at + 1:] for s in layout.strides], starts, rank_change=-1)


def _component(nt: StridedNestedTensor, index) -> Tensor:
    if isinstance(index, Tensor):
        index = int(index)
    batch = nt._layout.batch
    if not -batch <= index < batch:
        raise IndexError(f"kiln.nested: index {index} is out of range for a nested tensor of "
                         f"{batch} components")
    return parts(nt)[index]


def getitem(func, name, args, kwargs):
    """`nt[i]` (and `nt[i, ...]`) is a component; `nt[..., k]` picks k in every component's
    last dim. PyTorch's strided layout has no slicing."""
    nt, index = args
    if isinstance(index, int) or isinstance(index, Tensor) and index.ndim == 0 and \
            not index.dtype.is_floating_point:
        return _component(nt, index)
    if isinstance(index, tuple) and index and isinstance(index[0], int):
        return _component(nt, index[0])[index[1:]]
    if isinstance(index, tuple) and len(index) == 2 and index[0] is Ellipsis and \
            isinstance(index[1], int):
        return _select_view(nt, nt._layout.rank - 1, index[1])
    raise NotImplementedError(f"kiln.nested: indexing a strided nested tensor with {index!r} "
                              "is not supported (as in PyTorch: no slicing; an int picks a "
                              "component, [..., k] an index of the last dim)")


def to_padded_tensor(nt: StridedNestedTensor, padding: float, output_size=None) -> Tensor:
    """The components padded with `padding` to the largest size in every dim (or to
    `output_size`, which must name every dim and may not cut, as in PyTorch)."""
    layout = nt._layout
    _contiguous("to_padded_tensor", nt)
    if layout.rank == 0 and layout.batch:
        raise RuntimeError("kiln.nested: to_padded_tensor(): components of 0 dims have "
                           "nothing to pad")
    if not layout.batch:
        return kiln.zeros(0, dtype=nt.dtype)
    target = [max(s[d] for s in layout.sizes) for d in range(layout.rank)]
    if output_size is not None:
        output_size = list(output_size)
        if len(output_size) != outer_ndim(nt):
            raise RuntimeError(f"kiln.nested: to_padded_tensor(): output_size {output_size} "
                               f"must have {outer_ndim(nt)} entries, one per dim")
        if output_size[0] != layout.batch or any(o < t for o, t in zip(output_size[1:], target)):
            raise RuntimeError(f"kiln.nested: to_padded_tensor(): output_size {output_size} "
                               f"is smaller than the padded size {[layout.batch, *target]}; "
                               "it cannot cut")
        target = output_size[1:]
    with DisableTorchFunctionSubclass():
        padded = []
        for p in parts(nt):
            widths = []
            for d in reversed(range(layout.rank)):
                widths += [0, target[d] - p.shape[d]]
            padded.append(F.pad(p, widths, value=padding))
        return kiln.stack(padded)


# ----------------------------------------------------------------------------- metadata

def on_self(func, name, args, kwargs):
    """Calls that read or set the nested tensor's own state, the same on its buffer."""
    out = func(*args, **kwargs)
    return args[0] if isinstance(out, Tensor) else out


ON_SELF = """
requires_grad requires_grad_ grad_fn retain_grad is_leaf register_hook is_sparse is_quantized
is_cuda is_cpu is_meta is_complex is_floating_point is_signed element_size get_device is_inference
""".split()


def numel(func, name, args, kwargs):
    return sum(math.prod(s) for s in args[0]._layout.sizes)


def nested_grad(func, name, args, kwargs):
    """`.grad` and `.data`: the buffer's, as a nested tensor of the same layout."""
    out = func(*args, **kwargs)
    return None if out is None else wrap(out, args[0]._layout)


HANDLERS: dict = {name: keep_layout for name in KEEP_LAYOUT}
HANDLERS.update({name: convert for name in CONVERSIONS})
HANDLERS.update({name: unary for name in UNARY})
HANDLERS.update({name: binary for name in BINARY})
HANDLERS.update({name: in_place for name in IN_PLACE})
HANDLERS.update({name: on_self for name in ON_SELF})
HANDLERS.update({name: like for name in ("zeros_like", "ones_like", "empty_like", "randn_like")})
HANDLERS.update({
    "contiguous": contiguous, "softmax": softmax, "sum": reduce_sum, "layer_norm": layer_norm,
    "linear": linear, "matmul": matmul, "bmm": matmul, "scaled_dot_product_attention": attention,
    "transpose": transpose, "swapaxes": transpose, "mT": transpose, "unsqueeze": unsqueeze,
    "squeeze": squeeze, "reshape": reshape, "view": reshape, "chunk": chunk, "split": split,
    "split_with_sizes": split, "unbind": method_unbind, "select": select, "narrow": narrow,
    "__getitem__": getitem, "numel": numel, "nelement": numel, "grad": nested_grad,
    "data": nested_grad,
})
