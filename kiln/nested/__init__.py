"""torch.nested for kiln: jagged nested tensors (`layout=kiln.jagged`), batches of sequences
of different lengths that go through Linear, attention and norms without padding.

The tensor type and its op table live in `kiln.nested.tensor` and `kiln.nested.ops`; they are
imported on first use, since defining the subclass turns on kiln's `__torch_function__`
dispatch for the rest of the process. PyTorch's older strided nested layout, non-contiguous NJTs
(`lengths=`, `narrow`) and NJTs inside `kiln.compile`d code (such calls run eagerly) are not
provided.
"""

from __future__ import annotations

from kiln.tracer.sparse import layout
from kiln.tracer.tensor import Tensor

jagged = layout("jagged")

__all__ = ["as_nested_tensor", "jagged", "nested_tensor", "nested_tensor_from_jagged",
           "to_padded_tensor"]


def _check_layout(op: str, layout_) -> None:
    if layout_ is not jagged:
        given = "kiln.strided (the default)" if layout_ is None else repr(layout_)
        raise NotImplementedError(f"kiln.nested.{op}: only layout=kiln.jagged is supported, got "
                                  f"layout={given}: kiln has no strided nested tensors")


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
    """A new jagged nested tensor copied from `tensor_list` (a leaf: no history kept)."""
    _check_layout("nested_tensor", layout)
    parts = [p.detach() for p in _components("nested_tensor", tensor_list, dtype, device)]
    out = _from_parts(parts)
    if requires_grad:
        out.requires_grad_(True)
    return out


def as_nested_tensor(ts, dtype=None, device=None, layout=None):
    """A jagged nested tensor of `ts` whose gradient flows back to the tensors in `ts`."""
    from kiln.nested.tensor import NestedTensor
    _check_layout("as_nested_tensor", layout)
    if isinstance(ts, NestedTensor):
        return ts if dtype is None else ts.to(dtype)
    return _from_parts(_components("as_nested_tensor", ts, dtype, device))


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


def to_padded_tensor(input, padding: float, output_size=None) -> Tensor:
    """`input`'s sequences padded with `padding` into one dense tensor (B, longest, ...)."""
    from kiln.nested.tensor import NestedTensor
    if not isinstance(input, NestedTensor):
        raise TypeError(f"kiln.nested.to_padded_tensor: expected a jagged nested tensor, got "
                        f"{type(input).__name__}")
    return input.to_padded_tensor(padding, output_size)
