"""Ready-made Fuzzers for common op shapes, as torch.utils.benchmark.op_fuzzers: `unary`,
`binary` (with broadcasting), `spectral` (FFT-friendly sizes), `sparse_unary` and
`sparse_binary` (COO tensors)."""

from kiln.utils.benchmark.op_fuzzers import (  # noqa: F401
    binary, sparse_binary, sparse_unary, spectral, unary)
