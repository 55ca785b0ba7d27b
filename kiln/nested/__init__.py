"""torch.nested for kiln: jagged nested tensors (`layout=kiln.jagged`), batches of sequences
of different lengths that go through Linear, attention and norms without padding, and the
strided layout (the default), lists of tensors that may differ in any dim.

The jagged tensor type and its op table live in `kiln.nested.tensor` and `kiln.nested.ops`, the
strided ones in `kiln.nested.strided` and `kiln.nested.strided_ops`; they are imported on first
use, since defining a subclass turns on kiln's `__torch_function__` dispatch for the rest of the
process. Non-contiguous NJTs (`lengths=`, `narrow`) and nested tensors inside `kiln.compile`d
code (such calls run eagerly) are not provided.
"""

from __future__ import annotations

from kiln.tracer.sparse import layout
from kiln.tracer.sparse import strided as STRIDED   # kiln.nested.strided is the submodule
from kiln.tracer.tensor import Tensor

jagged = layout("jagged")

__all__ = ["as_nested_tensor", "jagged", "narrow", "nested_tensor", "nested_tensor_from_jagged",
           "to_padded_tensor"]


def _is_jagged(op: str, layout_) -> bool:
    """Whether `layout_` asks for the jagged layout (None is the strided default)."""
    if layout_ is not jagged and layout_ is not None and layout_ is not STRIDED:
        raise RuntimeError(f"kiln.nested.{op}: layout {layout_!r} is unsupported for nested "
                           "tensors (use kiln.strided, the default, or kiln.jagged)")
    return layout_ is jagged


def _strided_components(op: str, tensor_list, dtype, device) -> list:
    import kiln
    parts = [t if isinstance(t, Tensor) else kiln.as_tensor(t) for t in tensor_list]
    dtype = dtype or (parts[0].dtype if parts else kiln.float32)
    parts = [p.to(dtype=dtype, device=device or p.device) for p in parts]
    for i, p in enumerate(parts):
        if p.ndim != parts[0].ndim:
            raise RuntimeError(f"kiln.nested.{op}: all tensors must have the same number of "
                               f"dims, got {p.ndim} for the tensor at index {i} (shape "
                               f"{tuple(p.shape)}) and {parts[0].ndim} at index 0")
    return parts


def _components(op: str, tensor_list, dtype, device) -> list:
    import kiln
    if isinstance(tensor_list, Tensor):
        tensor_list = list(tensor_list.unbind(0))
    parts = [t if isinstance(t, Tensor) else kiln.as_tensor(t) for t in tensor_list]
    if not parts:
        raise ValueError(f"kiln.nested.{op}: expected a non-empty list of tensors")
    parts = [p.to(dtype=dtype or p.dtype, device=device or p.device) for p in parts]
    first = parts[0]
    for p in parts:
        if p.ndim == 0 or p.ndim != first.ndim or p.shape[1:] != first.shape[1:] or \
                p.dtype != first.dtype:
            shapes = [(tuple(q.shape), str(q.dtype)) for q in parts]
            raise RuntimeError(f"kiln.nested.{op}: cannot represent tensors of shapes and "
                               f"dtypes {shapes} as a jagged nested tensor: it needs tensors "
                               "of one dtype and at least one dim, differing only in their "
                               "first dim (B, *, D_0, ..., D_N)")
    return parts


def _from_parts(parts: list):
    import kiln
    from kiln.nested.tensor import jagged_of, wrap
    lengths = [p.shape[0] for p in parts]
    offsets = kiln.tensor([0] + lengths, dtype=kiln.int64, device=parts[0].device).cumsum(0)
    return wrap(kiln.cat(parts), jagged_of(offsets), 1)


def nested_tensor(tensor_list, *, dtype=None, layout=None, device=None, requires_grad=False,
                  pin_memory=False):
    """A new nested tensor copied from `tensor_list` (a leaf: no history kept), strided unless
    `layout=kiln.jagged`."""
    from kiln.nested.strided import pack
    if _is_jagged("nested_tensor", layout):
        parts = [p.detach() for p in _components("nested_tensor", tensor_list, dtype, device)]
        out = _from_parts(parts)
    else:
        if not isinstance(tensor_list, list):
            raise TypeError(f"kiln.nested.nested_tensor: the strided layout takes a list of "
                            f"tensors (or of nested lists of numbers), got "
                            f"{type(tensor_list).__name__}")
        parts = _strided_components("nested_tensor", tensor_list, dtype, device)
        out = pack([p.detach() for p in parts], dtype=dtype)
    if requires_grad:
        out.requires_grad_(True)
    return out


