"""Triton implicit-GEMM kernels for 2-D convolution: forward, weight gradient, input gradient.

A convolution is a matrix product whose one operand is the image's sliding windows (im2col).
kiln's composite `conv2d` makes those windows in memory (the `unfold` primitive) and calls a
matmul; these kernels compute the same products without the windows in memory: each program
works out, for its tile of the product, which pixel every (row, column) of its operand tile
reads (window coordinates from the output position and the kernel offset) and loads it
directly, masking what falls into the padding. Every size, stride, padding and dilation is a
compile-time constant (`tl.constexpr`): one source text per kernel kind, specialized per shape,
as kiln's generated kernels are.

    forward       out[n, o, y, x]  = sum_{c,i,j} x[n, c, y*sh - ph + i*dh, x*sw - pw + j*dw]
                                                 * w[o, c, i, j]  (+ bias[o], then ReLU)
    weight grad   dw[o, c, i, j]   = sum_{n,y,x} g[n, o, y, x] * x[n, c, y*sh - ph + i*dh, ...]
    input grad    dx[n, c, h, w]   = sum_{o,i,j} g[n, o, (h + ph - i*dh) / sh, ...] * w[o, c, i, j]
                                     over the (i, j) whose division is exact and in range

Each tensor is addressed through four element strides given as constants, so the same kernel
reads NCHW arrays, the (rows, channels) matrices of the unfold route, or a transposed view;
`ConvGeometry` holds the sizes. `render_conv_kernel` returns a `ConvKernel`, a `TritonKernel`
launched, built ahead of time and cached like every generated kernel
(`kiln.runtime.triton_launch`), whose launch zeroes its output first when the weight gradient's
sum is split over programs that add into it. `render_fold_kernel` is the fold of the unfold
route's windows back into an image, in one launch (eager mode on CuPy runs it where these
kernels do not apply, `kiln.runtime.cupy_backend`).
"""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass

from kiln.codegen.kernel import contiguous_strides
from kiln.codegen.triton import TritonKernel
from kiln.ir import dtypes as dt

# float32 products on tensor cores as three TF32 products (about float32's accuracy, unlike
# plain TF32); Triton's interpreter computes them in float32
INPUT_PRECISION = "tf32x3"

# tile sizes per kernel kind: (rows, columns, reduction) of the product each program computes;
# a measured choice (`kiln.runtime.conv_gpu`) may replace them per shape, from the candidates
BLOCKS = {"forward": (64, 64, 32), "weight_grad": (32, 32, 64), "input_grad": (64, 32, 32)}
BLOCK_CANDIDATES = {"forward": ((64, 64, 32), (128, 64, 32), (64, 32, 64)),
                    "weight_grad": ((32, 32, 64), (64, 64, 32), (64, 32, 64)),
                    "input_grad": ((64, 32, 32), (128, 32, 32), (64, 64, 32))}

# the weight gradient's sum is split until about this many programs run (a few per SM of an
# H100/H200), each summing at least MIN_SPLIT_ROWS rows: a split adds atomically into dw, so
# its order (and the last bits of dw) may vary from run to run, as with cuDNN's
SPLIT_PROGRAMS = 512
MIN_SPLIT_ROWS = 1024

# the dtypes the kernels take (accumulating in float32); float64 stays on the unfold route
DTYPES = {dt.float32: "*fp32", dt.float16: "*fp16"}


@dataclass(frozen=True)
class ConvGeometry:
    """A 2-D convolution's sizes: input (n, c, h, w), weight (o, c, kh, kw), output (oh, ow),
    stride, padding and dilation, each as (along h, along w)."""

    n: int
    c: int
    h: int
    w: int
    o: int
    kh: int
    kw: int
    stride: tuple = (1, 1)
    padding: tuple = (0, 0)
    dilation: tuple = (1, 1)

    @property
    def out_size(self) -> tuple:
        return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1 for size, k, s, p, d in zip(
            (self.h, self.w), (self.kh, self.kw), self.stride, self.padding, self.dilation))

    def describe(self) -> str:
        oh, ow = self.out_size
        return (f"conv2d x[{self.n},{self.c},{self.h},{self.w}] w[{self.o},{self.c},{self.kh},"
                f"{self.kw}] -> [{self.n},{self.o},{oh},{ow}], stride {list(self.stride)}, "
                f"padding {list(self.padding)}, dilation {list(self.dilation)}")


@dataclass(frozen=True)
class ConvKernel(TritonKernel):
    """A convolution kernel: a TritonKernel whose outputs, with `zero_outputs`, must hold
    zeros before the launch (a split weight gradient adds into them)."""

    zero_outputs: bool = False


