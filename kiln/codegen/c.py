"""The C renderer: a `Kernel` description -> readable C with OpenMP, the native CPU backend.

A pointwise kernel is a loop nest over its output: the innermost loop walks contiguous memory
under `#pragma omp simd`, the outer ones are shared among threads with `#pragma omp parallel
for`. A loop whose index is tested against constants (a concatenation spelled as zero-padded
pieces) is cut there, one nest per piece with its tests decided (`_piece_bounds`).
A reduction kernel runs one row per outer iteration and walks the row once per reduction
level, then once more to write (as the Triton renderer's looped reductions do); a few long rows
are split among threads instead, each thread summing its part (OpenMP's `reduction` clause).
When the reduced dims lie around the row's (batch norm's N, H and W of NCHW), each walk is a
loop nest over them whose inner loop divides nothing (`_rindex_loops`); values read through a
gather are kept in a row scratch array for the later walks, and a write that needs no
last-level sum is done by the walk before.
Many short rows (a pooling window, a few classes) are unrolled instead: a loop nest over the
rows whose body is every pass written out element by element (`unrolled_reduction`).

Each op's C spelling lives in one table (`OPS`). float32 exp, log, tanh, erf and friends are
written out below as branch-free formulas (Cephes' polynomials) so that loops calling them
vectorize, accurate to a couple of float32 ulps; float64 calls the C library. float16 is loaded
into float, computed in float and rounded back on store and on casts; so is bfloat16, stored as
16-bit words (a float's high half: `kiln_bf16_load` shifts one into place, `kiln_bf16_store`
rounds to nearest even, a NaN kept a NaN, as ml_dtypes and PyTorch round). A number operand of
a half op is taken as eager takes it (`common.operand_literal`). So casts, stores and single ops
give eager's bits, while a fused chain of half ops, computed in float without rounding between
ops, differs from eager's per-op rounding by up to about one half ulp per op (as Inductor's
default); tests/test_compile_bfloat16.py compares with that tolerance. Integer division and
remainder round towards minus infinity and return 0 for a zero divisor, as NumPy does.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace

from kiln.codegen.common import (INFIX, Comments, RowPass, closure, compute_dtype,
                                 literal_dtype, operand_dtype, operand_literal, row_passes)
from kiln.codegen.kernel import (ELEM, ROW, BinOp, Compute, Const, Expr, Kernel, Literal, Load,
                                 LoweringError, Reduce, Store, Var, _linear_terms, add,
                                 contiguous_strides, floordiv, mod, mul, variables)
from kiln.codegen.scalar import Dialect, decompositions, function_body
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.ops import CHEAP, EXPENSIVE, PRIMITIVES
from kiln.ir.primitive import ScalarMath

# Work (elements times statements) below which a loop runs on one thread: starting a team
# costs a few microseconds, about what one thread does with this much work.
PARALLEL_MIN = 1 << 17
# The same, for kernels that run between matmuls. OpenBLAS's threads busy-wait for a long while
# after each matmul, so an OpenMP team started then waits for a core (on 2 cores a 50 us kernel
# took 4 ms): only kernels big enough to repay that get threads.
PARALLEL_MIN_NEAR_BLAS = 1 << 24
# the most stretches a pointwise loop is cut into, one loop nest each (see _piece_bounds)
PIECES_MAX = 16
# ... and the shortest stretch of an inner loop that is cut (a vector's worth)
PIECE_MIN = 8
# rows at least this many are shared among threads; fewer, longer rows are split instead
PARALLEL_ROWS = 8
# the longest inner loop of a pointwise kernel whose strided loads are staged (_staged_loads)
STAGE_LIMIT = 4096
# the elements a tile of the transposed form of a staged pointwise nest copies (see
# _transpose_tile: 32 channels x 128 positions of float, 16 KiB, stay in L1), and the fewest
# iterations of the inner loop a tile may hold
TILE_ELEMENTS = 4096
TILE_MIN = 16
# a reduction over leading dims accumulates this many rows side by side (see column_reduction)
COLUMN_BLOCK = 256
# fewer rows than COLUMN_BLOCK are still split into blocks of a multiple of this many rows, so
# that threads share them (64 channels: two blocks of 32)
COLUMN_SPLIT = 32
# rows up to this long keep expensive values for later passes in a scratch array on the stack
SCRATCH_LIMIT = 16384
# rows at most this long (a max-pool window, a softmax over a few classes) are unrolled: each
# pass becomes straight-line code per row, one statement per element at a constant offset
UNROLL_LIMIT = 16
# ... when there are at least this many rows, a vector's worth to walk side by side
UNROLL_MIN_ROWS = 16
# GCC 12 with AVX (-O2 or -O3 with -mavx, -mavx2 or -march=native; not -O1, not SSE only)
# miscompiles a row loop whose body is written out element by element when an element is
# selected from a load (`m ? c : x[row * 4 + j]`, a where or masked_fill): loop if-conversion
# makes the selected loads masked loads, and the vectorizer then gives every group of them the
# first group's mask, so kept elements read as 0 or as stray memory. A mask of any dtype does it
# (bool, int32, a float compared), e.g. `x = s.masked_fill(m != 0, c)` then
# `x.masked_fill((x == c).all(-1, keepdim=True), 0)` on 16x4 float64
# (tests/codegen/test_c_fuzz_regressions.py). The unrolled kernels that select a loaded element
# (`_selects_loaded_element`) are built without that pass; the others keep it, since without it
# no row loop with a select vectorizes (a max-pool's bias, ReLU and window max ran ~15x slower).
NO_IF_CONVERSION = "no-tree-loop-if-convert"
# GCC 12 with -fwrapv (which kiln's C needs: integers wrap as torch's do) miscompiles the
# straight-line vectorizer (SLP) on an unrolled row whose reduction keeps an integer maximum of
# values cast from booleans (`any`/`all` as max of (int32_t)(x != 0)): the rows it vectorizes
# that way, the loop's remainder or every row where the loop itself is not vectorized, get
# another element's truth value (tests/codegen/test_c_fuzz_regressions.py). Seen on AVX2 and
# SSE2 builds, not on AVX-512 ones. The unrolled kernels are built without that pass: their row
# loop is vectorized across rows by the loop vectorizer all the same, so only the remainder of
# fewer rows than a vector loses SLP.
NO_SLP = "no-tree-slp-vectorize"
# the shortest inner loop of a row's nest over its reduced dims (_rindex_loops): shorter
# trailing loops merge into one, their digits taken from its variable by shifts
NEST_INNER = 16


@dataclass(frozen=True)
class CKernel:
    """One rendered C function and what a module needs around it."""

    name: str               # the C function's name
    source: str             # its definition, with the header comment
    helpers: tuple          # helper functions it calls, to define once per module
    arg_dtypes: tuple       # dtype of each pointer argument: inputs, then outputs
    in_place: tuple = ()    # (output, input) pairs that may be given the same memory


# (bfloat16 is stored as its 16-bit words: `kiln_bf16_load` and `kiln_bf16_store` convert them)
C_TYPE = {dt.float16: "_Float16", dt.bfloat16: "uint16_t", dt.float32: "float",
          dt.float64: "double", dt.int32: "int32_t", dt.int64: "int64_t", dt.uint8: "uint8_t",
          dt.bool_: "bool", dt.int8: "int8_t", dt.int16: "int16_t", dt.uint16: "uint16_t",
          dt.uint32: "uint32_t", dt.uint64: "uint64_t"}


def storage_type(d: DType) -> str:
    """The C type of a buffer's elements: bool arrays are read and written as bytes, since GCC
    does not vectorize a loop that accesses `_Bool` memory (NumPy's bools are 0 or 1 bytes)."""
    return "uint8_t" if d is dt.bool_ else C_TYPE[d]


def ctype(d: DType) -> str:
    """The C type a value of dtype `d` is held in while computing (float16, bfloat16: float)."""
    return C_TYPE[compute_dtype(d)]


def stage_type(d: DType) -> str:
    """The C type of a staged copy of loaded values: the buffer's element type, except that
    bfloat16 is staged as the float it loads as (its 16-bit words are no C floating type)."""
    return "float" if d is dt.bfloat16 else storage_type(d)


# ----------------------------------------------------------------------------- op table

# Each entry: (rendered args, operand dtype as computed, the Compute statement) -> C expression.
# The statement gives the result's dtype and the attributes (`cast`, `arange`, `round`).

def _by_dtype(f32: str, f64: str, integer=None):
    """A unary math function: float32 and float64 spellings; integers pass through or fail."""
    def text(a, d, s):
        if d.is_floating_point:
            return f"{f64 if d is dt.float64 else f32}({a[0]})"
        if integer is None:
            raise LoweringError(f"{f32}: integer input is not generated")
        return integer(a)
    return text


# double ops the C library computes (more accurately than float32's formulas would)
LIBM_DOUBLE = {"erf": "erf", "log1p": "log1p", "tanh": "tanh"}


def _scalar(op: str, integer=None):
    """An op computed by its primitive's scalar math: kiln_<op>f for float; for double the C
    library's function where it has one, else kiln_<op>."""
    return _by_dtype(f"kiln_{op}f", LIBM_DOUBLE.get(op, f"kiln_{op}"), integer)


def _float_or(fn_float, fn_int):
    return lambda a, d, s: fn_float(a, d, s) if d.is_floating_point else fn_int(a, d, s)


def _no_int(op):
    def fail(a, d, s):
        raise LoweringError(f"{op} of {d.name} tensors is not generated in C")
    return fail


def _int_helper(name):
    def text(a, d, s):
        if d is dt.bool_:
            raise LoweringError(f"{name} of bool tensors is not generated in C")
        return f"kiln_{name}_i64({a[0]}, {a[1]})"
    return text


def _f(d: DType) -> str:
    """Suffix of a float helper for the compute dtype: kiln_floordivf vs kiln_floordiv."""
    return "" if d is dt.float64 else "f"


def _cast(a, d, s):
    if s.dtype is dt.bool_:
        return f"{a[0]} != 0"
    if s.dtype is dt.float16:
        return f"(float)(_Float16){a[0]}"      # round to half, keep computing in float
    if s.dtype is dt.bfloat16:                 # through float, as PyTorch converts
        return f"kiln_bf16_round((float){a[0]})"
    return f"({C_TYPE[s.dtype]}){a[0]}"        # narrowing integers wrap, as NumPy's


def _arange(a, d, s):
    start, step = s.attr("start"), s.attr("step")
    if isinstance(start, float) or isinstance(step, float):
        return f"({ctype(s.dtype)})({float(start)!r} + (double){a[0]} * {float(step)!r})"
    return f"({ctype(s.dtype)})({int(start)} + {a[0]} * {int(step)})"


def _round(a, d, s):
    if s.attr("decimals", 0):
        raise LoweringError("round with decimals is not generated in C")
    return _by_dtype("nearbyintf", "nearbyint", lambda a: a[0])(a, d, s)   # ties to even


OPS = {
    **{op: (lambda a, d, s, sym=sym: f"{a[0]} {sym} {a[1]}") for op, sym in INFIX.items()},
    "div": _float_or(lambda a, d, s: f"{a[0]} / {a[1]}", _no_int("div")),
    "floordiv": _float_or(lambda a, d, s: f"kiln_floordiv{_f(d)}({a[0]}, {a[1]})",
                          _int_helper("floordiv")),
    "mod": _float_or(lambda a, d, s: f"kiln_mod{_f(d)}({a[0]}, {a[1]})", _int_helper("mod")),
    "pow": lambda a, d, s: _pow(a, d),
    # NumPy's maximum/minimum: a NaN on either side wins
    "maximum": _float_or(
        lambda a, d, s: f"({a[0]} >= {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]}",
        lambda a, d, s: f"{a[0]} >= {a[1]} ? {a[0]} : {a[1]}"),
    "minimum": _float_or(
        lambda a, d, s: f"({a[0]} <= {a[1]} || {a[0]} != {a[0]}) ? {a[0]} : {a[1]}",
        lambda a, d, s: f"{a[0]} <= {a[1]} ? {a[0]} : {a[1]}"),
    # bool `|` as a sum: GCC 12 folds `(x == m) | (x != x)` of floats into one unordered
    # compare and then vectorizes no loop holding it ("no vectype" on the loop's first load)
    "bitwise_or": lambda a, d, s: f"({a[0]} + {a[1]} != 0)" if d is dt.bool_ else
    f"{a[0]} | {a[1]}",
    "where": lambda a, d, s: f"{a[0]} ? {a[1]} : {a[2]}",
    "neg": lambda a, d, s: f"!{a[0]}" if d is dt.bool_ else f"-{a[0]}",
    "bitwise_not": lambda a, d, s: f"!{a[0]}" if d is dt.bool_ else f"~{a[0]}",
    "abs": _float_or(_by_dtype("fabsf", "fabs"),
                     lambda a, d, s: a[0] if d is dt.bool_ else f"{a[0]} < 0 ? -{a[0]} : {a[0]}"),
    "relu": lambda a, d, s: f"{a[0]} <= 0 ? 0 : {a[0]}",     # NaN fails <= and passes
    # an op with scalar math (Primitive.scalar) needs no entry, unless integers differ
    "sign": _float_or(_scalar("sign"), lambda a, d, s: f"({a[0]} > 0) - ({a[0]} < 0)"),
    "exp": _by_dtype("kiln_expf", "exp"),
    "log": _by_dtype("kiln_logf", "log"),
    "expm1": _by_dtype("kiln_expm1f", "expm1"),
    "sqrt": _by_dtype("sqrtf", "sqrt"),
    "sin": _by_dtype("sinf", "sin"),
    "cos": _by_dtype("cosf", "cos"),
    "tan": _by_dtype("tanf", "tan"),
    "floor": _by_dtype("floorf", "floor", lambda a: a[0]),
    "ceil": _by_dtype("ceilf", "ceil", lambda a: a[0]),
    "trunc": _by_dtype("truncf", "trunc", lambda a: a[0]),
    "round": _round,
    "cast": _cast,
    # creation ops, and `index`: a kernel's integer index expression (arange's position)
    "full": lambda a, d, s: a[0],
    "arange": _arange,
    "index": lambda a, d, s: a[0],
}


def _pow(a, d):
    base, exponent = a
    try:
        e = float(exponent.rstrip("f"))
    except ValueError:
        if not d.is_floating_point:
            raise LoweringError("pow of integers with a tensor exponent is not generated") \
                from None
        return f"{'pow' if d is dt.float64 else 'powf'}({base}, {exponent})"
    if e == 1:
        return base
    if e == 2:
        return f"{base} * {base}"
    if e == 3:
        return f"{base} * {base} * {base}"
    if d.is_floating_point:
        return f"{'pow' if d is dt.float64 else 'powf'}({base}, {exponent})"
    if e == int(e) and 0 <= e <= 4:
        return " * ".join([base] * int(e)) if e else "1"
    raise LoweringError(f"pow of integers with exponent {exponent} is not generated")


# ----------------------------------------------------------------------------- helpers

# Defined once per module, only when a kernel uses them. The float32 ones are branch-free
# (selects instead of ifs), so the loops calling them vectorize.
HELPERS = {
    "kiln_bits": r'''
KILN_HELPER float kiln_from_bits(int32_t b) { float f; memcpy(&f, &b, 4); return f; }
KILN_HELPER int32_t kiln_to_bits(float f) { int32_t b; memcpy(&b, &f, 4); return b; }
''',
    "kiln_bf16": r'''
/* bfloat16 is a float's high half: a load shifts its word into place; a store rounds to
   nearest, ties to even (adding 0x7fff and the kept part's lowest bit carries into it exactly
   when the dropped half is above one half, or one half with the kept part odd), and a NaN
   becomes the quiet NaN of its sign, as ml_dtypes converts; overflow carries into inf */
KILN_HELPER float kiln_bf16_load(uint16_t h) {
    return kiln_from_bits((int32_t)((uint32_t)h << 16));
}
KILN_HELPER uint16_t kiln_bf16_store(float f) {
    const uint32_t b = (uint32_t)kiln_to_bits(f);
    const uint32_t rounded = (b + 0x7fffu + ((b >> 16) & 1u)) >> 16;
    const uint32_t nan = ((b >> 16) & 0x8000u) | 0x7fc0u;
    return (uint16_t)((b & 0x7fffffffu) > 0x7f800000u ? nan : rounded);
}
KILN_HELPER float kiln_bf16_round(float f) { return kiln_bf16_load(kiln_bf16_store(f)); }
''',
    "kiln_expf": r'''
/* exp(x): x = n ln2 + r with |r| <= ln2/2, exp(r) by Cephes' polynomial, times 2^n applied
   in two halves so that results down to the subnormals come out right */
KILN_HELPER float kiln_expf(float x) {
    float xc = x > 88.8f ? 88.8f : (x < -104.0f ? -104.0f : x);
    xc = x != x ? 0.0f : xc;
    float n = __builtin_rintf(xc * 1.44269504088896341f);
    float r = xc - n * 0.693359375f;
    r = r - n * -2.12194440e-4f;
    float p = 1.9875691500e-4f;
    p = p * r + 1.3981999507e-3f;
    p = p * r + 8.3334519073e-3f;
    p = p * r + 4.1665795894e-2f;
    p = p * r + 1.6666665459e-1f;
    p = p * r + 5.0000001201e-1f;
    float y = p * r * r + r + 1.0f;
    int32_t k = (int32_t)n;
    int32_t k1 = k >> 1, k2 = k - (k >> 1);
    y = y * kiln_from_bits((k1 + 127) << 23) * kiln_from_bits((k2 + 127) << 23);
    return x != x ? x : y;
}
''',
    "kiln_logf": r'''
/* log(x): x = m 2^e with m in [sqrt(1/2), sqrt(2)), log(m) by Cephes' polynomial in m - 1 */
KILN_HELPER float kiln_logf(float x) {
    int tiny = x < 1.17549435e-38f;                  /* subnormal: scale into the normals */
    int32_t bits = kiln_to_bits(tiny ? x * 8388608.0f : x);
    int32_t e = ((bits >> 23) & 0xff) - 126 - (tiny ? 23 : 0);
    float m = kiln_from_bits((bits & 0x007fffff) | 0x3f000000);     /* in [0.5, 1) */
    int low = m < 0.707106781186547524f;
    float f = low ? m + m - 1.0f : m - 1.0f;
    float fe = (float)(low ? e - 1 : e);
    float z = f * f;
    float y = 7.0376836292e-2f;
    y = y * f - 1.1514610310e-1f;
    y = y * f + 1.1676998740e-1f;
    y = y * f - 1.2420140846e-1f;
    y = y * f + 1.4249322787e-1f;
    y = y * f - 1.6668057665e-1f;
    y = y * f + 2.0000714765e-1f;
    y = y * f - 2.4999993993e-1f;
    y = y * f + 3.3333331174e-1f;
    y = y * f * z;
    y += -2.12194440e-4f * fe;
    y += -0.5f * z;
    float r = f + y + 0.693359375f * fe;
    r = x == 0.0f ? -INFINITY : r;
    r = x < 0.0f ? NAN : r;
    return (x == INFINITY || x != x) ? x : r;
}
''',
    "kiln_expm1f": r'''
/* exp(x) - 1: near 0 the exp polynomial without its leading 1, so nothing cancels */
KILN_HELPER float kiln_expm1f(float x) {
    float p = 1.9875691500e-4f;
    p = p * x + 1.3981999507e-3f;
    p = p * x + 8.3334519073e-3f;
    p = p * x + 4.1665795894e-2f;
    p = p * x + 1.6666665459e-1f;
    p = p * x + 5.0000001201e-1f;
    float small = p * x * x + x;
    float big = kiln_expf(x) - 1.0f;
    return (x < -0.34657359f || x > 0.34657359f) ? big : small;
}
''',
    "kiln_floordivf": r'''
/* NumPy's floor_divide and remainder for floats (npy_divmod): fmod, the remainder moved to
   the divisor's sign, the quotient snapped to the nearest integer */
#define KILN_DIVMOD(T, S)                                                          \
KILN_HELPER T kiln_floordiv##S(T a, T b) {                                       \
    if (b == 0) return a / b;                                                      \
    T mod = fmod##S(a, b), div = (a - mod) / b, q;                                 \
    if (mod != 0 && (b < 0) != (mod < 0)) div -= 1;                                \
    if (div != 0) { q = floor##S(div); if (div - q > 0.5) q += 1; }                \
    else q = copysign##S(0, a / b);                                                \
    return q;                                                                      \
}                                                                                  \
KILN_HELPER T kiln_mod##S(T a, T b) {                                            \
    T mod = fmod##S(a, b);                                                         \
    if (b == 0) return mod;                                                        \
    if (mod != 0) { if ((b < 0) != (mod < 0)) mod += b; }                          \
    else mod = copysign##S(0, b);                                                  \
    return mod;                                                                    \
}
KILN_DIVMOD(float, f)
KILN_DIVMOD(double, )
''',
    "kiln_floordiv_i64": r'''
/* integer floor division and remainder as NumPy computes them: towards minus infinity, 0 for
   a zero divisor, and no trap for INT_MIN / -1 (it wraps) */
KILN_HELPER int64_t kiln_floordiv_i64(int64_t a, int64_t b) {
    if (b == 0) return 0;
    if (b == -1) return -a;
    int64_t q = a / b;
    return (a % b != 0 && (a < 0) != (b < 0)) ? q - 1 : q;
}
KILN_HELPER int64_t kiln_mod_i64(int64_t a, int64_t b) {
    if (b == 0 || b == -1) return 0;
    int64_t r = a % b;
    return (r != 0 && (r < 0) != (b < 0)) ? r + b : r;
}
''',
}
HELPER_DEPS = {"kiln_bf16": ("kiln_bits",), "kiln_expf": ("kiln_bits",),
               "kiln_logf": ("kiln_bits",), "kiln_expm1f": ("kiln_expf",)}
# a call to one of these names needs the helper that defines it
_HELPER_OF = {"kiln_floordiv": "kiln_floordivf", "kiln_mod": "kiln_floordivf",
              "kiln_modf": "kiln_floordivf", "kiln_mod_i64": "kiln_floordiv_i64",
              "kiln_bf16_round": "kiln_bf16"}


# Primitives' scalar math (`Primitive.scalar`, spelled by kiln.codegen.scalar), as C functions
# over float (kiln_erff) and double (kiln_sign; the C library's where it has the function) on
# the base functions above.
def _c_where(c: str, a: str, b: str) -> str:
    return f"{c} ? {a} : {b}"


def _double_helper(op: str) -> str:
    return LIBM_DOUBLE.get(op, f"kiln_{op}")


C_FLOAT = Dialect({"exp": "kiln_expf", "log": "kiln_logf", "expm1": "kiln_expm1f",
                   "abs": "fabsf"}, lambda op: f"kiln_{op}f", _c_where, False,
                  lambda text: text + "f", "INFINITY")
C_DOUBLE = Dialect({"exp": "exp", "log": "log", "expm1": "expm1", "abs": "fabs"},
                   _double_helper, _c_where, False, lambda text: text, "INFINITY")


def _c_helper(name: str, rule: ScalarMath, ctype_: str, dialect: Dialect) -> str:
    params = ", ".join(f"{ctype_} {p}" for p in rule.params)
    body = [f"    {line};" for line in function_body(rule, dialect, declare=f"{ctype_} ")]
    return "\n".join([f"/* {rule.comment or name} */",
                      f"KILN_HELPER {ctype_} {name}({params}) {{"] + body + ["}"]) + "\n"


def scalar_helpers() -> None:
    """Add a helper (float and double) to HELPERS for every primitive with scalar math that
    has none yet, with the helpers it calls as its dependencies."""
    for op, rule in decompositions().items():
        for name, ctype_, dialect in ((f"kiln_{op}f", "float", C_FLOAT),
                                      (_double_helper(op), "double", C_DOUBLE)):
            if name in HELPERS or name in LIBM_DOUBLE.values():
                continue
            HELPERS[name] = source = _c_helper(name, rule, ctype_, dialect)
            HELPER_DEPS[name] = tuple(h for h in HELPERS if h != name and f"{h}(" in source)


scalar_helpers()

# Helpers are always inlined: in a module of many kernels calling them (an LSTM's 35 gate
# kernels call sigmoid and tanh 5 times each) GCC's inlining limits otherwise leave them calls,
# and the loops around them scalar (110 us a gate kernel instead of 12).
PREAMBLE = """\
#include <math.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#define KILN_HELPER static inline __attribute__((always_inline))
"""


def _close_helpers(used) -> list:
    out: list = []

    def add(h):
        for dep in HELPER_DEPS.get(h, ()):
            add(dep)
        if h not in out:
            out.append(h)
    for h in used:
        add(h)
    return out


def c_module(kernels: list, title: str = "kiln kernels") -> str:
    """One translation unit: includes, the helpers the kernels use, then the kernels."""
    used = [h for k in kernels for h in k.helpers]
    parts = [f"/* {title}: generated by kiln, one function per fused kernel */", PREAMBLE]
    for h in _close_helpers(used):
        parts.append(HELPERS[h].strip("\n") + "\n")
    parts += [k.source for k in kernels]
    return "\n".join(parts)


# ----------------------------------------------------------------------------- rendering

def render_c(kernel: Kernel, name: str | None = None, parallel_min: int = PARALLEL_MIN,
             in_place: dict | None = None, linkage: str = "") -> CKernel:
    """C source for `kernel`: one function taking a pointer per input, then per output.

    Args:
        parallel_min: work (elements x statements) from which loops are multi-threaded.
        in_place: output index -> input index, for outputs the caller would like to write over
            that input (an updated parameter). Pairs where the kernel reads the input only at
            the position it writes are kept (`CKernel.in_place`): their two pointers lose
            `restrict` and the output is stored after everything else is read.
        linkage: what the definition starts with (`static __attribute__((noinline)) ` for
            the code several kernels share, `render_shared_call`).

    Raises:
        LoweringError: an op or dtype this renderer does not spell; run the group otherwise.
    """
    pairs = tuple((o, i) for o, i in (in_place or {}).items() if _writes_over(kernel, o, i))
    r = _Renderer(kernel, parallel_min, pairs)
    name = name or kernel.name
    r.rows_function = f"{name}_rows"
    body = r.reduction() if kernel.is_reduction else r.pointwise()
    shared = {i for _, i in pairs} | {len(kernel.inputs) + o for o, _ in pairs}
    qualifiers = [" *" if k in shared else " *restrict "
                  for k in range(len(kernel.inputs) + len(kernel.outputs))]
    params = [f"const {storage_type(b.dtype)}{q}{p}"
              for b, p, q in zip(kernel.inputs, r.params, qualifiers)]
    params += [f"{storage_type(b.dtype)}{q}{p}"
               for b, p, q in zip(kernel.outputs, r.params[len(kernel.inputs):],
                                  qualifiers[len(kernel.inputs):])]
    kind = (f"{kernel.numel} rows x {kernel.reduced_numel}" if kernel.is_reduction
            else f"{kernel.numel} elements")
    header = [f"/* {name}: {kind}, from graph {kernel.source_graph!r}",
              " *   in:  " + ", ".join(map(str, kernel.inputs)),
              " *   out: " + ", ".join(map(str, kernel.outputs)) + " */"]
    rows_part = []
    passes_off = ([NO_SLP] if r.unrolled else []) + \
        ([NO_IF_CONVERSION] if r.unrolled and _selects_loaded_element(kernel) else [])
    quoted = ", ".join(f'"{name}"' for name in passes_off)
    attributes = f"__attribute__((optimize({quoted}))) " if passes_off else ""
    if r.rows_body is not None:
        # not inlined: GCC 12 spends minutes on a long unrolled body inside an OpenMP team's
        # outlined function, and seconds on the same body in a function of its own
        rows_part = [f"/* rows lo <= {r.rows_body[0]} < hi of {name}, for one thread */",
                     f"static __attribute__((noinline)) {attributes}void {r.rows_function}("
                     f"{', '.join(params + ['const int64_t lo', 'const int64_t hi'])}) {{"]
        rows_part += _indent(r.rows_body[1]) + ["}", ""]
    lines = header + rows_part + [f"{linkage}{attributes}void {name}({', '.join(params)}) {{"] + \
        _indent(body) + ["}", ""]
    arg_dtypes = tuple(b.dtype for b in kernel.inputs + kernel.outputs)
    return CKernel(name, "\n".join(lines), tuple(r.helpers), arg_dtypes, pairs)


def render_shared_call(code: CKernel, name: str, shifts: tuple, note: str) -> CKernel:
    """A kernel `name` that runs the shared function `code` (`render_c` of a kernel's
    `shared_form`, under `SHARED_LINKAGE`) with input k's pointer moved by `shifts[k]`
    elements; `note` says which step's kernel it is."""
    head = re.search(rf"\bvoid {re.escape(code.name)}\((.*?)\) {{", code.source).group(1)
    params = head.split(", ")
    args = [p.rsplit(" ", 1)[1].lstrip("*") for p in params]   # `float *out3_ptr`: out3_ptr
    args = [f"{a} + {k}" if k else a for a, k in zip(args, shifts + (0,) * len(args))]
    moved = ", ".join(f"in{i} by {k}" for i, k in enumerate(shifts) if k)
    lines = [f"/* {name}: {note}: {code.name}" + (f", inputs moved ({moved} elements)"
                                                  if moved else "") + " */",
             f"void {name}({head}) {{", f"    {code.name}({', '.join(args)});", "}", ""]
    return CKernel(name, "\n".join(lines), code.helpers, code.arg_dtypes, code.in_place)


SHARED_LINKAGE = "static __attribute__((noinline)) "


def _writes_over(kernel: Kernel, out: int, inp: int) -> bool:
    """Whether output `out` may be stored over input `inp`: same shape and dtype, and every load
    of the input at exactly the offset the output is stored to (so each element is read, in
    the same iteration, before it is overwritten)."""
    a, b = kernel.inputs[inp], kernel.outputs[out]
    if a.shape != b.shape or a.dtype is not b.dtype:
        return False
    stores = [s for s in kernel.body if isinstance(s, Store) and s.buffer == out]
    return len(stores) == 1 and all(s.offset == stores[0].offset for s in kernel.body
                                    if isinstance(s, Load) and s.buffer == inp)


def _selects_loaded_element(kernel: Kernel) -> bool:
    """Whether a `where` of the kernel picks as one of its values an element it loads at an
    offset that moves with the row (`m ? c : x[row * 4 + j]`): the loads GCC 12 makes masked
    loads under if-conversion, the miscompiled case (NO_IF_CONVERSION). A value also read by
    the select's own test (ReLU, max) or one loaded once for every row (a pool's window
    ranks) is read whatever the mask."""
    per_element = {v.name for v in kernel.index_vars if v.scope == ELEM} | {"rindex"}
    moving = {s.dest for s in kernel.body if isinstance(s, Load) and s.scope == ELEM and
              variables(s.offset) - per_element}
    return any(isinstance(s, Compute) and s.op == "where" and
               any(a in moving for a in s.args[1:] if isinstance(a, str)) for s in kernel.body)


def _indent(lines: list, n: int = 1) -> list:
    pad = "    " * n
    return [pad + x if x else x for x in lines]


class _Renderer:
    def __init__(self, kernel: Kernel, parallel_min: int = PARALLEL_MIN, in_place: tuple = ()):
        self.k = kernel
        self.comments = Comments("//")
        self.parallel_min = parallel_min
        self.stored_over = {o for o, _ in in_place}     # outputs written over an input
        self.helpers: list = []
        self.params = []
        seen = set()
        for i, b in enumerate(kernel.inputs + kernel.outputs):
            p = f"{b.name}_ptr"
            if p in seen:
                p = f"arg{i}_ptr"
            seen.add(p)
            self.params.append(p)
        self.dtype_of = {s.dest: s.dtype for s in kernel.body if not isinstance(s, Store)}
        self.work = max(1, sum(isinstance(s, Compute) for s in kernel.body))
        self.loops = None           # a pointwise kernel's loop nest: (var, size, stride) each
        self.hoisted: dict = {}     # offset -> its C text, where parts are computed outside
        # an unrolled row's element being written: (j, {index var: its value there})
        self.unroll: tuple | None = None
        self.row_loops = None       # an unrolled reduction's loops over its rows, as self.loops
        self.row_loops_order = None     # ... in the order they are nested, the simd one last
        # a threaded unrolled reduction's rows run in a function of their own: its name, and
        # (the outer loop's variable, the function's body) once rendered
        self.rows_function = f"{kernel.name}_rows"
        self.rows_body: tuple | None = None
        self.unrolled = False       # the rows written out element by element (NO_IF_CONVERSION)
        self.elem_names = {s.dest for s in kernel.body
                           if not isinstance(s, Store) and s.scope == ELEM}
        # a row reduction's loop nest over its reduced dims (as self.loops), and the offset
        # tables of its byte gathers: lines before the row loop, and per staged load's
        # (buffer, offset) the C text reading its table
        self.rindex_loops = None
        self.stage_tables: list = []
        self.stage_offsets: dict = {}

    # -------------------------------------------------------------- pointwise
    def pointwise(self) -> list:
        """A loop nest over the output: one loop per dim some index uses, the rest merged."""
        shape = self.k.kept
        used = {v.name for v in self.k.index_vars}
        loops: list = []            # [var, size, stride]
        stride = math.prod(shape)
        for i, d in enumerate(shape):
            stride //= d if d else 1
            if d == 1:
                continue
            if f"x{i}" in used or not loops or loops[-1][0].startswith("x"):
                loops.append([f"x{i}" if f"x{i}" in used else f"g{i}", d, stride])
            else:                    # an unused dim joins the unused group before it
                loops[-1][1] *= d
                loops[-1][2] = stride
        if not loops:
            loops = [["g0", max(math.prod(shape), 1) if shape else 1, 1]]
        numel = self.k.numel
        parallel = numel * self.work >= self.parallel_min and (
            len(loops) > 1 or numel >= 2 * PARALLEL_ROWS)
        self.loops = [tuple(loop) for loop in loops]
        staged = self._staged_loads()
        tile = self._transpose_tile(staged)
        if tile:
            return self._tiled_pointwise(staged, tile, parallel)
        pieces = None if staged else self._piece_bounds()
        if pieces:
            var, cuts = pieces
            out = []
            for lo, hi in zip(cuts, cuts[1:]):
                out.append(f"/* {var} in [{lo}, {hi}): one piece, its selects decided */")
                self.comments.last = ()
                out += self._nest(_decide_piece(self.k.body, self._ranges(var, lo, hi)), [],
                                  parallel, {var: lo}, {var: hi}, in_team=parallel)
            # one team shares every piece's loops (the pieces write apart: no barrier between)
            return ["#pragma omp parallel", "{"] + _indent(out) + ["}"] if parallel else out
        return self._nest(self.k.body, staged, parallel)

    def _nest(self, body: tuple, staged: list, parallel: bool, start: dict | None = None,
              end: dict | None = None, in_team: bool = False) -> list:
        """The pointwise loop nest over `body`, each loop from `start` (default 0) to `end`
        (default its size); `in_team`: inside a parallel region, whose threads share the outer
        loop without waiting for each other at its end."""
        loops = self.loops
        start, end = start or {}, end or {}
        out = []
        for depth, (var, size, _) in enumerate(loops):
            inner = depth == len(loops) - 1
            pad = "    " * depth
            if depth == 0 and parallel:
                collapse = f" collapse({len(loops) - 1})" if len(loops) > 2 else ""
                head, wait = ("for", " nowait") if in_team else ("parallel for", "")
                out.append(f"#pragma omp {head} simd schedule(static){wait}" if inner else
                           f"#pragma omp {head}{collapse} schedule(static){wait}")
            elif inner:
                out.append(pad + "#pragma omp simd")
            out.append(pad + f"for (int64_t {var} = {start.get(var, 0)}; "
                       f"{var} < {end.get(var, size)}; {var}++)"
                       + (" {" if inner or (staged and depth == len(loops) - 2) else ""))
            if staged and depth == len(loops) - 2:
                ivar, isize, _ = loops[-1]
                for st in staged:
                    name = self._name(st.dest)
                    load = self._copy_load(st)
                    out += _indent([f"{ctype(st.dtype)} stage_{name}[{isize}];",
                                    "#pragma omp simd",
                                    f"for (int64_t {ivar} = 0; {ivar} < {isize}; {ivar}++)",
                                    f"    stage_{name}[{ivar}] = {load}"], depth + 1)
        lines = [f"const int64_t xindex = {self._linear_index()};"]
        # an output written over an input is stored once every load has been done
        last = [s for s in body if isinstance(s, Store) and s.buffer in self.stored_over]
        inner_var = loops[-1][0]
        for s in body:
            if s in staged:
                name = self._name(s.dest)
                lines.append(f"const {ctype(s.dtype)} {name} = stage_{name}[{inner_var}];")
            elif s not in last:
                lines += self._stmt(s)
        for s in last:
            lines += self._stmt(s)
        out += _indent(lines, len(loops))
        out.append("    " * (len(loops) - 1) + "}")
        if staged:
            out.append("    " * (len(loops) - 2) + "}")
        return out

    def _piece_bounds(self) -> tuple | None:
        """(loop variable, its cuts 0 = c0 < c1 < ... = size) when the kernel tests that loop's
        index against constants, as a concatenation spelled as a sum of zero-padded pieces
        does (a backward through slices: `x1 < 128`, `x1 >= 128 & x1 < 256`, ...): the nest is
        then written once per stretch between cuts, where every test is decided, every select
        gone and every `x1 % 128` a shifted `x1`, so the inner loop vectorizes. Else None.
        The innermost such loop is taken whose stretches all decide their tests; the inner
        loop only when each stretch is PIECE_MIN long or more (a conv's one-wide pad would
        make loops of one iteration). A test of another loop stays a select."""
        index = {s.dest: s.args[0].name for s in self.k.body if isinstance(s, Compute) and
                 s.op == "index" and isinstance(s.args[0], Var)}
        sizes = {var: size for var, size, _ in self.loops}
        cuts: dict = {}
        for s in self.k.body:
            if isinstance(s, Compute) and s.op in _DECIDED and s.args[0] in index and \
                    isinstance(s.args[1], Literal) and type(s.args[1].value) is int:
                var = index[s.args[0]]
                cut = s.args[1].value + (s.op in ("gt", "le"))
                if var in sizes and 0 < cut < sizes[var]:
                    cuts.setdefault(var, set()).add(cut)
        for var, _, _ in reversed(self.loops):
            if var in cuts and len(cuts[var]) < PIECES_MAX:
                bounds = [0] + sorted(cuts[var]) + [sizes[var]]
                if var == self.loops[-1][0] and min(
                        hi - lo for lo, hi in zip(bounds, bounds[1:])) < PIECE_MIN:
                    continue        # a conv's one-wide pad: loops too short to pay
                if all(_decided(self.k.body, self._ranges(var, lo, hi), var)
                       for lo, hi in zip(bounds, bounds[1:])):
                    return var, bounds
        return None

    def _ranges(self, var: str, lo: int, hi: int) -> dict:
        """Each loop variable's (least, greatest) value, `var`'s in [lo, hi)."""
        ranges = {v: (0, size - 1) for v, size, _ in self.loops}
        ranges[var] = (lo, hi - 1)
        ranges["xindex"] = (0, self.k.numel - 1)
        return ranges

    def _linear_index(self) -> str:
        """The element's flat index (`xindex`) from the pointwise nest's loop variables."""
        return " + ".join(var if stride == 1 else f"{var} * {stride}"
                          for var, _, stride in self.loops)

    def _copy_load(self, st: Load) -> str:
        """Staged `st`'s load (`ptr[offset]`) for its copy loop, where only the loop variables
        are defined: an offset that still reads `xindex` (a view's index math in a kernel
        computing one chain for outputs of two layouts: `xindex // 64` over loops of 16 and
        16) reads it as digits of those loops (`x1 // 4`)."""
        offset = nest_digits(st.offset, self.loops, self.k.numel, "xindex")
        return self._stmt(replace(st, offset=offset))[0].split(" = ", 1)[1]

    def _staged_loads(self) -> list:
        """The loads a pointwise loop nest first copies, one inner loop's worth, into a local
        array: those that stride along the inner loop when the kernel also reads or writes
        elements of another size (a conv's bias + ReLU reading the channels-last GEMM output
        in NCHW order and writing a byte mask for the backward). GCC vectorizes neither the
        strided load nor anything else in such a loop (scalar: 1.3 ms where NumPy takes 0.3);
        a loop of only the strided copy vectorizes, and so does the rest once it reads the
        copy contiguously (0.24 ms)."""
        loops = self.loops
        if len(loops) < 2 or loops[-1][1] > STAGE_LIMIT:
            return []
        inner = Var(loops[-1][0])
        sizes = {storage_type(st.dtype) for st in self.k.body if isinstance(st, (Load, Store))}
        staged = []
        for st in self.k.body:
            if not (isinstance(st, Load) and st.scope == ELEM) or st.dtype is dt.bool_:
                continue
            terms: dict = {}
            _linear_terms(loop_digits(st.offset, loops, self.k.numel), 1, terms)
            if abs(terms.get(inner, 0)) > 1 and len(sizes) > 1 and not any(
                    variables(t) & {inner.name} and t != inner for t in terms):
                staged.append(st)
        return staged

    def _transpose_tile(self, staged: list) -> int:
        """How many of the inner loop's iterations a tile of the transposed form holds (0: not
        that form): when every staged load reads contiguously along the loop around the inner
        one (a channels-last GEMM output read per channel), a tile of both loops is copied at
        once, reading whole runs of channels instead of one value per 128-byte line."""
        loops = self.loops
        if not staged or len(loops) < 2:
            return 0
        outer = Var(loops[-2][0])
        for st in staged:
            terms: dict = {}
            _linear_terms(loop_digits(st.offset, loops, self.k.numel), 1, terms)
            if terms.get(outer) != 1:
                return 0
        tile = min(TILE_ELEMENTS // loops[-2][1], loops[-1][1])
        return tile if tile >= TILE_MIN else 0

    def _tiled_pointwise(self, staged: list, tile: int, parallel: bool) -> list:
        """The pointwise loop nest with its two inner loops tiled: per tile of the inner loop,
        each staged load is copied for every iteration of the loop around it (that loop
        innermost: contiguous reads), then that loop runs over the tile, reading the copies
        contiguously along the inner loop (see _staged_loads)."""
        loops = self.loops
        (ovar, osize, _), (ivar, isize, _) = loops[-2], loops[-1]
        out = []
        for depth, (var, size, _) in enumerate(loops[:-2]):
            if depth == 0 and parallel:
                out.append(f"#pragma omp parallel for collapse({len(loops) - 1}) "
                           "schedule(static)")
            out.append("    " * depth + f"for (int64_t {var} = 0; {var} < {size}; {var}++)")
        if len(loops) == 2 and parallel:
            out.append("#pragma omp parallel for schedule(static)")
        pad = len(loops) - 2
        out.append("    " * pad + f"for (int64_t t_{ivar} = 0; t_{ivar} < {isize}; "
                   f"t_{ivar} += {tile}) {{")
        body = [f"const int64_t end_{ivar} = t_{ivar} + {tile} < {isize} ? "
                f"t_{ivar} + {tile} : {isize};"]
        copy = []
        for st in staged:
            name = self._name(st.dest)
            body.append(f"{ctype(st.dtype)} stage_{name}[{osize}][{tile}];")
            copy.append(f"    stage_{name}[{ovar}][{ivar} - t_{ivar}] = {self._copy_load(st)}")
        body += [f"for (int64_t {ivar} = t_{ivar}; {ivar} < end_{ivar}; {ivar}++) {{",
                 "    #pragma omp simd",
                 f"    for (int64_t {ovar} = 0; {ovar} < {osize}; {ovar}++) {{"]
        body += _indent(copy) + ["    }", "}"]
        body += [f"for (int64_t {ovar} = 0; {ovar} < {osize}; {ovar}++) {{",
                 "    #pragma omp simd",
                 f"    for (int64_t {ivar} = t_{ivar}; {ivar} < end_{ivar}; {ivar}++) {{"]
        inner = [f"const int64_t xindex = {self._linear_index()};"]
        last = [st for st in self.k.body if isinstance(st, Store) and
                st.buffer in self.stored_over]
        for st in self.k.body:
            if st in staged:
                name = self._name(st.dest)
                inner.append(f"const {ctype(st.dtype)} {name} = "
                             f"stage_{name}[{ovar}][{ivar} - t_{ivar}];")
            elif st not in last:
                inner += self._stmt(st)
        for st in last:
            inner += self._stmt(st)
        body += _indent(inner, 2) + ["    }", "}"]
        return out + _indent(body, pad + 1) + ["    " * pad + "}"]

    # -------------------------------------------------------------- reductions
    def reduction(self) -> list:
        # a threaded one needs a loop nest of two loops or more: its outer loop is shared
        # among threads, each calling a function with the rest (see unrolled_reduction)
        threaded = self.k.numel * self.k.reduced_numel * self.work >= self.parallel_min
        if self.k.reduced_numel <= UNROLL_LIMIT and self.k.numel >= UNROLL_MIN_ROWS and \
                (not threaded or sum(d != 1 for d in self.k.kept) >= 2) and \
                not any(isinstance(st, Reduce) and st.op == "argmax" for st in self.k.body):
            return self.unrolled_reduction()
        if self.k.numel > 1 and (self.k.reduced_leading or self._stores_across_rows()):
            return self.column_reduction()
        rows, n = self.k.numel, self.k.reduced_numel
        passes, row_stores = row_passes(self.k)
        big = rows * n * self.work >= self.parallel_min
        split_rows = big and rows >= PARALLEL_ROWS
        split_row = big and not split_rows and n * self.work >= self.parallel_min
        if not split_row:
            self.rindex_loops = self._rindex_loops()
            passes = self._merge_write_pass(passes)
        out = []
        if split_rows:
            out.append("#pragma omp parallel for schedule(static)")
        out.append(f"for (int64_t row = 0; row < {rows}; row++) {{")
        body = [f"const int64_t {v.name} = {_expr(v.expr())};"
                for v in self.k.index_vars if v.scope == ROW]
        if not split_row and n <= SCRATCH_LIMIT:
            passes, kept = self._keep_in_scratch(passes)
            for name in kept:
                body.append(f"{ctype(self.dtype_of[name])} scratch_{name}[{n}];"
                            "    /* computed once, read by a later pass */")
        for i, p in enumerate(passes):
            body += self._row_pass(i, p, split_row)
        for s in row_stores:
            body += self._stmt(s)
        out += _indent(body) + ["}"]
        return self.stage_tables + out

    def _rindex_loops(self) -> list | None:
        """A row's loop nest over the reduced dims, when an offset splits `rindex` into digits
        (batch norm's sums over N, H and W of an NCHW tensor: `rindex / 64`, `rindex % 64`):
        one loop per reduced dim some index uses, neighbouring unused dims merged, and the
        innermost loops merged until it is at least NEST_INNER long. Each pass then walks
        the row as those loops, its inner loop contiguous in the NCHW offsets and free of
        division; None when `rindex` is used whole (a trailing reduction: one flat loop)."""
        if not any(_splits(st.offset, "rindex") for st in self.k.body
                   if isinstance(st, (Load, Store)) and st.scope == ELEM) and not any(
                v.scope == ELEM for v in self.k.index_vars):
            return None
        named = {(v.divisor, v.size): v.name for v in self.k.index_vars if v.scope == ELEM}
        used = {v.name for v in self.k.index_vars if v.scope == ELEM}
        loops: list = []            # [var, size, stride]
        for i, (d, stride) in enumerate(zip(self.k.reduced, contiguous_strides(self.k.reduced))):
            if d == 1:
                continue
            name = named.get((stride, d)) or named.get((stride, 0))
            if name in used or not loops or loops[-1][0] in used:
                loops.append([name if name in used else f"g{i}", d, stride])
            else:                   # an unused dim joins the unused group before it
                loops[-1][1] *= d
                loops[-1][2] = stride
        while len(loops) > 1 and loops[-1][1] < NEST_INNER:
            var, size, stride = loops.pop()
            loops[-1] = [f"q{len(loops) - 1}", loops[-1][1] * size, stride]
        if len(loops) < 2:
            return None
        return [tuple(loop) for loop in loops]

    def _merge_write_pass(self, passes: list) -> list:
        """The last pass's element stores moved into the pass before it when they need none of
        that pass's reductions (batch norm's input gradient needs the first level of sums, not
        the bias gradient's sum of it): one walk over the row fewer. The last pass keeps its
        row values, for the row outputs."""
        if len(passes) < 2 or passes[-1].reductions or not passes[-1].stores or \
                not passes[-2].reductions:
            return passes
        last, prev = passes[-1], passes[-2]
        by_dest = {s.dest: s for s in self.k.body if not isinstance(s, Store)}
        need = closure(by_dest, [st.src for st in last.stores])
        late = {s.dest for s in last.before} | {s.dest for s in prev.reductions}
        if need & late:
            return passes
        want = {s.dest for s in prev.elem} | {s.dest for s in last.elem}
        merged = RowPass(prev.before, prev.reductions,
                         [s for s in self.k.body if getattr(s, "dest", None) in want],
                         prev.stores + last.stores)
        return passes[:-2] + [merged, RowPass(last.before, [], [], [])]

    def unrolled_reduction(self) -> list:
        """Short rows (a 2x2 or 4x4 pooling window and the masks its backward keeps): one
        loop over the rows whose body is each pass written out element by element, every
        element's index a constant added to the row's offsets. The passes share the element
        values they recompute (each is computed once per row, as `eJ_NAME`), and no
        `rindex / k % m` is left: the row-loop form ran such a kernel scalar through per-row
        offset arrays at 5x NumPy's time.

        With threads, the outer loop of the nest is shared among them, each iteration calling
        a function (`rows_body`) that runs the rest of the nest for its part of that loop."""
        rows, n = self.k.numel, self.k.reduced_numel
        passes, row_stores = row_passes(self.k)
        parallel = rows * n * self.work >= self.parallel_min and rows >= PARALLEL_ROWS
        self.unrolled = True
        out, body = self._row_nest(parallel)
        elem_vars = [v for v in self.k.index_vars if v.scope == ELEM]
        done: set = set()
        try:
            for i, p in enumerate(passes):
                for s in p.before:
                    body += self._stmt(s)
                if not p.has_loop:
                    continue
                what = ("reduce " + ", ".join(s.dest for s in p.reductions) if p.reductions
                        else "write")
                body.append(f"/* pass {i + 1}: {what}, {n} elements */")
                accs = []
                for j in range(n):
                    env = {"rindex": Const(j)}
                    for v in elem_vars:
                        env[v.name] = _substitute(v.expr(), env)
                    self.unroll = (j, env)
                    for s in p.elem:
                        if (s.dest, j) not in done:
                            done.add((s.dest, j))
                            body += self._stmt(s)
                    for k, s in enumerate(p.reductions):
                        v = self._name(s.src)
                        if j == 0:
                            accs.append([v] if s.op == "sum" else v)
                            continue
                        if s.op == "sum":
                            accs[k].append(v)
                            continue
                        prev, accs[k] = accs[k], f"a_{s.dest}_{j}"
                        body.append(f"const {ctype(s.dtype)} {accs[k]} = "
                                    f"{self._unrolled_step(s, prev, v)};")
                    for s in p.stores:
                        body += self._stmt(s)
                self.unroll = None
                for s, acc in zip(p.reductions, accs):
                    body += self._comment(s)
                    value = acc if s.op != "sum" else _numpy_sum(acc, self.k.reduced_leading)
                    if s.op == "max" and s.dtype.is_floating_point:
                        srcs = [self._unrolled_name(s.src, j) for j in range(n)]
                        # a count, not `||` or `|`: see OPS["bitwise_or"]
                        nan = " + ".join(f"({v} != {v})" for v in srcs)
                        value = f"{nan} ? NAN : {acc}"
                    body.append(f"const {ctype(s.dtype)} {self._name(s.dest)} = {value};")
        finally:
            self.unroll = None
        for s in row_stores:
            body += self._stmt(s)
        depth = sum(line.lstrip().startswith("for ") for line in out)
        nest = out + _indent(body, depth) + ["    " * (depth - 1) + "}"]
        if not parallel:
            return nest
        var, size, _ = self.row_loops_order[0]
        self.rows_body = (var, nest)
        args = ", ".join(self.params + [var, f"{var} + 1"])
        return ["#pragma omp parallel for schedule(static)",
                f"for (int64_t {var} = 0; {var} < {size}; {var}++)",
                f"    {self.rows_function}({args});"]

    def _row_nest(self, parallel: bool) -> tuple[list, list]:
        """The loops over an unrolled reduction's rows, and the start of the body: one loop per
        row coordinate, the innermost (`#pragma omp simd`) the one along which the most
        element bytes lie next to each other (a channels-last input's channel), so that its
        loads and stores vectorize; the others keep the rows' order."""
        rows = self.k.numel
        named = {(v.divisor, v.size): v.name for v in self.k.index_vars if v.scope == ROW}
        loops = []                  # (var, size, stride), one per kept dim but those of size 1
        for i, (d, stride) in enumerate(zip(self.k.kept, contiguous_strides(self.k.kept))):
            if d != 1:
                name = named.get((stride, d)) or named.get((stride, 0)) or f"g{i}"
                loops.append((name, d, stride))
        score = {name: 0 for name, _, _ in loops}
        for st in self.k.body:
            if isinstance(st, (Load, Store)) and st.scope == ELEM:
                terms: dict = {}
                _linear_terms(st.offset, 1, terms)
                for t, c in terms.items():
                    if abs(c) == 1 and isinstance(t, Var) and t.name in score:
                        score[t.name] += st.dtype.itemsize
        inner = max(reversed(loops), key=lambda loop: score[loop[0]]) if loops else None
        # one loop over every row (single-threaded: see reduction) when there is one row
        # coordinate, or when the inner one is the last and too short to fill a vector (an
        # NCHW 2x2 pool's 4 columns); its digits are then divisions of `row`
        if len(loops) < 2 or (not parallel and inner is loops[-1] and
                              inner[1] < UNROLL_MIN_ROWS):
            self.row_loops = self.row_loops_order = None
            return ["#pragma omp simd", f"for (int64_t row = 0; row < {rows}; row++) {{"], [
                f"const int64_t {v.name} = {_expr(v.expr())};"
                for v in self.k.index_vars if v.scope == ROW]
        order = [loop for loop in loops if loop is not inner] + [inner]
        out = []
        for depth, (name, size, _) in enumerate(order):
            pad = "    " * depth
            last = depth == len(order) - 1
            if last:
                out.append(pad + "#pragma omp simd")
            # with threads, the outer loop runs over the part given to the rows function
            start, stop = ("lo", "hi") if depth == 0 and parallel else ("0", size)
            out.append(pad + f"for (int64_t {name} = {start}; {name} < {stop}; {name}++)"
                       + (" {" if last else ""))
        row = " + ".join(name if stride == 1 else f"{name} * {stride}"
                         for name, _, stride in loops)
        # `row / 6` in an offset is then read off the loops too (`x1 * 384 + x2 * 6 + x3`)
        self.row_loops, self.row_loops_order = loops, order
        return out, [f"const int64_t row = {row};"]

    def _unrolled_name(self, ssa, j: int) -> str:
        """Element j's value of `ssa` in an unrolled row: `e{j}_{ssa}`, a prefix of its own. Not
        `v_{ssa}_{j}`: the lowering names a value recomputed at other coordinates `{ssa}_{k}`
        (a max-pool's window mask also stored as 9 slices reads `v61_1` .. `v61_9` at rindex
        0 .. 8 once per row), whose `v_v61_1` was element 1's name too: a C redefinition."""
        return f"e{j}_{ssa}" if ssa in self.elem_names else self._name(ssa)

    @staticmethod
    def _unrolled_step(s: Reduce, acc: str, v: str) -> str:
        """One step of an unrolled reduction: the running value after element `v`."""
        if s.op == "sum":
            return f"{acc} + {v}"
        if s.op == "prod":
            return f"{acc} * {v}"
        return f"{v} > {acc} ? {v} : {acc}"

    def _stores_across_rows(self) -> bool:
        """Whether an element output lies with neighbouring rows next to each other (a sum per
        channel of an NCHW gradient that is also written channels-last for the conv's GEMM):
        walking one row at a time would then write one element per cache line, over and over
        the whole output, so the kernel walks the rows side by side instead."""
        row_names = {v.name for v in self.k.index_vars if v.scope == ROW} | {"row"}
        for st in self.k.body:
            if not (isinstance(st, Store) and st.scope == ELEM):
                continue
            terms: dict = {}
            _linear_terms(st.offset, 1, terms)
            row = [abs(c) for t, c in terms.items() if variables(t) <= row_names]
            elem = [abs(c) for t, c in terms.items() if not variables(t) & row_names]
            if row and elem and min(row) < min(elem):
                return True
        return False

    def column_reduction(self) -> list:
        """A reduction over the leading dims (a bias gradient's sum over the batch).

        A row's elements lie `numel` apart, so walking one row at a time would touch a cache
        line per element. Instead each sweep walks memory in order, `rindex` outer and `row`
        inner, accumulating a block of rows side by side in arrays: one sweep per reduction
        level, the element outputs written by the first sweep that has what they need, then
        one loop over the rows for the row outputs. Blocks of rows are shared among threads.
        """
        rows, n = self.k.numel, self.k.reduced_numel
        passes, row_stores = row_passes(self.k)
        body = self.k.body
        by_dest = {s.dest: s for s in body if not isinstance(s, Store)}
        reductions = [s for s in body if isinstance(s, Reduce)]
        sweeps = [(p.reductions, list(p.stores)) for p in passes if p.reductions or p.stores]
        # a later sweep must not read what an output written over an input has overwritten
        if len(sweeps) > 1 and sweeps[-1][0] == [] and not any(
                st.buffer in self.stored_over for st in sweeps[-1][1]) and not any(
                isinstance(by_dest.get(d), Reduce)
                for d in closure(by_dest, [st.src for st in sweeps[-1][1]])):
            sweeps[0][1].extend(sweeps.pop()[1])      # element outputs needing no reduction
        big = rows * n * self.work >= self.parallel_min
        block = min(rows, COLUMN_BLOCK)
        if big and 2 * COLUMN_SPLIT <= rows <= COLUMN_BLOCK:
            # few rows (a bias gradient per channel): two blocks of them, shared among threads
            block = -(-rows // 2 // COLUMN_SPLIT) * COLUMN_SPLIT
        blocked = block < rows
        parallel = blocked and big
        lo, hi, at = ("c0", "c1", "row - c0") if blocked else ("0", str(rows), "row")
        row_vars = [f"const int64_t {v.name} = {_expr(v.expr())};"
                    for v in self.k.index_vars if v.scope == ROW]
        elem_vars = [f"const int64_t {v.name} = {_expr(v.expr())};"
                     for v in self.k.index_vars if v.scope == ELEM]

        # each offset split into a part per row, computed once per block into an array, and a
        # part per rindex, computed once per sweep step: no division in the inner loop
        row_names = {v.name for v in self.k.index_vars if v.scope == ROW} | {"row"}
        elem_names = {v.name for v in self.k.index_vars if v.scope == ELEM} | {"rindex"}
        split = {}                  # offset -> (row part, rindex part)
        for st in body:
            if isinstance(st, (Load, Store)) and st.offset not in split:
                parts = _split_offset(st.offset, row_names, elem_names)
                if parts is not None and variables(parts[0]) - {"row"}:
                    split[st.offset] = parts
        per_row = [f"int64_t row_offset{k}[{block}];" for k in range(len(split))]
        if split:
            per_row += [f"for (int64_t row = {lo}; row < {hi}; row++) {{"] + _indent(
                row_vars + [f"row_offset{k}[{at}] = {_expr(r)};"
                            for k, (r, _) in enumerate(split.values())]) + ["}"]
        per_step = elem_vars + [f"const int64_t step_offset{k} = {_expr(e)};"
                                for k, (_, e) in enumerate(split.values())] if split else []
        in_sweep = {off: f"row_offset{k}[{at}] + step_offset{k}"
                    for k, off in enumerate(split)}

        def compute(targets) -> list:
            """The statements the targets need, a finished reduction read from its array."""
            need = closure(by_dest, targets)
            lines = []
            for st in body:
                if getattr(st, "dest", None) not in need:
                    continue
                if isinstance(st, Reduce):
                    lines += self._comment(st)
                    lines.append(f"const {ctype(st.dtype)} {self._name(st.dest)} = "
                                 f"{_column_result(st, at)};")
                else:
                    lines += self._stmt(st)
            return lines

        out = list(per_row)
        for st in reductions:
            out += _column_accumulators(st, block, ctype(self.dtype_of[st.src]))
        for i, (group, stores) in enumerate(sweeps):
            if group:
                init = []
                for st in group:
                    init += _column_init(st, at, self.dtype_of[st.src])
                out += [f"for (int64_t row = {lo}; row < {hi}; row++) {{"] + _indent(init) + ["}"]
            what = ", ".join(["reduce " + ", ".join(st.dest for st in group)] * bool(group) +
                             ["write"] * bool(stores))
            self.hoisted = in_sweep
            inner = row_vars + elem_vars + compute([st.src for st in group + stores])
            for st in group:
                inner += _column_accumulate(st, self._name(st.src), at,
                                            self.dtype_of[st.src].is_floating_point)
            for st in stores:
                inner += self._stmt(st)
            self.hoisted = {}
            out += [f"/* sweep {i + 1}: {what} */",
                    f"for (int64_t rindex = 0; rindex < {n}; rindex++) {{"]
            out += _indent(per_step) + ["    #pragma omp simd",
                                        f"    for (int64_t row = {lo}; row < {hi}; row++) {{"]
            out += _indent(inner, 2) + ["    }", "}"]
        if row_stores:
            finish = row_vars + compute([st.src for st in row_stores])
            for st in row_stores:
                finish += self._stmt(st)
            out += ["/* finish each row */", f"for (int64_t row = {lo}; row < {hi}; row++) {{"]
            out += _indent(finish) + ["}"]
        if not blocked:
            return out
        head = ["#pragma omp parallel for schedule(static)"] if parallel else []
        head += [f"for (int64_t c0 = 0; c0 < {rows}; c0 += {block}) {{",
                 f"    const int64_t c1 = c0 + {block} < {rows} ? c0 + {block} : {rows};"]
        return head + _indent(out) + ["}"]

    def _staged_row_loads(self, p: RowPass) -> list:
        """The gathered loads a pass of a row's loop nest first copies, one inner loop's worth,
        into a local array (as `_staged_loads` does for pointwise nests), when the pass also
        reads or writes elements of another size: there is no byte gather instruction, and
        GCC vectorizes no loop that mixes a gather with bytes (a max-pool's window mask read
        per pixel by its backward); a loop of only the copies runs scalar and the rest,
        reading the copies contiguously, vectorizes. A pass of float gathers alone vectorizes
        as it is (a channels-last batch-norm input)."""
        if self.rindex_loops is None or self.rindex_loops[-1][1] > STAGE_LIMIT:
            return []
        gathers = [st for st in p.elem if isinstance(st, Load) and self._gathered(st)]
        sizes = {st.dtype.itemsize for st in p.elem + p.stores if isinstance(st, (Load, Store))}
        return gathers if len(sizes) > 1 or 1 in sizes else []

    def _stage_load(self, st: Load) -> str:
        """The C text loading staged `st` (`ptr[offset];`). A byte gather's copy loop runs
        scalar, its offset arithmetic (a max-pool mask's `h % 2 * 2 + w % 2` plane and `h / 2`,
        `w / 2` position) costing more than the load: the part that moves along the inner
        loop, the same for every row and outer step, is then read from a table made once
        before the rows."""
        load = self._stmt(st)[0].split(" = ", 1)[1]
        if st.dtype.itemsize != 1:
            return load
        key = (st.buffer, st.offset)
        if key not in self.stage_offsets:
            loops, n = self.rindex_loops, self.k.reduced_numel
            var, size, _ = loops[-1]
            env = {v.name: nest_digits(v.expr(), loops, n, "rindex") for v in self.k.index_vars
                   if v.scope == ELEM and v.name not in {x for x, _, _ in loops}}
            offset = _substitute(nest_digits(st.offset, loops, n, "rindex"), env)
            parts = _split_offset(offset, variables(offset) - {var}, {var})
            if parts is None:
                self.stage_offsets[key] = None
            else:
                table = f"stage_offset{len(self.stage_offsets)}"
                self.stage_tables += [
                    f"int64_t {table}[{size}];    /* where the byte gathers read, per {var} */",
                    f"for (int64_t {var} = 0; {var} < {size}; {var}++)",
                    f"    {table}[{var}] = {_expr(parts[1])};"]
                self.stage_offsets[key] = f"{_expr(parts[0])} + {table}[{var}]"
        if self.stage_offsets[key] is None:
            return load
        return f"{self.params[st.buffer]}[{self.stage_offsets[key]}];"

    def _gathered(self, st: Load) -> bool:
        """Whether a row pass reads load `st` other than contiguously (or at one place) along
        its inner loop: a stride, or a division or remainder of the inner loop's variable."""
        loops = self.rindex_loops or [("rindex", self.k.reduced_numel, 1)]
        inner = loops[-1][0]
        moving = {inner} | {v.name for v in self.k.index_vars if v.scope == ELEM and inner in
                            variables(nest_digits(v.expr(), loops, self.k.reduced_numel,
                                                  "rindex"))}
        offset = nest_digits(st.offset, loops, self.k.reduced_numel, "rindex")
        terms: dict = {}
        _linear_terms(offset, 1, terms)
        for t, c in terms.items():
            if variables(t) & moving and (t != Var(inner) or c != 1):
                return True
        return False

    def _keep_in_scratch(self, passes: list) -> tuple[list, list]:
        """Keep expensive element values (an exp, a tanh) that a later pass needs again in a
        per-row scratch array instead of recomputing them: softmax's write pass then reads
        exp(x - max) back rather than calling exp a second time.

        Values read through a gather (a channels-last input walked along NCHW rows, a pooling
        mask read per pixel) are kept too: a loop with a gather in it mostly stays scalar, one
        reading the scratch array vectorizes.

        Returns the passes, each with `elem` narrowed to what it still computes and `loads` /
        `saves` naming the values it reads from / writes to scratch, and the kept names.
        """
        by_dest = {s.dest: s for s in self.k.body if not isinstance(s, Store)}
        expensive: dict = {}

        def costly(name) -> bool:
            if name not in expensive:
                st = by_dest.get(name)
                expensive[name] = st is not None and st.scope == ELEM and (
                    isinstance(st, Compute) and (_cost(st.op) == EXPENSIVE or any(
                        costly(a) for a in st.args if isinstance(a, str))) or
                    isinstance(st, Load) and self._gathered(st))
            return expensive[name]

        computed: dict = {}          # name -> index of the first pass computing it
        kept: list = []
        out = []
        for i, p in enumerate(passes):
            targets = [s.src for s in p.reductions] + [s.src for s in p.stores]
            need, loads, stack = set(), [], [t for t in targets if isinstance(t, str)]
            while stack:
                name = stack.pop()
                st = by_dest.get(name)
                if st is None or st.scope != ELEM or name in need or name in loads:
                    continue
                if name in computed and costly(name):
                    loads.append(name)
                    if name not in kept:
                        kept.append(name)
                    continue
                need.add(name)
                if isinstance(st, Compute):
                    stack += [a for a in st.args if isinstance(a, str)]
            for name in need:
                computed.setdefault(name, i)
            out.append(RowPass(p.before, p.reductions, [s for s in p.elem if s.dest in need],
                               p.stores, loads=sorted(loads)))
        for name in kept:
            out[computed[name]].saves.append(name)
        return out, kept

    def _row_pass(self, i: int, p: RowPass, split: bool) -> list:
        n = self.k.reduced_numel
        out = []
        for s in p.before:
            out += self._stmt(s)
        if not p.has_loop:
            return out
        clauses = []
        finish = []
        for s in p.reductions:
            cd, acc = ctype(s.dtype), f"acc_{s.dest}"
            if s.op == "argmax":
                src = ctype(self.dtype_of[s.src])
                low = "-INFINITY" if self.dtype_of[s.src].is_floating_point else \
                    _int_min(self.dtype_of[s.src])
                out += [f"{src} {acc} = {low};", f"int64_t {acc}_at = 0;"]
                finish.append((s, f"{acc}_at"))
            elif s.op == "max" and s.dtype.is_floating_point:
                # NaN-propagating max: the max of the numbers, and whether a NaN was seen
                out += [f"{cd} {acc} = -INFINITY;", f"int {acc}_nan = 0;"]
                clauses += [f"max:{acc}", f"|:{acc}_nan"]
                finish.append((s, f"{acc}_nan ? NAN : {acc}"))
            else:
                ident = {"sum": "0", "prod": "1"}.get(s.op) or _int_min(s.dtype)
                out.append(f"{cd} {acc} = {ident};")
                clauses.append({"sum": "+", "prod": "*", "max": "max"}[s.op] + f":{acc}")
                finish.append((s, acc))
        argmax = any(s.op == "argmax" for s in p.reductions)
        what = ("reduce " + ", ".join(s.dest for s in p.reductions) if p.reductions
                else "write")
        out.append(f"/* pass {i + 1}: {what} */")
        reduction = "".join(f" reduction({c})" for c in _merge_clauses(clauses))
        pragma = None if argmax else (         # argmax: the first index wins, in order
            f"#pragma omp parallel for simd schedule(static){reduction}" if split else
            f"#pragma omp simd{reduction}")
        loops = self.rindex_loops or [("rindex", n, 1)]
        staged = self._staged_row_loads(p)
        inner_var, inner_size = loops[-1][:2]
        digits = []
        if self.rindex_loops is not None:
            digits.append("const int64_t rindex = " + " + ".join(
                var if stride == 1 else f"{var} * {stride}" for var, _, stride in loops) + ";")
        digits += [f"const int64_t {v.name} = {self._index(v.expr())};"
                   for v in self.k.index_vars if v.scope == ELEM and
                   v.name not in {var for var, _, _ in loops}]
        for depth, (var, size, _) in enumerate(loops):
            last = depth == len(loops) - 1
            pad = "    " * depth
            if last and staged:
                for st in staged:
                    load = self._stage_load(st)
                    out.append(pad + f"{stage_type(st.dtype)} stage_{st.dest}[{inner_size}];")
                    if st.dtype.itemsize > 1:
                        out.append(pad + "#pragma omp simd")
                    out.append(pad + f"for (int64_t {var} = 0; {var} < {size}; {var}++) {{")
                    out += _indent(digits + [f"stage_{st.dest}[{var}] = {load}"], depth + 1)
                    out.append(pad + "}")
            if last and pragma:
                out.append(pad + pragma)
            out.append(pad + f"for (int64_t {var} = 0; {var} < {size}; {var}++)" +
                       (" {" if last or (staged and depth == len(loops) - 2) else ""))
        inner = list(digits)
        for name in p.loads:
            inner.append(f"const {ctype(self.dtype_of[name])} {self._name(name)} = "
                         f"scratch_{name}[rindex];")
        for s in p.elem:
            if s in staged:
                inner.append(f"const {ctype(s.dtype)} {self._name(s.dest)} = "
                             f"stage_{s.dest}[{inner_var}];")
            else:
                inner += self._stmt(s)
        for name in p.saves:
            inner.append(f"scratch_{name}[rindex] = {self._name(name)};")
        for s in p.reductions:
            acc, v = f"acc_{s.dest}", self._name(s.src)
            if s.op == "sum":
                inner.append(f"{acc} += {v};")
            elif s.op == "prod":
                inner.append(f"{acc} *= {v};")
            elif s.op == "argmax":
                # NumPy's argmax: the first NaN wins, else the first largest value
                nan = f" || ({v} != {v} && {acc} == {acc})" \
                    if self.dtype_of[s.src].is_floating_point else ""
                inner.append(f"if ({v} > {acc}{nan}) {{ {acc} = {v}; {acc}_at = rindex; }}")
            else:
                inner.append(f"{acc} = {v} > {acc} ? {v} : {acc};")
                if s.dtype.is_floating_point:
                    inner.append(f"{acc}_nan |= {v} != {v};")
        for s in p.stores:
            inner += self._stmt(s)
        out += _indent(inner, len(loops)) + ["    " * (len(loops) - 1) + "}"]
        if staged:
            out.append("    " * (len(loops) - 2) + "}")
        for s, value in finish:
            out += self._comment(s)
            out.append(f"const {ctype(s.dtype)} {self._name(s.dest)} = {value};")
        return out

    # -------------------------------------------------------------- statements
    def _name(self, ssa) -> str:
        if isinstance(ssa, Literal):
            return _literal(ssa.value, None)
        if self.unroll is not None and ssa in self.elem_names:
            return self._unrolled_name(ssa, self.unroll[0])
        return f"v_{ssa}"

    def _comment(self, s) -> list:
        return self.comments(s)

    def _stmt(self, s) -> list:
        if isinstance(s, Load):
            ptr = self.params[s.buffer]
            value = f"{ptr}[{self._index(s.offset)}]"
            if s.dtype is dt.float16:
                value = f"(float){value}"
            elif s.dtype is dt.bfloat16:
                value = f"kiln_bf16_load({value})"
                self._use("kiln_bf16")
            return [f"const {ctype(s.dtype)} {self._name(s.dest)} = {value};"]
        if isinstance(s, Store):
            ptr = self.params[len(self.k.inputs) + s.buffer]
            value = self._name(s.src) if isinstance(s.src, str) else _literal(s.src, s.dtype)
            if s.dtype is dt.float16:
                value = f"(_Float16){value}"
            elif s.dtype is dt.bfloat16:
                value = f"kiln_bf16_store({value})"
                self._use("kiln_bf16")
            return [f"{ptr}[{self._index(s.offset)}] = {value};"]
        if isinstance(s, Reduce):
            raise AssertionError("reductions are rendered by the pass that accumulates them")
        comment = self._comment(s) if self.unroll is None or self.unroll[0] == 0 else []
        return comment + [f"const {ctype(s.dtype)} {self._name(s.dest)} = {self._compute(s)};"]

    def _use(self, helper: str) -> None:
        """Define `helper` in the module (once)."""
        if helper not in self.helpers:
            self.helpers.append(helper)

    def _index(self, e: Expr) -> str:
        """An index expression in C; in a loop nest, digits of xindex read from the loops."""
        if e in self.hoisted:
            return self.hoisted[e]
        if self.unroll is not None:
            e = _substitute(e, self.unroll[1])
        if self.row_loops is not None:
            e = loop_digits(e, self.row_loops, self.k.numel, "row")
        if self.rindex_loops is not None:
            e = nest_digits(e, self.rindex_loops, self.k.reduced_numel, "rindex")
        if self.loops is not None:
            e = loop_digits(e, self.loops, self.k.numel)
        return _expr(e)

    def _compute(self, s: Compute) -> str:
        spelling = OPS.get(s.op)
        if spelling is None and getattr(PRIMITIVES.get(s.op), "scalar", None) is not None:
            if f"kiln_{s.op}f" not in HELPERS:
                scalar_helpers()                 # a primitive defined after this module
            spelling = _scalar(s.op)
        if spelling is None:
            raise LoweringError(f"{s.op} has no C spelling (kiln.codegen.c.OPS) and no scalar "
                                f"math (Primitive.scalar)")
        args = []
        for i, a in enumerate(s.args):
            if isinstance(a, str):
                args.append(self._name(a))
            elif isinstance(a, Literal):
                args.append(_literal(operand_literal(s, a.value), literal_dtype(s, i)))
            else:
                args.append(self._index(a))
        text = spelling(args, compute_dtype(operand_dtype(s) or s.dtype), s)
        for call, h in [(h, h) for h in HELPERS] + list(_HELPER_OF.items()):
            if f"{call}(" in text:
                self._use(h)
        return text


def _cost(op: str) -> str:
    """An op's cost class (kernel-internal ops such as `index` are cheap)."""
    prim = PRIMITIVES.get(op)
    return prim.cost if prim is not None else CHEAP


# A column reduction's accumulators, one array per reduction for a block of rows: `acc` holds
# the running value, `_nan` whether a max saw a NaN, `_at` where an argmax found its value.
def _column_accumulators(st: Reduce, block: int, src_type: str) -> list:
    acc = f"acc_{st.dest}"
    if st.op == "argmax":
        return [f"{src_type} {acc}[{block}];", f"int64_t {acc}_at[{block}];"]
    lines = [f"{ctype(st.dtype)} {acc}[{block}];"]
    if st.op == "max" and st.dtype.is_floating_point:
        lines.append(f"int {acc}_nan[{block}];")
    return lines


def _column_init(st: Reduce, at: str, src: DType) -> list:
    acc = f"acc_{st.dest}[{at}]"
    if st.op == "argmax":
        low = "-INFINITY" if src.is_floating_point else _int_min(src)
        return [f"{acc} = {low};", f"acc_{st.dest}_at[{at}] = 0;"]
    if st.op == "max" and st.dtype.is_floating_point:
        return [f"{acc} = -INFINITY;", f"acc_{st.dest}_nan[{at}] = 0;"]
    return [f"{acc} = {({'sum': '0', 'prod': '1'}.get(st.op) or _int_min(st.dtype))};"]


def _column_accumulate(st: Reduce, v: str, at: str, floating: bool) -> list:
    acc = f"acc_{st.dest}[{at}]"
    if st.op == "sum":
        return [f"{acc} += {v};"]
    if st.op == "prod":
        return [f"{acc} *= {v};"]
    if st.op == "argmax":
        # rindex grows, so the first largest value (or the first NaN) stays, as NumPy's
        nan = f" || ({v} != {v} && {acc} == {acc})" if floating else ""
        return [f"if ({v} > {acc}{nan}) {{ {acc} = {v}; acc_{st.dest}_at[{at}] = rindex; }}"]
    lines = [f"{acc} = {v} > {acc} ? {v} : {acc};"]
    if st.dtype.is_floating_point:
        lines.append(f"acc_{st.dest}_nan[{at}] |= {v} != {v};")
    return lines


def _column_result(st: Reduce, at: str) -> str:
    acc = f"acc_{st.dest}[{at}]"
    if st.op == "argmax":
        return f"acc_{st.dest}_at[{at}]"
    if st.op == "max" and st.dtype.is_floating_point:
        return f"acc_{st.dest}_nan[{at}] ? NAN : {acc}"
    return acc


def _merge_clauses(clauses: list) -> list:
    """`+:a`, `+:b`, `max:c` as `+:a, b` and `max:c`: one reduction clause per operator."""
    by_op: dict = {}
    for c in clauses:
        op, var = c.split(":")
        by_op.setdefault(op, []).append(var)
    return [f"{op}:{', '.join(vs)}" for op, vs in by_op.items()]


def _int_min(d: DType) -> str:
    return {dt.int64: "INT64_MIN", dt.int32: "INT32_MIN", dt.int16: "INT16_MIN",
            dt.int8: "INT8_MIN", dt.uint8: "0", dt.uint16: "0", dt.uint32: "0", dt.uint64: "0",
            dt.bool_: "0"}.get(d, "-INFINITY")


def _literal(value, d: DType | None) -> str:
    """A Python number as a C constant of the dtype it is computed in."""
    if d is None:
        d = dt.bool_ if isinstance(value, bool) else \
            dt.float64 if isinstance(value, float) else dt.int64
    if d is dt.bool_:
        return "1" if value else "0"
    if compute_dtype(d).is_floating_point:
        v = float(value)
        if math.isnan(v):
            return "NAN"
        if math.isinf(v):
            return "INFINITY" if v > 0 else "-INFINITY"
        return repr(v) + ("" if d is dt.float64 else "f")
    if isinstance(value, float) and not value.is_integer():
        raise LoweringError(f"a float constant {value} in {d.name} arithmetic is not generated")
    v = int(value)
    if v == -2 ** 63:
        return "INT64_MIN"
    return f"{v}" if -2 ** 31 < v < 2 ** 31 else f"{v}LL"


# comparisons of an index with a constant that a stretch of a loop decides (see _piece_bounds)
_DECIDED = {"lt": lambda a, b: a < b, "le": lambda a, b: a <= b,
            "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b}


def _bounds(e: Expr, ranges: dict) -> tuple | None:
    """(least, greatest) value of index expression `e` with its variables in `ranges`; None
    when a variable's range is unknown."""
    if isinstance(e, Const):
        return e.value, e.value
    if isinstance(e, Var):
        return ranges.get(e.name)
    a, b = _bounds(e.a, ranges), _bounds(e.b, ranges)
    if a is None or b is None:
        return None
    if e.op == "+":
        return a[0] + b[0], a[1] + b[1]
    if e.op == "-":
        return a[0] - b[1], a[1] - b[0]
    if e.op == "*":
        products = [x * y for x in a for y in b]
        return min(products), max(products)
    if b[0] != b[1] or b[0] <= 0 or a[0] < 0:
        return None
    m = b[0]
    if e.op == "//":
        return a[0] // m, a[1] // m
    return (a[0] % m, a[1] % m) if a[0] // m == a[1] // m else (0, m - 1)


def _narrowed(e: Expr, ranges: dict) -> Expr:
    """`e` with each `a // m` and `a % m` whose `a` stays within one multiple of m over `ranges`
    written without division: `x1 // 128` is 3 and `x1 % 128` is `x1 - 384` for x1 in
    [384, 512)."""
    if not isinstance(e, BinOp):
        return e
    a, b = _narrowed(e.a, ranges), _narrowed(e.b, ranges)
    if e.op in ("//", "%") and isinstance(b, Const):
        span = _bounds(a, ranges)
        if span is not None and span[0] >= 0 and span[0] // b.value == span[1] // b.value:
            q = span[0] // b.value
            return Const(q) if e.op == "//" else _flat(a, -q * b.value)
    return _substitute(BinOp(e.op, a, b), {})


def _flat(e: Expr, c: int = 0) -> Expr:
    """`e + c` as a sum of its terms with the constants gathered: `x0 * 128 + x1 - 384` rather
    than `x0 * 128 + (x1 - 384)`."""
    terms: dict = {}
    const = _linear_terms(e, 1, terms) + c
    if any(k <= 0 for k in terms.values()):
        return e if c == 0 else BinOp("+", e, Const(c)) if c > 0 else BinOp("-", e, Const(-c))
    out: Expr = Const(0)
    for t, k in terms.items():
        out = add(out, mul(t, k))
    return add(out, Const(const)) if const >= 0 else BinOp("-", out, Const(-const))


def _piece_offset(e: Expr, ranges: dict) -> Expr:
    narrowed = _narrowed(e, ranges)
    return e if narrowed == e else _flat(narrowed)


def _decide_piece(body: tuple, ranges: dict) -> list:
    """`body` over one stretch of a loop (see _Renderer._piece_bounds): index tests decided
    there become constants, selects on them their chosen value, offsets lose the divisions
    the stretch makes constant, and statements no output needs any more are dropped."""
    dtypes = {s.dest: s.dtype for s in body if not isinstance(s, Store)}
    known: dict = {}        # SSA name -> Literal (a decided test) or the name it stands for
    exprs: dict = {}        # an `index` value's SSA name -> its expression
    out = []

    def arg(a):
        return known.get(a, a) if isinstance(a, str) else a

    for s in body:
        if isinstance(s, Load):
            out.append(Load(s.dest, s.buffer, _piece_offset(s.offset, ranges), s.dtype, s.scope))
            continue
        if isinstance(s, Store):
            src = arg(s.src)
            out.append(Store(s.buffer, _piece_offset(s.offset, ranges),
                             src.value if isinstance(src, Literal) else src, s.dtype, s.scope))
            continue
        if not isinstance(s, Compute):
            out.append(s)
            continue
        args = tuple(arg(a) for a in s.args)
        if s.op == "index":
            exprs[s.dest] = s.args[0]
            args = (_piece_offset(s.args[0], ranges),)
        elif s.op in _DECIDED and s.args[0] in exprs and isinstance(args[1], Literal):
            span = _bounds(exprs[s.args[0]], ranges)
            if span is not None:
                low, high = (_DECIDED[s.op](v, args[1].value) for v in span)
                if low == high:
                    known[s.dest] = Literal(low)
                    continue
        elif s.op == "where" and isinstance(args[0], Literal) and all(
                isinstance(a, Literal) or dtypes.get(a) is s.dtype for a in args[1:]):
            known[s.dest] = args[1] if args[0].value else args[2]
            continue
        elif s.op == "bitwise_and" and s.dtype is dt.bool_ and any(
                isinstance(a, Literal) for a in args):
            falses = [a for a in args if isinstance(a, Literal) and not a.value]
            rest = [a for a in args if not isinstance(a, Literal)]
            known[s.dest] = Literal(False) if falses else rest[0] if rest else Literal(True)
            continue
        out.append(Compute(s.dest, s.op, args, s.attrs, s.dtype, s.arg_dtypes, s.scope, s.note,
                           s.loc, s.group))
    return _live(out)


def _live(body: list) -> list:
    """The statements of `body` that a store needs."""
    need: set = set()
    keep = []
    for s in reversed(body):
        if isinstance(s, Store):
            if isinstance(s.src, str):
                need.add(s.src)
        elif s.dest in need:
            if isinstance(s, Compute):
                need.update(a for a in s.args if isinstance(a, str))
            elif isinstance(s, Reduce):
                need.add(s.src)
        else:
            continue
        keep.append(s)
    return keep[::-1]


def _decided(body: tuple, ranges: dict, var: str) -> bool:
    """Whether over `ranges` every test of `var`'s index with a constant is decided and no
    offset still divides an expression of `var` (the stretch renders with no select and no
    division on it)."""
    tested = {s.dest for s in body if isinstance(s, Compute) and s.op == "index" and
              var in variables(s.args[0])}
    for s in _decide_piece(body, ranges):
        if isinstance(s, Compute) and s.op in _DECIDED and s.args[0] in tested:
            return False
        offsets = [s.offset] if isinstance(s, (Load, Store)) else \
            [a for a in s.args if not isinstance(a, (str, Literal))] if isinstance(s, Compute) \
            else []
        if any(_divides(e, var) for e in offsets):
            return False
    return True


def _divides(e: Expr, var: str) -> bool:
    """Whether `e` divides or takes a remainder of an expression holding `var`."""
    if not isinstance(e, BinOp):
        return False
    if e.op in ("//", "%") and var in variables(e.a):
        return True
    return _divides(e.a, var) or _divides(e.b, var)


def _split_offset(e: Expr, row_names: set, elem_names: set) -> tuple | None:
    """(the part of offset `e` that depends on the row, the rest) when it is a sum of terms
    each depending on the row or on the reduction index but not both; else None."""
    terms: dict = {}
    const = _linear_terms(e, 1, terms)
    row: Expr = Const(0)
    elem: Expr = Const(const)
    for t, c in terms.items():
        names = variables(t)
        term = mul(t, c) if c != -1 else BinOp("-", Const(0), t)
        if names <= row_names:
            row = add(row, term) if c > 0 else BinOp("-", row, mul(t, -c))
        elif names <= elem_names:
            elem = add(elem, term) if c > 0 else BinOp("-", elem, mul(t, -c))
        else:
            return None
    return row, elem


def _digit_of(e: BinOp, linear: str) -> tuple:
    """(d, m) when `e` is a digit of the linear index `linear`: `linear // d % m`,
    `linear % m` (d = 1) or `linear // d` (m None); else (None, None)."""
    d = m = None
    if e.op == "%" and isinstance(e.b, Const):
        m = e.b.value
        if e.a == Var(linear):
            d = 1
        elif isinstance(e.a, BinOp) and e.a.op == "//" and e.a.a == Var(linear) and \
                isinstance(e.a.b, Const):
            d = e.a.b.value
    elif e.op == "//" and e.a == Var(linear) and isinstance(e.b, Const):
        d = e.b.value
    return d, m


def loop_digits(e: Expr, loops: list, numel: int, linear: str = "xindex") -> Expr:
    """`e` with each `linear // d % m`, `linear // d` or `linear % m` that a run of the loop
    nest spells out written as those loops' variables: in a loop nest over (16, 32, 676),
    `xindex % 676` is the inner loop's `g2`, and the inner loop then has no division left to
    keep it from vectorizing. `loops` holds (var, size, stride) from outer to inner."""
    if not isinstance(e, BinOp):
        return e
    d, m = _digit_of(e, linear)
    if d is not None:
        strides = {stride for _, _, stride in loops}
        top = numel if m is None else d * m
        if d in strides and (top in strides or top >= numel) and numel % d == 0:
            out: Expr = Const(0)
            for var, _, stride in loops:
                if d <= stride < top:
                    out = add(out, mul(Var(var), stride // d))
            return out
    return BinOp(e.op, loop_digits(e.a, loops, numel, linear),
                 loop_digits(e.b, loops, numel, linear))


def nest_digits(e: Expr, loops: list, numel: int, linear: str) -> Expr:
    """`e` with `linear` and its digits (`linear // d % m`, `linear // d`, `linear % m`) written
    in the variables of a loop nest that spells `linear` out, as `loop_digits` does, and also
    digits that lie inside one loop: with loops (r0: 64, q1: 64), `rindex // 8 % 8` is
    `q1 // 8`, a shift of the inner loop's variable rather than a division of the whole."""
    if e == Var(linear):
        out: Expr = Const(0)
        for var, _, stride in loops:
            out = add(out, mul(Var(var), stride))
        return out
    if not isinstance(e, BinOp):
        return e
    d, m = _digit_of(e, linear)
    if d is not None:
        whole = loop_digits(e, loops, numel, linear)
        if whole != e:
            return whole
        top = numel if m is None else d * m
        for var, size, stride in loops:
            end = stride * size
            if stride <= d and d % stride == 0 and top <= end and (
                    end % top == 0 if m is not None else end >= numel):
                digit = floordiv(Var(var), d // stride)
                return digit if top == end else mod(digit, m)
    return BinOp(e.op, nest_digits(e.a, loops, numel, linear),
                 nest_digits(e.b, loops, numel, linear))


def _splits(e: Expr, linear: str) -> bool:
    """Whether `e` divides or takes the remainder of the linear index `linear`."""
    if not isinstance(e, BinOp):
        return False
    if e.op in ("//", "%") and Var(linear) in _subexprs(e.a):
        return True
    return _splits(e.a, linear) or _splits(e.b, linear)


def _subexprs(e: Expr) -> list:
    return [e] + (_subexprs(e.a) + _subexprs(e.b) if isinstance(e, BinOp) else [])


def _numpy_sum(values: list, leading: bool) -> str:
    """The sum of `values` (C names) added in the order NumPy's eager sum adds them, so that
    compiled and eager agree to the last bit: over leading dims one slab after another; along
    a row, fewer than 8 in turn, else NumPy's pairwise form (8 running sums combined as a tree,
    then the leftovers in turn)."""
    if leading or len(values) < 8:
        out = values[0]
        for v in values[1:]:
            out = f"({out} + {v})"
        return out
    r = list(values[:8])
    i = 8
    while i + 8 <= len(values):
        r = [f"({a} + {b})" for a, b in zip(r, values[i:i + 8])]
        i += 8
    total = f"((({r[0]} + {r[1]}) + ({r[2]} + {r[3]})) + (({r[4]} + {r[5]}) + ({r[6]} + {r[7]})))"
    for v in values[i:]:
        total = f"({total} + {v})"
    return total


def _substitute(e: Expr, env: dict) -> Expr:
    """`e` with the variables named in `env` replaced by those expressions, constant parts
    folded (an unrolled element's `rindex / 4 * 24 + rindex % 4` is a number)."""
    if isinstance(e, Var):
        return env.get(e.name, e)
    if not isinstance(e, BinOp):
        return e
    a, b = _substitute(e.a, env), _substitute(e.b, env)
    if e.op == "+":
        if isinstance(a, Const) and not isinstance(b, Const):
            a, b = b, a                              # the constant last: `x0 * 96 + 5`
        return add(a, b)
    if e.op == "*":
        return mul(a, b)
    if isinstance(b, Const) and e.op in ("//", "%"):
        return floordiv(a, b.value) if e.op == "//" else mod(a, b.value)
    if isinstance(a, Const) and isinstance(b, Const) and e.op == "-":
        return Const(a.value - b.value)
    return BinOp(e.op, a, b)


def _expr(e: Expr) -> str:
    """An index expression in C: the kernel's `//` on non-negative integers is C's `/`."""
    return str(e).replace("//", "/")
