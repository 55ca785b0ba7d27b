"""Triton kernels for eager softmax and log_softmax on a GPU: forward and backward, one launch each.

Eager mode runs softmax as its primitives (max, sub, exp, sum, div; log_softmax: log and sub
instead of div), five or six CuPy calls forward and as many backward, each costing the host
microseconds on a GPU. These kernels do a whole softmax in one launch, as PyTorch's do; a
compiled program never uses them (a trace records the primitives, which the compiler fuses).

A tensor is read as (outer, R, inner) around the softmax dimension, of length R: row q = o *
inner + i holds the elements (o, r, i) for r < R, and each array is addressed through its own
three element strides (so a transposed array is read in place). Each
program reduces ROWS rows as a [ROWS, BLOCK] tile; a row longer than BLOCK (up to MAX_BLOCK) is
reduced in passes over its blocks inside the same program: its max, then its sum of exp, then
the output. Outputs are C-contiguous. Every size and stride is a compile-time constant, so one
source per kind and dtype builds once per shape.

    forward      y = exp(x - m) / sum(exp(x - m))        m = max(x) along the row
                 y = (x - m) - log(sum(exp(x - m)))      (log_softmax)
    backward     dx = y * (g - sum(g * y))               (softmax: PyTorch's rule)
                 dx = g - exp(y) * sum(g)                (log_softmax)

float16 is loaded, computed in float32 and rounded on store, as the composite computes it;
float32 divides correctly rounded (`div_rn`; Triton's `/` is approximate), so the only
difference from the composite is the order of the row's sum. A row holding +inf or NaN gives
NaN throughout (inf - inf), -inf entries give probability 0, as the primitives give them.
"""

from __future__ import annotations

import math

from kiln.codegen.triton import TritonKernel
from kiln.ir import dtypes as dt

# Triton's pointer type and compute type of each dtype the kernels take
DTYPES = {dt.float16: ("*fp16", "tl.float32"), dt.float32: ("*fp32", "tl.float32"),
          dt.float64: ("*fp64", "tl.float64")}
MAX_BLOCK = 4096        # a row up to this long is reduced in one block, longer ones in passes
TILE = 4096             # elements a program holds of each array: ROWS * BLOCK
KINDS = ("softmax", "log_softmax")

# The row reductions are `tl.reduce` with the combiners `tl.max` and `tl.sum` use: those two
# are @triton.jit functions, which Triton's interpreter cannot call from a kernel loaded as kiln
# loads it, while its reduce runs these combiners as NumPy's max and (pairwise) sum; any other
# combiner it runs element by element in Python, adding in sequence. The max ignores NaN (a NaN
# entry still makes its row NaN, through x - m).
_MAX = "tl.standard._elementwise_max"
_SUM = "tl.standard._sum_combine"

_INDEXING = '''
    # rows q = o * INNER + i of the (outer, R, inner) view; element r of row q is at
    # o * S_O + r * S_R + i * S_I in an input, o * R * INNER + r * INNER + i in the output
    q = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    q_ok = (q < NUM_ROWS)[:, None]
    o = q // INNER
    i = q % INNER
    cols = tl.arange(0, BLOCK)[None, :]
'''

_FORWARD = '''
@triton.jit
def {name}(x_ptr, y_ptr,
        NUM_ROWS: tl.constexpr, R: tl.constexpr, INNER: tl.constexpr,
        X_O: tl.constexpr, X_R: tl.constexpr, X_I: tl.constexpr,
        LOG: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
{indexing}
    x_row = x_ptr + (o * X_O + i * X_I)[:, None]
    y_row = y_ptr + (o * (R * INNER) + i)[:, None]
    if R <= BLOCK:
        ok = q_ok & (cols < R)
        x = tl.load(x_row + cols * X_R, mask=ok, other=float("-inf")).to({compute})
        shifted = x - tl.reduce(x, 1, {max})[:, None]
        e = tl.where(ok, tl.exp(shifted), 0.0)
        total = tl.reduce(e, 1, {sum})[:, None]
        if LOG:
            y = shifted - tl.log(total)
        else:
            y = {divide}
        tl.store(y_row + cols * INNER, y.to(y_ptr.dtype.element_ty), mask=ok)
    else:
        # the row in passes over its blocks: its max, its sum of exp, then the output
        m = tl.full((ROWS,), float("-inf"), {compute})
        for start in range(0, R, BLOCK):
            ok = q_ok & (start + cols < R)
            x = tl.load(x_row + (start + cols) * X_R, mask=ok, other=float("-inf"))
            m = tl.maximum(m, tl.reduce(x.to({compute}), 1, {max}))
        m = m[:, None]
        total = tl.full((ROWS,), 0.0, {compute})
        for start in range(0, R, BLOCK):
            ok = q_ok & (start + cols < R)
            x = tl.load(x_row + (start + cols) * X_R, mask=ok, other=float("-inf"))
            e = tl.where(ok, tl.exp(x.to({compute}) - m), 0.0)
            total += tl.reduce(e, 1, {sum})
        total = total[:, None]
        log_total = tl.log(total)
        for start in range(0, R, BLOCK):
            ok = q_ok & (start + cols < R)
            shifted = tl.load(x_row + (start + cols) * X_R, mask=ok, other=float("-inf")
                              ).to({compute}) - m
            if LOG:
                y = shifted - log_total
            else:
                e = tl.exp(shifted)
                y = {divide}
            tl.store(y_row + (start + cols) * INNER, y.to(y_ptr.dtype.element_ty), mask=ok)
'''

