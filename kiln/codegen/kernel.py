"""Lowering a fused subgraph to a loop-level kernel description that any renderer can consume.

A `Kernel` is an iteration space (kept dims x reduced dims), loads whose index expressions fold
broadcasting and views (reshape/permute/expand/slice/flip) into arithmetic on the input
buffers, scalar ops in SSA, reductions and stores. Every value is computed "at a coordinate":
lowering walks back from each output at its own coordinates, so a view of a computed value is
recomputed at the moved coordinates instead of materialized. What cannot be expressed this way
(reductions over different axes, cumsum, pad/cat, indexing, matmul) raises `LoweringError`, and
the caller runs the group another way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Union

from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.graph import Graph, Node, Value, format_call, kernel_name
from kiln.ir.ops import CREATION, ELEMENTWISE, MOVEMENT, REDUCE, PRIMITIVES
from kiln.ir.schedule import padded_pieces


class LoweringError(Exception):
    """The subgraph has a shape of computation this code generator does not handle."""


# ----------------------------------------------------------------------------- index expressions

@dataclass(frozen=True)
class Var:
    """A named integer index: a coordinate (`x0`, `r1`) or a linear index (`xindex`, `rindex`)."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class Const:
    value: int

    def __str__(self) -> str:
        return str(self.value)


@dataclass(frozen=True)
class BinOp:
    """`a op b` on non-negative integers; op is one of + * // %."""

    op: str
    a: "Expr"
    b: "Expr"

    def __str__(self) -> str:
        left = f"({self.a})" if isinstance(self.a, BinOp) and _PREC[self.a.op] < _PREC[self.op] \
            else str(self.a)
        associative = self.op == getattr(self.b, "op", None) and self.op in "+*"
        tight = isinstance(self.b, BinOp) and not associative and (
            _PREC[self.b.op] <= _PREC[self.op])
        return f"{left} {self.op} " + (f"({self.b})" if tight else str(self.b))


_PREC = {"+": 1, "-": 1, "*": 2, "//": 2, "%": 2}


Expr = Union[Var, Const, BinOp]


def add(a: Expr, b: Expr) -> Expr:
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value + b.value)
    if a == Const(0):
        return b
    if b == Const(0):
        return a
    whole = _digits_sum(a, b)
    if whole is not None:
        return whole
    if isinstance(a, BinOp) and a.op == "+":    # ... + x // k * k, then + x % k
        whole = _digits_sum(a.b, b)
        if whole is not None:
            return add(a.a, whole)
    return BinOp("+", a, b)


def _digits_sum(a: Expr, b: Expr) -> Expr | None:
    """`x // k * k + x % k` is `x`, and `x // k % m * k + x % k` is `x % (k * m)` (x >= 0,
    as every index is): a coordinate split by `unravel` and joined again by `linearize`."""
    for hi, lo in ((a, b), (b, a)):
        if not (isinstance(lo, BinOp) and lo.op == "%" and isinstance(lo.b, Const) and
                isinstance(hi, BinOp) and hi.op == "*" and hi.b == lo.b):
            continue
        x, k = lo.a, lo.b.value
        if hi.a == BinOp("//", x, lo.b):
            return x
        q = hi.a
        if isinstance(q, BinOp) and q.op == "%" and isinstance(q.b, Const) and \
                q.a == BinOp("//", x, lo.b):
            return mod(x, k * q.b.value)
    return None


def mul(a: Expr, b: Expr | int) -> Expr:
    b = Const(b) if isinstance(b, int) else b
    if isinstance(a, Const) and isinstance(b, Const):
        return Const(a.value * b.value)
    if Const(0) in (a, b):
        return Const(0)
    if a == Const(1):
        return b
    if b == Const(1):
        return a
    return BinOp("*", a, b)


