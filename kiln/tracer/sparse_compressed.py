"""Sparse compressed matrices (torch.sparse_csr and torch.sparse_csc): a row (column) pointer
array, the column (row) of each entry, and the values.

A SparseCompressedTensor keeps, next to its compressed arrays, the same matrix as a COO
SparseTensor (`_coo`, entries in the compressed order) whose values are its values: products,
sums and gradients are the COO rules of `tracer/sparse.py`, and results that PyTorch gives in
the compressed layout are converted back. Only 2-D matrices (no batch or dense dims).
"""

from __future__ import annotations

from kiln.ir import dtypes as dt
from kiln.tracer import sparse as coo
from kiln.tracer.sparse import SparseTensor, _NoDenseMemory, layout
from kiln.tracer.tensor import Tensor
from kiln.tracer.torch_function import \
    disabled_torch_function_impl as _disabled_torch_function_impl

sparse_csr = layout("sparse_csr")
sparse_csc = layout("sparse_csc")
sparse_bsr = layout("sparse_bsr")
sparse_bsc = layout("sparse_bsc")
_NAMES = {sparse_csr: ("crow_indices", "col_indices", "SparseCsr"),
          sparse_csc: ("ccol_indices", "row_indices", "SparseCsc")}


class SparseCompressedTensor(Tensor):
    """A CSR or CSC matrix; make one with `kiln.sparse_csr_tensor`, `sparse_csc_tensor`,
    `sparse_compressed_tensor` or `dense.to_sparse_csr()` / `to_sparse_csc()`."""
    __torch_function__ = _disabled_torch_function_impl

    __slots__ = ("_compressed", "_plain", "_coo", "_layout")

    def __init__(self, *args, **kwargs):
        raise TypeError("make a sparse compressed tensor with kiln.sparse_csr_tensor(crow, "
                        "col, values, size) or dense.to_sparse_csr()")

    # ------------------------------------------------------------------ structure
    @property
    def layout(self):
        return self._layout

    @property
    def is_sparse(self) -> bool:
        return False                    # as PyTorch: is_sparse means the COO layout

    @property
    def is_sparse_csr(self) -> bool:
        return self._layout is sparse_csr

    def _nnz(self) -> int:
        return self._plain.shape[0]

    def sparse_dim(self) -> int:
        return 2

    def dense_dim(self) -> int:
        return 0

    def values(self) -> Tensor:
        return self._coo._vals

    def _accessor(self, name: str) -> Tensor:
        names = _NAMES[self._layout]
        if name not in names:
            other = "row" if name in _NAMES[sparse_csr] else "column"
            raise RuntimeError(f"{name} expected sparse {other} compressed tensor layout but "
                               f"got {names[2]}")
        return self._compressed if name == names[0] else self._plain

    def crow_indices(self) -> Tensor:
        return self._accessor("crow_indices")

    def col_indices(self) -> Tensor:
        return self._accessor("col_indices")

    def ccol_indices(self) -> Tensor:
        return self._accessor("ccol_indices")

    def row_indices(self) -> Tensor:
        return self._accessor("row_indices")

    # ------------------------------------------------------------------ conversion
    def to_dense(self, dtype=None, *, masked_grad=None) -> Tensor:
        return self._coo.to_dense(dtype)

    def to_sparse(self, sparse_dim=None, *, layout=None, blocksize=None, dense_dim=None):
        if layout is None or layout is coo.sparse_coo:
            return self._coo.coalesce()
        return to_layout(self, layout)

    def to_sparse_coo(self):
        return self._coo.coalesce()

    def to_sparse_csr(self, dense_dim=None):
        return to_layout(self, sparse_csr)

    def to_sparse_csc(self, dense_dim=None):
        return to_layout(self, sparse_csc)

    def to(self, *args, **kwargs) -> "SparseCompressedTensor":
        return self._with_values(self.values().to(*args, **kwargs), device_too=True)

    def float(self):
        return self.to(dt.float32)

    def double(self):
        return self.to(dt.float64)

    def cpu(self):
        return self.to("cpu")

    def cuda(self, device=None, non_blocking=False):
        return self.to("cuda" if device is None else device)

    def detach(self) -> "SparseCompressedTensor":
        return self._with_values(self.values().detach())

    @property
    def data(self):
        return self.detach()

    def clone(self, *, memory_format=None):
        return self._with_values(self.values().clone())

    def numpy(self, *, force=False):
        raise TypeError(f"can't convert {_NAMES[self._layout][2]} layout tensor to numpy. Use "
                        f"Tensor.to_dense() first.")

    def tolist(self):
        raise TypeError("a sparse tensor has no list form; use .to_dense().tolist()")

    def __getitem__(self, key):
        raise NotImplementedError("indexing a sparse compressed tensor is not supported in "
                                  "kiln; call .to_sparse() or .to_dense() first")

    def __setitem__(self, key, value):
        raise NotImplementedError("writing into a sparse tensor is not supported in kiln")

    def __reduce_ex__(self, protocol):
        return (compressed, (self._compressed, self._plain, self.values().detach(),
                             tuple(self.shape), self._layout.name))

    def _with_values(self, values: Tensor, device_too: bool = False):
        """This pattern with other values (of the same length)."""
        device = values.device if device_too else self._compressed.device
        return compressed(self._compressed.to(device), self._plain.to(device), values,
                          tuple(self.shape), self._layout.name)

    def __repr__(self) -> str:
        first, second, _ = _NAMES[self._layout]
        indent = " " * len("tensor(")
        compressed_text, plain_text = (repr(t).replace("\n", "\n" + " " * (len(name) + 8))
                                       for name, t in ((first, self._compressed),
                                                       (second, self._plain)))
        values, suffixes = coo.values_repr(self.values().detach(), len("values=") + 7)
        body = (f"tensor({first}={compressed_text},\n{indent}{second}={plain_text},\n"
                f"{indent}values={values}")
        suffixes = [f"size={tuple(self.shape)}", f"nnz={self._nnz()}"] + suffixes + \
            [f"layout={self._layout}"] + self._coo._grad_suffix()
        return coo.with_suffixes(body, suffixes, len(indent))

    __str__ = __repr__

    # ------------------------------------------------------------------ autograd
    @property
    def requires_grad(self) -> bool:
        return self._coo.requires_grad if hasattr(self, "_coo") else False

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if hasattr(self, "_coo"):
            self._coo.requires_grad_(value)

    @property
    def grad_fn(self):
        return self._coo.grad_fn if hasattr(self, "_coo") else None

    @grad_fn.setter
    def grad_fn(self, value) -> None:
        if value is not None:
            raise RuntimeError("a sparse tensor's grad_fn is its values'")

    @property
    def grad(self):
        """The COO leaf's gradient: dense from mm/@, in this layout from torch.sparse.mm."""
        g = self._coo.grad
        return to_layout(g, self._layout) if isinstance(g, SparseTensor) else g

    @grad.setter
    def grad(self, value) -> None:
        self._coo.grad = value

    def requires_grad_(self, requires_grad: bool = True):
        self._coo.requires_grad_(requires_grad)
        return self

    # ------------------------------------------------------------------ arithmetic
    def t(self) -> "SparseCompressedTensor":
        """The transpose: the same arrays read in the other layout, as PyTorch's."""
        other = "sparse_csc" if self._layout is sparse_csr else "sparse_csr"
        return compressed(self._compressed, self._plain, self.values(),
                          tuple(self.shape)[::-1], other)

    def transpose(self, dim0: int, dim1: int):
        if dim0 % 2 == dim1 % 2:
            return self
        return self.t()

    @property
    def T(self):
        return self.t()

    def mm(self, mat2):
        return self @ mat2

    matmul = mm

    def __matmul__(self, other):
        if isinstance(other, SparseCompressedTensor):       # a CSR result, as PyTorch's
            return to_layout(coo.mm(self._coo, other._coo), sparse_csr)
        return coo.mm(self._coo, other)

    def __rmatmul__(self, other):
        return coo.mm(other, self._coo)

    def __mul__(self, other):
        if isinstance(other, (int, float)) or (isinstance(other, Tensor) and not other.ndim
                                                and type(other) is Tensor):
            return self._with_values(self.values() * other)
        if isinstance(other, SparseCompressedTensor):
            other = other._coo
        elif self._layout is sparse_csc:
            raise RuntimeError("mul: a sparse_csc tensor times a dense tensor is not "
                               "supported (PyTorch makes CSR results only)")
        return to_layout(self._coo * other, self._layout)

    __rmul__ = mul = __mul__

    def mul_(self, other):
        self._coo.mul_(other)
        return self

    def div_(self, other):
        raise RuntimeError(f"div_: unsupported tensor layout: {_NAMES[self._layout][2]}")

    def __add__(self, other):
        if not isinstance(other, SparseCompressedTensor):
            raise RuntimeError(f"add: a {_NAMES[self._layout][2]} tensor adds only another "
                               f"sparse compressed tensor in kiln (dense + sparse is dense)")
        return to_layout(self._coo + other._coo, self._layout)

    def __radd__(self, other):
        return other + self._coo

    def __sub__(self, other):
        return self + (-other)

    def __rsub__(self, other):
        return other - self._coo

    def __truediv__(self, other):
        raise RuntimeError(f"div: unsupported tensor layout: {_NAMES[self._layout][2]}")

    div = __truediv__

    def sum(self, dim=None, keepdim=False, dtype=None):
        if dim is not None:
            raise NotImplementedError("sum over a dim of a sparse compressed tensor is not "
                                      "supported in kiln; call .to_sparse() first")
        values = self.values()
        return (values if dtype is None else values.to(dtype)).sum()

    def pow(self, exponent):
        if not isinstance(exponent, Tensor) and exponent == 0:
            return self._coo.pow(0)                         # PyTorch's refusal
        return self._with_values(self.values() ** exponent)

    __pow__ = pow


