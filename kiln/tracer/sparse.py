"""Sparse COO tensors (torch.sparse_coo): indices and values, for graph scripts' adjacency
matrices and feature tables.

A SparseTensor is a Tensor (so `isinstance(x, kiln.Tensor)` holds and `dense + sparse` reaches
the sparse rule first) whose memory is its `_idx` (int64, sparse_dim x nnz) and `_vals`
(nnz x dense dims). Its `_data` is a placeholder with a shape and no elements: a dense op that is
not one of the sparse rules below fails with an error naming the op, never computes on
something else. Every sparse rule is written with dense kiln ops on the indices and values
(index_select, index_add, unique), so it runs on any device and its gradient comes from
autograd: `sparse @ dense` differentiates with respect to the dense operand.

Sparse gradients (an embedding's `sparse=True`) are SparseTensors made by
`kiln/nn/sparse_grad.py`; autograd concatenates two of them (`concatenated`), as PyTorch does.

What PyTorch has and kiln does not: gradients with respect to a sparse tensor's values,
indexing a sparse tensor, elementwise functions on one (exp, relu, ...), CSR/CSC layouts,
sparse tensors inside `@kiln.compile` (such a call runs eagerly) or in `kiln.save`.
"""

from __future__ import annotations

import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.tracer.torch_function import \
    disabled_torch_function_impl as _disabled_torch_function_impl
from kiln.tracer.tensor import Tensor

_SUPPORTED = ("kiln's sparse COO tensors support to_dense(), coalesce(), indices()/values(), "
              "mm/matmul/@/spmm with a dense matrix, + and - with tensors, * and / by "
              "scalars or dense tensors, sum(), norm(), zero_(), t() and to(); call "
              ".to_dense() first")
UNSUPPORTED = "not supported on a sparse tensor; " + _SUPPORTED   # the dispatcher's error


