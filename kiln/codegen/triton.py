"""The Triton renderer: a `Kernel` description -> readable Triton source and its launch config.

Each op's spelling lives in one table (`OPS`). Only `triton.language` functions and portable
formulas are used (tanh, erf, expm1, log1p are written with exp/log), so the same source runs
in Triton's interpreter and compiles for NVIDIA GPUs. float16 is loaded, computed in float32
and rounded back on store and on casts.

Accesses are written so Triton can move 16 bytes at a time (block offsets, no division in the
contiguous case, full blocks unmasked where a mask would break the vectors). A kernel's block
size is a constexpr and its warps a launch option, so the same source launches with any of
`tuning_candidates` (`TritonKernel.with_config`); `kiln.runtime.triton_tune` picks one per GPU.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from kiln.codegen.common import (INFIX, Comments, compute_dtype, literal_dtype, operand_dtype,
                                 row_passes)
from kiln.codegen.kernel import (ELEM, ROW, Compute, Const, Expr, Kernel, Literal, Load,
                                 LoweringError, Reduce, Store, Var, variables)
from kiln.codegen.scalar import Dialect, decompositions, function_body
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.ops import PRIMITIVES

PERSISTENT_LIMIT = 4096        # rows up to this long are reduced in one block
LOOP_RBLOCK = 1024
SPLIT_TAIL_MIN = 4096          # pointwise kernels longer than this split off their last block


@dataclass(frozen=True)
class TritonKernel:
    """Rendered source plus everything needed to launch or compile it ahead of time."""

    name: str
    source: str
    arg_names: tuple
    signature: dict = field(hash=False)       # arg name -> Triton type ("*fp32", "constexpr")
    constexprs: dict = field(hash=False)      # constexpr arg name -> value
    grid: tuple
    num_warps: int
    layout: str = ""            # "pointwise", "persistent", "rows", "looped"; "" for others
    numel: int = 0              # pointwise: elements; "rows": rows; others: the row's length
    rblock: int = 0             # "rows": the block each row is reduced in

    def with_config(self, block: int, num_warps: int) -> "TritonKernel":
        """The same source launched with block size `block` (its one constexpr) and
        `num_warps` warps: a pointwise kernel's grid follows the block."""
        (name,) = self.constexprs
        grid = (math.ceil(self.numel / block),) if self.layout in ("pointwise", "rows") \
            else self.grid
        return dataclasses.replace(self, constexprs={name: block}, grid=grid,
                                   num_warps=num_warps)

    @property
    def config(self) -> tuple:
        """(block size, warps) this kernel launches with."""
        return (next(iter(self.constexprs.values())), self.num_warps)


# ----------------------------------------------------------------------------- dtype tables

TL_TYPE = {dt.float16: "tl.float16", dt.float32: "tl.float32", dt.float64: "tl.float64",
           dt.int32: "tl.int32", dt.int64: "tl.int64", dt.uint8: "tl.uint8", dt.bool_: "tl.int1",
           dt.int8: "tl.int8", dt.int16: "tl.int16"}
POINTER = {dt.float16: "*fp16", dt.float32: "*fp32", dt.float64: "*fp64", dt.int32: "*i32",
           dt.int64: "*i64", dt.uint8: "*u8", dt.bool_: "*i1",
           dt.int8: "*i8", dt.int16: "*i16"}


# ----------------------------------------------------------------------------- op table

# Each entry: (rendered args, operand dtype, the Compute statement) -> Triton expression. The
# statement gives the result's dtype and the attributes (`cast`, `arange`, `round`).

def _float_or(fn_float, fn_int):
    return lambda a, d, s: fn_float(a, d, s) if d is None or d.is_floating_point else \
        fn_int(a, d, s)


def _no_int(op):
    def fail(a, d, s):
        raise LoweringError(f"{op} of integer tensors is not generated")
    return fail


def _scalar(op: str):
    """An op computed by its primitive's scalar math, as the helper `_<op>`."""
    return lambda a, d, s: f"_{op}({a[0]})"


