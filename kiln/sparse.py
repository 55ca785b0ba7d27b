"""torch.sparse: functions on sparse COO tensors (see kiln.tracer.sparse for what they are)."""

from kiln.tracer.sparse import SparseTensor, spmm, sum  # noqa: F401
from kiln.tracer.sparse import sparse_mm as mm
from kiln.tracer.sparse import sparse_coo_tensor  # noqa: F401


def addmm(mat, mat1, mat2, *, beta=1, alpha=1):
    """beta * mat + alpha * (mat1 @ mat2), mat1 sparse (its gradient masked, as mm's)."""
    return mat * beta + mm(mat1, mat2) * alpha