def _unary(name: str):
    def fn(self, *args, **kwargs):
        return self._with_values(getattr(self.values(), name)(*args, **kwargs))
    fn.__name__ = name
    fn.__doc__ = f"{name} of each stored entry (the zeros stay zeros)"
    return fn


for _name in coo.ZERO_PRESERVING + coo.PATTERN_KEEPING + ["square"]:
    setattr(SparseCompressedTensor, _name, _unary(_name))
SparseCompressedTensor.__neg__ = _unary("neg")
coo.SPARSE_TYPES.append(SparseCompressedTensor)


# ----------------------------------------------------------------------------- construction

def compressed(compressed_indices: Tensor, plain_indices: Tensor, values: Tensor, shape,
               layout_name: str) -> SparseCompressedTensor:
    """A compressed matrix of these arrays (no checks: the caller's are valid)."""
    from kiln.tracer.functional import stack
    lay = sparse_csr if layout_name == "sparse_csr" else sparse_csc
    shape = tuple(int(s) for s in shape)
    counts = compressed_indices[1:] - compressed_indices[:-1]
    from kiln.tracer.creation import arange
    outer = arange(len(counts), device=values.device).repeat_interleave(counts) \
        if len(counts) else compressed_indices[:0]
    rows, cols = (outer, plain_indices) if lay is sparse_csr else (plain_indices, outer)
    t = Tensor._make(_NoDenseMemory(shape, values._data.dtype), values.dtype, values.device,
                     SparseCompressedTensor)
    t._compressed, t._plain, t._layout = compressed_indices, plain_indices, lay
    t._coo = coo.make(stack([rows, cols]) if rows.shape[0] else
                      compressed_indices.new_zeros((2, 0)), values, shape,
                      coalesced=lay is sparse_csr)
    return t


