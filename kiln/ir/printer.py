"""How the IR prints: one formatter for a node's call, kernel names, and graph listings with
provenance group headers.

Every listing (a graph's `str`, the dump, kernel comments) spells a node through `format_call`,
so a node reads the same everywhere. A node's `scope` is the tracer's provenance stack when it
was recorded: the composites it came from (`("cross_entropy", "log_softmax")`), or, for a node
of the backward, the forward node whose gradient it computes, within its composites' gradients
(`("grad of gelu", "grad of %7 mul")`). A listing prints a header where the scope changes, in
the style of Thunder's traces, and indents the group's nodes under it:

```
  %5: f32[64,32] = add(%3, %b1)                 # model.py:15
  # gelu @ model.py:15
    %6: f32[64,32] = mul(%5, %5)                # model.py:15
```
"""

from __future__ import annotations

from kiln.ir.dtypes import DType
from kiln.ir.ops import MOVEMENT


def format_call(n) -> str:
    """`op(%a, 2.0, axes=(1), keepdim=True)`: how every listing (graphs, kernel comments)
    spells a node's operation, inputs and attributes."""
    args = [_fmt_input(v) for v in n.inputs] + [f"{k}={_fmt_attr(a)}" for k, a in n.attrs]
    return f"{n.op}({', '.join(args)})"


def kernel_name(nodes: list) -> str:
    """The name of a fused kernel of `nodes` (schedules, C and Triton functions alike): its
    distinct operations but data movement, in order, at most five, `fused_exp_sum_and_2_more`;
    a kernel of views only is named after them."""
    ops = [n.op for n in nodes if n.prim.kind != MOVEMENT] or [n.op for n in nodes]
    distinct = list(dict.fromkeys(ops)) or ["copy"]
    name = "fused_" + "_".join(distinct[:5])
    return name + (f"_and_{len(distinct) - 5}_more" if len(distinct) > 5 else "")


def short_loc(loc: str) -> str:
    """`model.py:12` of `/home/me/model.py:12`: the user's line, without the directory."""
    path, _, line = loc.rpartition(":")
    return f"{path.rsplit('/', 1)[-1]}:{line}" if path else loc


def scope_label(scope: tuple) -> str:
    """A provenance scope on one line, outermost first: `cross_entropy > log_softmax`."""
    return " > ".join(scope)


def scope_summary(nodes: list, limit: int = 4) -> str:
    """Where a group of nodes comes from, for one-line summaries (fusion groups): the distinct
    outermost scopes in order, `gelu, grad of %11 tanh` (at most `limit`, then `and 3 more`);
    empty when none of them is in a scope."""
    outer = list(dict.fromkeys(n.scope[0] for n in nodes if getattr(n, "scope", ())))
    more = f", and {len(outer) - limit} more" if len(outer) > limit else ""
    return ", ".join(outer[:limit]) + more


def scope_headers(scope: tuple, before: tuple, loc: str) -> list:
    """The headers opening `scope` after a node of scope `before`: one per level they do not
    share, `(depth, "gelu @ model.py:12")`, outermost first."""
    shared = 0
    for a, b in zip(scope, before):
        if a != b:
            break
        shared += 1
    where = f" @ {short_loc(loc)}" if loc else ""
    return [(depth, f"{scope[depth]}{where}") for depth in range(shared, len(scope))]


def format_nodes(nodes: list, indent: str = "  ") -> list:
    """The listing lines of `nodes`: `%5: f32[4] = exp(%4)  # model.py:12`, locations aligned,
    with a group header where the provenance scope changes and the group's nodes under it."""
    rows = []          # (text, loc) of nodes, (text, None) of headers
    before: tuple = ()
    for n in nodes:
        scope = getattr(n, "scope", ())
        for depth, text in scope_headers(scope, before, n.loc):
            rows.append((f"{indent}{'  ' * depth}# {text}", None))
        before = scope
        pad = "  " * len(scope)
        rows.append((f"{indent}{pad}{n.out.ref}: {n.out.type_str} = {format_call(n)}", n.loc))
    width = min(max((len(r) for r, loc in rows if loc is not None), default=0), 72)
    return [f"{text.ljust(width)}  # {short_loc(loc)}" if loc else text for text, loc in rows]


def _fmt_input(v) -> str:
    ref = getattr(v, "ref", None)       # a Value; anything else is a Python-number literal
    return ref if ref is not None else repr(v)


def _fmt_attr(a) -> str:
    if isinstance(a, DType):
        return a.short
    if isinstance(a, tuple):
        return "(" + ",".join(_fmt_attr(x) for x in a) + ")"
    return repr(a)
