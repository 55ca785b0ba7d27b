"""Triton kernels for eager 2-D max pooling on a GPU: the forward, its gradient, and a gather.

Eager `max_pool2d` on cuda tensors (`kiln.tracer.functional.pooling`) runs as one launch each
way instead of the composite's ~17 CuPy calls forward and ~10 backward. The composite stays
what traces record (the compiler fuses it); these kernels compute exactly what it computes:

    forward    out[n, c, y, x] = the first maximum of the window at (y, x), padding counting
                                 as -inf; a NaN counts as a maximum, so the first NaN wins
               arg[n, c, y, x] = its position in the window, i*KW + j (row-major, as the
                                 composite's window stack), and with INDICES its flat index
                                 (y*SH - PH + i*DH) * W + (x*SW - PW + j*DW) into the input
    backward   dx[n, c, h, w]  = sum of g[n, c, y, x] over the windows (y, x) that hold pixel
                                 (h, w) at offset (i, j) and chose it (arg == i*KW + j)
    gather     out[n, c, y, x] = src[n, c, the pixel arg chose] (0 where it chose padding):
                                 the backward's own gradient, for double backward

The backward is a gather, not a scatter: each input pixel visits its windows in a fixed order
(offset r = 0, 1, ...), so there are no atomics and the result is deterministic. It adds in
float32 (float64 for float64) and rounds once. Every size, stride and padding is a constexpr, and
each array is addressed through four element strides given as constants, so a channels-last
image or a transposed gradient is read in place. Small windows are unrolled; a large one (a
global pooling) is a loop, so its kernel builds quickly.
"""

from __future__ import annotations

import math

from kiln.codegen.triton import TritonKernel
from kiln.ir import dtypes as dt

# the dtypes the kernels take, as Triton pointer types
DTYPES = {dt.float16: "*fp16", dt.float32: "*fp32", dt.float64: "*fp64"}
BLOCK = 1024
NUM_WARPS = 4
UNROLL = 16         # windows of up to this many positions are unrolled; larger ones loop

_HEADER = "import triton\nimport triton.language as tl\n\n"

_FORWARD = '''
@triton.jit
def {name}(x_ptr, out_ptr, arg_ptr{index_arg},
        N: tl.constexpr, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        OH: tl.constexpr, OW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr,
        XN: tl.constexpr, XC: tl.constexpr, XH: tl.constexpr, XW: tl.constexpr,
        INDICES: tl.constexpr, BLOCK: tl.constexpr):
    # one lane per output (n, c, y, x), C order; x is read through its element strides
    TOTAL: tl.constexpr = N * C * OH * OW
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < TOTAL
    ox = offs % OW
    oy = (offs // OW) % OH
    c = (offs // (OW * OH)) % C
    n = offs // (OW * OH * C)
    base = n * XN + c * XC
    best = tl.full((BLOCK,), float("-inf"), x_ptr.dtype.element_ty)
    arg = tl.full((BLOCK,), 0, tl.int32)
    for r in {loop}(KH * KW):
        row = oy * SH - PH + (r // KW) * DH
        col = ox * SW - PW + (r % KW) * DW
        inside = (row >= 0) & (row < H) & (col >= 0) & (col < W)
        v = tl.load(x_ptr + base + row * XH + col * XW, mask=live & inside, other=float("-inf"))
        # the first maximum: a larger value, or the first NaN (after which nothing is larger)
        take = (v > best) | ((v != v) & (best == best))
        best = tl.where(take, v, best)
        arg = tl.where(take, r, arg)
    tl.store(out_ptr + offs, best, mask=live)
    tl.store(arg_ptr + offs, arg, mask=live)
    if INDICES:
        row = oy * SH - PH + (arg // KW) * DH
        col = ox * SW - PW + (arg % KW) * DW
        tl.store(index_ptr + offs, row.to(tl.int64) * W + col, mask=live)
'''

