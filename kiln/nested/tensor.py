"""The jagged nested tensor (torch.nested's NJT): a batch of sequences of different lengths.

A NestedTensor of outer shape (B, j, *rest) is a kiln.Tensor subclass whose own tensor state
(its memory, autograd history, `requires_grad`, `.grad`) IS the packed values buffer of shape
(sum of lengths, *rest): every sequence laid end to end along the ragged dim. Beside it sit the
int64 `offsets` (B + 1 boundaries into the ragged dim of the values) and the ragged dim's index
in the outer shape (1, or further right after a `transpose`, as attention's (B, H, j, D)).
Autograd, backward and `.grad` therefore work on the packed buffer, as in PyTorch.

Every public call that reaches an NJT goes through `__torch_function__`, which looks the
function up in `kiln.nested.ops.HANDLERS`; the handlers compute on the values with plain kiln
ops (so gradients flow) and wrap the results with the same offsets. Anything not in the table
raises a NotImplementedError naming the function. The metadata methods (shape, size, dim,
values, offsets, ...) are the class's own, so kiln's internals never see a ragged shape.
"""

from __future__ import annotations

import itertools
import weakref

from kiln.tracer.tensor import Size, Tensor
from kiln.tracer.torch_function import DisableTorchFunctionSubclass, as_subclass

_COUNTER = itertools.count(1)
_BY_OFFSETS: weakref.WeakValueDictionary = weakref.WeakValueDictionary()  # id(offsets) -> Jagged


class NestedInt:
    """The ragged dim's size in an NJT's shape: prints as `j1`, equal only to itself. NJTs
    built on the same offsets share one (PyTorch's nested int), and only they combine."""

    def __init__(self):
        self.number = next(_COUNTER)

    def __repr__(self) -> str:
        return f"j{self.number}"

    __str__ = __repr__


class Jagged:
    """What an NJT knows besides its values: the offsets (a plain int64 tensor), the lengths
    and boundaries as Python ints (for the per-sequence loops), and the ragged size's symbol."""

    def __init__(self, offsets: Tensor):
        self.offsets = offsets
        self.bounds = [int(o) for o in offsets.tolist()]
        self.lengths = [b - a for a, b in zip(self.bounds, self.bounds[1:])]
        self.symbol = NestedInt()

    @property
    def batch(self) -> int:
        return len(self.lengths)


def jagged_of(offsets: Tensor) -> Jagged:
    """The one Jagged of an offsets tensor: NJTs built on the same offsets combine."""
    found = _BY_OFFSETS.get(id(offsets))
    if found is None or found.offsets is not offsets:
        found = _BY_OFFSETS[id(offsets)] = Jagged(offsets)
    return found


class NestedTensor(Tensor):
    """A jagged nested tensor (see the module docstring); build one with
    `kiln.nested.nested_tensor` or `kiln.nested.nested_tensor_from_jagged`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from kiln.nested import ops
        return ops.dispatch(func, args, kwargs or {})

    # ------------------------------------------------------------------ metadata
    @property
    def shape(self) -> Size:
        values = self._data.shape
        outer = [self._jagged.batch, *values]
        outer[self._ragged_idx] = self._jagged.symbol
        return Size(outer)

    def size(self, dim: int | None = None):
        shape = self.shape
        if dim is None:
            return shape
        return shape[_outer_dim(self, dim, "size")]

    def dim(self) -> int:
        return self._data.ndim + 1

    @property
    def ndim(self) -> int:
        return self.dim()

    def __len__(self) -> int:
        return self._jagged.batch

    def __iter__(self):
        return iter(self.unbind())

    @property
    def is_nested(self) -> bool:
        return True

    @property
    def layout(self):
        from kiln.nested import jagged
        return jagged

    def is_contiguous(self, memory_format=None) -> bool:
        with DisableTorchFunctionSubclass():
            return Tensor.is_contiguous(self)

    def values(self) -> Tensor:
        """The packed buffer (sum of lengths along the ragged dim) as a plain tensor; its
        gradient flows back to this NJT."""
        return as_subclass(self, Tensor)

    def offsets(self) -> Tensor:
        return self._jagged.offsets

    def lengths(self) -> None:
        return None             # kiln's NJTs are contiguous: no holes between the sequences

    def unbind(self, dim: int = 0) -> tuple:
        from kiln.nested import ops
        return ops.unbind(self, dim)

    def to_padded_tensor(self, padding: float, output_size=None) -> Tensor:
        from kiln.nested import ops
        return ops.to_padded_tensor(self, padding, output_size)

    def __repr__(self) -> str:
        size = "(" + ", ".join(map(str, self.shape)) + ")"
        extras = [f"size={size}", f"offsets={self._jagged.offsets!r}"]
        if self.grad_fn is not None:
            extras.append(f"grad_fn=<{type(self.grad_fn).__name__}>")
        elif self.requires_grad:
            extras.append("requires_grad=True")
        extras.append(f"contiguous={self.is_contiguous()}")
        return f"NestedTensor({', '.join(extras)})"

    __str__ = __repr__


def wrap(values: Tensor, jagged: Jagged, ragged_idx: int) -> NestedTensor:
    """An NJT on `values` (a plain tensor; the NJT's gradient flows back into it)."""
    if not isinstance(values, Tensor) or isinstance(values, NestedTensor):
        raise TypeError(f"kiln.nested: expected a plain values tensor, got {type(values)}")
    if not 1 <= ragged_idx <= values.ndim:
        raise ValueError(f"kiln.nested: the ragged dim {ragged_idx} does not fit values of "
                         f"shape {tuple(values.shape)}")
    total = values.shape[ragged_idx - 1]
    if total != jagged.bounds[-1]:
        raise ValueError(f"kiln.nested: values of shape {tuple(values.shape)} hold {total} "
                         f"rows along the ragged dim {ragged_idx}, but the offsets end at "
                         f"{jagged.bounds[-1]}")
    out = as_subclass(values, NestedTensor)
    out._jagged = jagged
    out._ragged_idx = ragged_idx
    return out


def _outer_dim(nt: NestedTensor, dim: int, op: str) -> int:
    ndim = nt.dim()
    if not -ndim <= dim < ndim:
        raise IndexError(f"kiln.nested: {op}(): dim {dim} is out of range for a nested tensor "
                         f"of {ndim} dims (shape {tuple(nt.shape)})")
    return dim % ndim