# ----------------------------------------------------------------------------- kernel sources
# The geometry arguments every kernel takes, after its pointers (all tl.constexpr).
_GEOMETRY = ("N", "C", "H", "W", "O", "KH", "KW", "OH", "OW", "SH", "SW", "PH", "PW", "DH",
             "DW")

_WINDOW_PIXELS = '''
        # the pixel each (output position, kernel offset) pair reads: window coordinates,
        # not an unfolded copy; positions in the padding are masked and read as 0
        h = oy[:, None] * SH - PH + i[None, :] * DH
        w = ox[:, None] * SW - PW + j[None, :] * DW
        inside = (h >= 0) & (h < H) & (w >= 0) & (w < W)'''

_FORWARD = '''
@triton.jit
def {name}(x_ptr, w_ptr, {bias_arg}out_ptr,
        {geometry},
        XSN: tl.constexpr, XSC: tl.constexpr, XSH: tl.constexpr, XSW: tl.constexpr,
        WSO: tl.constexpr, WSC: tl.constexpr, WSI: tl.constexpr, WSJ: tl.constexpr,
        OSN: tl.constexpr, OSO: tl.constexpr, OSY: tl.constexpr, OSX: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # out[(n, y, x), o] = sum over k = (c, i, j) of windows[(n, y, x), k] * w[o, k]
    M: tl.constexpr = N * OH * OW
    K: tl.constexpr = C * KH * KW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    ro = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n = rm // (OH * OW)
    oy = (rm // OW) % OH
    ox = rm % OW
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        c = rk // (KH * KW)
        i = (rk // KW) % KH
        j = rk % KW{window}
        a = tl.load(x_ptr + n[:, None] * XSN + c[None, :] * XSC + h * XSH + w * XSW,
                    mask=inside & (rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(w_ptr + ro[None, :] * WSO + c[:, None] * WSC + i[:, None] * WSI
                    + j[:, None] * WSJ, mask=(rk[:, None] < K) & (ro[None, :] < O), other=0.0)
        acc += tl.dot(a, b, input_precision="{precision}")
{epilogue}    tl.store(out_ptr + n[:, None] * OSN + ro[None, :] * OSO + oy[:, None] * OSY
             + ox[:, None] * OSX, acc.to(out_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (ro[None, :] < O))
'''

_WEIGHT_GRAD = '''
@triton.jit
def {name}(x_ptr, g_ptr, dw_ptr,
        {geometry},
        XSN: tl.constexpr, XSC: tl.constexpr, XSH: tl.constexpr, XSW: tl.constexpr,
        GSN: tl.constexpr, GSO: tl.constexpr, GSY: tl.constexpr, GSX: tl.constexpr,
        DSO: tl.constexpr, DSC: tl.constexpr, DSI: tl.constexpr, DSJ: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        SPLIT_ROWS: tl.constexpr, SPLITS: tl.constexpr):
    # dw[o, k] = sum over rows r = (n, y, x) of g[r, o] * windows[r, k], k = (c, i, j); the
    # rows are long (every output position of the batch) and dw small, so the sum is split
    # over SPLITS programs (grid axis 2), each adding its part into dw (zeroed before)
    M: tl.constexpr = N * OH * OW
    K: tl.constexpr = C * KH * KW
    ro = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    c = rk // (KH * KW)
    i = (rk // KW) % KH
    j = rk % KW
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    first = tl.program_id(2) * SPLIT_ROWS
    # constant loop bounds: Triton 3.6's interpreter cannot take a tensor as range()'s bound
    for step in range(0, SPLIT_ROWS, BLOCK_K):
        rr = first + step + tl.arange(0, BLOCK_K)
        n = rr // (OH * OW)
        oy = (rr // OW) % OH
        ox = rr % OW
        a = tl.load(g_ptr + n[None, :] * GSN + ro[:, None] * GSO + oy[None, :] * GSY
                    + ox[None, :] * GSX, mask=(ro[:, None] < O) & (rr[None, :] < M),
                    other=0.0){window}
        b = tl.load(x_ptr + n[:, None] * XSN + c[None, :] * XSC + h * XSH + w * XSW,
                    mask=inside & (rr[:, None] < M) & (rk[None, :] < K), other=0.0)
        acc += tl.dot(a, b, input_precision="{precision}")
    dw = dw_ptr + ro[:, None] * DSO + c[None, :] * DSC + i[None, :] * DSI + j[None, :] * DSJ
    if SPLITS == 1:
        tl.store(dw, acc.to(dw_ptr.dtype.element_ty), mask=(ro[:, None] < O) & (rk[None, :] < K))
    else:
        tl.atomic_add(dw, acc, mask=(ro[:, None] < O) & (rk[None, :] < K))
'''

