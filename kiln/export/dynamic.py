"""Dynamic dimensions: which numbers in a traced graph follow a marked input size, and how.

The tracer records concrete sizes: `x.view(-1, 2304)` at batch 64 is a reshape to (64, 2304).
To serve any batch, the export traces the program again with each symbol one larger, reads
off how every integer attribute and literal moved (`Affine`: offset + coefficient * symbol),
then checks the rule on one more trace, at sizes further away, by re-deriving the whole graph
through the ops' shape rules and comparing it with that trace node for node. A number that
does not move linearly, or a program whose ops change with the size, is reported with the node
and the user's line that bake the size in.
"""

from __future__ import annotations

from kiln.export.symbolic import Affine, concretize
from kiln.ir.graph import Graph, Value


def generalize(trace_at, base: Graph, example: dict) -> tuple[dict, dict]:
    """Templates ({node index: (inputs, attrs)} with Affines) that rewrite `base`, traced at
    symbol sizes `example`, in terms of the symbols; and the probe graphs ({symbol: the graph
    traced with that symbol one larger}).

    Args:
        trace_at: sizes (symbol -> int) -> the Graph traced with inputs of those sizes.
    """
    probes = {}
    for sym in example:
        sizes = dict(example, **{sym: example[sym] + 1})
        probes[sym] = trace_at(sizes)
        _same_program(base, probes[sym], example, sizes)
    templates = {}
    for i, n in enumerate(base.nodes):
        moved = {sym: g.nodes[i] for sym, g in probes.items()}
        ins = tuple(None if isinstance(v, Value) else
                    _fit(v, {s: m.inputs[k] for s, m in moved.items()}, example, n)
                    for k, v in enumerate(n.inputs))
        attrs = tuple((key, _fit(a, {s: m.attr_dict[key] for s, m in moved.items()},
                                 example, n)) for key, a in n.attrs)
        if any(isinstance(v, Affine) or _nested_affine(v) for v in ins) or \
                any(_nested_affine(a) for _, a in attrs):
            templates[i] = (ins, attrs)
    check_sizes = {s: 2 * v + 3 for s, v in example.items()}
    check = trace_at(check_sizes)
    _same_program(base, check, example, check_sizes)
    try:
        made = concretize(base, templates, [v.shape for v in check.inputs], check_sizes)
    except ValueError as e:
        raise ValueError(f"kiln.export: the program does not follow the dynamic size linearly "
                         f"(fitted from {example} and one larger): "
                         f"{str(e).removeprefix('kiln.export: ')}") from None
    if made.structure() != check.structure():
        _explain_mismatch(made, check, check_sizes)
    return templates, probes


def fit_shape(shape: tuple, moved: dict, example: dict) -> tuple:
    """A value's shape with each dimension that follows a symbol as an Affine."""
    return tuple(_fit(d, {s: m[k] for s, m in moved.items()}, example, None)
                 for k, d in enumerate(shape))


def _nested_affine(x) -> bool:
    if isinstance(x, Affine):
        return True
    return isinstance(x, tuple) and any(_nested_affine(v) for v in x)


def _fit(v0, moved: dict, example: dict, node):
    """`v0` as it was traced at `example`, given its value `moved[s]` at symbol s one larger:
    itself when nothing moved, else an Affine (nested tuples are fitted element by element)."""
    if isinstance(v0, tuple):
        if any(not isinstance(m, tuple) or len(m) != len(v0) for m in moved.values()):
            raise _size_error(node, "its attribute changes length with the size")
        return tuple(_fit(x, {s: m[k] for s, m in moved.items()}, example, node)
                     for k, x in enumerate(v0))
    if all(m == v0 and type(m) is type(v0) for m in moved.values()):
        return v0
    if isinstance(v0, bool) or not isinstance(v0, (int, float)) or \
            any(type(m) is not type(v0) for m in moved.values()):
        raise _size_error(node, f"the value {v0!r} changes with the size to "
                          f"{list(moved.values())!r}")
    terms = tuple(sorted((s, m - v0) for s, m in moved.items() if m != v0))
    offset = v0 - sum(c * example[s] for s, c in terms)
    return Affine(terms, offset)


def _size_error(node, why: str) -> ValueError:
    where = f"node {node.out.ref} = {node.op} (from {node.loc})" if node is not None else \
        "an output"
    return ValueError(f"kiln.export: {where} cannot follow the dynamic size: {why}. Compute "
                      "sizes from the input (x.shape[0], view(-1, ...)) rather than as "
                      "numbers, or export without dynamic_shapes")


def _same_program(base: Graph, other: Graph, sizes_a: dict, sizes_b: dict) -> None:
    """Raise unless `other` runs the same ops on the same values as `base`."""
    def text(sizes):
        return ", ".join(f"{k}={v}" for k, v in sizes.items())
    index_a = _index(base)
    index_b = _index(other)
    for k, (a, b) in enumerate(zip(base.nodes, other.nodes)):
        refs_a = [index_a[v] if isinstance(v, Value) else "lit" for v in a.inputs]
        refs_b = [index_b[v] if isinstance(v, Value) else "lit" for v in b.inputs]
        if a.op != b.op or refs_a != refs_b or [key for key, _ in a.attrs] != \
                [key for key, _ in b.attrs]:
            raise ValueError(f"kiln.export: the traced program changes with the dynamic size: "
                             f"at {text(sizes_a)} node {a.out.ref} is {a.op} (from {a.loc}), "
                             f"at {text(sizes_b)} it is {b.op} (from {b.loc}). Python control "
                             "flow on a size cannot be exported as dynamic")
    if len(base.nodes) != len(other.nodes) or len(base.inputs) != len(other.inputs) or \
            len(base.constants) != len(other.constants):
        raise ValueError(f"kiln.export: the traced program changes with the dynamic size: "
                         f"{len(base.nodes)} nodes at {text(sizes_a)}, {len(other.nodes)} at "
                         f"{text(sizes_b)}")
    for (va, a), (vb, b) in zip(base.constants.items(), other.constants.items()):
        if a.shape != b.shape:
            raise ValueError(f"kiln.export: constant {va.ref} (a tensor made from Python data "
                             f"inside the traced code) has shape {list(a.shape)} at "
                             f"{text(sizes_a)} and {list(b.shape)} at {text(sizes_b)}; make it "
                             "from the input's sizes (x.new_zeros(...)) to export it dynamic")


def _index(g: Graph) -> dict:
    return {v: i for i, v in enumerate(list(g.inputs) + list(g.constants) +
                                       [n.out for n in g.nodes])}


def _explain_mismatch(made: Graph, check: Graph, sizes: dict) -> None:
    text = ", ".join(f"{k}={v}" for k, v in sizes.items())
    for a, b in zip(made.nodes, check.nodes):
        lits_a = [v for v in a.inputs if not isinstance(v, Value)]
        lits_b = [v for v in b.inputs if not isinstance(v, Value)]
        if a.attrs != b.attrs or lits_a != lits_b or a.out.shape != b.out.shape:
            raise ValueError(f"kiln.export: node {b.out.ref} = {b.op} (from {b.loc}) does not "
                             f"follow the dynamic size linearly: at {text} it was traced with "
                             f"{dict(b.attrs)} {lits_b}, shape {list(b.out.shape)}; the "
                             f"linear rule gives {dict(a.attrs)} {lits_a}, shape "
                             f"{list(a.out.shape)}")
    raise ValueError(f"kiln.export: the program re-derived at {text} differs from the one traced "
                     "there")
