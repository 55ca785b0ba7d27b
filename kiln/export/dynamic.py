"""Dynamic dimensions: which numbers in a traced graph follow a marked input size, and how.

The tracer records concrete sizes: `x.view(-1, 2304)` at batch 64 is a reshape to (64, 2304).
To serve any batch, the export traces the program again with each symbol one larger (one
smaller where a Dim's max forbids larger), reads off how every integer attribute and literal
moved (`Affine`: offset + coefficient * symbol), then checks the rule on one more trace, at
sizes further away but inside the Dims' bounds, by re-deriving the whole graph
through the ops' shape rules and comparing it with that trace node for node. A number that
does not move linearly, or a program whose ops change with the size, is reported with the node
and the user's line that bake the size in.
"""

from __future__ import annotations

from kiln.export.symbolic import Affine, concretize
from kiln.ir.graph import Graph, Value


def generalize(trace_at, base: Graph, example: dict,
               ranges: dict | None = None) -> tuple[dict, dict, dict]:
    """Templates ({node index: (inputs, attrs)} with Affines) that rewrite `base`, traced at
    symbol sizes `example`, in terms of the symbols; the probe graphs ({symbol: the graph
    traced with that symbol one step away}); and the steps ({symbol: +1 or -1}).

    Args:
        trace_at: sizes (symbol -> int) -> the Graph traced with inputs of those sizes.
        ranges: symbol -> (lowest, highest or None): the sizes a Dim allows. The probes stay
            inside them, since code may branch on a size its Dim bounds (`if x.shape[0] <= 16`
            under `Dim(max=16)` is one program over the whole range).
    """
    bounds = {s: (ranges or {}).get(s, (1, None)) for s in example}
    steps = {s: _probe_step(s, v, bounds[s]) for s, v in example.items()}
    probes = {}
    for sym in example:
        sizes = dict(example, **{sym: example[sym] + steps[sym]})
        probes[sym] = trace_at(sizes)
        _same_program(base, probes[sym], example, sizes)
    templates = {}
    for i, n in enumerate(base.nodes):
        moved = {sym: g.nodes[i] for sym, g in probes.items()}
        ins = tuple(None if isinstance(v, Value) else
                    _fit(v, {s: m.inputs[k] for s, m in moved.items()}, example, n, steps)
                    for k, v in enumerate(n.inputs))
        attrs = tuple((key, _fit(a, {s: m.attr_dict[key] for s, m in moved.items()},
                                 example, n, steps)) for key, a in n.attrs)
        if any(isinstance(v, Affine) or _nested_affine(v) for v in ins) or \
                any(_nested_affine(a) for _, a in attrs):
            templates[i] = (ins, attrs)
    check_sizes = {s: _check_size(v, steps[s], bounds[s]) for s, v in example.items()}
    check = trace_at(check_sizes)
    _same_program(base, check, example, check_sizes)
    try:
        made = concretize(base, templates, [v.shape for v in check.inputs], check_sizes)
    except ValueError as e:
        raise ValueError(f"kiln.export: the program does not follow the dynamic size linearly "
                         f"(fitted from {example} and one step away): "
                         f"{str(e).removeprefix('kiln.export: ')}") from None
    if made.structure() != check.structure():
        _explain_mismatch(made, check, check_sizes)
    return templates, probes, steps


def _probe_step(sym: str, size: int, bounds: tuple) -> int:
    """+1, or -1 where the Dim's max is the example's size."""
    lo, hi = bounds
    if hi is None or size + 1 <= hi:
        return 1
    if size - 1 >= lo:
        return -1
    raise ValueError(f"kiln.export: the dynamic size {sym!r} may only be {size} "
                     f"(its range is [{lo}, {hi}]); mark the dimension static instead")


def _check_size(size: int, step: int, bounds: tuple) -> int:
    """A size for the check trace, inside the bounds and apart from the example and the
    probe: 2 * size + 3 where allowed, else the farthest bound; the example's own size when the
    range holds no third size (the probe then is the only other size there is)."""
    lo, hi = bounds
    taken = (size, size + step)
    for candidate in (2 * size + 3, hi, lo):
        if candidate is not None and candidate not in taken and lo <= candidate and \
                (hi is None or candidate <= hi):
            return candidate
    return size


def fit_shape(shape: tuple, moved: dict, example: dict, steps: dict) -> tuple:
    """A value's shape with each dimension that follows a symbol as an Affine."""
    return tuple(_fit(d, {s: m[k] for s, m in moved.items()}, example, None, steps)
                 for k, d in enumerate(shape))


def _nested_affine(x) -> bool:
    if isinstance(x, Affine):
        return True
    return isinstance(x, tuple) and any(_nested_affine(v) for v in x)


def _fit(v0, moved: dict, example: dict, node, steps: dict):
    """`v0` as it was traced at `example`, given its value `moved[s]` at symbol s moved by
    `steps[s]` (+1 or -1): itself when nothing moved, else an Affine (nested tuples are fitted
    element by element)."""
    if isinstance(v0, tuple):
        if any(not isinstance(m, tuple) or len(m) != len(v0) for m in moved.values()):
            raise _size_error(node, "its attribute changes length with the size")
        return tuple(_fit(x, {s: m[k] for s, m in moved.items()}, example, node, steps)
                     for k, x in enumerate(v0))
    if all(m == v0 and type(m) is type(v0) for m in moved.values()):
        return v0
    if isinstance(v0, bool) or not isinstance(v0, (int, float)) or \
            any(type(m) is not type(v0) for m in moved.values()):
        raise _size_error(node, f"the value {v0!r} changes with the size to "
                          f"{list(moved.values())!r}")
    terms = tuple(sorted((s, (m - v0) * steps[s]) for s, m in moved.items() if m != v0))
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