def floordiv(a: Expr, n: int) -> Expr:
    if n == 1:
        return a
    if isinstance(a, Const):
        return Const(a.value // n)
    return BinOp("//", a, Const(n))


def mod(a: Expr, n: int) -> Expr:
    if n == 1:
        return Const(0)
    if isinstance(a, Const):
        return Const(a.value % n)
    return BinOp("%", a, Const(n))


def variables(e: Expr) -> set:
    if isinstance(e, Var):
        return {e.name}
    if isinstance(e, BinOp):
        return variables(e.a) | variables(e.b)
    return set()


def _linear_terms(e: Expr, scale: int, terms: dict) -> int:
    """Add `scale * e` to `terms` (subexpression -> coefficient); returns its constant part."""
    if isinstance(e, Const):
        return scale * e.value
    if isinstance(e, BinOp):
        if e.op in ("+", "-"):
            return _linear_terms(e.a, scale, terms) + _linear_terms(
                e.b, scale if e.op == "+" else -scale, terms)
        if e.op == "*" and isinstance(e.b, Const):
            return _linear_terms(e.a, scale * e.b.value, terms)
        if e.op == "*" and isinstance(e.a, Const):
            return _linear_terms(e.b, scale * e.a.value, terms)
    terms[e] = terms.get(e, 0) + scale
    return 0


def merge_digits(e: Expr, index_vars: tuple) -> Expr:
    """`e` with each run of coordinates that spells out part of its linear index written as
    that part: (r0 * 64 + r2 * 8 + r3) * 16, where r0, r2 and r3 are rindex's digits, becomes
    rindex * 16. An offset through a reshape and back (a permuted view read in its own order)
    then costs no division per element."""
    terms: dict = {}
    const = _linear_terms(e, 1, terms)
    if const < 0 or any(c <= 0 for c in terms.values()):
        return e                # index expressions stay sums of non-negative terms
    digit = {iv.name: iv for iv in index_vars}
    by_linear: dict = {}        # linear index -> {divisor: (IndexVar, coefficient)}
    for t, c in terms.items():
        iv = digit.get(t.name) if isinstance(t, Var) else None
        if iv is not None:
            by_linear.setdefault(iv.linear, {})[iv.divisor] = (iv, c)
    merged = False
    for linear, digits in by_linear.items():
        for low in sorted(digits):
            if low not in digits:
                continue                        # part of an earlier run
            iv, c = digits[low]
            if c % low:
                continue
            scale, run = c // low, [iv]
            while iv.size and digits.get(iv.divisor * iv.size, (None, 0))[1] == \
                    scale * iv.divisor * iv.size:
                iv = digits[iv.divisor * iv.size][0]
                run.append(iv)
            if len(run) < 2:
                continue
            for x in run:
                del terms[Var(x.name)]
                del digits[x.divisor]
            part = floordiv(Var(linear), low)
            if run[-1].size:
                part = mod(part, math.prod(x.size for x in run))
            terms[part] = terms.get(part, 0) + scale * low
            merged = True
    if not merged:
        return e
    out: Expr = Const(const)
    for t, c in terms.items():
        out = add(out, mul(t, c))
    return out


def contiguous_strides(shape: tuple) -> tuple:
    strides, acc = [], 1
    for d in reversed(shape):
        strides.append(acc)
        acc *= d
    return tuple(reversed(strides))


def linearize(coords: tuple, shape: tuple) -> Expr:
    out: Expr = Const(0)
    for c, s, d in zip(coords, contiguous_strides(shape), shape):
        if d != 1:
            out = add(out, mul(c, s))
    return out


def unravel(linear: Expr, shape: tuple) -> tuple:
    """Coordinates of a row-major linear index `linear` < prod(shape)."""
    out = []
    for i, (s, d) in enumerate(zip(contiguous_strides(shape), shape)):
        if d == 1:
            out.append(Const(0))
        elif i == 0 or math.prod(shape[:i]) == 1:
            out.append(floordiv(linear, s))          # linear < prod(shape): no wrap-around
        else:
            out.append(mod(floordiv(linear, s), d))
    return tuple(out)


# ----------------------------------------------------------------------------- the description

ROW, ELEM = "row", "elem"


@dataclass(frozen=True)
class Buffer:
    """A kernel argument: a contiguous array of `shape` and `dtype`."""

    name: str
    shape: tuple
    dtype: DType

    def __str__(self) -> str:
        return f"{self.name}: {self.dtype.short}[{','.join(map(str, self.shape))}]"


@dataclass(frozen=True)
class IndexVar:
    """`name = (linear // divisor) % size`: one coordinate of the iteration space."""

    name: str
    linear: str
    divisor: int
    size: int           # 0: no modulus needed
    scope: str

    def expr(self) -> Expr:
        e = floordiv(Var(self.linear), self.divisor)
        return mod(e, self.size) if self.size else e

    def __str__(self) -> str:
        return f"{self.name} = {self.expr()}"


@dataclass(frozen=True)
class Literal:
    value: object

    def __str__(self) -> str:
        return repr(self.value)


@dataclass(frozen=True)
class Load:
    dest: str
    buffer: int
    offset: Expr
    dtype: DType
    scope: str

    def __str__(self) -> str:
        return f"{self.dest}: {self.dtype.short} = load in{self.buffer}[{self.offset}]"


@dataclass(frozen=True)
class Compute:
    """`dest = op(args)`; `note` is the IR node it comes from and `loc` the user's line."""

    dest: str
    op: str
    args: tuple                 # SSA names (str), Literal, or an index Expr (op `index`)
    attrs: tuple
    dtype: DType                # result dtype
    arg_dtypes: tuple           # dtype of each argument (None for literals)
    scope: str
    note: str = ""
    loc: str = ""
    group: tuple = ()           # the node's provenance scope (`("gelu",)`), for comment headers

    def attr(self, name: str, default=None):
        """The value of attribute `name` (a renderer's table entry reads `decimals`, `start`)."""
        return dict(self.attrs).get(name, default)

    def __str__(self) -> str:
        args = ", ".join(map(str, self.args))
        attrs = "".join(f", {k}={v}" for k, v in self.attrs)
        return f"{self.dest}: {self.dtype.short} = {self.op}({args}{attrs})    # {self.note}"


@dataclass(frozen=True)
class Reduce:
    dest: str
    op: str                     # sum | max | prod | argmax
    src: str
    dtype: DType
    level: int                  # reductions of level k read results of levels < k only
    note: str = ""
    loc: str = ""
    group: tuple = ()

    @property
    def scope(self) -> str:
        return ROW

    def __str__(self) -> str:
        return f"{self.dest}: {self.dtype.short} = reduce_{self.op}({self.src})  " \
               f"[level {self.level}]    # {self.note}"


@dataclass(frozen=True)
class Store:
    buffer: int
    offset: Expr
    src: str
    dtype: DType
    scope: str

    def __str__(self) -> str:
        return f"store out{self.buffer}[{self.offset}] = {self.src}"


Stmt = Union[Load, Compute, Reduce, Store]


@dataclass(frozen=True)
class Kernel:
    """One fused loop nest: for each kept index, for each reduced index, the body.

    A pointwise kernel has no reduced dims: `kept` is its output shape, flattened to `xindex`.
    A reduction kernel runs one row per kept index (`row`) over `rindex` in the reduced dims.
    `reduced_leading` says the reduced dims come first in the domain (a sum over the batch
    dim): element (row, rindex) then lies at `rindex * numel + row`, so a row's elements are
    `numel` apart and neighbouring rows are neighbours in memory.
    """

    name: str
    inputs: tuple
    outputs: tuple
    kept: tuple
    reduced: tuple
    index_vars: tuple
    body: tuple
    source_graph: str = ""
    reduced_leading: bool = False

    @property
    def is_reduction(self) -> bool:
        return bool(self.reduced)

    @property
    def numel(self) -> int:
        return math.prod(self.kept)

    @property
    def reduced_numel(self) -> int:
        return math.prod(self.reduced)

    def __str__(self) -> str:
        kind = f"reduction rows={self.numel} x {self.reduced_numel}" if self.is_reduction \
            else f"pointwise numel={self.numel}"
        lines = [f"kernel {self.name} ({kind})",
                 "  in:  " + ", ".join(map(str, self.inputs)),
                 "  out: " + ", ".join(map(str, self.outputs))]
        lines += [f"  {v}" for v in self.index_vars]
        lines += [f"  [{s.scope}] {s}" for s in self.body]
        return "\n".join(lines)


# ----------------------------------------------------------------------------- lowering

def lower(graph: Graph, name: str | None = None) -> Kernel:
    """Lower a fused subgraph (elementwise, reductions, views, creation) to a `Kernel`.

    Raises:
        LoweringError: the group needs something this generator does not do; run it otherwise.
    """
    return _Lowering(graph).run(name)


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.producer = graph.producers()
        self.body: list = []
        self.memo: dict = {}            # (Value, coords) -> (ssa name, scope, level)
        self.loads: dict = {}           # (buffer index, offset) -> ssa name
        self.names: dict = {}           # Value -> how many times it has been emitted
        self.taken: set = set()         # every name `_fresh` handed out
        self.input_index = {v: i for i, v in enumerate(graph.inputs)}
        for n in graph.nodes:
            prim = PRIMITIVES[n.op]
            if prim.kind not in (ELEMENTWISE, REDUCE, MOVEMENT, CREATION):
                raise LoweringError(f"{n.op} ({prim.kind}) cannot be fused into a generated "
                                    f"kernel")
            if prim.extern:
                raise LoweringError(f"{n.op} is not supported by the kernel generator yet")
        if graph.constants:
            raise LoweringError("a fused subgraph must take constants as buffer inputs")
        if not graph.outputs:
            raise LoweringError("the subgraph has no outputs")

    # -------------------------------------------------------------- iteration space
    def run(self, name: str | None) -> Kernel:
        reductions = [n for n in self.graph.nodes if n.prim.kind == REDUCE]
        # outputs that are sums of padded pieces side by side that the kernel computes (fusion
        # puts them there): stored piece by piece, in a pointwise kernel over their shape
        users, outs = self.graph.users(), set(self.graph.outputs)
        self.padded = {} if reductions else {
            v: info for v in self.graph.outputs
            if (info := padded_pieces(v, self.producer, users, outs - {v})) is not None and
            all(piece in self.producer for _, piece in info[1])}
        if reductions:
            self._reduction_space(reductions)
        else:
            self._pointwise_space()
        for i, v in enumerate(self.graph.outputs):
            if v in self.padded:
                self._store_pieces(i, v)
                continue
            # a reshape keeps the row-major order: store what it reshapes at that value's
            # offset (log_softmax's result flattened for a gather)
            while self.reduced and v.shape not in self._row_shapes() and \
                    getattr(self.producer.get(v), "op", None) == "reshape":
                v = self.producer[v].inputs[0]
            place = self._output_place(v)
            if len(place) == 3:         # stored as the view of another value it is
                v, place = place[0], place[1:]
            coords, offset = place
            src, scope, _ = self.emit(v, coords)
            # the store's lanes are the offset's: a constant stored across a block still
            # needs the block's mask
            if self._scope_of(offset) == ELEM:
                scope = ELEM
            self.body.append(Store(i, offset, src, v.dtype, scope))
        if name is None:
            name = kernel_name(self.graph.nodes)
        used = set()
        for s in self.body:
            if isinstance(s, (Load, Store)):
                used |= variables(s.offset)
            elif isinstance(s, Compute) and s.op == "index":      # arange's position
                used |= variables(s.args[0])
        index_vars = tuple(v for v in self.index_vars if v.name in used)
        inputs = tuple(Buffer(_arg_name(v, "in", i), v.shape, v.dtype)
                       for i, v in enumerate(self.graph.inputs))
        outputs = tuple(Buffer(f"out{i}", v.shape, v.dtype)
                        for i, v in enumerate(self.graph.outputs))
        leading = bool(self.axes) and self.axes == tuple(range(len(self.axes)))
        return Kernel(name, inputs, outputs, self.kept, self.reduced, index_vars,
                      tuple(self.body), self.graph.name, leading)

    def _store_pieces(self, i: int, v: Value) -> None:
        """Output i, a sum of padded pieces side by side (`padded`): each piece, computed at
        the domain's coordinates, stored at its place in v; the pads and sums never run."""
        axis, pieces, _ = self.padded[v]
        for lo, piece in pieces:
            coords = tuple(add(c, Const(lo)) if a == axis else c
                           for a, c in enumerate(self.coords))
            offset = self._offset(v.shape, coords)
            src, scope, _ = self.emit(piece, self.coords)
            if self._scope_of(offset) == ELEM:
                scope = ELEM
            self.body.append(Store(i, offset, src, v.dtype, scope))

    def _pointwise_space(self) -> None:
        # over the pieces' shape when outputs are stored piece by piece (`padded`); other
        # outputs then have as many elements (fusion's one size per kernel)
        pieces = [info[1][0][1].shape for info in self.padded.values()]
        shape = pieces[0] if pieces else self.graph.outputs[0].shape
        self.kept, self.reduced, self.domain = tuple(shape), (), tuple(shape)
        self.axes: tuple = ()
        self.index_vars = tuple(
            IndexVar(f"x{i}", "xindex", s, 0 if i == 0 else d, ELEM)
            for i, (s, d) in enumerate(zip(contiguous_strides(shape), shape)))
        self.coords = tuple(Const(0) if d == 1 else Var(f"x{i}") for i, d in enumerate(shape))
        self.linear = {"x": Var("xindex")}
        self.padded = {v: info for v, info in self.padded.items()
                       if info[1][0][1].shape == self.domain}

    def _reduction_space(self, reductions: list) -> None:
        first = reductions[0]
        src = first.inputs[0]
        axes = _axes(first)
        for n in reductions[1:]:
            if n.inputs[0].shape != src.shape or _axes(n) != axes:
                raise LoweringError(
                    f"reductions over different iteration spaces: {first.op} over axes "
                    f"{axes} of {list(src.shape)} and {n.op} over axes {_axes(n)} of "
                    f"{list(n.inputs[0].shape)}")
        shape = src.shape
        self.domain, self.axes = tuple(shape), axes
        self.reduce_sources = list(dict.fromkeys(n.inputs[0] for n in reductions))
        kept_axes = [a for a in range(len(shape)) if a not in axes]
        self.kept = tuple(shape[a] for a in kept_axes)
        self.reduced = tuple(shape[a] for a in axes)
        if math.prod(self.reduced) == 0:
            raise LoweringError("reduction over an empty dimension")
        index_vars, coords = [], [Const(0)] * len(shape)
        for group, linear, prefix, scope in ((kept_axes, "row", "x", ROW),
                                             (list(axes), "rindex", "r", ELEM)):
            sizes = tuple(shape[a] for a in group)
            for j, (a, s, d) in enumerate(zip(group, contiguous_strides(sizes), sizes)):
                if d == 1:
                    continue
                if len([x for x in sizes if x != 1]) == 1:
                    coords[a] = Var(linear)            # the only non-trivial dim: no arithmetic
                    continue
                index_vars.append(IndexVar(f"{prefix}{a}", linear, s,
                                           0 if math.prod(sizes[:j]) == 1 else d, scope))
                coords[a] = Var(f"{prefix}{a}")
        self.index_vars = tuple(index_vars)
        self.coords = tuple(coords)
        self.kept_coords = tuple(coords[a] for a in kept_axes)

    def _row_shapes(self) -> tuple:
        """The shapes a reduction kernel's outputs can have: the domain, or one per row."""
        kept = tuple(d for i, d in enumerate(self.domain) if i not in self.axes)
        keep = tuple(1 if i in self.axes else d for i, d in enumerate(self.domain))
        return (self.domain, kept, keep)

    def _output_place(self, v: Value) -> tuple:
        """The coordinates an output is computed at and the offset it is stored to; or, for an
        output stored as the view of another value it is, that value first."""
        if not self.reduced:
            if v.shape == self.domain:
                return self.coords, self._offset(v.shape, self.coords)
            if math.prod(v.shape) == math.prod(self.domain):
                coords = unravel(Var("xindex"), v.shape)
                return coords, Var("xindex")
            raise LoweringError(f"outputs of different sizes in one pointwise kernel: "
                                f"{list(self.domain)} and {list(v.shape)}")
        if v.shape == self.domain:
            return self.coords, self._offset(v.shape, self.coords)
        _, kept_shape, keep_shape = self._row_shapes()
        if v.shape == keep_shape:
            coords = tuple(Const(0) if i in self.axes else c for i, c in enumerate(self.coords))
        elif v.shape == kept_shape:
            coords = self.kept_coords
        elif math.prod(v.shape) == math.prod(self.domain):
            aligned = self._aligned_place(v)
            if aligned is not None:
                return aligned
            # an element output of another shape: the domain's element at the same position
            linear = linearize(self.coords, self.domain)
            return unravel(linear, v.shape), linear
        elif math.prod(v.shape) == math.prod(kept_shape):
            # a row output of another shape (a max-pool's result flattened, then dropout): the
            # row's value at the same row-major position
            return unravel(Var("row"), v.shape), Var("row")
        else:
            raise LoweringError(f"output of shape {list(v.shape)} fits neither the rows nor "
                                f"the elements of the reduction over {list(self.domain)}")
        return coords, self._offset(v.shape, coords)

    def _aligned_place(self, v: Value) -> tuple | None:
        """(value to compute, its coordinates, offset) for an element output whose shape is
        not the domain's: stored where the domain's element lands rather than at the same
        linear position, when reshapes and permutes (bijections) relate the two. Each of its
        elements is still written once, and it is computed at the coordinates the reduction
        already reads, with no division to map one layout onto the other (max-pool's ReLU
        mask, stored in the conv output's layout while the kernel walks the pooling windows;
        the conv gradient written channels-last for its GEMM). None if unrelated."""
        # v is a view of a value of the domain's shape (a conv output's gradient handed to its
        # GEMM channels-last): that value at the kernel's coordinates, stored at v's place
        chain, w = [], v
        while w.shape != self.domain:
            n = self.producer.get(w)
            if n is None or n.op not in ("reshape", "permute"):
                break
            chain.append(n)
            w = n.inputs[0]
        if w.shape == self.domain and chain:
            coords = self.coords
            for n in reversed(chain):
                coords = _unmove(n, coords)
            return w, self.coords, merge_digits(linearize(coords, v.shape), self.index_vars)
        # the reductions' source is a view of a value of v's shape: compute v at the
        # coordinates of that value that the reduction reads
        for src in self.reduce_sources:
            w, coords = src, self.coords
            while w.shape != v.shape:
                n = self.producer.get(w)
                if n is None or n.op not in ("reshape", "permute"):
                    break
                coords, w = _move(n, coords), n.inputs[0]
            if w.shape == v.shape and w is not src:
                return v, coords, merge_digits(linearize(coords, v.shape), self.index_vars)
        return None

    def _offset(self, shape: tuple, coords: tuple) -> Expr:
        """Offset of `coords` into a contiguous buffer of `shape`, with fast paths."""
        if shape == self.domain and coords == self.coords:
            if not self.reduced:
                return Var("xindex")
            if self.axes == tuple(range(len(shape) - len(self.axes), len(shape))):
                return add(mul(Var("row"), math.prod(self.reduced)), Var("rindex"))
        return merge_digits(linearize(coords, shape), self.index_vars)

    # -------------------------------------------------------------- values at coordinates
    def emit(self, v, coords: tuple) -> tuple:
        """SSA name, scope and reduction level of value `v` at `coords`."""
        if not isinstance(v, Value):
            return Literal(v), ROW, -1
        key = (v, coords)
        if key in self.memo:
            return self.memo[key]
        if v in self.input_index:
            result = self._load(v, coords)
        else:
            result = self._node(self.producer[v], coords)
        self.memo[key] = result
        return result

    def _fresh(self, v: Value) -> str:
        base = v.name if v.name.isidentifier() else f"v{v.id}"
        k = self.names.get(v, 0)
        name = base if k == 0 else f"{base}_{k}"
        while name in self.taken:       # another value's name or copy ("x_1" beside x's copy)
            k += 1
            name = f"{base}_{k}"
        self.names[v] = k + 1
        self.taken.add(name)
        return name

    def _scope_of(self, e: Expr) -> str:
        elem = {"xindex", "rindex"} | {iv.name for iv in self.index_vars if iv.scope == ELEM}
        return ELEM if variables(e) & elem else ROW

    def _load(self, v: Value, coords: tuple) -> tuple:
        buf = self.input_index[v]
        offset = self._offset(v.shape, coords)
        key = (buf, offset)
        if key not in self.loads:
            dest = self._fresh(v)
            self.loads[key] = (dest, self._scope_of(offset), -1)
            self.body.append(Load(dest, buf, offset, v.dtype, self._scope_of(offset)))
        return self.loads[key]

    def _node(self, n: Node, coords: tuple) -> tuple:
        kind = n.prim.kind
        attrs = n.attr_dict
        if kind == MOVEMENT:
            if n.op == "pad":
                return self._pad(n, coords)
            return self.emit(n.inputs[0], _move(n, coords))
        note = _note(n)
        if kind == CREATION:
            dest = self._fresh(n.out)
            if n.op == "full":
                self.body.append(Compute(dest, "full", (Literal(attrs["value"]),), (),
                                         n.out.dtype, (None,), ROW, note, n.loc, n.scope))
                return dest, ROW, -1
            start, step = attrs["start"], attrs["step"]
            if n.out.dtype is dt.int64 and type(start) is int and type(step) is int and \
                    (start, step) == (0, 1):     # the index itself: no `0 + idx * 1`
                self.body.append(Compute(dest, "index", (coords[0],), (), dt.int64, (None,),
                                         self._scope_of(coords[0]), note, n.loc, n.scope))
                return dest, self._scope_of(coords[0]), -1
            idx = self._index_value(coords[0])
            self.body.append(Compute(dest, "arange", (idx,), (("start", start), ("step", step)),
                                     n.out.dtype, (dt.int64,), self._scope_of(coords[0]),
                                     note, n.loc, n.scope))
            return dest, self._scope_of(coords[0]), -1
        if kind == REDUCE:
            return self._reduce(n, coords, note)
        args, arg_dtypes, scope, level = [], [], ROW, -1
        for x in n.inputs:
            xc = _broadcast_coords(x.shape, coords) if isinstance(x, Value) else ()
            name, s, lv = self.emit(x, xc)
            args.append(name)
            arg_dtypes.append(x.dtype if isinstance(x, Value) else None)
            scope = ELEM if s == ELEM else scope
            level = max(level, lv)
        dest = self._fresh(n.out)
        self.body.append(Compute(dest, n.op, tuple(args), n.attrs, n.out.dtype,
                                 tuple(arg_dtypes), scope, note, n.loc, n.scope))
        return dest, scope, level

    def _pad(self, n: Node, coords: tuple) -> tuple:
        """A constant pad: the input read at coordinates wrapped into range (so every load is
        in bounds), kept where all coordinates fall inside the input, the pad value elsewhere."""
        attrs = n.attr_dict
        pads, src = attrs["pads"], n.inputs[0].shape
        if any(lo < 0 or hi < 0 for lo, hi in pads):
            raise LoweringError(f"{_note(n)}: a pad that crops is not generated")
        inner, inside, scope = [], None, ROW
        for c, (lo, hi), d in zip(coords, pads, src):
            if lo == 0 and hi == 0:
                inner.append(c)
                continue
            # (c - lo) mod d, written with a non-negative left side
            inner.append(mod(add(c, Const(-lo % d)), d) if d > 1 else Const(0))
            idx = self._index_value(c)
            for op, bound in (("ge", lo),) * (lo > 0) + (("lt", lo + d),) * (hi > 0):
                test = f"inside{len(self.body)}"
                self.body.append(Compute(test, op, (idx, Literal(bound)), (), dt.bool_,
                                         (dt.int64, None), self._scope_of(c)))
                if inside is not None:
                    both = f"inside{len(self.body)}"
                    self.body.append(Compute(both, "bitwise_and", (inside, test), (),
                                             dt.bool_, (dt.bool_, dt.bool_),
                                             ELEM if ELEM in (scope, self._scope_of(c))
                                             else ROW))
                    test = both
                inside = test
            scope = ELEM if self._scope_of(c) == ELEM else scope
        value, vscope, level = self.emit(n.inputs[0], tuple(inner))
        if inside is None:
            return value, vscope, level
        dest = self._fresh(n.out)
        self.body.append(Compute(dest, "where", (inside, value, Literal(attrs["value"])), (),
                                 n.out.dtype, (dt.bool_, n.out.dtype, None),
                                 ELEM if ELEM in (scope, vscope) else ROW, _note(n), n.loc,
                                 n.scope))
        return dest, ELEM if ELEM in (scope, vscope) else ROW, level

    def _index_value(self, e: Expr) -> str:
        """An SSA name holding the integer index expression `e` (for arange)."""
        dest = f"idx{len(self.body)}"
        self.body.append(Compute(dest, "index", (e,), (), dt.int64, (None,),
                                 self._scope_of(e)))
        return dest

    def _reduce(self, n: Node, coords: tuple, note: str) -> tuple:
        attrs = n.attr_dict
        keepdim = attrs["keepdim"]
        axes = _axes(n)
        if keepdim:
            kept = tuple(c for i, c in enumerate(coords) if i not in axes)
        else:
            kept = coords
        # a row coordinate spelled out as its digit of `row` (read through a reshape of the rows)
        digit = {v.expr(): Var(v.name) for v in self.index_vars if v.scope == ROW}
        kept = tuple(digit.get(_digit_form(c), c) for c in kept)
        if kept != self.kept_coords:
            raise LoweringError(f"{note}: its result is read at other rows than the kernel "
                                f"computes it for (a view between reductions)")
        key = (n.out, "reduced")
        if key in self.memo:
            return self.memo[key]
        src, scope, level = self.emit(n.inputs[0], self.coords)
        if scope != ELEM:
            raise LoweringError(f"{note}: reduced value does not vary along the reduction")
        op = "argmax" if n.op == "argmax" else n.op
        if n.out.dtype is dt.bool_ or n.inputs[0].dtype is dt.bool_:
            raise LoweringError(f"{note}: reductions of bool tensors are not generated")
        dest = self._fresh(n.out)
        self.body.append(Reduce(dest, op, src, n.out.dtype, level + 1, note, n.loc, n.scope))
        self.memo[key] = (dest, ROW, level + 1)
        return self.memo[key]


# ----------------------------------------------------------------------------- coordinate maps

def shared_form(kernel: Kernel, fixed: frozenset = frozenset()) -> tuple:
    """(kernel', shifts, key): `kernel` with each input's constant offset taken out of its loads
    (`shifts`: per input, the elements its pointer moves by; inputs in `fixed` keep theirs) and
    its SSA values numbered in order. Kernels with equal keys compute alike on moved pointers:
    an RNN's cell at each time step reads its own rows of one precomputed input projection, and
    one function serves them all (`kiln.codegen.lower`)."""
    loads: dict = {}            # input -> [(load index in the body, variable part, constant)]
    for i, st in enumerate(kernel.body):
        if isinstance(st, Load):
            rest, const = _constant_part(st.offset)
            loads.setdefault(st.buffer, []).append((i, rest, const))
    body = list(kernel.body)
    shifts = [0] * len(kernel.inputs)
    for b, found in loads.items():
        low = min(c for _, _, c in found)
        if b in fixed or low <= 0:
            continue
        shifts[b] = low
        for i, rest, const in found:
            body[i] = replace(body[i], offset=add(rest, Const(const - low)))
    names = {}
    for st in body:
        if not isinstance(st, Store):
            names[st.dest] = f"t{len(names)}"

    def renamed(st):
        if isinstance(st, Load):
            return replace(st, dest=names[st.dest])
        if isinstance(st, Compute):
            return replace(st, dest=names[st.dest], args=tuple(
                names.get(a, a) if isinstance(a, str) else a for a in st.args))
        if isinstance(st, Reduce):
            return replace(st, dest=names[st.dest], src=names[st.src])
        return replace(st, src=names[st.src])
    out = replace(kernel, body=tuple(renamed(st) for st in body))
    # what the C text depends on but its comments (a statement's IR node, its user line)
    key = (out.inputs, out.outputs, out.kept, out.reduced, out.index_vars, out.reduced_leading,
           tuple(replace(st, note="", loc="", group=()) if isinstance(st, (Compute, Reduce))
                 else st for st in out.body))
    return out, tuple(shifts), key


def _constant_part(e: Expr) -> tuple:
    """(rest, c) with e == rest + c, c taken out of e's sums and constant multiples."""
    if isinstance(e, Const):
        return Const(0), e.value
    if isinstance(e, BinOp) and e.op == "+":
        (a, ca), (b, cb) = _constant_part(e.a), _constant_part(e.b)
        return add(a, b), ca + cb
    if isinstance(e, BinOp) and e.op == "*" and isinstance(e.b, Const):
        a, c = _constant_part(e.a)
        return mul(a, e.b), c * e.b.value
    return e, 0


def _digit_form(e: Expr) -> Expr:
    """`e` with remainders and quotients of a non-negative index combined into one digit,
    `a // k % m`: `(a % 128) // 4` is `a // 4 % 32`, `(a % 128) % 2` is `a % 2`, and
    `a // 2 // 4` is `a // 8` (the rows' digits as a reshape of the rows spells them)."""
    if not isinstance(e, BinOp) or e.op not in ("//", "%") or not isinstance(e.b, Const):
        return e
    a, k = _digit_form(e.a), e.b.value
    if isinstance(a, BinOp) and isinstance(a.b, Const) and a.op == "%" and a.b.value % k == 0:
        if e.op == "//":
            return mod(_digit_form(floordiv(a.a, k)), a.b.value // k)
        return _digit_form(mod(a.a, k))
    if isinstance(a, BinOp) and isinstance(a.b, Const) and a.op == "//" and e.op == "//":
        return floordiv(a.a, a.b.value * k)
    return floordiv(a, k) if e.op == "//" else mod(a, k)


def _axes(n: Node) -> tuple:
    attrs = n.attr_dict
    axes = attrs["axes"] if "axes" in attrs else (attrs["axis"],)
    ndim = len(n.inputs[0].shape)
    return tuple(sorted(a % max(ndim, 1) for a in axes)) if ndim else ()


def _broadcast_coords(shape: tuple, coords: tuple) -> tuple:
    """Coordinates into an input of `shape` broadcast (NumPy rules) to `len(coords)` dims."""
    lead = len(coords) - len(shape)
    return tuple(Const(0) if d == 1 else coords[lead + i] for i, d in enumerate(shape))


def _move(n: Node, coords: tuple) -> tuple:
    """Coordinates into a movement node's input that give its output at `coords`."""
    a = n.attr_dict
    src = n.inputs[0].shape
    if n.op == "reshape":
        return _reshape_coords(coords, n.out.shape, src)
    if n.op == "permute":
        out = [Const(0)] * len(src)
        for i, p in enumerate(a["perm"]):
            out[p] = coords[i]
        return tuple(out)
    if n.op == "expand":
        return _broadcast_coords(src, coords)
    if n.op == "slice":
        return tuple(add(Const(st), mul(c, sp)) if d != 1 else Const(st)
                     for c, st, sp, d in zip(coords, a["starts"], a["steps"], src))
    if n.op == "flip":
        axes = {x % len(src) for x in a["axes"]}
        return tuple(_flip(c, d) if i in axes else c for i, (c, d) in enumerate(zip(coords,
                                                                                  src)))
    raise LoweringError(f"{n.op} is not supported by the kernel generator yet")


def _unmove(n: Node, coords: tuple) -> tuple:
    """Coordinates into a reshape's or permute's output of its input's element at `coords`
    (the inverse of `_move` for these bijections)."""
    if n.op == "reshape":
        return _reshape_coords(coords, n.inputs[0].shape, n.out.shape)
    return tuple(coords[p] for p in n.attr_dict["perm"])


def _flip(c: Expr, d: int) -> Expr:
    if isinstance(c, Const):
        return Const(d - 1 - c.value)
    # (d - 1) - c written as an addition of a negative product keeps exprs non-negative-looking
    return BinOp("-", Const(d - 1), c)


def _reshape_coords(coords: tuple, out_shape: tuple, in_shape: tuple) -> tuple:
    """Map coordinates through a reshape, group by group, so merges and splits stay simple."""
    result: list = []
    i = j = 0
    while i < len(out_shape) or j < len(in_shape):
        gi, gj = [i], [j]
        po = out_shape[i] if i < len(out_shape) else 1
        pi = in_shape[j] if j < len(in_shape) else 1
        i, j = i + 1, j + 1
        while po != pi:
            if po < pi:
                gi.append(i)
                po *= out_shape[i]
                i += 1
            else:
                gj.append(j)
                pi *= in_shape[j]
                j += 1
        gi = [k for k in gi if k < len(out_shape)]
        gj = [k for k in gj if k < len(in_shape)]
        lin = linearize(tuple(coords[k] for k in gi), tuple(out_shape[k] for k in gi))
        result.extend(unravel(lin, tuple(in_shape[k] for k in gj)))
    return tuple(result[:len(in_shape)])


def _note(n: Node) -> str:
    return f"{n.out.ref} = {format_call(n)}"


def _arg_name(v: Value, prefix: str, i: int) -> str:
    return f"{v.name}" if v.name.isidentifier() and not v.name.startswith("out") \
        else f"{prefix}{i}"