_BACKWARD = '''
@triton.jit
def {name}(g_ptr, arg_ptr, dx_ptr,
        N: tl.constexpr, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        OH: tl.constexpr, OW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr,
        GN: tl.constexpr, GC: tl.constexpr, GH: tl.constexpr, GW: tl.constexpr,
        BLOCK: tl.constexpr):
    # one lane per input pixel (n, c, h, w), C order: the windows holding it, in a fixed order
    TOTAL: tl.constexpr = N * C * H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < TOTAL
    w = offs % W
    h = (offs // W) % H
    c = (offs // (W * H)) % C
    n = offs // (W * H * C)
    acc = tl.full((BLOCK,), 0.0, {acc})
    for r in {loop}(KH * KW):
        ty = h + PH - (r // KW) * DH        # the window row whose offset r lands on h
        tx = w + PW - (r % KW) * DW
        y = ty // SH
        x = tx // SW
        hit = live & (ty >= 0) & (tx >= 0) & (ty % SH == 0) & (tx % SW == 0) & (y < OH) & (x < OW)
        chose = tl.load(arg_ptr + ((n * C + c) * OH + y) * OW + x, mask=hit, other=-1)
        acc += tl.load(g_ptr + n * GN + c * GC + y * GH + x * GW, mask=hit & (chose == r),
                       other=0.0).to({acc})
    tl.store(dx_ptr + offs, acc.to(dx_ptr.dtype.element_ty), mask=live)
'''

_GATHER = '''
@triton.jit
def {name}(src_ptr, arg_ptr, out_ptr,
        N: tl.constexpr, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        OH: tl.constexpr, OW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr, PH: tl.constexpr, PW: tl.constexpr,
        DH: tl.constexpr, DW: tl.constexpr,
        SN: tl.constexpr, SC: tl.constexpr, SHS: tl.constexpr, SWS: tl.constexpr,
        BLOCK: tl.constexpr):
    # one lane per output (n, c, y, x), C order: src at the pixel the forward chose
    TOTAL: tl.constexpr = N * C * OH * OW
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = offs < TOTAL
    ox = offs % OW
    oy = (offs // OW) % OH
    c = (offs // (OW * OH)) % C
    n = offs // (OW * OH * C)
    arg = tl.load(arg_ptr + offs, mask=live, other=0)
    row = oy * SH - PH + (arg // KW) * DH
    col = ox * SW - PW + (arg % KW) * DW
    inside = live & (row >= 0) & (row < H) & (col >= 0) & (col < W)
    v = tl.load(src_ptr + n * SN + c * SC + row * SHS + col * SWS, mask=inside, other=0.0)
    tl.store(out_ptr + offs, v, mask=live)
'''


def _check(dtype: dt.DType) -> None:
    if dtype not in DTYPES:
        raise ValueError(f"max_pool2d kernel: dtype {dtype} is not supported; expected one of "
                         f"{sorted(str(d) for d in DTYPES)}")


def _geometry(shape: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
              dilation: tuple) -> dict:
    n, c, h, w = shape
    return dict(N=n, C=c, H=h, W=w, OH=out_hw[0], OW=out_hw[1], KH=kernel[0], KW=kernel[1],
                SH=stride[0], SW=stride[1], PH=padding[0], PW=padding[1], DH=dilation[0],
                DW=dilation[1])


def _kernel(name: str, template: str, args: tuple, pointers: tuple, constexprs: dict,
            lanes: int, comment: str, **fields) -> TritonKernel:
    # the geometry in the header: kernels are cached and built by their source text
    header = f"# {name}: {comment} (kiln/codegen/pool_triton.py)\n" + _HEADER
    signature = dict(zip(args, pointers))
    window = constexprs["KH"] * constexprs["KW"]
    fields["loop"] = "tl.static_range" if window <= UNROLL else "range"
    signature.update({k: "constexpr" for k in constexprs})
    grid = (max(1, math.ceil(lanes / BLOCK)),)
    return TritonKernel(name, header + template.format(name=name, **fields).lstrip("\n"), args,
                        signature, constexprs, grid, NUM_WARPS)


