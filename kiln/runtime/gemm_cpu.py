"""A C kernel for thin float32 products (few rows: an RNN's step `h @ W_hh.T`, its gradient
`dgates @ W_hh`, a small batch through a linear layer), run by the C backend's executor.

OpenBLAS gives such a product 60-70% of the speed it reaches on large ones: each call packs the
whole right operand (a 128x512 weight: 256 KB) for a few rows of left operand. This kernel
reads the right operand in place, row by row (it must be row-major: a transposed weight is made
contiguous once per program run, `ScheduleExecutor`), and keeps a block of 5 rows x 64 columns
of the result in 20 vector registers while it walks the inner dimension: measured 23-24 us for
20x128 @ 128x512 and 20x512 @ 512x128 against OpenBLAS's 32-38 us, one thread (AMD EPYC,
AVX-512); 1.3-1.8x at 4-32 rows over 128-784 inner and 512 columns. Where it is not faster
(fewer than 128 inner, columns not a multiple of 64: the narrow blocks and the tail are slow),
`takes` says no and BLAS runs the product.

The same kernel runs a convolution's forward product on one thread (`takes_windows`, called by
`runtime/numpy_backend.py`): a chunk of windows (any number of rows) times the weight, whose
64-column blocks (inner x 64 floats) stay in L2 while the rows stream through: 1.11-1.15x
OpenBLAS's speed over 72-1152 inner and 64 or 128 columns (AMD EPYC, AVX-512); with an inner
dimension of 2304 the block no longer fits and BLAS is as fast. Its twin reading the left
operand down its columns (`transposed_kernel`) gives the weight gradient's product, windows^T
times the output's gradient, per chunk: 1.2x OpenBLAS's speed on the 28x28 CNN's conv2.

Each element of the result is one sum over the inner dimension in order, with fused
multiply-adds (as BLAS's kernels use them): it differs from BLAS's blocked sums by rounding
only, as one BLAS differs from another.
"""

from __future__ import annotations

import ctypes
import functools

import numpy as np

from kiln.runtime.c_helpers import HelperKernels

# a product (m x k) @ (k x n) is taken when m <= MAX_ROWS, k >= MIN_INNER and n is a multiple
# of 64 (every column block is a full one of 4 vectors)
MAX_ROWS = 32
MIN_INNER = 128
# a convolution's windows (any rows) times its weight: k within these, n a multiple of 64
WINDOWS_MIN_INNER = 64
WINDOWS_MAX_INNER = 1280

SOURCE = r"""
#pragma GCC optimize("fp-contract=fast")

typedef float kiln_v16 __attribute__((vector_size(64), aligned(4)));

/* rows [0, MB) x columns [0, 64) of out = a @ b (A_AT: a[i * lda + k]) or of out = a^T @ b
   (A_AT: a[k * lda + i], `a` read down its columns: MB adjacent floats per k): MB x 4 vector
   accumulators over all of k */
#define KILN_BLOCK(NAME, MB, A_AT)                                                           \
static inline void NAME(const float *a, long lda, const float *b, long ldb, float *out,     \
                        long ldo, long k_len) {                                              \
    kiln_v16 acc[MB][4];                                                                     \
    for (int i = 0; i < MB; i++)                                                             \
        for (int j = 0; j < 4; j++) acc[i][j] = (kiln_v16){0};                               \
    for (long k = 0; k < k_len; k++) {                                                       \
        kiln_v16 bv[4];                                                                      \
        for (int j = 0; j < 4; j++) bv[j] = *(const kiln_v16 *)(b + k * ldb + 16 * j);      \
        for (int i = 0; i < MB; i++) {                                                       \
            kiln_v16 ai = (kiln_v16){0} + a[A_AT];                                           \
            for (int j = 0; j < 4; j++) acc[i][j] += ai * bv[j];                             \
        }                                                                                    \
    }                                                                                        \
    for (int i = 0; i < MB; i++)                                                             \
        for (int j = 0; j < 4; j++) *(kiln_v16 *)(out + i * ldo + 16 * j) = acc[i][j];      \
}
#define KILN_ROWS (i * lda + k)
#define KILN_COLUMNS (k * lda + i)
KILN_BLOCK(kiln_thin_block1, 1, KILN_ROWS)
KILN_BLOCK(kiln_thin_block2, 2, KILN_ROWS)
KILN_BLOCK(kiln_thin_block3, 3, KILN_ROWS)
KILN_BLOCK(kiln_thin_block4, 4, KILN_ROWS)
KILN_BLOCK(kiln_thin_block5, 5, KILN_ROWS)

typedef void (*kiln_thin_block)(const float *, long, const float *, long, float *, long, long);

KILN_BLOCK(kiln_tn_block1, 1, KILN_COLUMNS)
KILN_BLOCK(kiln_tn_block2, 2, KILN_COLUMNS)
KILN_BLOCK(kiln_tn_block3, 3, KILN_COLUMNS)
KILN_BLOCK(kiln_tn_block4, 4, KILN_COLUMNS)
KILN_BLOCK(kiln_tn_block5, 5, KILN_COLUMNS)

typedef void (*kiln_tn_block)(const float *, long, const float *, long, float *, long, long);

/* out (m x n, contiguous) = a (m x k, rows lda apart) @ b (k x n, rows ldb apart); n % 64 == 0 */
void kiln_thin_matmul_f32(const float *a, long lda, const float *b, long ldb, float *out,
                          long m, long k, long n) {
    static const kiln_thin_block blocks[6] = {0, kiln_thin_block1, kiln_thin_block2,
                                              kiln_thin_block3, kiln_thin_block4,
                                              kiln_thin_block5};
    for (long n0 = 0; n0 < n; n0 += 64)
        for (long m0 = 0; m0 < m; m0 += 5)
            blocks[m - m0 < 5 ? m - m0 : 5](a + m0 * lda, lda, b + n0, ldb, out + m0 * n + n0,
                                            n, k);
}

/* out (m x n, contiguous) = a^T @ b: a (k x m, rows lda apart), b (k x n, rows ldb apart);
   n % 64 == 0 */
void kiln_tn_matmul_f32(const float *a, long lda, const float *b, long ldb, float *out,
                        long m, long k, long n) {
    static const kiln_tn_block blocks[6] = {0, kiln_tn_block1, kiln_tn_block2, kiln_tn_block3,
                                            kiln_tn_block4, kiln_tn_block5};
    for (long n0 = 0; n0 < n; n0 += 64)
        for (long m0 = 0; m0 < m; m0 += 5)
            blocks[m - m0 < 5 ? m - m0 : 5](a + m0, lda, b + n0, ldb, out + m0 * n + n0, n, k);
}
"""