class layout:
    """A tensor's memory layout (torch.layout): strided (every dense tensor) or sparse_coo (a
    SparseTensor)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"kiln.{self.name}"


strided = layout("strided")
sparse_coo = layout("sparse_coo")


class _NoDenseMemory:
    """The `_data` of a SparseTensor: its shape and dtype, and no elements to compute on."""

    __array_ufunc__ = None          # NumPy refuses ufuncs on it (a TypeError)

    def __init__(self, shape: tuple, dtype: np.dtype):
        self.shape, self.dtype = shape, dtype
        self.ndim, self.size = len(shape), math.prod(shape)

    def __array__(self, *args, **kwargs):
        raise TypeError(f"the tensor is sparse: {_SUPPORTED}")

    def __getattr__(self, name):
        if name.startswith("__"):       # protocol probes (copy, NumPy) see an ordinary absence
            raise AttributeError(name)
        raise TypeError(f"the tensor is sparse (no dense .{name}): {_SUPPORTED}")


class SparseTensor(Tensor):
    """A sparse COO tensor; make one with `kiln.sparse_coo_tensor` or `dense.to_sparse()`."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = _disabled_torch_function_impl

    __slots__ = ("_idx", "_vals", "_coalesced")

    def __init__(self, *args, **kwargs):
        raise TypeError("make a sparse tensor with kiln.sparse_coo_tensor(indices, values, "
                        "size) or dense.to_sparse()")

    # ------------------------------------------------------------------ structure
    @property
    def is_sparse(self) -> bool:
        return True

    @property
    def layout(self):
        return sparse_coo

    def sparse_dim(self) -> int:
        return self._idx.shape[0]

    def dense_dim(self) -> int:
        return self._vals.ndim - 1

    def _nnz(self) -> int:
        return self._idx.shape[1]

    def is_coalesced(self) -> bool:
        return self._coalesced

    def _indices(self) -> Tensor:
        return self._idx

    def _values(self) -> Tensor:
        return self._vals

    def indices(self) -> Tensor:
        if not self._coalesced:
            raise RuntimeError("Cannot get indices on an uncoalesced tensor, please call "
                               ".coalesce() first")
        return self._idx

    def values(self) -> Tensor:
        if not self._coalesced:
            raise RuntimeError("Cannot get values on an uncoalesced tensor, please call "
                               ".coalesce() first")
        return self._vals

    def coalesce(self) -> "SparseTensor":
        """Duplicate indices summed, entries sorted by index (zeros kept, as PyTorch does)."""
        if self._coalesced:
            return self
        from kiln.tracer.functional_extra.counting import unique
        keys, inverse = unique(self._flat_index(), sorted=True, return_inverse=True)
        return make(_unflatten(keys, self.shape[:self.sparse_dim()]),
                    self._summed(keys.shape[0], inverse), self.shape, coalesced=True)

    def to_dense(self, dtype=None, *, masked_grad=None) -> Tensor:
        positions = math.prod(self.shape[:self.sparse_dim()])
        dense = self._summed(positions, self._flat_index()).reshape(tuple(self.shape))
        return dense if dtype is None else dense.to(dtype)

    def _summed(self, rows: int, index: Tensor) -> Tensor:
        """`rows` rows of values, row r the sum of the entries whose `index` is r."""
        zeros = self._vals.new_zeros((rows,) + tuple(self._vals.shape[1:]))
        return zeros.index_add(0, index, self._vals)

    def _flat_index(self) -> Tensor:
        """Each entry's position in the row-major flattening of the sparse dims."""
        sizes = tuple(self.shape[:self.sparse_dim()])
        flat = self._idx[0] if sizes else self._idx.new_zeros(self._nnz())
        for d in range(1, len(sizes)):
            flat = flat * sizes[d] + self._idx[d]
        return flat

    # ------------------------------------------------------------------ conversion
    def to(self, *args, **kwargs) -> "SparseTensor":
        values = self._vals.to(*args, **kwargs)
        indices = self._idx.to(values.device)
        return make(indices, values, self.shape, coalesced=self._coalesced)

    def cpu(self) -> "SparseTensor":
        return self.to("cpu")

    def cuda(self, device=None, non_blocking=False) -> "SparseTensor":
        return self.to("cuda" if device is None else device)

    def float(self) -> "SparseTensor":
        return self.to(dt.float32)

    def double(self) -> "SparseTensor":
        return self.to(dt.float64)

    def half(self) -> "SparseTensor":
        return self.to(dt.float16)

    def long(self) -> "SparseTensor":
        return self.to(dt.int64)

    def int(self) -> "SparseTensor":
        return self.to(dt.int32)

    def bool(self) -> "SparseTensor":
        return self.to(dt.bool_)

    def type(self, dtype=None, non_blocking=False):
        return "kiln.sparse.FloatTensor" if dtype is None else self.to(dtype)

    def detach(self) -> "SparseTensor":
        return self

    @property
    def data(self) -> "SparseTensor":
        return self             # sparse tensors never require grad: already detached

    def clone(self, *, memory_format=None) -> "SparseTensor":
        return make(self._idx.clone(), self._vals.clone(), self.shape, self._coalesced)

    def to_sparse(self, sparse_dim=None) -> "SparseTensor":
        return self

    def zero_(self) -> "SparseTensor":
        """No entries left (PyTorch's zero_ on a sparse tensor, as `zero_grad(set_to_none=False)`
        leaves a sparse gradient)."""
        self._idx = self._idx[:, :0]
        self._vals = self._vals[:0]
        self._coalesced = True
        return self

    def requires_grad_(self, requires_grad: bool = True) -> "SparseTensor":
        if requires_grad:
            _no_grad()
        return self

    def __reduce_ex__(self, protocol):         # pickle (DataLoader workers, multiprocessing)
        return (make, (self._idx, self._vals, tuple(self.shape), self._coalesced))

    def __deepcopy__(self, memo) -> "SparseTensor":
        import copy
        return make(copy.deepcopy(self._idx, memo), copy.deepcopy(self._vals, memo),
                    self.shape, self._coalesced)

    def __copy__(self) -> "SparseTensor":
        return make(self._idx, self._vals, self.shape, self._coalesced)

    def _compare(self, other):
        raise NotImplementedError(f"comparing sparse tensors is not supported in kiln; "
                                  f"{_SUPPORTED}")

    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _compare
    __hash__ = Tensor.__hash__

    def numpy(self, *, force=False):
        raise TypeError("can't convert Sparse layout tensor to numpy. Use Tensor.to_dense() "
                        "first.")

    def tolist(self):
        raise TypeError("a sparse tensor has no list form; use .to_dense().tolist()")

    def item(self):
        return self.to_dense().item()

    def __getitem__(self, key):
        raise NotImplementedError(f"indexing a sparse tensor is not supported in kiln; "
                                  f"{_SUPPORTED}")

    def __setitem__(self, key, value):
        raise NotImplementedError("writing into a sparse tensor is not supported in kiln")

    def __repr__(self) -> str:
        lead = "tensor(indices="
        indices = repr(self._idx).replace("\n", "\n" + " " * len(lead))
        values = repr(self._vals).replace("\n", "\n" + " " * len("       values="))
        device = f", device='{self.device}'" if self.device.type != "cpu" else ""
        return (f"{lead}{indices},\n       values={values},\n       "
                f"size={tuple(self.shape)}, nnz={self._nnz()}{device}, layout={sparse_coo})")

    __str__ = __repr__

    # ------------------------------------------------------------------ transposes
    def t(self) -> "SparseTensor":
        if self.ndim != 2:
            raise RuntimeError(f"t() expects a tensor with <= 2 dimensions, but self is "
                               f"{self.ndim}D")
        return self.transpose(0, 1)

    def transpose(self, dim0: int, dim1: int) -> "SparseTensor":
        d0, d1 = dim0 % self.ndim, dim1 % self.ndim
        if max(d0, d1) >= self.sparse_dim():
            raise NotImplementedError("transposing a sparse tensor's dense dims is not "
                                      "supported in kiln")
        order = list(range(self.sparse_dim()))
        order[d0], order[d1] = order[d1], order[d0]
        shape = list(self.shape)
        shape[d0], shape[d1] = shape[d1], shape[d0]
        return make(self._idx[order], self._vals, tuple(shape), coalesced=False)

    @property
    def T(self) -> "SparseTensor":
        return self.t()

    # ------------------------------------------------------------------ arithmetic
    def mm(self, mat2) -> Tensor:
        return mm(self, mat2)

    def matmul(self, other) -> Tensor:
        return mm(self, other)

    def __matmul__(self, other) -> Tensor:
        return mm(self, other)

    def __rmatmul__(self, other) -> Tensor:
        return mm(other, self)

    def __add__(self, other):
        return add(self, other)

    def __radd__(self, other):
        return add(other, self)

    def add(self, other, *, alpha=1):
        return add(self, other * alpha if alpha != 1 else other)

    def __sub__(self, other):
        return add(self, -other)

    def __rsub__(self, other):
        return add(other, -self)

    def sub(self, other, *, alpha=1):
        return add(self, -(other * alpha))

    def __neg__(self) -> "SparseTensor":
        return make(self._idx, -self._vals, self.shape, self._coalesced)

    def __mul__(self, other) -> "SparseTensor":
        return mul(self, other)

    __rmul__ = __mul__

    def mul(self, other) -> "SparseTensor":
        return mul(self, other)

    def __truediv__(self, other) -> "SparseTensor":
        if isinstance(other, SparseTensor):
            raise NotImplementedError("dividing by a sparse tensor is not supported in kiln")
        if isinstance(other, Tensor) and other.ndim:
            return mul(self, 1 / other)
        return make(self._idx, self._vals / other, self.shape, self._coalesced)

    div = __truediv__

    def norm(self, p="fro", dim=None, keepdim=False, dtype=None):
        """The norm of all entries (duplicates summed first), a dense 0-d tensor, as PyTorch's
        `grad.norm()` of a sparse gradient; over dims it is not supported."""
        if dim is not None:
            raise NotImplementedError("norm over dims of a sparse tensor is not supported in "
                                      "kiln; call .to_dense() first")
        values = self.coalesce()._vals
        return values.norm(2 if p == "fro" else p, dtype=dtype)

    def sum(self, dim=None, keepdim=False, dtype=None):
        if keepdim:
            raise NotImplementedError("sum(keepdim=True) of a sparse tensor is not supported "
                                      "in kiln")
        return sum(self, dim, dtype=dtype)




