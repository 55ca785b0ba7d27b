"""The strided nested tensor (torch.nested's default layout): a list of tensors of one dtype and
rank whose sizes may differ in any dim, e.g. images of different heights and widths.

As in PyTorch, a StridedNestedTensor is one flat buffer plus, per component, its sizes, strides
and start in that buffer (`Layout`). The subclass's own tensor state (memory, autograd history,
`requires_grad`, `.grad`) IS the 1-D buffer, so backward, `.grad` and optimizers see a plain
tensor; each component is `buffer.as_strided(sizes, strides, start)`, so gradients of anything
computed per component flow back into the buffer. Views (`transpose`, `unsqueeze`, `chunk`, ...)
are new Layouts on an alias of the same buffer; they are non-contiguous exactly where PyTorch's
are, and the ops that PyTorch runs only on contiguous nested tensors refuse them the same way.

Calls reach `kiln.nested.strided_ops.HANDLERS` through `__torch_function__`; the metadata
methods (size, dim, layout, is_contiguous, ...) are the class's own. There is no single shape:
`.shape` raises, as PyTorch's does, and `size(i)` answers only for regular dims. Inside the
handlers (subclass dispatch off) the metadata is the buffer's, so kiln's own in-place code,
which reads `self.shape`, writes the nested tensor's buffer as a plain 1-D tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.torch_function import DisableTorchFunctionSubclass, as_subclass


def row_major(sizes: tuple) -> tuple:
    """The strides of a contiguous tensor of `sizes`."""
    strides, step = [], 1
    for n in reversed(sizes):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


@dataclass(frozen=True)
class Layout:
    """Where each component lives in the buffer: its sizes, strides and start (PyTorch's
    nested_sizes, nested_strides and storage offsets). `rank` is every component's ndim."""
    sizes: tuple
    strides: tuple
    starts: tuple
    rank: int

    @classmethod
    def packed(cls, sizes, rank: int) -> "Layout":
        """Components laid end to end, each contiguous."""
        sizes = tuple(tuple(s) for s in sizes)
        starts, at = [], 0
        for s in sizes:
            starts.append(at)
            at += math.prod(s)
        return cls(sizes, tuple(row_major(s) for s in sizes), tuple(starts), rank)

    @property
    def batch(self) -> int:
        return len(self.sizes)

    def is_contiguous(self) -> bool:
        return self == Layout.packed(self.sizes, self.rank)

    def regular_size(self, d: int) -> int | None:
        """Component dim `d`'s size if every component has the same one, else None."""
        found = {s[d] for s in self.sizes}
        return found.pop() if len(found) == 1 else None