def _cast(a, d, s):
    if s.dtype is dt.bool_:
        return f"{a[0]} != 0"
    text = f"{a[0]}.to({TL_TYPE[s.dtype]})"
    if s.dtype is dt.float16:
        text += ".to(tl.float32)"          # round to half, keep computing in float
    return text


def _round(a, d, s):
    if s.attr("decimals", 0):
        raise LoweringError("round with decimals is not generated in Triton")
    return _float_or(lambda a, d, s: f"_round_half_even({a[0]})", lambda a, d, s: a[0])(a, d, s)


NAN = "tl.PropagateNan.ALL"

OPS = {
    **{op: (lambda a, d, s, sym=sym: f"{a[0]} {sym} {a[1]}") for op, sym in INFIX.items()},
    "div": _float_or(lambda a, d, s: f"{a[0]} / {a[1]}", _no_int("div")),
    "floordiv": _float_or(lambda a, d, s: f"tl.floor({a[0]} / {a[1]})", _no_int("floordiv")),
    "mod": _float_or(lambda a, d, s: f"_mod({a[0]}, {a[1]})", _no_int("mod")),
    "pow": lambda a, d, s: _pow(a, d),
    "maximum": _float_or(lambda a, d, s: f"tl.maximum({a[0]}, {a[1]}, propagate_nan={NAN})",
                         lambda a, d, s: f"tl.maximum({a[0]}, {a[1]})"),
    "minimum": _float_or(lambda a, d, s: f"tl.minimum({a[0]}, {a[1]}, propagate_nan={NAN})",
                         lambda a, d, s: f"tl.minimum({a[0]}, {a[1]})"),
    "where": lambda a, d, s: f"tl.where({a[0]}, {a[1]}, {a[2]})",
    "neg": lambda a, d, s: f"{a[0]} == 0" if d is dt.bool_ else f"-{a[0]}",
    "bitwise_not": lambda a, d, s: f"{a[0]} == 0" if d is dt.bool_ else f"~{a[0]}",
    "abs": lambda a, d, s: f"tl.abs({a[0]})",
    "relu": lambda a, d, s: f"tl.where({a[0]} <= 0, 0, {a[0]})",   # NaN fails <= and passes
    # an op with scalar math (Primitive.scalar) needs no entry, unless integers differ
    "sign": _float_or(_scalar("sign"),
                      lambda a, d, s: f"tl.where({a[0]} > 0, 1, tl.where({a[0]} < 0, -1, 0))"),
    "exp": lambda a, d, s: f"tl.exp({a[0]})",
    # float32 tanh in half the instructions of the portable formula (float64 keeps that one)
    "tanh": lambda a, d, s: f"_tanh({a[0]})" if s.dtype is dt.float64 else f"_tanh32({a[0]})",
    # float64 erf by libdevice: the scalar formula (Primitive.scalar) is float32-accurate
    "erf": lambda a, d, s: f"tl.math.erf({a[0]})" if s.dtype is dt.float64 else f"_erf({a[0]})",
    "log": lambda a, d, s: f"tl.log({a[0]})",
    "sqrt": lambda a, d, s: f"tl.sqrt({a[0]})",
    "sin": lambda a, d, s: f"tl.sin({a[0]})",
    "cos": lambda a, d, s: f"tl.cos({a[0]})",
    "tan": lambda a, d, s: f"(tl.sin({a[0]}) / tl.cos({a[0]}))",
    "expm1": lambda a, d, s: f"_expm1({a[0]})",
    "floor": _float_or(lambda a, d, s: f"tl.floor({a[0]})", lambda a, d, s: a[0]),
    "ceil": _float_or(lambda a, d, s: f"tl.ceil({a[0]})", lambda a, d, s: a[0]),
    "trunc": _float_or(lambda a, d, s: f"_trunc({a[0]})", lambda a, d, s: a[0]),
    "round": _round,
    "cast": _cast,
    # creation ops, and `index`: a kernel's integer index expression (arange's position)
    "full": lambda a, d, s: f"tl.full([], {_literal(s.args[0].value, s.dtype)}, "
                            f"{TL_TYPE[compute_dtype(s.dtype)]})",
    "arange": lambda a, d, s: f"({s.attr('start')} + {a[0]} * {s.attr('step')})"
                              f".to({TL_TYPE[compute_dtype(s.dtype)]})",
    "index": lambda a, d, s: a[0],
}