def _no_grad():
    raise NotImplementedError(
        "kiln's sparse tensors cannot require grad: gradients flow to the dense operand of "
        "sparse @ dense, not to the sparse tensor's values")


def make(indices: Tensor, values: Tensor, shape, coalesced: bool) -> SparseTensor:
    """A sparse tensor of these indices and values (no checks: the caller's are valid)."""
    t = Tensor._make(_NoDenseMemory(tuple(int(s) for s in shape), values._data.dtype),
                     values.dtype, values.device, SparseTensor)
    t._idx, t._vals, t._coalesced = indices, values, coalesced
    return t


def _unflatten(flat: Tensor, sizes: tuple) -> Tensor:
    """The (len(sizes), n) indices whose row-major positions are `flat`."""
    rows = []
    for size in reversed(sizes):
        rows.append(flat % size)
        flat = flat // size
    from kiln.tracer.functional import stack
    return stack(rows[::-1]) if rows else flat.new_zeros((0, flat.shape[0]))


# ----------------------------------------------------------------------------- construction

def sparse_coo_tensor(indices, values, size=None, *, dtype=None, device=None,
                      requires_grad=False, check_invariants=None, is_coalesced=None
                      ) -> SparseTensor:
    """A sparse COO tensor: entry k of `values` sits at position indices[:, k]. Indices are
    checked against the size (PyTorch checks them only with check_invariants=True); duplicates
    are allowed and add up."""
    from kiln.tracer.creation import tensor
    if requires_grad or (isinstance(values, Tensor) and values.requires_grad):
        _no_grad()
    values = values.detach() if isinstance(values, Tensor) else tensor(values)
    if dtype is not None or device is not None:
        values = values.to(device=device, dtype=dtype)
    indices = indices.detach() if isinstance(indices, Tensor) else tensor(np.asarray(indices))
    if indices.dtype.category != dt.INT and indices.numel():
        raise RuntimeError(f"sparse_coo_tensor: indices must be an int64 tensor, got "
                           f"{indices.dtype.name}")
    indices = indices.to(device=values.device, dtype=dt.int64)
    if indices.ndim != 2:
        raise RuntimeError(f"sparse_coo_tensor: indices must be sparse_dim x nnz, but got: "
                           f"{list(indices.shape)}")
    if values.ndim == 0 or values.shape[0] != indices.shape[1]:
        raise RuntimeError(f"sparse_coo_tensor: indices and values must have the same number "
                           f"of elements, but got {indices.shape[1]} and "
                           f"{values.shape[0] if values.ndim else 'a 0-d tensor'}")
    sparse_dim, nnz = indices.shape
    high = indices.amax(1).tolist() if nnz else [-1] * sparse_dim
    if nnz and min(indices.amin(1).tolist()) < 0:
        raise RuntimeError("sparse_coo_tensor: found negative index")
    dense_shape = tuple(values.shape[1:])
    if size is None:
        size = tuple(h + 1 for h in high) + dense_shape
    size = tuple(int(s) for s in size)
    if len(size) != sparse_dim + len(dense_shape) or size[sparse_dim:] != dense_shape:
        raise RuntimeError(f"sparse_coo_tensor: size {list(size)} does not fit {sparse_dim} "
                           f"sparse dims and values of shape {list(values.shape)}")
    for d, (h, s) in enumerate(zip(high, size)):
        if h >= s:
            raise RuntimeError(f"sparse_coo_tensor: size is inconsistent with indices: for "
                               f"dim {d}, size is {s} but found index {h}")
    return make(indices, values, size, coalesced=bool(is_coalesced) or nnz <= 1)


