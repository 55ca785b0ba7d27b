"""Known departures from PyTorch's OpInfo samples on complex64 tensors (every op, the complex64 mode).

As the other lists: `tests/test_opinfo.py` fails when an op not listed here departs from torch
in this mode, and when a listed one no longer does (then delete its line)."""

COMPARE = {}

KNOWN = {
    ('as_strided.partial_views', 'complex64'): (
        "n/a: the sample is a view at storage offset 10 of a larger tensor, read by absolute "
        "storage offsets; to_kiln copies only the view's elements"),
    ('chalf', 'complex64'): 'n/a: no complex32, so no Tensor.chalf (tests/api_exclusions.py)',
    ('cholesky', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers ta",
    ('geqrf', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take ",
    ('jiterator_2inputs_2outputs', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_4inputs_with_extra_args', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_binary_return_by_ref', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('jiterator_unary', 'complex64'): 'n/a: CUDA-only (torch.cuda.jiterator)',
    ('linalg.cholesky', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and sol",
    ('linalg.cholesky_ex', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and ",
    ('linalg.det', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers ",
    ('linalg.eigh', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers",
    ('linalg.eigvalsh', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and sol",
    ('linalg.householder_product', 'complex64'): "error: RuntimeError: linalg: kiln's factorizati",
    ('linalg.ldl_factor', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and s",
    ('linalg.ldl_factor_ex', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations an",
    ('linalg.ldl_solve', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and so",
    ('linalg.lu', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers t",
    ('linalg.lu_factor', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and so",
    ('linalg.lu_factor_ex', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and",
    ('linalg.matrix_rank.hermitian', 'complex64'): "error: RuntimeError: linalg: kiln's factoriza",
    ('linalg.pinv.hermitian', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations a",
    ('linalg.qr', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers t",
    ('linalg.slogdet', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solv",
    ('linalg.svd', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers ",
    ('logdet', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take",
    ('lu', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take rea",
    ('matrix_exp', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers ",
    ('ormqr', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take ",
    ('pca_lowrank', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers",
    ('qr', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take rea",
    ('svd', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers take re",
    ('svd_lowrank', 'complex64'): "error: RuntimeError: linalg: kiln's factorizations and solvers",
}