def _bind(lib) -> dict:
    fn = lib.kiln_thin_matmul_f32
    fn.argtypes = [ctypes.c_void_p, ctypes.c_long, ctypes.c_void_p, ctypes.c_long,
                   ctypes.c_void_p, ctypes.c_long, ctypes.c_long, ctypes.c_long]
    fn.restype = None
    tn = lib.kiln_tn_matmul_f32
    tn.argtypes = fn.argtypes
    tn.restype = None
    return {"thin_matmul": fn, "tn_matmul": tn}


_KERNELS = HelperKernels(SOURCE, _bind)

_F32 = np.dtype(np.float32)


def kernel():
    """The C function (a, lda, b, ldb, out, m, k, n: addresses and element counts; `b`'s rows
    contiguous, `out` C-contiguous, a product `takes` accepts), or None without a compiler."""
    fns = _KERNELS.functions()
    return None if fns is None else fns["thin_matmul"]


def transposed_kernel():
    """The C function (a, lda, b, ldb, out, m, k, n) computing out (m x n) = a^T @ b for an a
    of k rows of m values (a convolution's windows, read down their columns) and a b as
    `kernel`'s; or None without a compiler."""
    fns = _KERNELS.functions()
    return None if fns is None else fns["tn_matmul"]


@functools.lru_cache(maxsize=None)
def wide_vectors() -> bool:
    """Whether the CPU has the 64-byte vector registers (AVX-512F) the kernels' blocks are
    written for. Without them GCC splits each 64-byte operation piecewise and spills the 20
    accumulators: on an AMD EPYC with AVX2 only, 20-35x slower than OpenBLAS on every shape
    above. There `takes` and `takes_windows` say no and BLAS runs the products."""
    try:
        with open("/proc/cpuinfo") as f:
            return any(line.startswith("flags") and "avx512f" in line.split() for line in f)
    except OSError:
        return False


def takes(m: int, k: int, n: int) -> bool:
    """Whether a float32 product (m x k) @ (k x n) is one this kernel runs faster than BLAS."""
    return 0 < m <= MAX_ROWS and k >= MIN_INNER and n > 0 and n % 64 == 0 and wide_vectors()


def takes_windows(k: int, n: int) -> bool:
    """Whether a float32 product of many rows of k windows values by a (k x n) weight runs
    faster here than in BLAS (on one thread: the kernel runs on the calling thread); also
    the weight gradient's (k x n) product of the windows and the output's gradient
    (`transposed_kernel`)."""
    return WINDOWS_MIN_INNER <= k <= WINDOWS_MAX_INNER and n > 0 and n % 64 == 0 and \
        wide_vectors()


def thin_matmul(a: np.ndarray, b: np.ndarray, out: np.ndarray | None = None,
                packed: np.ndarray | None = None) -> np.ndarray | None:
    """`a @ b` of 2-D float32 arrays by the kernel, into `out` (a C-contiguous float32 array of
    the result's shape) when given, else a new array; None to decline (a product `takes`
    refuses, other dtypes or layouts, no C compiler). `b` must have contiguous rows (a
    transposed matrix: pass `packed`, its C-contiguous copy)."""
    if a.ndim != 2 or b.ndim != 2 or a.dtype != _F32 or b.dtype != _F32 or \
            a.shape[1] != b.shape[0] or not takes(a.shape[0], a.shape[1], b.shape[1]):
        return None
    if packed is not None:
        b = packed
    if b.strides[1] != 4 or b.strides[0] % 4 or (out is not None and (
            out.dtype != _F32 or out.shape != (a.shape[0], b.shape[1]) or
            not out.flags.c_contiguous)):
        return None
    fn = kernel()
    if fn is None:
        return None
    if a.strides[1] != 4 or a.strides[0] % 4:
        a = np.ascontiguousarray(a)
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), _F32)
    m, k = a.shape
    fn(a.ctypes.data, a.strides[0] // 4, b.ctypes.data, b.strides[0] // 4, out.ctypes.data, m,
       k, b.shape[1])
    return out


__all__ = ["MAX_ROWS", "MIN_INNER", "kernel", "takes", "takes_windows", "thin_matmul",
           "transposed_kernel", "wide_vectors"]