_BACKWARD = '''
@triton.jit
def {name}(g_ptr, y_ptr, dx_ptr,
        NUM_ROWS: tl.constexpr, R: tl.constexpr, INNER: tl.constexpr,
        G_O: tl.constexpr, G_R: tl.constexpr, G_I: tl.constexpr,
        Y_O: tl.constexpr, Y_R: tl.constexpr, Y_I: tl.constexpr,
        LOG: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
{indexing}
    g_row = g_ptr + (o * G_O + i * G_I)[:, None]
    y_row = y_ptr + (o * Y_O + i * Y_I)[:, None]
    dx_row = dx_ptr + (o * (R * INNER) + i)[:, None]
    if R <= BLOCK:
        ok = q_ok & (cols < R)
        g = tl.load(g_row + cols * G_R, mask=ok, other=0.0).to({compute})
        y = tl.load(y_row + cols * Y_R, mask=ok, other=0.0).to({compute})
        if LOG:
            dx = g - tl.exp(y) * tl.reduce(g, 1, {sum})[:, None]
        else:
            dx = y * (g - tl.reduce(g * y, 1, {sum})[:, None])
        tl.store(dx_row + cols * INNER, dx.to(dx_ptr.dtype.element_ty), mask=ok)
    else:
        # the row in passes over its blocks: the sum, then the gradient
        total = tl.full((ROWS,), 0.0, {compute})
        for start in range(0, R, BLOCK):
            ok = q_ok & (start + cols < R)
            g = tl.load(g_row + (start + cols) * G_R, mask=ok, other=0.0).to({compute})
            if LOG:
                total += tl.reduce(g, 1, {sum})
            else:
                y = tl.load(y_row + (start + cols) * Y_R, mask=ok, other=0.0).to({compute})
                total += tl.reduce(g * y, 1, {sum})
        total = total[:, None]
        for start in range(0, R, BLOCK):
            ok = q_ok & (start + cols < R)
            g = tl.load(g_row + (start + cols) * G_R, mask=ok, other=0.0).to({compute})
            y = tl.load(y_row + (start + cols) * Y_R, mask=ok, other=0.0).to({compute})
            if LOG:
                dx = g - tl.exp(y) * total
            else:
                dx = y * (g - total)
            tl.store(dx_row + (start + cols) * INNER, dx.to(dx_ptr.dtype.element_ty), mask=ok)
'''


def _launch_shape(rows: tuple) -> tuple:
    """(ROWS, BLOCK, programs, warps) for an (outer, R, inner) view."""
    outer, r, inner = rows
    block = min(1 << max(r - 1, 0).bit_length(), MAX_BLOCK)
    num_rows = outer * inner
    per_program = max(1, min(TILE // block, 1 << max(num_rows - 1, 0).bit_length()))
    programs = max(1, math.ceil(num_rows / per_program))
    return per_program, block, programs, 4 if per_program * block <= 2048 else 8


def render_softmax_kernel(kind: str, backward: bool, rows: tuple, strides: tuple,
                          dtype: dt.DType) -> TritonKernel:
    """The kernel of softmax (`kind` "softmax" or "log_softmax") over the rows of an (outer, R,
    inner) view `rows`: forward, inputs (x,) -> outputs (y,); or `backward`, inputs (g, y) ->
    outputs (dx,). `strides`: per input its element strides (outer, R, inner) in that view."""
    if kind not in KINDS:
        raise ValueError(f"softmax kernel: kind {kind!r} is not one of {KINDS}")
    if dtype not in DTYPES:
        raise ValueError(f"softmax kernel: dtype {dtype} is not supported; expected one of "
                         f"{sorted(str(d) for d in DTYPES)}")
    pointer, compute = DTYPES[dtype]
    per_program, block, programs, warps = _launch_shape(rows)
    outer, r, inner = rows
    name = f"{kind}_{'backward' if backward else 'forward'}_{dtype.name}"
    divide = "tl.div_rn(e, total)" if compute == "tl.float32" else "e / total"
    template = _BACKWARD if backward else _FORWARD
    body = template.format(name=name, indexing=_INDEXING.strip("\n"), compute=compute,
                           divide=divide, max=_MAX, sum=_SUM).lstrip("\n")
    header = (f"# {name}: {kind} {'gradient ' if backward else ''}along the rows of an "
              "(outer, R, inner) view (kiln/codegen/softmax_triton.py)\n"
              "import triton\nimport triton.language as tl\n\n")
    pointers = ("g_ptr", "y_ptr", "dx_ptr") if backward else ("x_ptr", "y_ptr")
    constexprs = dict(NUM_ROWS=outer * inner, R=r, INNER=inner)
    for prefix, (s_o, s_r, s_i) in zip(("G", "Y") if backward else ("X",), strides):
        constexprs.update({f"{prefix}_O": s_o, f"{prefix}_R": s_r, f"{prefix}_I": s_i})
    constexprs.update(LOG=kind == "log_softmax", ROWS=per_program, BLOCK=block)
    signature = {p: pointer for p in pointers}
    signature.update({k: "constexpr" for k in constexprs})
    return TritonKernel(name, header + body, pointers, signature, constexprs, (programs,), warps)


__all__ = ["DTYPES", "KINDS", "MAX_BLOCK", "TILE", "render_softmax_kernel"]