def to_sparse(self: Tensor, sparse_dim=None, *, layout=None, blocksize=None,
              dense_dim=None) -> SparseTensor:
    """The nonzero entries of a dense tensor (all dims sparse unless sparse_dim says fewer)."""
    if layout is not None and layout is not sparse_coo:
        raise NotImplementedError(f"to_sparse(layout={layout}): kiln has only sparse_coo")
    if self.requires_grad:
        _no_grad()
    sparse_dim = self.ndim if sparse_dim is None else int(sparse_dim)
    if not 0 < sparse_dim <= self.ndim:
        raise RuntimeError(f"to_sparse: sparse_dim must be in [1, {self.ndim}], got "
                           f"{sparse_dim}")
    nonzero = self != 0
    if sparse_dim < self.ndim:
        nonzero = nonzero.flatten(sparse_dim).any(-1)
    indices = nonzero.nonzero().t()
    values = self.detach()[tuple(indices)] if indices.shape[1] else \
        self.detach().new_zeros((0,) + tuple(self.shape[sparse_dim:]))
    return make(indices, values, self.shape, coalesced=True)


# ----------------------------------------------------------------------------- products

def mm(a, b) -> Tensor:
    """sparse @ dense, dense @ sparse (dense results) and sparse @ sparse (sparse), for
    matrices; a 1-D dense operand is a vector, as in matmul."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        return to_sparse(mm(a, b.to_dense()))
    sparse, dense = (a, b) if isinstance(a, SparseTensor) else (b, a)
    if sparse.ndim != 2 or sparse.dense_dim():
        raise RuntimeError(f"mm: a sparse operand must be a 2-D matrix with no dense dims, got "
                           f"{list(sparse.shape)}")
    if dense.ndim == 1:
        if sparse is a:
            return mm(a, dense.unsqueeze(-1)).squeeze(-1)
        return mm(dense.unsqueeze(0), b).squeeze(0)
    if dense.ndim != 2:
        raise RuntimeError(f"mm: a sparse matrix multiplies a matrix or a vector, got a "
                           f"{dense.ndim}-D tensor of shape {list(dense.shape)}")
    (m, k), (k2, n) = a.shape, b.shape
    if k != k2:
        raise RuntimeError(f"mm: mat1 and mat2 shapes cannot be multiplied ({m}x{k} and "
                           f"{k2}x{n})")
    rows, cols = sparse._idx[0], sparse._idx[1]
    if sparse is a:         # out[r] += v * dense[c] for each entry (r, c, v)
        terms = dense.index_select(0, cols) * sparse._vals.unsqueeze(1)
        return terms.new_zeros((m, n)).index_add(0, rows, terms)
    # dense @ sparse: out[:, c] += dense[:, r] * v
    terms = dense.index_select(1, rows) * sparse._vals
    return terms.new_zeros((m, n)).index_add(1, cols, terms)


# ----------------------------------------------------------------------------- elementwise

def add(a, b):
    """sparse + sparse is sparse (entries concatenated, then coalesced); with a dense tensor
    the sum is dense."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        if tuple(a.shape) != tuple(b.shape):
            raise RuntimeError(f"add: sparse tensors of different sizes {list(a.shape)} and "
                               f"{list(b.shape)}")
        return concatenated(a, b).coalesce()
    if isinstance(a, SparseTensor):
        return a.to_dense() + b
    return a + b.to_dense()