def _pow(a, d):
    exponent = a[1]
    try:
        e = float(exponent)
    except ValueError:
        raise LoweringError("pow with a tensor exponent is not generated") from None
    if e == 0.5:
        return f"tl.sqrt({a[0]})"
    if e == int(e) and 1 <= abs(e) <= 4:
        prod = " * ".join([a[0]] * int(abs(e)))
        return f"({prod})" if e > 0 else f"1 / ({prod})"
    if e == 0:
        return f"tl.full([], 1, {TL_TYPE[compute_dtype(d[0])]})" if d[0] else "1"
    raise LoweringError(f"pow with exponent {exponent} is not generated")


# Portable formulas, emitted into the module only when a kernel uses them. Each is accurate to
# about one float32 ulp, and needs no libdevice, so Triton's interpreter runs it too.
HELPERS = {
    "_expm1": '''
@triton.jit
def _expm1(x):
    # Kahan's trick: exact where exp(x) - 1 would cancel
    u = tl.exp(x)
    um1 = u - 1.0
    return tl.where(u == 1.0, x, tl.where(um1 == -1.0, -1.0, um1 * x / tl.log(u)))
''',
    "_tanh32": '''
@triton.jit
def _tanh32(x):
    # float32 tanh within 2 ulp: an odd polynomial (least-squares fit of tanh(x) / x on
    # [0, 0.625], made minimax by reweighting) below 0.625, where 1 - 2 / (exp(2|x|) + 1)
    # would cancel; that formula above (exp overflows to inf for large |x|: the result is 1)
    a = tl.abs(x)
    s = x * x
    p = -5.70498872e-3
    p = p * s + 2.06390899e-2
    p = p * s - 5.37397154e-2
    p = p * s + 1.33314416e-1
    p = p * s - 3.33332807e-1
    small = a + a * s * p
    big = 1.0 - 2.0 / (tl.exp(2.0 * a) + 1.0)
    t = tl.where(a < 0.625, small, big)
    return tl.where(x < 0.0, -t, t)
''',
    "_trunc": '''
@triton.jit
def _trunc(x):
    return tl.where(x < 0, tl.ceil(x), tl.floor(x))
''',
    "_round_half_even": '''
@triton.jit
def _round_half_even(x):
    r = tl.floor(x + 0.5)
    # ties go to the even neighbour, as NumPy rounds
    tie = (r - x) == 0.5
    odd = (r - 2.0 * tl.floor(r * 0.5)) != 0.0
    return tl.where(tie & odd, r - 1.0, r)
''',
    "_mod": '''
@triton.jit
def _mod(a, b):
    # Python's (floored) remainder: the result takes the sign of b
    r = a - b * tl.floor(a / b)
    return r
''',
    # reductions go through tl.reduce with these combiners: tl.sum and tl.max are themselves
    # @triton.jit functions, which Triton's interpreter cannot call unless the whole process
    # was started with TRITON_INTERPRET=1
    "_sum_combine": '''
@triton.jit
def _sum_combine(a, b):
    return a + b
''',
    "_max_combine": '''
@triton.jit
def _max_combine(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)
''',
    "_max_combine_int": '''
@triton.jit
def _max_combine_int(a, b):
    return tl.maximum(a, b)
''',
    "_prod_combine": '''
@triton.jit
def _prod_combine(a, b):
    return a * b
''',
    "_argmax_combine": '''
@triton.jit
def _argmax_combine(v1, i1, v2, i2):
    # NumPy's argmax: the first NaN wins, else the largest value, ties to the lower index
    n1 = v1 != v1
    n2 = v2 != v2
    first = i1 < i2
    larger = (v1 > v2) | ((v1 == v2) & first)
    pick1 = (n1 & ((n2 == 0) | first)) | ((n1 == 0) & (n2 == 0) & larger)
    return tl.where(pick1, v1, v2), tl.where(pick1, i1, i2)
''',
}