def _describe(shape, out_hw, kernel, stride, padding, dilation, dtype, strides) -> str:
    return (f"[{','.join(map(str, shape))}] -> {list(out_hw)}, kernel {list(kernel)}, stride "
            f"{list(stride)}, padding {list(padding)}, dilation {list(dilation)}, {dtype}, "
            f"element strides {list(strides)}")


def render_forward(shape: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
                   dilation: tuple, dtype: dt.DType, x_strides: tuple,
                   indices: bool = False) -> TritonKernel:
    """Max pooling of an (N, C, H, W) image read through element strides `x_strides`, in one
    launch: inputs (x,), outputs (out, arg) and with `indices` also (index,), all C-contiguous
    (N, C, OH, OW); arg is int32 (the window position), index int64 (PyTorch's indices)."""
    _check(dtype)
    name = "max_pool2d_forward"
    constexprs = _geometry(shape, out_hw, kernel, stride, padding, dilation)
    constexprs.update(XN=x_strides[0], XC=x_strides[1], XH=x_strides[2], XW=x_strides[3],
                      INDICES=bool(indices), BLOCK=BLOCK)
    args = ("x_ptr", "out_ptr", "arg_ptr") + (("index_ptr",) if indices else ())
    pointers = (DTYPES[dtype], DTYPES[dtype], "*i32") + (("*i64",) if indices else ())
    lanes = shape[0] * shape[1] * out_hw[0] * out_hw[1]
    return _kernel(name, _FORWARD, args, pointers, constexprs, lanes,
                   _describe(shape, out_hw, kernel, stride, padding, dilation, dtype, x_strides)
                   + (", indices" if indices else ""),
                   index_arg=", index_ptr" if indices else "")


def render_backward(shape: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
                    dilation: tuple, dtype: dt.DType, g_strides: tuple) -> TritonKernel:
    """The gradient of max pooling an (N, C, H, W) image, in one launch: inputs (g, arg), g the
    (N, C, OH, OW) output gradient read through element strides `g_strides` and arg the
    forward's C-contiguous int32 window positions; outputs (dx,), C-contiguous (N, C, H, W)."""
    _check(dtype)
    name = "max_pool2d_backward"
    constexprs = _geometry(shape, out_hw, kernel, stride, padding, dilation)
    constexprs.update(GN=g_strides[0], GC=g_strides[1], GH=g_strides[2], GW=g_strides[3],
                      BLOCK=BLOCK)
    acc = "tl.float64" if dtype is dt.float64 else "tl.float32"
    return _kernel(name, _BACKWARD, ("g_ptr", "arg_ptr", "dx_ptr"),
                   (DTYPES[dtype], "*i32", DTYPES[dtype]), constexprs, math.prod(shape),
                   _describe(shape, out_hw, kernel, stride, padding, dilation, dtype, g_strides),
                   acc=acc)


def render_gather(shape: tuple, out_hw: tuple, kernel: tuple, stride: tuple, padding: tuple,
                  dilation: tuple, dtype: dt.DType, src_strides: tuple) -> TritonKernel:
    """The pixels max pooling chose, in one launch: inputs (src, arg), src an (N, C, H, W)
    image read through element strides `src_strides` and arg the forward's window positions;
    outputs (out,), C-contiguous (N, C, OH, OW), 0 where a window chose padding."""
    _check(dtype)
    name = "max_pool2d_gather"
    constexprs = _geometry(shape, out_hw, kernel, stride, padding, dilation)
    constexprs.update(SN=src_strides[0], SC=src_strides[1], SHS=src_strides[2],
                      SWS=src_strides[3], BLOCK=BLOCK)
    lanes = shape[0] * shape[1] * out_hw[0] * out_hw[1]
    return _kernel(name, _GATHER, ("src_ptr", "arg_ptr", "out_ptr"),
                   (DTYPES[dtype], "*i32", DTYPES[dtype]), constexprs, lanes,
                   _describe(shape, out_hw, kernel, stride, padding, dilation, dtype,
                             src_strides))


__all__ = ["BLOCK", "DTYPES", "render_backward", "render_forward", "render_gather"]