def to_layout(x, target) -> Tensor:
    """x (dense, COO or compressed) in the layout `target` (differentiable in its values)."""
    if target is coo.sparse_coo:
        return x.to_sparse()
    if target in (sparse_bsr, sparse_bsc):
        raise NotImplementedError(f"{target}: block sparse layouts are not supported in kiln")
    if target not in (sparse_csr, sparse_csc):
        raise RuntimeError(f"to_sparse: unknown layout {target}")
    if isinstance(x, SparseCompressedTensor):
        if x._layout is target:
            return x
        x = x._coo
    elif not isinstance(x, SparseTensor):
        if x.ndim != 2:
            raise NotImplementedError(f"to_sparse({target}): kiln makes compressed tensors of "
                                      f"2-D matrices only, got shape {list(x.shape)}")
        x = coo.to_sparse(x)
    if x.ndim != 2 or x.dense_dim():
        raise NotImplementedError(f"to_sparse({target}): kiln makes compressed tensors of "
                                  f"2-D matrices only, got shape {list(x.shape)}")
    x = x.coalesce()
    rows, cols = x._idx[0], x._idx[1]
    values = x._vals
    m, n = x.shape
    if target is sparse_csc:               # column-major order
        from kiln.tracer.functional_extra import argsort
        order = argsort(cols * m + rows)
        rows, cols, values = rows[order], cols[order], values.index_select(0, order)
        outer, plain, size = cols, rows, n
    else:
        outer, plain, size = rows, cols, m
    from kiln.tracer.functional import cat
    pointers = cat([outer.new_zeros(1), outer.bincount(minlength=size).cumsum(0)])
    return compressed(pointers, plain, values, (m, n), target.name)