# Primitives' scalar math (`Primitive.scalar`, spelled by kiln.codegen.scalar), as @triton.jit
# functions over the base functions of triton.language (and _expm1 above).
TRITON = Dialect({"exp": "tl.exp", "log": "tl.log", "expm1": "_expm1", "abs": "tl.abs"},
                 lambda op: f"_{op}", lambda c, a, b: f"tl.where({c}, {a}, {b})", True,
                 lambda text: text, 'float("inf")')
HELPER_DEPS: dict = {}


def scalar_helpers() -> None:
    """Add a helper to HELPERS for every primitive with scalar math that has none yet, with the
    helpers it calls as its dependencies."""
    for op, rule in decompositions().items():
        name = f"_{op}"
        if name in HELPERS:
            continue
        HELPERS[name] = source = "\n".join(
            ["", "@triton.jit", f"def {name}({', '.join(rule.params)}):",
             f"    # {rule.comment or op}"]
            + [f"    {line}" for line in function_body(rule, TRITON)]) + "\n"
        HELPER_DEPS[name] = tuple(h for h in HELPERS if h != name and f"{h}(" in source)


scalar_helpers()


# ----------------------------------------------------------------------------- rendering

def render_triton(kernel: Kernel, persistent_limit: int = PERSISTENT_LIMIT,
                  loop_rblock: int = LOOP_RBLOCK) -> TritonKernel:
    """Triton source for `kernel`: one `@triton.jit` function plus the helpers it uses.

    Args:
        persistent_limit: longest reduction done by one block; longer ones loop over the row.
        loop_rblock: the block the looped reduction walks the row with.
    """
    r = _Renderer(kernel)
    if not kernel.is_reduction:
        body, block, constexpr = r.pointwise(), _xblock(kernel.numel), "XBLOCK"
        grid = (math.ceil(kernel.numel / block),)
        num_warps = 8 if block >= 2048 else 4
        layout, numel = "pointwise", kernel.numel
    elif kernel.reduced_numel <= persistent_limit and _rows_per_program(kernel) > 1:
        rblock, block = _next_power_of_2(kernel.reduced_numel), _rows_per_program(kernel)
        body, constexpr = r.persistent_rows(rblock), "XBLOCK"
        grid = (math.ceil(kernel.numel / block),)
        num_warps = min(8, max(1, block * rblock // 256))
        layout, numel = "rows", kernel.numel
    elif kernel.reduced_numel <= persistent_limit:
        block = _next_power_of_2(kernel.reduced_numel)
        body, constexpr, grid = r.persistent(), "RBLOCK", (kernel.numel,)
        num_warps = min(16, max(1, block // 256))
        layout, numel = "persistent", kernel.reduced_numel
    else:
        block, constexpr, grid = loop_rblock, "RBLOCK", (kernel.numel,)
        body = r.looped()
        num_warps = min(8, max(1, block // 256))
        layout, numel = "looped", kernel.reduced_numel
    args = [f"{b.name}_ptr" for b in kernel.inputs] + [f"{b.name}_ptr" for b in kernel.outputs]
    signature = {f"{b.name}_ptr": POINTER[b.dtype] for b in kernel.inputs + kernel.outputs}
    signature[constexpr] = "constexpr"
    header = [f"# {kernel.name}: generated by kiln from graph {kernel.source_graph!r}",
              "#   in:  " + ", ".join(map(str, kernel.inputs)),
              "#   out: " + ", ".join(map(str, kernel.outputs)),
              "import triton", "import triton.language as tl", ""]
    helpers = []
    for h in _close_helpers(r.helpers):
        helpers.append(HELPERS[h].strip("\n") + "\n\n\n")
    params = ", ".join(args + [f"{constexpr}: tl.constexpr"])
    lines = ["@triton.jit", f"def {kernel.name}({params}):"] + [f"    {x}" for x in body]
    source = "\n".join(header) + "\n\n" + "".join(helpers) + "\n".join(lines) + "\n"
    return TritonKernel(kernel.name, source, tuple(args), signature, {constexpr: block}, grid,
                        num_warps, layout, numel,
                        _next_power_of_2(kernel.reduced_numel) if layout == "rows" else 0)


ROWS_ELEMENTS = 8192        # a program reducing several rows holds at most this many elements


def _rows_per_program(kernel: Kernel) -> int:
    """How many rows one program of a reduction that fits one block reduces: 1 (a row each),
    or more where a row each would waste the GPU's memory system: rows of at most 64 elements
    (a program would move a few hundred bytes), or rows that are columns in memory (each load
    `rindex * stride + row`: a program per column reads 4 of every 32 bytes it fetches, several
    neighbouring columns per program read whole sectors). Not for argmax (its reduce pairs
    values with indices) nor a single row."""
    n, rows = kernel.reduced_numel, kernel.numel
    if rows <= 1 or any(isinstance(s, Reduce) and s.op == "argmax" for s in kernel.body):
        return 1
    rblock = _next_power_of_2(n)
    strided = any(isinstance(s, Load) and s.scope == ELEM and _strided(kernel, s.offset)
                  for s in kernel.body)
    if n > 64 and not strided:
        return 1
    # enough programs to fill the GPU where the rows allow; whole 32-byte sectors of columns
    xblock = _next_power_of_2(max(1, rows // 256))
    if strided:
        xblock = max(xblock, 8)
    return max(1, min(xblock, ROWS_ELEMENTS // rblock, _next_power_of_2(rows)))


def _strided(kernel: Kernel, offset: Expr) -> bool:
    """Whether an offset steps by more than 1 along the row (rindex) but by 1 from row to row:
    the reduction runs down columns."""
    def at(row: int, rindex: int) -> int:
        env = {"row": row, "rindex": rindex}
        for v in kernel.index_vars:
            env[v.name] = _evaluate(v.expr(), env)
        return _evaluate(offset, env)
    if kernel.reduced_numel < 2:
        return False
    base = at(0, 0)
    return at(0, 1) - base != 1 and at(1, 0) - base == 1


def _evaluate(e: Expr, env: dict) -> int:
    if isinstance(e, Const):
        return e.value
    if isinstance(e, Var):
        return env[e.name]
    a, b = _evaluate(e.a, env), _evaluate(e.b, env)
    return {"+": a + b, "-": a - b, "*": a * b, "//": a // b if b else 0,
            "%": a % b if b else 0}[e.op]


def tuning_candidates(tk: TritonKernel) -> list[tuple]:
    """(block size, warps) configurations worth timing for `tk` on a GPU, its own first; one
    (its own) for kernels with nothing to tune. Its source is the same for each: the block is
    a constexpr, and a pointwise kernel's grid follows it (`TritonKernel.with_config`)."""
    own = tk.config
    if tk.layout == "pointwise":
        # small blocks fill the GPU's SMs on a 1 MB kernel, large ones amortize each program's
        # index math on 100 MB; every thread keeps at least one 16-byte vector per access
        more = [(512, 4), (1024, 4), (1024, 8), (2048, 4), (2048, 8), (4096, 8)]
        more = [(b, w) for b, w in more if b <= max(_next_power_of_2(tk.numel), own[0])]
    elif tk.layout == "persistent":
        block = own[0]                  # the whole row: fixed
        more = [(block, w) for w in (own[1] // 2, own[1] * 2) if 1 <= w <= 16 and block >= 32 * w]
    elif tk.layout == "rows":
        more = [(b, w) for b in (own[0] // 2, own[0] * 2, own[0] * 4) for w in (own[1],)
                if 1 <= b <= max(_next_power_of_2(tk.numel), own[0]) and
                b * tk.rblock <= 2 * ROWS_ELEMENTS]
        more += [(own[0], w) for w in (own[1] // 2, own[1] * 2) if 1 <= w <= 16]
    elif tk.layout == "looped":
        more = [(512, 2), (1024, 4), (1024, 8), (2048, 8), (4096, 8), (4096, 16)]
        more = [(b, w) for b, w in more if b <= max(_next_power_of_2(tk.numel), own[0])]
    else:
        more = []
    return list(dict.fromkeys([own] + more))


def _close_helpers(used: list) -> list:
    """The helpers `used` call, each after the helpers it calls itself."""
    out: list = []

    def add(h):
        for dep in HELPER_DEPS.get(h, ()):
            add(dep)
        if h not in out:
            out.append(h)
    for h in used:
        add(h)
    return out


def _next_power_of_2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def split_tail(numel: int) -> bool:
    """Whether a pointwise kernel over `numel` elements runs its full blocks unmasked: when the
    mask would break 16-byte vectors (numel not a multiple of 16) and there is more than one
    block's worth of elements (small kernels are launch-bound: one body is enough)."""
    return numel % 16 != 0 and numel > SPLIT_TAIL_MIN


def _xblock(numel: int) -> int:
    return min(1024, max(16, _next_power_of_2(numel)))


class _Renderer:
    def __init__(self, kernel: Kernel):
        self.k = kernel
        self.comments = Comments("#")
        self.helpers: list = []
        self.rows = False           # several rows per program (`persistent_rows`)
        self.wide = kernel.numel * max(kernel.reduced_numel, 1) >= 2 ** 31 or any(
            math.prod(b.shape) >= 2 ** 31 for b in kernel.inputs + kernel.outputs)

    # -------------------------------------------------------------- kernel shapes
    def pointwise(self) -> list:
        pid = "tl.program_id(0).to(tl.int64)" if self.wide else "tl.program_id(0)"
        n = self.k.numel
        if not split_tail(n):
            out = [f"xindex = {pid} * XBLOCK + tl.arange(0, XBLOCK)", f"xmask = xindex < {n}"]
            out += self._index_vars(ELEM)
            for s in self.k.body:
                out += self._stmt(s, "xmask")
            return out
        # Triton vectorizes a masked access only when the mask is constant over 16 bytes, which
        # `xindex < n` is not for n off a multiple of 16: full blocks go unmasked (16-byte loads
        # and stores), the one partial block at the end masked
        full, tail = self._index_vars(ELEM), self._index_vars(ELEM)
        for s in self.k.body:
            full += self._stmt(s, None)
            tail += self._stmt(s, "xmask")
        return ([f"xoffset = {pid} * XBLOCK", "xindex = xoffset + tl.arange(0, XBLOCK)",
                 f"if xoffset + XBLOCK <= {n}:", "    # a full block"]
                + [f"    {x}" for x in full]
                + ["else:", f"    xmask = xindex < {n}"] + [f"    {x}" for x in tail])

    def persistent(self) -> list:
        n = self.k.reduced_numel
        pid = "tl.program_id(0).to(tl.int64)" if self.wide else "tl.program_id(0)"
        out = [f"row = {pid}", "rindex = tl.arange(0, RBLOCK)", f"rmask = rindex < {n}"]
        out += self._index_vars(ROW) + self._index_vars(ELEM)
        for s in self.k.body:
            out += self._stmt(s, "rmask")
        return out

    def persistent_rows(self, rblock: int) -> list:
        """XBLOCK rows per program, each reduced in one block of `rblock`: values are
        [XBLOCK, rblock] tiles, a row's values [XBLOCK, 1]."""
        self.rows = True
        n = self.k.reduced_numel
        pid = "tl.program_id(0).to(tl.int64)" if self.wide else "tl.program_id(0)"
        out = [f"row = ({pid} * XBLOCK + tl.arange(0, XBLOCK))[:, None]",
               f"xmask = row < {self.k.numel}",
               f"rindex = tl.arange(0, {rblock})[None, :]", f"rmask = rindex < {n}",
               "rxmask = rmask & xmask"]
        out += self._index_vars(ROW) + self._index_vars(ELEM)
        for s in self.k.body:
            out += self._stmt(s, "rmask")
        return out

    def looped(self) -> list:
        """Loop over the row once per reduction level, then once more to write."""
        n = self.k.reduced_numel
        pid = "tl.program_id(0).to(tl.int64)" if self.wide else "tl.program_id(0)"
        out = [f"row = {pid}"] + self._index_vars(ROW)
        passes, row_stores = row_passes(self.k)
        if any(s.op == "argmax" for p in passes for s in p.reductions):
            raise LoweringError("argmax over a row longer than one block is not generated")
        for i, p in enumerate(passes):
            # row values that only need finished reductions are computed before this pass
            for s in p.before:
                out += self._stmt(s, None)
            for s in p.reductions:
                ident = self._identity(s)
                out.append(f"{s.dest}_acc = tl.full([RBLOCK], {ident}, "
                           f"{TL_TYPE[compute_dtype(s.dtype)]})")
            if p.has_loop:
                out.append(f"# pass {i + 1}: " + (
                    "reduce " + ", ".join(s.dest for s in p.reductions) if p.reductions
                    else "write"))
                out.append(f"for roffset in range(0, {n}, RBLOCK):")
                inner = ["rindex = roffset + tl.arange(0, RBLOCK)", f"rmask = rindex < {n}"]
                inner += self._index_vars(ELEM)
                for s in p.elem:
                    inner += self._stmt(s, "rmask")
                for s in p.reductions:
                    masked = f"tl.where(rmask, {s.src}, {self._identity(s)})"
                    inner.append(f"{s.dest}_acc = " + {
                        "sum": f"{s.dest}_acc + {masked}",
                        "max": f"tl.maximum({s.dest}_acc, {masked}, propagate_nan={NAN})"
                        if s.dtype.is_floating_point else f"tl.maximum({s.dest}_acc, {masked})",
                        "prod": f"{s.dest}_acc * {masked}"}[s.op])
                for s in p.stores:
                    inner += self._stmt(s, "rmask")
                out += ["    " + x for x in inner]
            for s in p.reductions:
                out += self.comments(s)
                out.append(f"{s.dest} = " + self._reduce_text(s, f"{s.dest}_acc"))
        for s in row_stores:
            out += self._stmt(s, None)
        return out

    # -------------------------------------------------------------- statements
    def _index_vars(self, scope: str) -> list:
        return [f"{v.name} = {v.expr()}" for v in self.k.index_vars if v.scope == scope]

    def _stmt(self, s, mask: str | None) -> list:
        if self.rows and isinstance(s, (Load, Store)):
            return self._rows_access(s)
        if isinstance(s, Load):
            buf = self.k.inputs[s.buffer]
            masked = s.scope == ELEM and mask
            text = f"tl.load({buf.name}_ptr + {self._offset(s, masked and mask)}" + (
                f", mask={mask}, other=0)" if masked else ")")
            if s.dtype is dt.float16:
                text += ".to(tl.float32)"
            return [f"{s.dest} = {text}"]
        if isinstance(s, Store):
            buf = self.k.outputs[s.buffer]
            value = s.src if isinstance(s.src, str) else str(s.src)
            if s.dtype is dt.float16:
                value = f"{value}.to(tl.float16)"
            masked = s.scope == ELEM and mask
            return [f"tl.store({buf.name}_ptr + {self._offset(s, masked and mask)}, {value}"
                    + (f", mask={mask})" if masked else ")")]
        if isinstance(s, Reduce):
            ident = self._identity(s)
            return self.comments(s) + [
                f"{s.dest} = " + self._reduce_text(s, f"tl.where(rmask, {s.src}, {ident})")]
        return self.comments(s) + [f"{s.dest} = {self._compute(s)}"]

    def _rows_access(self, s) -> list:
        """A load or store of a program of several rows: element accesses as [XBLOCK, RBLOCK]
        tiles under both masks; a row's, under the row mask where it depends on the row."""
        text = _expr(s.offset)
        names = variables(s.offset)
        row_vars = {"row"} | {v.name for v in self.k.index_vars if v.scope == ROW}
        elem_vars = {"rindex"} | {v.name for v in self.k.index_vars if v.scope == ELEM}
        if s.scope == ELEM:
            mask = "rxmask"
            text += "" if names & elem_vars else " + 0 * rindex"
            text += "" if names & row_vars else " + 0 * row"
        else:
            mask = "xmask" if names & row_vars else None
        if isinstance(s, Load):
            buf = self.k.inputs[s.buffer]
            load = f"tl.load({buf.name}_ptr + {text}" + (
                f", mask={mask}, other=0)" if mask else ")")
            if s.dtype is dt.float16:
                load += ".to(tl.float32)"
            return [f"{s.dest} = {load}"]
        buf = self.k.outputs[s.buffer]
        value = s.src if isinstance(s.src, str) else str(s.src)
        if s.dtype is dt.float16:
            value = f"{value}.to(tl.float16)"
        return [f"tl.store({buf.name}_ptr + {text}, {value}"
                + (f", mask={mask})" if mask else ")")]

    def _offset(self, s, mask: str | None) -> str:
        """A load's or store's offset; under `mask` a block like the mask, even where the offset
        does not vary along the block (every dim of size 1 folds it to a constant)."""
        text = _expr(s.offset)
        if mask:
            block = {v.name for v in self.k.index_vars if v.scope == ELEM} | {"xindex", "rindex"}
            if not variables(s.offset) & block:
                text += f" + 0 * {_BLOCK_INDEX[mask]}"
        return text

    def _compute(self, s: Compute) -> str:
        spelling = OPS.get(s.op)
        if spelling is None and getattr(PRIMITIVES.get(s.op), "scalar", None) is not None:
            if f"_{s.op}" not in HELPERS:
                scalar_helpers()                 # a primitive defined after this module
            spelling = _scalar(s.op)
        if spelling is None:
            raise LoweringError(f"{s.op} has no Triton spelling (kiln.codegen.triton.OPS) and "
                                f"no scalar math (Primitive.scalar)")
        args = [a if isinstance(a, str) else
                _literal(a.value, literal_dtype(s, i)) if isinstance(a, Literal) else _expr(a)
                for i, a in enumerate(s.args)]
        text = spelling(args, operand_dtype(s), s)
        for h in HELPERS:
            if f"{h}(" in text and h not in self.helpers:
                self.helpers.append(h)
        return text

    def _identity(self, s: Reduce) -> str:
        d = compute_dtype(s.dtype) if s.op != "argmax" else None
        if s.op == "sum":
            return "0"
        if s.op == "prod":
            return "1"
        if d is None or d.is_floating_point:
            return 'float("-inf")'
        return str(-2 ** 63 if d is dt.int64 else -2 ** 31 if d is dt.int32 else 0)

    def _reduce_text(self, s: Reduce, src: str) -> str:
        combine = {"sum": "_sum_combine", "prod": "_prod_combine", "argmax": "_argmax_combine",
                   "max": "_max_combine" if compute_dtype(s.dtype).is_floating_point
                   else "_max_combine_int"}[s.op]
        if combine not in self.helpers:
            self.helpers.append(combine)
        if s.op == "argmax":
            return f"tl.reduce(({src}, rindex), 0, {combine})[1].to(tl.int64)"
        if self.rows:
            return f"tl.reduce({src}, 1, {combine}, keep_dims=True)"
        return f"tl.reduce({src}, 0, {combine})"


def _literal(value, d: DType | None) -> str:
    """A Python number in the source; float64 math gets a float64 constant, not a float32 one."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if d is not None and d.is_floating_point or isinstance(value, float):
        v = float(value)
        text = repr(v) if math.isfinite(v) else f'float("{v}")'
        return f"tl.full([], {text}, tl.float64)" if d is dt.float64 else text
    return str(int(value))


_BLOCK_INDEX = {"xmask": "xindex", "rmask": "rindex"}     # the index each mask is made from


def _expr(e: Expr) -> str:
    return str(e)

