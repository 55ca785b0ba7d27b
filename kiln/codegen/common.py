"""What every renderer of a `Kernel` shares: infix spellings, compute dtypes, source comments,
and the plan of passes a reduction kernel makes over each row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from kiln.codegen.kernel import ELEM, ROW, Compute, Kernel, Reduce, Store
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.printer import scope_headers
from kiln.ir.ops import CREATION, ELEMENTWISE, PRIMITIVES

# Ops a kernel computes that are not primitives: `index`, an integer index expression
# (arange's position, a pad's bounds test)
KERNEL_OPS = frozenset(["index"])


def computed_primitives() -> list:
    """The primitives a generated kernel computes with a `Compute` statement (elementwise ops
    and creations): each needs scalar math or a spelling in every renderer's `OPS` table, or
    a group holding it cannot be generated and runs on NumPy instead."""
    return sorted(name for name, p in PRIMITIVES.items() if p.kind in (ELEMENTWISE, CREATION))


def missing_spellings(table: dict) -> list:
    """The computed primitives a renderer cannot spell: no entry in its op table and no scalar
    math of their own (`Primitive.scalar`, which every renderer spells)."""
    return [name for name in computed_primitives()
            if name not in table and PRIMITIVES[name].scalar is None]


# ops spelled `a op b` in Triton, C and Python alike
INFIX = {"add": "+", "sub": "-", "mul": "*", "bitwise_and": "&", "bitwise_or": "|",
         "bitwise_xor": "^", "eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">",
         "ge": ">="}


def compute_dtype(d: DType) -> DType:
    """The dtype a value is held in while computing: float16 and bfloat16 widen to float32."""
    return dt.float32 if d is dt.float16 or d is dt.bfloat16 else d


class Comments:
    """The comments of one kernel's statements, in the order they are written: the IR node and
    the user's line, `%8 = mul(%7, 0.044715)    (model.py:15)`, indented under a header naming
    the node's provenance where it changes, `gelu @ model.py:15` or `grad of %7 mul @ ...`."""

    def __init__(self, mark: str):
        self.mark = mark            # "//" or "#"
        self.last: tuple = ()       # the group of the statement commented last

    def __call__(self, s) -> list:
        if not s.note:
            return []
        group = getattr(s, "group", ())
        lines = [f"{self.mark} {'  ' * depth}{text}"
                 for depth, text in scope_headers(group, self.last, s.loc)]
        self.last = group
        note = f"{'  ' * len(group)}{s.note}"
        return lines + [f"{self.mark} {note}    {source_loc(s.loc)}".rstrip()]


def source_loc(loc: str) -> str:
    """`(file.py:12)` for a statement's comment: the user's line, without the directory."""
    if not loc:
        return ""
    path, _, line = loc.rpartition(":")
    return f"({path.rsplit('/', 1)[-1]}:{line})" if path else f"({loc})"


def operand_dtype(s: Compute) -> DType | None:
    """The dtype an op computes in: its first tensor argument's (`where`: its values')."""
    if s.op == "where":
        return s.arg_dtypes[1] or s.arg_dtypes[2]
    return next((d for d in s.arg_dtypes if d is not None), None)


def literal_dtype(s: Compute, i: int) -> DType | None:
    """The dtype literal argument `i` of `s` is written in: `where`'s condition is bool and its
    values have the result's dtype; otherwise the op's operand dtype, or the result's for an op
    of literals only (`full`)."""
    if s.op == "where":
        return dt.bool_ if i == 0 else s.dtype
    return operand_dtype(s) or s.dtype


def operand_literal(s: Compute, value):
    """A number operand of `s` as eager computes with it: rounded to the op's half dtype
    (float16 or bfloat16) where that is its tensors' only floating dtype, except in mul and
    div, whose CPU kernels read it as a float32 (kiln.tracer.dispatch._widen_half): x + 0.3 on
    bfloat16 adds 0.30078125, as PyTorch does."""
    if s.op in ("mul", "div") or type(value) not in (int, float):
        return value
    floats = {d for d in s.arg_dtypes if d is not None and d.is_floating_point}
    if len(floats) != 1 or next(iter(floats)) not in dt.HALF:
        return value
    return dt.half_value(value, next(iter(floats)))


# ----------------------------------------------------------------------------- row passes

@dataclass
class RowPass:
    """One walk over a row: row values computed before it, then a loop over the row.

    `reductions` are accumulated by the loop (all of one level); a pass without reductions is
    the final one, which writes the element-wise outputs (`stores`). `elem` lists the
    element-scope statements the loop body computes, in body order. A renderer that keeps
    row values in scratch memory (the C one) fills `loads` and `saves`.
    """

    before: list
    reductions: list
    elem: list
    stores: list
    loads: list = field(default_factory=list)    # values read back from a row scratch array
    saves: list = field(default_factory=list)    # values this pass writes to one

    @property
    def has_loop(self) -> bool:
        return bool(self.reductions or self.elem or self.stores)


def row_passes(kernel: Kernel) -> tuple[list, list]:
    """The passes of a reduction kernel over each row, and the row-scope stores that end it.

    Reductions of level k read results of levels < k only, so pass k accumulates the level-k
    reductions, recomputing the element values they need; one last pass writes element
    outputs. Row values (loads at the row, math on finished reductions) are computed once,
    before the first pass that needs them.
    """
    body = kernel.body
    by_dest = {s.dest: s for s in body if not isinstance(s, Store)}
    levels: dict = {}
    for s in body:
        if isinstance(s, Reduce):
            levels[s.dest] = s.level
        elif isinstance(s, Compute):
            levels[s.dest] = max([levels[a] for a in s.args if isinstance(a, str)] + [-1])
        elif not isinstance(s, Store):
            levels[s.dest] = -1
    reductions = [s for s in body if isinstance(s, Reduce)]
    top = max(s.level for s in reductions)
    done: set = set()
    passes = []
    for level in range(top + 2):
        before = [s for s in body if s.scope == ROW and not isinstance(s, (Reduce, Store))
                  and s.dest not in done and levels[s.dest] < level]
        done.update(s.dest for s in before)
        if level <= top:
            group = [s for s in reductions if s.level == level]
            stores = []
            targets = [s.src for s in group]
        else:
            group = []
            stores = [s for s in body if isinstance(s, Store) and s.scope == ELEM]
            targets = [s.src for s in stores]
        need = closure(by_dest, targets, ELEM)
        elem = [s for s in body if getattr(s, "dest", None) in need]
        passes.append(RowPass(before, group, elem, stores))
        done.update(s.dest for s in group)
    row_stores = [s for s in body if isinstance(s, Store) and s.scope == ROW]
    return passes, row_stores


def closure(by_dest: dict, targets: list, scope: str | None = None) -> set:
    """The statements the targets need; a reduction's inputs are not followed. With `scope`,
    only statements of that scope: the walk stops at values of another (row values, for ELEM)."""
    need, stack = set(), [t for t in targets if isinstance(t, str)]
    while stack:
        name = stack.pop()
        s = by_dest.get(name)
        if s is None or name in need or (scope is not None and s.scope != scope):
            continue
        need.add(name)
        if isinstance(s, Compute):
            stack += [a for a in s.args if isinstance(a, str)]
    return need