def sparse_compressed_tensor(compressed_indices, plain_indices, values, size=None, *,
                             dtype=None, layout=None, device=None, pin_memory=False,
                             requires_grad=False, check_invariants=None):
    """torch.sparse_compressed_tensor for the CSR and CSC layouts; the index arrays are always
    checked (PyTorch checks them only with check_invariants=True)."""
    if layout not in (sparse_csr, sparse_csc):
        if layout in (sparse_bsr, sparse_bsc):
            raise NotImplementedError(f"sparse_compressed_tensor: {layout} (block sparse) is "
                                      f"not supported in kiln")
        raise RuntimeError(f"sparse_compressed_tensor: expected layout sparse_csr or "
                           f"sparse_csc, got {layout}")
    from kiln.tracer.creation import tensor
    values = values if isinstance(values, Tensor) else tensor(values)
    if dtype is not None or device is not None:
        values = values.to(device=device, dtype=dtype)
    if values.requires_grad and values.grad_fn is None:
        values = values.view(tuple(values.shape))
    first, second, _ = _NAMES[layout]
    ptr, plain = (i.detach() if isinstance(i, Tensor) else tensor(i)
                  for i in (compressed_indices, plain_indices))
    op = f"sparse_{layout.name[7:]}_tensor"
    for name, t in ((first, ptr), (second, plain)):
        if t.dtype.category != dt.INT and t.numel():
            raise RuntimeError(f"{op}: {name} must be an integer tensor, got {t.dtype.name}")
        if t.ndim != 1:
            raise NotImplementedError(f"{op}: kiln has 2-D compressed matrices only (1-D "
                                      f"{name}), got {name} of shape {list(t.shape)}")
    ptr, plain = ptr.to(values.device, dt.int64), plain.to(values.device, dt.int64)
    if values.ndim != 1 or values.shape[0] != plain.shape[0]:
        raise RuntimeError(f"{op}: values must be 1-D with one entry per {second} "
                           f"({plain.shape[0]}), got shape {list(values.shape)}")
    pointers = ptr.tolist()
    nnz = plain.shape[0]
    if not pointers or pointers[0] != 0 or pointers[-1] != nnz or any(
            a > b for a, b in zip(pointers, pointers[1:])):
        raise RuntimeError(f"{op}: {first} must start at 0, never decrease and end at nnz "
                           f"({nnz}), got {pointers}")
    outer = len(pointers) - 1
    high = int(plain.amax().item()) + 1 if nnz else 0
    if size is None:
        size = (outer, high) if layout is sparse_csr else (high, outer)
    size = tuple(int(s) for s in size)
    if len(size) != 2:
        raise NotImplementedError(f"{op}: kiln has 2-D compressed matrices only, got size "
                                  f"{list(size)}")
    outer_size, plain_size = size if layout is sparse_csr else size[::-1]
    if outer != outer_size:
        raise RuntimeError(f"{op}: {first} has {len(pointers)} entries, size {list(size)} "
                           f"needs {outer_size + 1}")
    if nnz and (high > plain_size or int(plain.amin().item()) < 0):
        raise RuntimeError(f"{op}: {second} must be in [0, {plain_size}), got values up to "
                           f"{high - 1}")
    out = compressed(ptr, plain, values, size, layout.name)
    outer_of = out._coo._idx[0 if layout is sparse_csr else 1]
    if nnz > 1 and not bool(((outer_of[1:] != outer_of[:-1]) | (plain[1:] > plain[:-1]))
                            .all().item()):
        raise RuntimeError(f"{op}: {second} must be sorted and distinct within each "
                           f"{'row' if layout is sparse_csr else 'column'}")
    return out.requires_grad_() if requires_grad else out


def sparse_csr_tensor(crow_indices, col_indices, values, size=None, *, dtype=None,
                      device=None, pin_memory=False, requires_grad=False,
                      check_invariants=None):
    return sparse_compressed_tensor(crow_indices, col_indices, values, size, dtype=dtype,
                                    layout=sparse_csr, device=device,
                                    requires_grad=requires_grad)


def sparse_csc_tensor(ccol_indices, row_indices, values, size=None, *, dtype=None,
                      device=None, pin_memory=False, requires_grad=False,
                      check_invariants=None):
    return sparse_compressed_tensor(ccol_indices, row_indices, values, size, dtype=dtype,
                                    layout=sparse_csc, device=device,
                                    requires_grad=requires_grad)