_INPUT_GRAD = '''
@triton.jit
def {name}(g_ptr, w_ptr, dx_ptr,
        {geometry},
        GSN: tl.constexpr, GSO: tl.constexpr, GSY: tl.constexpr, GSX: tl.constexpr,
        WSO: tl.constexpr, WSC: tl.constexpr, WSI: tl.constexpr, WSJ: tl.constexpr,
        DSN: tl.constexpr, DSC: tl.constexpr, DSH: tl.constexpr, DSW: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    # dx[(n, h, w), c] = sum over k = (o, i, j) of g[n, o, y, x] * w[o, c, i, j], where pixel
    # (h, w) is offset (i, j) of the window at output position (y, x), if there is one
    M: tl.constexpr = N * H * W
    K: tl.constexpr = O * KH * KW
    rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    rc = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    n = rm // (H * W)
    hh = (rm // W) % H
    ww = rm % W
    acc = tl.full((BLOCK_M, BLOCK_N), 0.0, tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        o = rk // (KH * KW)
        i = (rk // KW) % KH
        j = rk % KW
        # the window position whose offset (i, j) lands on the pixel: exact, in range
        ty = hh[:, None] + PH - i[None, :] * DH
        tx = ww[:, None] + PW - j[None, :] * DW
        oy = ty // SH
        ox = tx // SW
        hit = (ty >= 0) & (tx >= 0) & (ty % SH == 0) & (tx % SW == 0) & (oy < OH) & (ox < OW)
        a = tl.load(g_ptr + n[:, None] * GSN + o[None, :] * GSO + oy * GSY + ox * GSX,
                    mask=hit & (rm[:, None] < M) & (rk[None, :] < K), other=0.0)
        b = tl.load(w_ptr + o[:, None] * WSO + rc[None, :] * WSC + i[:, None] * WSI
                    + j[:, None] * WSJ, mask=(rk[:, None] < K) & (rc[None, :] < C), other=0.0)
        acc += tl.dot(a, b, input_precision="{precision}")
    tl.store(dx_ptr + n[:, None] * DSN + rc[None, :] * DSC + hh[:, None] * DSH
             + ww[:, None] * DSW, acc.to(dx_ptr.dtype.element_ty),
             mask=(rm[:, None] < M) & (rc[None, :] < C))
'''

KINDS = ("forward", "weight_grad", "input_grad")


def kernel_source(kind: str, bias: bool = False, relu: bool = False) -> tuple[str, str]:
    """(kernel name, Triton source) of one kernel kind; the forward's epilogue adds `bias` and
    applies ReLU when asked. The source is the same for every shape."""
    geometry = ",\n        ".join(", ".join(f"{g}: tl.constexpr" for g in _GEOMETRY[k:k + 5])
                                 for k in range(0, len(_GEOMETRY), 5))
    if kind == "forward":
        name = "conv2d_igemm" + ("_bias" if bias else "") + ("_relu" if relu else "")
        epilogue = ""
        if bias:
            epilogue += ("    acc += tl.load(b_ptr + ro, mask=ro < O, other=0.0)"
                         ".to(tl.float32)[None, :]\n")
        if relu:
            epilogue += "    acc = tl.maximum(acc, 0.0)\n"
        body = _FORWARD.format(name=name, bias_arg="b_ptr, " if bias else "",
                               geometry=geometry, window=_WINDOW_PIXELS, epilogue=epilogue,
                               precision=INPUT_PRECISION)
    elif kind == "weight_grad":
        name = "conv2d_igemm_weight_grad"
        body = _WEIGHT_GRAD.format(name=name, geometry=geometry, window=_WINDOW_PIXELS,
                                   precision=INPUT_PRECISION)
    elif kind == "input_grad":
        name = "conv2d_igemm_input_grad"
        body = _INPUT_GRAD.format(name=name, geometry=geometry, precision=INPUT_PRECISION)
    else:
        raise ValueError(f"unknown convolution kernel kind {kind!r}; expected one of {KINDS}")
    header = (f"# {name}: conv2d's {kind.replace('_', ' ')} as an implicit GEMM "
              "(kiln/codegen/conv_triton.py)\nimport triton\nimport triton.language as tl\n\n")
    return name, header + body.lstrip("\n")


