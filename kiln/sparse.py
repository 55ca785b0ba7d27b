"""torch.sparse: functions on sparse COO and compressed tensors (see kiln.tracer.sparse and
kiln.tracer.sparse_compressed for what they are)."""

from kiln.tracer.sparse import SparseTensor, spmm, sum  # noqa: F401
from kiln.tracer.sparse import sparse_mm as _coo_mm
from kiln.tracer.sparse import sparse_coo_tensor  # noqa: F401
from kiln.tracer.sparse import softmax as _softmax
from kiln.tracer.sparse_compressed import SparseCompressedTensor, to_layout


def mm(mat1, mat2):
    """A sparse matrix times a dense or sparse one; the gradient for a sparse operand is
    sparse, on its pattern; sparse results keep a compressed operand's layout."""
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
