"""Sparse COO tensors (torch.sparse_coo): indices and values, for graph scripts' adjacency
matrices and feature tables.

A SparseTensor is a Tensor (so `isinstance(x, kiln.Tensor)` holds and `dense + sparse` reaches
the sparse rule first) whose memory is its `_idx` (int64, sparse_dim x nnz) and `_vals`
(nnz x dense dims). Its `_data` is a placeholder with a shape and no elements: a dense op that is
not one of the sparse rules below fails with an error naming the op, never computes on
something else. Every sparse rule is written with dense kiln ops on the indices and values
(index_select, index_add, unique), so it runs on any device and its gradient comes from
autograd: `sparse @ dense` differentiates with respect to the dense operand.

A sparse tensor's values can require grad, as in PyTorch: `sparse_coo_tensor(i, v)` with `v`
requiring grad passes gradients back to `v`; a leaf (`requires_grad=True`, `requires_grad_()`)
gets a `.grad` that is sparse on its coalesced pattern from torch.sparse.mm/addmm, to_dense,
sum, coalesce and the elementwise rules, and dense (every position) from mm, matmul, @ and
spmm, which is what PyTorch gives for each. The functions that map zero to zero (abs, relu, sqrt,
sin, pow(n), ...) keep the pattern; PyTorch refuses the others (exp, cos, ...), and so does kiln.
CSR and CSC matrices are `tracer/sparse_compressed.py`'s, built on these rules.

Sparse gradients (an embedding's `sparse=True`) are SparseTensors made by
`kiln/nn/sparse_grad.py`; autograd concatenates two of them (`concatenated`), as PyTorch does.

Indexing takes integers (`S[i]`, `S[i, j]`, `select`) and `index_select`, as PyTorch does.

What PyTorch has and kiln does not: block sparse layouts (BSR/BSC), batched or hybrid
(dense-dim) CSR/CSC, torch.sparse.softmax of a tensor with dense dims, in-place ops on sparse
tensors other than `mul_`/`div_` by a number (`abs_`, `add_`, ...). `@kiln.compile` takes
COO, CSR and CSC arguments (`tracer/trace.py` `flatten`), leaves that require grad included.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from kiln.ir import dtypes as dt
from kiln.tracer.custom_function import Function
from kiln.tracer.torch_function import \
    disabled_torch_function_impl as _disabled_torch_function_impl
from kiln.tracer.tensor import Tensor

_SUPPORTED = ("kiln's sparse tensors support to_dense(), conversions between layouts, "
              "indices/values, products with dense or sparse matrices, + and - with sparse "
              "tensors, * and / by numbers, * by dense tensors, the functions that keep zeros "
              "(abs, relu, sqrt, sin, ...), sum(), norm() and to(); call .to_dense() first")
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
    strides = None                  # no layout: the dispatcher's rules (`tracer.strides`) skip it

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

    # _leaf: the values a leaf that requires grad differentiates (one per coalesced entry, at
    # _leaf_idx); _sink: a dense leaf that collects the dense gradient mm/@ give S
    # _spread: for an uncoalesced leaf, each entry's position among the leaf's and how many
    # entries share it (see requires_grad_)
    __slots__ = ("_idx", "_stored", "_coalesced", "_leaf", "_leaf_idx", "_sink", "_spread")

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
        keys, inverse, _ = self._entries_by_position()
        return make(_unflatten(keys, self.shape[:self.sparse_dim()]),
                    self._summed(keys.shape[0], inverse), self.shape, coalesced=True)

    def _entries_by_position(self):
        """The sorted distinct flat positions, each entry's place among them, and how many
        entries each position has."""
        from kiln.tracer.functional_extra.counting import unique
        return unique(self._flat_index(), sorted=True, return_inverse=True, return_counts=True)

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
        return make(self._idx, self._vals.detach(), self.shape, self._coalesced)

    @property
    def data(self) -> "SparseTensor":
        return self.detach()

    # ------------------------------------------------------------------ autograd
    # A sparse tensor's gradient lives in its values: a leaf that requires grad keeps a leaf of
    # values (`_leaf`), and `.grad` is a sparse tensor of the leaf's gradient on S's coalesced
    # pattern, as PyTorch's. Products other than torch.sparse.mm give PyTorch's dense gradient
    # (not masked to the pattern) through `_sink`.
    @property
    def requires_grad(self) -> bool:
        return self._leaf is not None or self._stored.requires_grad

    @requires_grad.setter
    def requires_grad(self, value: bool) -> None:
        if hasattr(self, "_stored"):        # Tensor._make sets it before the values exist
            self.requires_grad_(value)

    @property
    def grad_fn(self):
        return None if self._leaf is not None else self._stored.grad_fn

    @grad_fn.setter
    def grad_fn(self, value) -> None:
        if value is not None:
            raise RuntimeError("a sparse tensor's grad_fn is its values'")

    @property
    def grad(self):
        if self._leaf is None:
            return None
        masked = self._leaf.grad
        if masked is not None:
            masked = make(self._leaf_idx, masked, self.shape, coalesced=True)
        full = self._sink.grad if self._sink is not None else None
        if full is None or masked is None:
            return masked if full is None else full
        return full + masked

    @grad.setter
    def grad(self, value) -> None:
        if value is not None:
            raise NotImplementedError("kiln sets a sparse tensor's .grad only to None")
        if self._leaf is not None:
            self._leaf.grad = None
        if self._sink is not None:
            self._sink.grad = None

    def requires_grad_(self, requires_grad: bool = True) -> "SparseTensor":
        if not requires_grad:
            if self._vals.grad_fn is not None and self._leaf is None:
                raise RuntimeError("you can only change requires_grad flags of leaf variables.")
            self._vals, self._leaf, self._sink = self._vals.detach(), None, None
            return self
        if self._vals.requires_grad:
            return self
        if self._vals.dtype.category not in (dt.FLOAT, dt.COMPLEX):
            raise RuntimeError("only Tensors of floating point dtype can require gradients")
        if self._coalesced:
            self._leaf = self._vals = self._vals.detach().requires_grad_()
            self._leaf_idx = self._idx
            return self
        # uncoalesced: the leaf holds one value per position (see _vals)
        keys, inverse, counts = self.detach()._entries_by_position()
        self._leaf = self.detach()._summed(keys.shape[0], inverse).requires_grad_()
        self._leaf_idx = _unflatten(keys, self.shape[:self.sparse_dim()])
        self._vals = self._vals.detach()
        self._spread = (inverse, counts.index_select(0, inverse).to(self._leaf.dtype).reshape(
            (-1,) + (1,) * self.dense_dim()))
        return self

    @property
    def _vals(self) -> Tensor:
        """The entries' values. Those of an uncoalesced leaf add a share of the leaf that is
        zero in the forward pass and, in the backward pass, hands the leaf each position's
        gradient divided among its entries: the gradient with respect to the position, as
        PyTorch's."""
        if self._spread is None:
            return self._stored
        inverse, counts = self._spread
        return self._stored + (self._leaf - self._leaf.detach()).index_select(0, inverse) / counts

    @_vals.setter
    def _vals(self, values: Tensor) -> None:
        self._stored, self._spread = values, None

    def _dense_grad_sink(self):
        """A dense leaf of S's shape that collects the gradient of a product PyTorch gives S
        dense (mm, @, matmul, spmm), or None when S is not a leaf that requires grad."""
        from kiln.tracer.tensor import STATE
        if self._leaf is None or not STATE.grad_enabled:
            return None
        if self._sink is None:
            self._sink = self._vals.new_zeros(tuple(self.shape)).requires_grad_()
        return self._sink

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

    def __reduce_ex__(self, protocol):         # pickle (DataLoader workers, multiprocessing)
        return (make, (self._idx, self._vals.detach(), tuple(self.shape), self._coalesced))

    def __deepcopy__(self, memo) -> "SparseTensor":
        import copy
        twin = make(copy.deepcopy(self._idx, memo), copy.deepcopy(self._vals.detach(), memo),
                    self.shape, self._coalesced)
        return twin.requires_grad_() if self._leaf is not None else twin

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
        """S[i], S[i, j, ...] by integers (PyTorch's select); slices and tensors PyTorch
        refuses on a sparse tensor, and so does kiln."""
        keys = key if isinstance(key, tuple) else (key,)
        if not keys or not all(isinstance(k, int) and not isinstance(k, bool) for k in keys):
            raise NotImplementedError(f"indexing a sparse tensor by {key!r} is not supported "
                                      f"(PyTorch and kiln take integers only); {_SUPPORTED}")
        if len(keys) > self.ndim:
            raise IndexError(f"too many indices for tensor of dimension {self.ndim}")
        out = self
        for k in keys:
            out = out.select(0, k)
        return out

    def select(self, dim: int, index: int):
        """The entries at `index` along `dim`, that dim dropped: sparse, or a dense 0-d sum
        when no dim is left."""
        dim, index = self._check_index("select", dim, index)
        if dim >= self.sparse_dim():                    # a dense dim: the values' own select
            return make(self._idx, self._vals.select(dim - self.sparse_dim() + 1, index),
                        self.shape[:dim] + self.shape[dim + 1:], self._coalesced)
        chosen = (self._idx[dim] == index).nonzero().reshape(-1)
        values = self._vals.index_select(0, chosen)
        if self.ndim == 1:
            return values.sum(0)
        kept = [d for d in range(self.sparse_dim()) if d != dim]
        shape = self.shape[:dim] + self.shape[dim + 1:]
        if not kept:                                    # only dense dims are left
            return values.sum(0)
        return make(self._idx[kept].index_select(1, chosen), values, shape,
                    coalesced=chosen.shape[0] <= 1)

    def index_select(self, dim: int, index: Tensor) -> "SparseTensor":
        """The entries whose position along `dim` is in `index`, in index order (entries
        repeated for repeated positions), as PyTorch's."""
        dim = self._check_index("index_select", dim, 0)[0]
        if dim >= self.sparse_dim():
            return make(self._idx, self._vals.index_select(dim - self.sparse_dim() + 1, index),
                        self.shape[:dim] + (index.shape[0],) + self.shape[dim + 1:],
                        self._coalesced)
        if index.ndim != 1 or index.dtype.category != dt.INT:
            raise IndexError(f"index_select(): index must be a 1-D integer tensor, got "
                             f"{index.dtype.name} of shape {list(index.shape)}")
        size = self.shape[dim]
        index = index.to(self._idx.device, dt.int64)
        if index.numel() and (int(index.amin().item()) < -size or
                              int(index.amax().item()) >= size):
            raise IndexError(f"index_select(): index out of range for dimension {dim} of "
                             f"size {size}")
        index = index % size
        keys = self._idx[dim]
        order = keys.argsort(stable=True)               # entries grouped by position
        counts = keys.bincount(minlength=size)
        starts = counts.cumsum(0) - counts
        take, first = counts.index_select(0, index), starts.index_select(0, index)
        from kiln.tracer.creation import arange
        total = int(take.sum().item())
        out_pos = arange(index.shape[0], device=index.device).repeat_interleave(take)
        group_start = (take.cumsum(0) - take).repeat_interleave(take)
        entries = order.index_select(0, first.repeat_interleave(take) +
                                     arange(total, device=index.device) - group_start)
        indices = self._idx.index_select(1, entries)
        indices[dim] = out_pos
        shape = self.shape[:dim] + (index.shape[0],) + self.shape[dim + 1:]
        return make(indices, self._vals.index_select(0, entries), shape,
                    coalesced=total <= 1)

    def _check_index(self, op: str, dim: int, index: int) -> tuple:
        if not -self.ndim <= dim < self.ndim:
            raise IndexError(f"{op}(): dimension {dim} out of range for a {self.ndim}-D "
                             f"tensor")
        dim %= self.ndim
        if not -self.shape[dim] <= index < self.shape[dim]:
            raise IndexError(f"index {index} is out of bounds for dimension {dim} with size "
                             f"{self.shape[dim]}")
        return dim, index % self.shape[dim]

    def __setitem__(self, key, value):
        raise NotImplementedError("writing into a sparse tensor is not supported in kiln")

    def __repr__(self) -> str:
        lead = "tensor(indices="
        indices = repr(self._idx).replace("\n", "\n" + " " * len(lead))
        values, suffixes = values_repr(self._vals.detach(), len("       values="))
        body = f"{lead}{indices},\n       values={values}"
        suffixes = [f"size={tuple(self.shape)}", f"nnz={self._nnz()}"] + suffixes + \
            [f"layout={sparse_coo}"] + self._grad_suffix()
        return with_suffixes(body, suffixes, len("tensor("), force_newline=True)

    def _grad_suffix(self) -> list:
        if self._leaf is not None:
            return ["requires_grad=True"]
        if self.grad_fn is not None:
            return [f"grad_fn=<{self.grad_fn.name()}>"]
        return []

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
        _scalar_divisor("div", other)
        return make(self._idx, self._vals / other, self.shape, self._coalesced)

    div = __truediv__

    def mul_(self, other) -> "SparseTensor":
        """In place, by a number or a 0-d tensor (the pattern kept)."""
        return self._in_place("mul_", self._vals * other)

    def div_(self, other) -> "SparseTensor":
        _scalar_divisor("div_", other)
        return self._in_place("div_", self._vals / other)

    def _in_place(self, op: str, values: Tensor) -> "SparseTensor":
        from kiln.tracer.tensor import STATE
        if self._leaf is not None and STATE.grad_enabled:
            raise RuntimeError(f"{op}: a leaf Variable that requires grad is being used in an "
                               f"in-place operation.")
        if isinstance(values, SparseTensor) or values.shape != self._vals.shape:
            raise RuntimeError(f"{op}: a sparse tensor changes in place only by a number or a "
                               f"0-d tensor")
        if self._leaf is None:
            self._vals = values
            return self
        grad = self._leaf.grad                  # under no_grad: a new leaf, its grad kept
        self._leaf, self._vals = None, values.detach()
        self.requires_grad_()
        self._leaf.grad = grad
        return self

    def __floordiv__(self, other) -> "SparseTensor":
        _scalar_divisor("floor_divide", other)
        c = self.coalesce()
        return make(c._idx, c._vals // other, c.shape, True)

    floor_divide = __floordiv__

    def pow(self, exponent) -> "SparseTensor":
        """Each stored entry to a number's power (coalesced first); a zeroth power would fill
        every position, so it is refused, as in PyTorch."""
        if isinstance(exponent, Tensor):
            raise NotImplementedError("pow of a sparse tensor by a tensor is not supported in "
                                      "kiln; use a number")
        if exponent == 0:
            raise RuntimeError("pow: cannot raise to zeroth power on sparse tensor; it would "
                               "make the result tensor dense")
        c = self.coalesce()
        return make(c._idx, c._vals ** exponent, c.shape, True)

    __pow__ = pow

    def square(self) -> "SparseTensor":
        return self.pow(2)

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


# Functions that map zero to zero, so a sparse tensor keeps its pattern: PyTorch computes them
# on the coalesced values (the first group) or on the entries as they are (the second). PyTorch
# refuses the others (exp, cos, sigmoid, ...: they would fill every position), and so does kiln.
ZERO_PRESERVING = """
abs relu sqrt sin tan tanh sign sgn floor ceil round trunc fix frac expm1 log1p sinh asin
arcsin atan arctan asinh arcsinh atanh arctanh erf erfinv deg2rad rad2deg isnan isinf signbit
nan_to_num
""".split()
PATTERN_KEEPING = "neg negative conj positive".split()


def _unary(name: str, coalesce: bool):
    def fn(self, *args, **kwargs) -> SparseTensor:
        s = self.coalesce() if coalesce else self
        return make(s._idx, getattr(s._vals, name)(*args, **kwargs), s.shape, s._coalesced)
    fn.__name__ = name
    fn.__doc__ = f"{name} of each stored entry (the zeros stay zeros)"
    return fn


for _name in ZERO_PRESERVING + PATTERN_KEEPING:
    setattr(SparseTensor, _name, _unary(_name, _name in ZERO_PRESERVING))


def _refused(name: str):
    def fn(self, *args, **kwargs):
        from kiln.tracer.errors import op_error
        raise op_error(name, UNSUPPORTED, NotImplementedError)
    fn.__name__ = name
    return fn


for _name in ("sinc", "logit"):        # composites that would otherwise fail obscurely
    setattr(SparseTensor, _name, _refused(_name))


SPARSE_TYPES = [SparseTensor]    # and tracer/sparse_compressed.py's, once imported


def with_sparse_rule(fn, name: str):
    """kiln.<name>(x, ...): the sparse tensor's own rule when x is sparse, else `fn`."""
    def dispatch(input, *args, **kwargs):
        if type(input) in SPARSE_TYPES:
            return getattr(input, name)(*args, **kwargs)
        return fn(input, *args, **kwargs)
    return functools.update_wrapper(dispatch, fn)     # kiln.<name> still, for fx and repr


def with_sparse_operand(fn, name: str):
    """kiln.add/sub/mul/div(x, y, ...): the sparse rules when either is sparse, else `fn`."""
    import operator
    apply = {"add": operator.add, "sub": operator.sub, "mul": operator.mul,
             "div": operator.truediv}[name]

    def dispatch(input, other, *args, **kwargs):
        if type(input) in SPARSE_TYPES or type(other) in SPARSE_TYPES:
            alpha = kwargs.pop("alpha", 1)
            if args or kwargs:
                raise NotImplementedError(f"{name}: options {args or kwargs} are not supported "
                                          f"with a sparse tensor in kiln")
            return apply(input, other * alpha if alpha != 1 else other)
        return fn(input, other, *args, **kwargs)
    return functools.update_wrapper(dispatch, fn)


def values_repr(values: Tensor, indent: int) -> tuple:
    """A sparse tensor's values as its repr shows them, and the suffixes that go after the
    size: the dtype (said once, not inside the values) and the device."""
    text = repr(values)
    dtype = f", dtype={values.dtype!r}"
    suffixes = []
    if text.endswith(dtype + ")"):
        text = text[:-len(dtype) - 1] + ")"
        suffixes.append(dtype[2:])
    device = f", device='{values.device}'"
    if device in text:
        text = text.replace(device, "")
        suffixes.insert(0, device[2:])
    return text.replace("\n", "\n" + " " * indent), suffixes


def with_suffixes(body: str, suffixes: list, indent: int, force_newline=False) -> str:
    """`body, suffix, ...)`, a suffix starting a new line where it would pass 80 columns (the
    way PyTorch lays out a sparse tensor's repr)."""
    out, width = [body], len(body) - body.rfind("\n") + 1
    for suffix in suffixes:
        if force_newline or width + len(suffix) + 2 > 80:
            out.append(",\n" + " " * indent + suffix)
            width, force_newline = indent + len(suffix), False
        else:
            out.append(", " + suffix)
            width += len(suffix) + 2
    return "".join(out) + ")"


def _scalar_divisor(op: str, other) -> None:
    if isinstance(other, Tensor) and (other.ndim or other.is_sparse):
        raise RuntimeError(f"{op}: Sparse division requires a scalar or zero-dim dense tensor "
                           f"divisor (got shape {list(other.shape)} for divisor)")


def make(indices: Tensor, values: Tensor, shape, coalesced: bool) -> SparseTensor:
    """A sparse tensor of these indices and values (no checks: the caller's are valid)."""
    t = Tensor._make(_NoDenseMemory(tuple(int(s) for s in shape), values._data.dtype),
                     values.dtype, values.device, SparseTensor)
    t._leaf = t._leaf_idx = t._sink = t._spread = None
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
    values = values if isinstance(values, Tensor) else tensor(values)
    if values.requires_grad and values.grad_fn is None:
        values = values.view(tuple(values.shape))    # S is not a leaf: its grad reaches values
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
    out = make(indices, values, size, coalesced=bool(is_coalesced) or nnz <= 1)
    return out.requires_grad_() if requires_grad else out


def to_sparse(self: Tensor, sparse_dim=None, *, layout=None, blocksize=None,
              dense_dim=None) -> SparseTensor:
    """The nonzero entries of a dense tensor (all dims sparse unless sparse_dim says fewer)."""
    if layout is not None and layout is not sparse_coo:
        from kiln.tracer.sparse_compressed import to_layout
        return to_layout(self, layout)
    sparse_dim = self.ndim if sparse_dim is None else int(sparse_dim)
    if not 0 < sparse_dim <= self.ndim:
        raise RuntimeError(f"to_sparse: sparse_dim must be in [1, {self.ndim}], got "
                           f"{sparse_dim}")
    nonzero = self != 0
    if sparse_dim < self.ndim:
        nonzero = nonzero.flatten(sparse_dim).any(-1)
    indices = nonzero.nonzero().t()
    values = self[tuple(indices)] if indices.shape[1] else \
        self.new_zeros((0,) + tuple(self.shape[sparse_dim:]))
    return make(indices, values, self.shape, coalesced=True)


# ----------------------------------------------------------------------------- products

def mm(a, b) -> Tensor:
    """kiln.mm, matmul, @ and spmm: sparse_mm's product; a sparse leaf that requires grad gets
    PyTorch's dense gradient (G @ b.T, every position, not only its pattern)."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        return to_sparse(sparse_mm(a, b.to_dense()))
    if isinstance(a, SparseTensor):
        sink = a._dense_grad_sink()
        return sparse_mm(a, b) if sink is None else \
            _DenseGrad.apply(sparse_mm(a.detach(), b), sink, b, True)
    sink = b._dense_grad_sink()
    return sparse_mm(a, b) if sink is None else \
        _DenseGrad.apply(sparse_mm(a, b.detach()), sink, a, False)


class _DenseGrad(Function):
    """The product, unchanged; backward hands the sparse leaf's dense stand-in (`_sink`) the
    gradient PyTorch's mm gives a sparse operand: G @ b.T for S @ b, a.T @ G for a @ S (the
    other operand's gradient comes through the product itself)."""

    @staticmethod
    def forward(ctx, product, sink, other, sparse_first):
        ctx.save_for_backward(other)
        ctx.sparse_first = sparse_first
        return product.clone()

    @staticmethod
    def backward(ctx, grad):
        other, = ctx.saved_tensors
        if ctx.sparse_first:                # S @ b: G @ b.T (an outer product for a vector)
            g = grad.unsqueeze(-1) * other if other.ndim == 1 else grad @ other.t()
        else:                               # a @ S: a.T @ G
            g = other.unsqueeze(-1) * grad if other.ndim == 1 else other.t() @ grad
        return grad, g, None, None


def sparse_mm(a, b) -> Tensor:
    """torch.sparse.mm: sparse @ dense, dense @ sparse (dense results) and sparse @ sparse
    (sparse), for matrices; a 1-D dense operand is a vector, as in matmul. The gradient for a
    sparse operand is its values' (masked to its pattern)."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        return to_sparse(sparse_mm(a, b.to_dense()))
    sparse, dense = (a, b) if isinstance(a, SparseTensor) else (b, a)
    if sparse.ndim != 2 or sparse.dense_dim():
        raise RuntimeError(f"mm: a sparse operand must be a 2-D matrix with no dense dims, got "
                           f"{list(sparse.shape)}")
    if dense.ndim == 1:
        if sparse is a:
            return sparse_mm(a, dense.unsqueeze(-1)).squeeze(-1)
        return sparse_mm(dense.unsqueeze(0), b).squeeze(0)
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
    """sparse + sparse is sparse (entries concatenated, then coalesced); dense + sparse is
    dense; sparse + dense PyTorch refuses, and so does kiln."""
    if isinstance(a, SparseTensor) and isinstance(b, SparseTensor):
        if tuple(a.shape) != tuple(b.shape):
            raise RuntimeError(f"add: sparse tensors of different sizes {list(a.shape)} and "
                               f"{list(b.shape)}")
        return concatenated(a, b).coalesce()
    if isinstance(a, SparseTensor):
        raise RuntimeError("add(sparse, dense) is not supported. Use add(dense, sparse) "
                           "instead.")
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
        return _intersection_product(a, other)
    if isinstance(other, Tensor) and other.ndim:
        if a.dense_dim():
            raise NotImplementedError("sparse (with dense dims) * tensor is not supported in "
                                      "kiln")
        full = other.expand(tuple(a.shape))
        return make(a._idx, a._vals * full[tuple(a._idx)], a.shape, a._coalesced)
    return make(a._idx, a._vals * other, a.shape, a._coalesced)


def _intersection_product(a: SparseTensor, b: SparseTensor) -> SparseTensor:
    """sparse * sparse: the positions both store, each the product of the two entries."""
    if tuple(a.shape) != tuple(b.shape) or a.sparse_dim() != b.sparse_dim():
        raise RuntimeError(f"mul: sparse tensors of different sizes {list(a.shape)} and "
                           f"{list(b.shape)}")
    a, b = a.coalesce(), b.coalesce()
    keys_a, keys_b = a._flat_index(), b._flat_index()
    from kiln.tracer.functional_extra import searchsorted
    place = searchsorted(keys_b, keys_a).clamp(max=max(b._nnz() - 1, 0))
    both = keys_b.index_select(0, place) == keys_a if b._nnz() else keys_a != keys_a
    mine, theirs = both.nonzero().reshape(-1), place[both]
    return make(a._idx.index_select(1, mine),
                a._vals.index_select(0, mine) * b._vals.index_select(0, theirs), a.shape,
                coalesced=True)


def sparse_mask(self: Tensor, mask) -> Tensor:
    """dense.sparse_mask(mask): the dense tensor's values at the mask's entries, in the mask's
    layout and order (differentiable in the dense tensor)."""
    if isinstance(mask, SparseTensor):
        if tuple(mask.shape) != tuple(self.shape):
            raise RuntimeError(f"sparse_mask(): operands have incompatible sizes; self has "
                               f"size {list(self.shape)} but mask has size "
                               f"{list(mask.shape)}")
        return make(mask._idx, self[tuple(mask._idx)], mask.shape, mask._coalesced)
    coo_twin = getattr(mask, "_coo", None)
    if coo_twin is None:
        raise RuntimeError(f"sparse_mask(): expected a sparse mask, got layout {mask.layout}")
    if tuple(mask.shape) != tuple(self.shape):
        raise RuntimeError(f"sparse_mask(): operands have incompatible sizes; self has size "
                           f"{list(self.shape)} but mask has size {list(mask.shape)}")
    return mask._with_values(self[tuple(coo_twin._idx)])


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


def softmax(input: SparseTensor, dim: int, *, dtype=None, log: bool = False) -> SparseTensor:
    """torch.sparse.softmax / log_softmax: over the stored entries along `dim` (the others
    count as -inf), the pattern kept (coalesced)."""
    op = "log_softmax" if log else "softmax"
    if not isinstance(input, SparseTensor):
        raise TypeError(f"sparse.{op}: expected a sparse COO tensor, got {type(input).__name__}")
    if input.dense_dim():
        raise NotImplementedError(f"sparse.{op} of a tensor with dense dims is not supported "
                                  f"in kiln")
    if not -input.ndim <= dim < input.ndim:
        raise IndexError(f"sparse.{op}: dim {dim} out of range for a {input.ndim}-D tensor")
    c = input.coalesce()
    values = c._vals if dtype is None else c._vals.to(dtype)
    dim %= input.ndim
    rest = [d for d in range(input.ndim) if d != dim]   # an entry's group: its other indices
    group = c._idx.new_zeros(c._nnz())
    for d in rest:
        group = group * input.shape[d] + c._idx[d]
    from kiln.tracer.functional_extra.counting import unique
    _, group = unique(group, sorted=True, return_inverse=True)
    count = int(group.amax().item()) + 1 if c._nnz() else 0
    top = values.detach().new_full((count,), -math.inf).scatter_reduce(
        0, group, values.detach(), "amax").index_select(0, group)
    shifted = values - top
    sums = shifted.exp().new_zeros(count).index_add(0, group, shifted.exp())
    out = shifted - sums.log().index_select(0, group) if log else \
        shifted.exp() / sums.index_select(0, group)
    return make(c._idx, out, input.shape, coalesced=True)


def spmm(a, b) -> Tensor:
    """torch.spmm: a sparse matrix times a dense one."""
    return mm(a, b)