class StridedNestedTensor(Tensor):
    """A strided nested tensor (see the module docstring); build one with
    `kiln.nested.nested_tensor` or `kiln.nested.as_nested_tensor`."""

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        from kiln.nested import strided_ops
        return strided_ops.dispatch(func, args, kwargs or {})

    # ------------------------------------------------------------------ metadata
    @property
    def shape(self):
        if _as_buffer():
            return Tensor.shape.fget(self)
        raise no_shape(self)

    def size(self, dim: int | None = None):
        if _as_buffer():
            return Tensor.size(self, dim)
        if dim is None:
            return self.shape
        d = outer_dim(self, dim)
        if d == 0:
            return self._layout.batch
        found = self._layout.regular_size(d - 1)
        if found is None:
            raise RuntimeError(f"kiln.nested: size(): dim {dim} is irregular (sizes "
                               f"{[s[d - 1] for s in self._layout.sizes]}) and has no size")
        return found

    def dim(self) -> int:
        return Tensor.dim(self) if _as_buffer() else outer_ndim(self)

    @property
    def ndim(self) -> int:
        return self.dim()

    def __len__(self) -> int:
        if _as_buffer():
            return Tensor.__len__(self)
        raise no_shape(self)

    def __iter__(self):
        raise no_shape(self)

    @property
    def is_nested(self) -> bool:
        return True

    @property
    def layout(self):
        from kiln.tracer.sparse import strided
        return strided

    def is_contiguous(self, memory_format=None) -> bool:
        return True if _as_buffer() else self._layout.is_contiguous()

    def values(self) -> Tensor:
        """The flat buffer, as PyTorch's strided `values()` gives it."""
        return as_subclass(self, Tensor)

    def unbind(self, dim: int = 0) -> tuple:
        from kiln.nested import strided_ops
        return strided_ops.unbind(self, dim)

    def to_padded_tensor(self, padding: float, output_size=None) -> Tensor:
        from kiln.nested import strided_ops
        return strided_ops.to_padded_tensor(self, padding, output_size)

    def _nested_tensor_size(self) -> Tensor:
        return _int_table(self._layout.sizes, self._layout.rank)

    def _nested_tensor_strides(self) -> Tensor:
        return _int_table(self._layout.strides, self._layout.rank)

    def _nested_tensor_storage_offsets(self) -> Tensor:
        import kiln
        return kiln.tensor(list(self._layout.starts), dtype=kiln.int64)

    def __repr__(self) -> str:
        with DisableTorchFunctionSubclass():
            parts = components(as_subclass(self, Tensor).detach(), self._layout)
            texts = []
            for part in parts:
                text = str(part)
                if self.requires_grad:        # PyTorch prints each component as requiring grad
                    text = text[:-1] + ", requires_grad=True)"
                texts.append("\n".join("  " + line for line in text.split("\n")))
        suffix = ""
        if self.grad_fn is not None:
            suffix = f", grad_fn=<{type(self.grad_fn).__name__}>"
        elif self.requires_grad:
            suffix = ", requires_grad=True"
        prefix = "Parameter containing:\n" if getattr(self, "_is_param", False) else ""
        return prefix + "nested_tensor([\n" + ",\n".join(texts) + "\n]" + suffix + ")"

    __str__ = __repr__


def _as_buffer() -> bool:
    """Whether kiln's own code is running (subclass dispatch off): the buffer's metadata."""
    return bool(STATE.tf_subclass_off or STATE.tf_off)


def no_shape(nt: StridedNestedTensor) -> RuntimeError:
    """PyTorch's strided nested tensors have no sizes(): len, iter and .shape refuse."""
    return RuntimeError(f"kiln.nested: a strided nested tensor has no single shape (its "
                        f"components' sizes are {list(nt._layout.sizes)}); use size(d) for a "
                        "regular dim, unbind() for the components, or layout=kiln.jagged for "
                        "a (B, j1, ...) shape")


def _int_table(rows: tuple, rank: int) -> Tensor:
    import kiln
    return kiln.tensor([list(r) for r in rows], dtype=kiln.int64).reshape(len(rows), rank)


def outer_ndim(nt: StridedNestedTensor) -> int:
    """The nested tensor's number of dims (the batch dim and its components'), whoever asks."""
    return nt._layout.rank + 1


def outer_dim(nt: StridedNestedTensor, dim: int) -> int:
    ndim = outer_ndim(nt)
    if not -ndim <= dim < ndim:
        raise IndexError(f"kiln.nested: dim {dim} is out of range for a nested tensor of "
                         f"{ndim} dims (expected in [{-ndim}, {ndim - 1}])")
    return dim % ndim


def components(buffer: Tensor, layout: Layout) -> list:
    """Each component as a strided view of the buffer (gradients flow back into it)."""
    return [buffer.as_strided(size, stride, start)
            for size, stride, start in zip(layout.sizes, layout.strides, layout.starts)]


def wrap(buffer: Tensor, layout: Layout) -> StridedNestedTensor:
    """A strided nested tensor on `buffer` (a plain 1-D tensor; the result's gradient flows
    back into it)."""
    out = as_subclass(buffer, StridedNestedTensor)
    out._layout = layout
    return out


def pack(parts: list, rank: int = 0, dtype=None) -> StridedNestedTensor:
    """A contiguous strided nested tensor of `parts` (plain tensors of one rank and dtype),
    laid end to end; gradients flow back to the parts. `rank` and `dtype` serve an empty list."""
    import kiln
    with DisableTorchFunctionSubclass():
        if parts:
            buffer = kiln.cat([p.reshape(-1) for p in parts])
            rank = parts[0].ndim
        else:
            buffer = kiln.zeros(0, dtype=dtype)
        return wrap(buffer, Layout.packed([tuple(p.shape) for p in parts], rank))