def as_nested_tensor(ts, dtype=None, device=None, layout=None):
    """A nested tensor of `ts` (a list, or a tensor split along dim 0) whose gradient flows back
    to `ts`; strided unless `layout=kiln.jagged`."""
    from kiln.nested.strided import StridedNestedTensor, pack
    from kiln.nested.tensor import NestedTensor
    want_jagged = _is_jagged("as_nested_tensor", layout)
    if isinstance(ts, StridedNestedTensor) or isinstance(ts, NestedTensor) and not want_jagged:
        raise RuntimeError("kiln.nested.as_nested_tensor: converting between nested tensor "
                           "layouts is not supported (as in PyTorch); rebuild from "
                           "nt.unbind()")
    if want_jagged:
        if isinstance(ts, NestedTensor):
            return ts if dtype is None else ts.to(dtype)
        return _from_parts(_components("as_nested_tensor", ts, dtype, device))
    if isinstance(ts, Tensor):
        if ts.ndim < 2:
            raise RuntimeError(f"kiln.nested.as_nested_tensor: expected a tensor of at least 2 "
                               f"dims to split along dim 0, got shape {tuple(ts.shape)}")
        ts = list(ts.unbind(0))
    return pack(_strided_components("as_nested_tensor", ts, dtype, device), dtype=dtype)


def nested_tensor_from_jagged(values: Tensor, offsets: Tensor | None = None,
                              lengths: Tensor | None = None, jagged_dim: int | None = None,
                              min_seqlen=None, max_seqlen=None):
    """An NJT on `values` (packed along dim `jagged_dim - 1`, default 0), split by `offsets`
    (B + 1 boundaries) or by `lengths` alone; gradients flow back to `values`."""
    import kiln
    from kiln.nested.tensor import NestedTensor, jagged_of, wrap
    if isinstance(values, NestedTensor) or not isinstance(values, Tensor):
        raise TypeError(f"kiln.nested.nested_tensor_from_jagged: values must be a dense "
                        f"tensor, got {type(values).__name__}")
    if offsets is not None and lengths is not None:
        raise NotImplementedError("kiln.nested.nested_tensor_from_jagged: offsets with lengths "
                                  "(a non-contiguous NJT with holes) is not supported")
    if offsets is None:
        if lengths is None:
            raise ValueError("kiln.nested.nested_tensor_from_jagged: give offsets or lengths")
        offsets = kiln.cat([kiln.zeros(1, dtype=kiln.int64), lengths.cumsum(0)])
    if offsets.ndim != 1 or offsets.dtype not in (kiln.int64, kiln.int32):
        raise ValueError("kiln.nested.nested_tensor_from_jagged: offsets must be a 1-D integer "
                         f"tensor, got shape {tuple(offsets.shape)} and {offsets.dtype}")
    bounds = offsets.tolist()
    if bounds[0] != 0 or any(b < a for a, b in zip(bounds, bounds[1:])):
        raise ValueError(f"kiln.nested.nested_tensor_from_jagged: offsets must start at 0 and "
                         f"not decrease, got {bounds}")
    return wrap(values, jagged_of(offsets), 1 if jagged_dim is None else jagged_dim)


def narrow(tensor: Tensor, dim: int, start, length, layout=STRIDED):
    """Rows `start .. start + length - 1` of `tensor`'s dim-0 slices as a strided nested tensor
    (a view of a packed copy, as in PyTorch, which narrows strided ones only along dim 0)."""
    if _is_jagged("narrow", layout):
        raise NotImplementedError("kiln.nested.narrow: layout=kiln.jagged (a non-contiguous "
                                  "NJT) is not supported")
    if isinstance(start, Tensor) or isinstance(length, Tensor):
        raise RuntimeError("kiln.nested.narrow: start and length must be ints for the strided "
                           "layout")
    return as_nested_tensor(list(tensor.unbind(0))).narrow(dim, start, length)


def to_padded_tensor(input, padding: float, output_size=None) -> Tensor:
    """`input`'s components padded with `padding` into one dense tensor (B, longest, ...)."""
    from kiln.nested.strided import StridedNestedTensor
    from kiln.nested.tensor import NestedTensor
    if not isinstance(input, (NestedTensor, StridedNestedTensor)):
        raise TypeError(f"kiln.nested.to_padded_tensor: expected a nested tensor, got "
                        f"{type(input).__name__}")
    return input.to_padded_tensor(padding, output_size)
