"""torch.sparse: functions on sparse COO and compressed tensors (see kiln.tracer.sparse and
kiln.tracer.sparse_compressed for what they are)."""

from kiln.tracer.creation import zero_gradient
from kiln.tracer.sparse import SparseTensor, spmm, sum  # noqa: F401
from kiln.tracer.sparse import sparse_mm as _coo_mm
from kiln.tracer.sparse import sparse_coo_tensor  # noqa: F401
from kiln.tracer.sparse import softmax as _softmax
from kiln.tracer.sparse_compressed import SparseCompressedTensor, sparse_csr, to_layout
from kiln.tracer.tensor import Tensor

# sparse.mm's reductions of a row's products; PyTorch also takes "max"/"min" for amax/amin
_REDUCTIONS = {"sum": "sum", "mean": "mean", "amax": "amax", "amin": "amin", "max": "amax",
               "min": "amin"}


def mm(mat1, mat2, reduce=None):
    """A sparse matrix times a dense or sparse one; the gradient for a sparse operand is
    sparse, on its pattern; sparse results keep a compressed operand's layout.

    With `reduce` (PyTorch's form for a CSR mat1 and a dense mat2): out[i, j] is the
    reduction ("sum", "mean", "amax", "amin") of mat1[i, k] * mat2[k, j] over the entries k
    stored in row i; a row without entries gives 0."""
    if reduce is not None:
        return _mm_reduce(mat1, mat2, reduce)
    layouts = [x.layout for x in (mat1, mat2) if isinstance(x, SparseCompressedTensor)]
    out = _coo_mm(*(x._coo if isinstance(x, SparseCompressedTensor) else x
                    for x in (mat1, mat2)))
    return to_layout(out, layouts[0]) if layouts and isinstance(out, SparseTensor) else out


def softmax(input, dim, *, dtype=None):
    """Softmax over the stored entries along dim (the others count as -inf)."""
    return _softmax(input, dim, dtype=dtype)


def log_softmax(input, dim, *, dtype=None):
    return _softmax(input, dim, dtype=dtype, log=True)


def addmm(mat, mat1, mat2, *, beta=1, alpha=1):
    """beta * mat + alpha * (mat1 @ mat2), mat1 sparse (its gradient masked, as mm's)."""
    return mat * beta + mm(mat1, mat2) * alpha


def _mm_reduce(mat1, mat2, reduce: str) -> Tensor:
    if not isinstance(mat1, SparseCompressedTensor) or mat1.layout is not sparse_csr:
        raise NotImplementedError(f"sparse.mm: reduce= takes a sparse CSR mat1, as PyTorch's, "
                                  f"got layout {mat1.layout}; convert it with .to_sparse_csr()")
    if isinstance(mat2, (SparseTensor, SparseCompressedTensor)):
        raise RuntimeError(f"sparse.mm: reduce= takes a dense (strided) mat2, got layout "
                           f"{mat2.layout}")
    if reduce not in _REDUCTIONS:
        raise RuntimeError(f"sparse.mm: reduce argument must be either sum, mean, amax or "
                           f"amin, got {reduce}")
    m, k = mat1.shape
    if mat2.ndim != 2 or mat2.shape[0] != k:
        raise RuntimeError(f"sparse.mm: expected mat2 of dimension 2 with {k} rows for mat1 of "
                           f"shape {list(mat1.shape)}, got shape {list(mat2.shape)}")
    if mat2.dtype is not mat1.dtype:
        raise RuntimeError(f"sparse.mm: expected mat2 of dtype {mat1.dtype.name} (mat1's), got "
                           f"{mat2.dtype.name}")
    n = mat2.shape[1]
    rows, cols = mat1._coo._idx[0], mat1._coo._idx[1]
    terms = mat2.index_select(0, cols) * mat1.values().unsqueeze(1)     # one row per entry
    out = terms.new_zeros((m, n))
    how = _REDUCTIONS[reduce]
    if how in ("amax", "amin"):
        return out.scatter_reduce(0, rows.unsqueeze(1).expand(-1, n), terms, how,
                                  include_self=False)
    out = out.index_add(0, rows, terms)
    if how == "mean":
        out = out / rows.bincount(minlength=m).clamp(min=1).to(out.dtype).unsqueeze(1)
    return out


def sampled_addmm(input, mat1, mat2, *, beta=1.0, alpha=1.0):
    """beta * input + alpha * (mat1 @ mat2) at the entries stored in the CSR matrix `input`
    (a CSR result of its pattern); only those dot products are computed. Gradients reach
    input's values and both dense matrices."""
    if not isinstance(input, SparseCompressedTensor) or input.layout is not sparse_csr:
        raise NotImplementedError(f"sampled_addmm: input must be a sparse CSR matrix, as "
                                  f"PyTorch's, got layout {input.layout}")
    for name, mat in (("mat1", mat1), ("mat2", mat2)):
        if isinstance(mat, (SparseTensor, SparseCompressedTensor)):
            raise RuntimeError(f"sampled_addmm: Expected {name} to have strided layout, but "
                               f"got {mat.layout}")
        if mat.ndim != 2:
            raise NotImplementedError(f"sampled_addmm: kiln's CSR matrices are 2-D, so {name} "
                                      f"must be a matrix, got shape {list(mat.shape)}")
    if mat1.dtype is not mat2.dtype or mat1.dtype is not input.dtype:
        raise RuntimeError(f"sampled_addmm: Expected input, mat1 and mat2 to have the same "
                           f"dtype, but got {input.dtype.name}, {mat1.dtype.name} and "
                           f"{mat2.dtype.name}")
    if mat1.shape[1] != mat2.shape[0]:
        raise RuntimeError(f"sampled_addmm: mat1 and mat2 shapes cannot be multiplied "
                           f"({mat1.shape[0]}x{mat1.shape[1]} and "
                           f"{mat2.shape[0]}x{mat2.shape[1]})")
    if (mat1.shape[0], mat2.shape[1]) != tuple(input.shape):
        raise RuntimeError(f"sampled_addmm: input of shape {list(input.shape)} does not match "
                           f"mat1 @ mat2 of shape {[mat1.shape[0], mat2.shape[1]]}")
    rows, cols = input._coo._idx[0], input._coo._idx[1]
    products = (mat1.index_select(0, rows) * mat2.t().index_select(0, cols)).sum(-1)
    values = products * alpha if alpha != 1 else products
    if beta != 0:
        values = values + (input.values() * beta if beta != 1 else input.values())
    else:         # input's values ignored (NaN included), as BLAS does; their gradient is 0
        values = zero_gradient(values, [input.values()])
    return input._with_values(values)

