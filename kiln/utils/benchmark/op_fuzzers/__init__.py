"""Ready-made Fuzzers for common op shapes, as torch.utils.benchmark.op_fuzzers: `unary`,
`binary` (with broadcasting) and `spectral` (FFT-friendly sizes)."""

from kiln.utils.benchmark.op_fuzzers import binary, spectral, unary  # noqa: F401