def render_conv_kernel(kind: str, geometry: ConvGeometry, dtype: dt.DType, strides: tuple,
                       bias: bool = False, relu: bool = False, blocks: tuple | None = None
                       ) -> ConvKernel:
    """One implicit-GEMM kernel for `geometry`, ready to launch or build.

    Args:
        kind: "forward" (pointers x, w[, bias], out), "weight_grad" (x, g, dw) or
            "input_grad" (g, w, dx).
        dtype: the dtype of every tensor argument (float32 or float16).
        strides: the element strides of the kernel's three tensors, in its pointer order
            (bias excepted), each as four numbers in the index order of the formulas above:
            x (n, c, h, w), w and dw (o, c, i, j), g and out (n, o, y, x), dx (n, c, h, w).
        blocks: the tile (rows, columns, reduction), each a power of 2 >= 16; `BLOCKS[kind]`
            when None.
    """
    if dtype not in DTYPES:
        raise ValueError(f"conv2d implicit GEMM: dtype {dtype} is not supported; expected one "
                         f"of {sorted(str(d) for d in DTYPES)}")
    if len(strides) != 3 or any(len(s) != 4 for s in strides):
        raise ValueError(f"conv2d implicit GEMM: expected three tensors' 4 strides each, got "
                         f"{strides}")
    name, source = kernel_source(kind, bias, relu)
    g = geometry
    oh, ow = g.out_size
    sizes = dict(N=g.n, C=g.c, H=g.h, W=g.w, O=g.o, KH=g.kh, KW=g.kw, OH=oh, OW=ow,
                 SH=g.stride[0], SW=g.stride[1], PH=g.padding[0], PW=g.padding[1],
                 DH=g.dilation[0], DW=g.dilation[1])
    pointers = {"forward": ["x_ptr", "w_ptr"] + (["b_ptr"] if bias else []) + ["out_ptr"],
                "weight_grad": ["x_ptr", "g_ptr", "dw_ptr"],
                "input_grad": ["g_ptr", "w_ptr", "dx_ptr"]}[kind]
    prefixes = {"forward": ("X", "W", "O"), "weight_grad": ("X", "G", "D"),
                "input_grad": ("G", "W", "D")}[kind]
    suffixes = {"forward": ("NCHW", "OCIJ", "NOYX"), "weight_grad": ("NCHW", "NOYX", "OCIJ"),
                "input_grad": ("NOYX", "OCIJ", "NCHW")}[kind]
    constexprs = dict(sizes)
    for prefix, suffix, tensor_strides in zip(prefixes, suffixes, strides):
        for letter, s in zip(suffix, tensor_strides):
            constexprs[f"{prefix}S{letter}"] = int(s)
    bm, bn, bk = blocks or BLOCKS[kind]
    if any(b < 16 or b & (b - 1) for b in (bm, bn, bk)):
        raise ValueError(f"conv2d implicit GEMM: blocks {(bm, bn, bk)} must be powers of 2, "
                         "16 or more (tl.dot's smallest tile)")
    constexprs.update(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
    rows, cols = {"forward": (g.n * oh * ow, g.o), "weight_grad": (g.o, g.c * g.kh * g.kw),
                  "input_grad": (g.n * g.h * g.w, g.c)}[kind]
    grid = (math.ceil(rows / bm), math.ceil(cols / bn))
    if kind == "weight_grad":
        summed = g.n * oh * ow
        splits = 1 if dtype is not dt.float32 else max(1, min(
            SPLIT_PROGRAMS // (grid[0] * grid[1]), summed // MIN_SPLIT_ROWS))
        split_rows = math.ceil(math.ceil(summed / splits) / bk) * bk
        splits = math.ceil(summed / split_rows)
        constexprs.update(SPLIT_ROWS=split_rows, SPLITS=splits)
        grid += (splits,)
    # the shape in the source's header: kernels are cached and built by their source text
    # (`kiln.runtime.triton_launch`), so each specialization needs its own
    settings = textwrap.wrap(", ".join(f"{k}={v}" for k, v in constexprs.items()
                                       if k not in sizes), 96)
    source = source.replace("import triton\n", "".join(
        f"# {line}\n" for line in [f"{g.describe()}, {dtype}"] + settings) + "import triton\n", 1)
    signature = {p: DTYPES[dtype] for p in pointers}
    signature.update({k: "constexpr" for k in constexprs})
    return ConvKernel(name, source, tuple(pointers), signature, constexprs, grid, 4,
                      zero_outputs=constexprs.get("SPLITS", 1) > 1)


# ----------------------------------------------------------------------------- the fold
# Where no implicit-GEMM kernel applies (float64, grouped convolutions, the unfold route), a
# convolution's input gradient still folds windows back into an image: this kernel does it in
# one launch, each pixel gathering the windows that cover it, the last window position first,
# as `kiln.ir.ops`' fold and the NumPy backend add them (so the sums round alike).

_FOLD = '''
@triton.jit
def {name}(cols_ptr, out_ptr,
        N: tl.constexpr, C: tl.constexpr, H: tl.constexpr, W: tl.constexpr,
        OH: tl.constexpr, OW: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
        SH: tl.constexpr, SW: tl.constexpr, DH: tl.constexpr, DW: tl.constexpr,
        CHANNELS_LAST: tl.constexpr, BLOCK: tl.constexpr):
    # out[n, c, h, w] = sum over (i, j) of cols[n, y, x, i, j, c], where h = y*SH + i*DH and
    # w = x*SW + j*DW; out is (N, C, H, W), or (N, H, W, C) with CHANNELS_LAST
    TOTAL: tl.constexpr = N * C * H * W
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    if CHANNELS_LAST:
        c = offs % C
        w = (offs // C) % W
        h = (offs // (C * W)) % H
    else:
        w = offs % W
        h = (offs // W) % H
        c = (offs // (W * H)) % C
    n = offs // (C * H * W)
    acc = tl.full((BLOCK,), 0.0, out_ptr.dtype.element_ty)
    for r in tl.static_range(KH * KW):
        i = KH - 1 - r // KW
        j = KW - 1 - r % KW
        ty = h - i * DH
        tx = w - j * DW
        y = ty // SH
        x = tx // SW
        hit = (ty >= 0) & (tx >= 0) & (ty % SH == 0) & (tx % SW == 0) & (y < OH) & (x < OW)
        acc += tl.load(cols_ptr + ((((n * OH + y) * OW + x) * KH + i) * KW + j) * C + c,
                       mask=hit & (offs < TOTAL), other=0.0)
    tl.store(out_ptr + offs, acc, mask=offs < TOTAL)
'''

# the dtypes the fold kernel takes (it adds in the windows' dtype)
FOLD_DTYPES = {dt.float64: "*fp64", dt.float32: "*fp32", dt.float16: "*fp16"}
FOLD_BLOCK = 1024


def render_fold_kernel(cols_shape: tuple, size: tuple, stride: tuple, dilation: tuple,
                       dtype: dt.DType, channels_last: bool = False) -> TritonKernel:
    """The kernel folding C-contiguous (N, OH, OW, KH, KW, C) windows into a C-contiguous
    (N, C, H, W) image of `size` (H, W), or (N, H, W, C) with `channels_last`, in one launch:
    inputs (windows,), outputs (image,)."""
    if dtype not in FOLD_DTYPES:
        raise ValueError(f"fold kernel: dtype {dtype} is not supported; expected one of "
                         f"{sorted(str(d) for d in FOLD_DTYPES)}")
    n, oh, ow, kh, kw, c = cols_shape
    name = "fold_windows"
    constexprs = dict(N=n, C=c, H=size[0], W=size[1], OH=oh, OW=ow, KH=kh, KW=kw,
                      SH=stride[0], SW=stride[1], DH=dilation[0], DW=dilation[1],
                      CHANNELS_LAST=bool(channels_last), BLOCK=FOLD_BLOCK)
    # the shape in the header: kernels are cached and built by their source text
    header = (f"# {name}: windows [{n},{oh},{ow},{kh},{kw},{c}] summed into an image "
              f"{list(size)}, stride {list(stride)}, dilation {list(dilation)}, {dtype}"
              f"{', channels last' if channels_last else ''} (kiln/codegen/conv_triton.py)\n"
              "import triton\nimport triton.language as tl\n\n")
    signature = {"cols_ptr": FOLD_DTYPES[dtype], "out_ptr": FOLD_DTYPES[dtype]}
    signature.update({k: "constexpr" for k in constexprs})
    grid = (max(1, math.ceil(n * c * size[0] * size[1] / FOLD_BLOCK)),)
    return TritonKernel(name, header + _FOLD.format(name=name).lstrip("\n"),
                        ("cols_ptr", "out_ptr"), signature, constexprs, grid, 4)


__all__ = ["BLOCKS", "BLOCK_CANDIDATES", "ConvGeometry", "ConvKernel", "DTYPES", "FOLD_DTYPES",
           "INPUT_PRECISION", "KINDS", "kernel_source", "render_conv_kernel",
           "render_fold_kernel"]