def concatenated(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """The entries of both, uncoalesced (how PyTorch accumulates two sparse gradients)."""
    if tuple(a.shape) != tuple(b.shape):
        raise RuntimeError(f"accumulating sparse gradients of different sizes {list(a.shape)} "
                           f"and {list(b.shape)}")
    from kiln.tracer.functional import cat
    values_dtype = dt.promote(a.dtype, b.dtype)
    return make(cat([a._idx, b._idx], 1),
                cat([a._vals.to(values_dtype), b._vals.to(values_dtype)]), a.shape,
                coalesced=False)


def mul(a: SparseTensor, other) -> SparseTensor:
    """A sparse tensor times a number or a dense tensor (broadcast): the entries scaled, the
    pattern kept."""
    if isinstance(other, SparseTensor):
        raise NotImplementedError("sparse * sparse is not supported in kiln; multiply by "
                                  "other.to_dense()")
    if isinstance(other, Tensor) and other.ndim:
        if a.dense_dim():
            raise NotImplementedError("sparse (with dense dims) * tensor is not supported in "
                                      "kiln")
        full = other.expand(tuple(a.shape))
        return make(a._idx, a._vals * full[tuple(a._idx)], a.shape, a._coalesced)
    return make(a._idx, a._vals * other, a.shape, a._coalesced)


def sum(input: SparseTensor, dim=None, *, dtype=None):
    """All entries (a dense 0-d tensor), or over `dim` (a sparse tensor, as PyTorch gives)."""
    values = input._vals if dtype is None else input._vals.to(dtype)
    if dim is None:
        return values.sum()
    dims = {d % input.ndim for d in ((dim,) if isinstance(dim, int) else dim)}
    if input.dense_dim():
        raise NotImplementedError("sum over dims of a sparse tensor with dense dims is not "
                                  "supported in kiln")
    kept = [d for d in range(input.ndim) if d not in dims]
    if not kept:
        return values.sum()
    part = make(input._idx[kept], values, tuple(input.shape[d] for d in kept), False)
    return to_sparse(part.to_dense())


def spmm(a, b) -> Tensor:
    """torch.spmm: a sparse matrix times a dense one."""
    return mm(a, b)
