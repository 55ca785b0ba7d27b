"""Convolutions on the GPU: which route each conv2d product takes, and the lowering rewrite that
runs the implicit-GEMM kernels (`kiln.codegen.conv_triton`) in place of unfold + matmul.

kiln's `conv2d` is a composite: `unfold` (the windows, copied) then one matmul; its gradients
are a matmul with the same windows (weight) and a matmul followed by `fold` (input). For Triton
programs, `rewrite_convolutions` finds these products among a lowered program's steps by what
they compute, not by how the graph spells them: an operand counts as the windows when it is the
`unfold` output reshaped to a (rows, kh*kw*c) matrix, and as the weight or the output gradient
when its elements sit at fixed strides in one array (the reshapes and permutes between are
replayed on an index array at compile time, `_strides_of`). Each product found becomes one
Triton kernel step reading the image itself; the `unfold` (and a zero `pad` before it, folded
into the kernel's window masks) and the views only it needed drop out of the program.

`conv_route` is the one place that decides, per product and shape, between "implicit_gemm" and
"unfold": `KILN_CONV_ROUTE` when set, else a choice measured on this machine's GPU
(`kiln.runtime.conv_gpu.measure_conv_routes` records it, kept on disk), else implicit GEMM;
`conv_blocks` gives the kernel's tile sizes measured fastest with it.
The lowered program says which route each product took and why (`kiln dump`, `explain`).
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import numpy as np

from kiln.codegen.conv_triton import DTYPES, ConvGeometry, render_conv_kernel
from kiln.codegen.kernel import contiguous_strides
from kiln.codegen.tuned import load_choices, save_choices, tuning_root
from kiln.ir.graph import Graph
from kiln.ir.ops import PRIMITIVES

ROUTES = ("implicit_gemm", "unfold")
_VIEWS = ("reshape", "permute")
_INT32 = 2 ** 31 - 1        # the kernels index with 32-bit integers

# (kind, geometry, dtype name) -> {"route": measured on this machine's GPU, "blocks": the
# fastest tile sizes measured for the kernel, or None}
MEASURED_ROUTES: dict = {}
_loaded = [False]


def routes_path() -> Path:
    """The file the measured routes are kept in (beside the kernel cache)."""
    return tuning_root() / "conv_routes.json"


def route_key(kind: str, geometry: ConvGeometry, dtype) -> str:
    return f"{kind} {geometry.describe()} {dtype}"


def record_route(kind: str, geometry: ConvGeometry, dtype, route: str, save: bool = True,
                 blocks: tuple | None = None) -> None:
    """Remember the route measured for one product (and the kernel's fastest tile sizes, when
    measured); with `save`, in the file on disk too (written whole to a temporary file and
    renamed: a reader never sees half of it)."""
    if route not in ROUTES:
        raise ValueError(f"conv2d route {route!r}: expected one of {ROUTES}")
    _load_measured()
    MEASURED_ROUTES[route_key(kind, geometry, dtype)] = {
        "route": route, "blocks": None if blocks is None else list(blocks)}
    if save:
        save_choices(routes_path(), MEASURED_ROUTES, _valid_entry)


def _load_measured() -> None:
    if _loaded[0]:
        return
    _loaded[0] = True
    # none measured yet, or an unreadable file: nothing (measure again)
    MEASURED_ROUTES.update(load_choices(routes_path(), _valid_entry))


def _valid_entry(entry) -> bool:
    blocks = entry.get("blocks") if isinstance(entry, dict) else None
    return isinstance(entry, dict) and entry.get("route") in ROUTES and (
        blocks is None or (isinstance(blocks, list) and len(blocks) == 3 and
                           all(isinstance(b, int) and b >= 16 and not b & (b - 1)
                               for b in blocks)))


def conv_blocks(kind: str, geometry: ConvGeometry, dtype) -> tuple | None:
    """The tile sizes measured fastest for this product's kernel, or None (the defaults)."""
    _load_measured()
    entry = MEASURED_ROUTES.get(route_key(kind, geometry, dtype))
    return tuple(entry["blocks"]) if entry and entry.get("blocks") else None


def conv_route(kind: str, geometry: ConvGeometry, dtype) -> tuple[str, str]:
    """(route, why) for one convolution product of `kind` ("forward", "weight_grad",
    "input_grad") on `geometry` in `dtype`: "implicit_gemm" or "unfold"."""
    forced = os.environ.get("KILN_CONV_ROUTE", "")
    if forced and forced not in ROUTES:
        raise ValueError(f"KILN_CONV_ROUTE={forced!r}: expected one of {ROUTES}, or unset")
    if dtype not in DTYPES:
        return "unfold", f"no implicit-GEMM kernel for {dtype}"
    g = geometry
    oh, ow = g.out_size
    if max(g.n * g.c * g.h * g.w, g.n * g.o * oh * ow, g.o * g.c * g.kh * g.kw) > _INT32:
        return "unfold", "a tensor too large for the kernels' 32-bit indexing"
    if forced:
        return forced, f"KILN_CONV_ROUTE={forced}"
    _load_measured()
    measured = MEASURED_ROUTES.get(route_key(kind, geometry, dtype))
    if measured is not None:
        return measured["route"], f"measured on this GPU ({routes_path()})"
    return "implicit_gemm", "the default on the GPU (not measured for this shape)"


# ----------------------------------------------------------------------------- index maps

def _root(v, producer: dict, held: set) -> tuple:
    """(the value `v` is a view of, through reshapes and permutes; those nodes, in order): the
    farthest such value among `held` (those the program keeps: a value made inside a fused
    kernel is not there), else `v` itself."""
    chain, found = [], (v, [])
    while v in producer and producer[v].op in _VIEWS:
        chain.append(producer[v])
        v = producer[v].inputs[0]
        if v in held:
            found = (v, chain[::-1])
    return found


def _strides_of(root, chain: list, shape: tuple) -> tuple | None:
    """The element strides at which the view `chain` of a C-contiguous `root` reads it, seen as
    an array of `shape`; None when that view is no strided view of `root` (from element 0)."""
    index = np.arange(math.prod(root.shape), dtype=np.int64).reshape(root.shape)
    for node in chain:
        index = PRIMITIVES[node.op].impl(np, index, **node.attr_dict)
    if index.size != math.prod(shape) or index.size == 0:
        return None
    index = index.reshape(shape)
    if index.flat[0] != 0:
        return None
    strides = tuple(int(index[(0,) * k + (1,) + (0,) * (len(shape) - k - 1)])
                    if size > 1 else 0 for k, size in enumerate(shape))
    expected = sum(np.arange(size, dtype=np.int64).reshape(
        (1,) * k + (size,) + (1,) * (len(shape) - k - 1)) * s
        for k, (size, s) in enumerate(zip(shape, strides)))
    return strides if np.array_equal(index, expected) else None


def _is_plain_reshape(root, chain: list, shape: tuple) -> bool:
    return _strides_of(root, chain, shape) == tuple(
        s if size > 1 else 0 for s, size in zip(contiguous_strides(shape), shape))


# ----------------------------------------------------------------------------- matching

@dataclasses.dataclass
class _Match:
    """One convolution product found: the kernel's inputs (outer Values, in its pointer order),
    the node whose output it computes, and the nodes it replaces."""

    kind: str
    geometry: ConvGeometry
    inputs: tuple
    strides: tuple              # per kernel tensor (inputs, then the output), 4 strides each
    out_node: object            # the matmul (forward, weight grad) or the fold (input grad)
    nodes: list                 # every node from the inputs to out_node: the unfold route
    windows_kept: bool = False  # the program returns the windows (for a backward program):
                                # they are made anyway, and the matmul reads them


def _windows(operand, producer: dict, held: set):
    """The unfold node whose output `operand` reshapes to (rows, kh*kw*c), or None."""
    root, chain = _root(operand, producer, held)
    unfold = producer.get(root)
    if unfold is None or unfold.op != "unfold" or not _is_plain_reshape(root, chain,
                                                                         operand.shape):
        return None
    return unfold, chain


def _kept(unfold, leaving: set, users: dict) -> bool:
    """Whether the program returns the unfold's windows, or a view of them."""
    todo = [unfold.out]
    while todo:
        v = todo.pop()
        if v in leaving:
            return True
        todo += [u.out for u in users.get(v, []) if u.op in _VIEWS]
    return False


def _image(unfold, producer: dict, users: dict) -> tuple:
    """(the image the kernels read, padding, the pad node folded into the masks or None): the
    unfold's input, or the input of a zero, symmetric, spatial-only pad read by unfolds only."""
    x = unfold.inputs[0]
    pad = producer.get(x)
    if pad is not None and pad.op == "pad":
        a = pad.attr_dict
        (n0, n1), (c0, c1), (top, bottom), (left, right) = a["pads"]
        if a["value"] == 0 and not (n0 or n1 or c0 or c1) and top == bottom and \
                left == right and all(u.op == "unfold" for u in users.get(x, [])):
            return pad.inputs[0], (top, left), pad
    return x, (0, 0), None


def _geometry(x_shape: tuple, o: int, unfold_attrs: dict, padding: tuple) -> ConvGeometry:
    n, c, h, w = x_shape
    kh, kw = unfold_attrs["kernel"]
    return ConvGeometry(n, c, h, w, o, kh, kw, tuple(unfold_attrs["stride"]), tuple(padding),
                        tuple(unfold_attrs["dilation"]))


def _match(mm, producer: dict, users: dict, leaving: set, held: set) -> _Match | None:
    """The convolution product the matmul node `mm` computes, if it is one."""
    a, b = mm.inputs
    if len(a.shape) != 2 or len(b.shape) != 2:
        return None
    fwd, wgrad = _windows(a, producer, held), _windows(b, producer, held)
    if fwd is not None:                 # windows (rows, K) @ weight columns (K, O)
        unfold, a_chain = fwd
        x, padding, pad = _image(unfold, producer, users)
        g = _geometry(x.shape, b.shape[1], unfold.attr_dict, padding)
        w_root, w_chain = _root(b, producer, held)
        w = _strides_of(w_root, w_chain, (g.kh, g.kw, g.c, g.o))      # b[(i, j, c), o]
        if w is None:
            return None
        oh, ow = g.out_size
        return _Match("forward", g, (x, w_root), (
            contiguous_strides(x.shape), (w[3], w[2], w[0], w[1]),
            (oh * ow * g.o, 1, ow * g.o, g.o)), mm,
            [n for n in (pad, unfold) if n] + a_chain + w_chain + [mm],
            _kept(unfold, leaving, users))
    if wgrad is not None:               # output gradient (O, rows) @ windows (rows, K)
        unfold, b_chain = wgrad
        x, padding, pad = _image(unfold, producer, users)
        g = _geometry(x.shape, a.shape[0], unfold.attr_dict, padding)
        oh, ow = g.out_size
        g_root, g_chain = _root(a, producer, held)
        s = _strides_of(g_root, g_chain, (g.o, g.n, oh, ow))          # a[o, (n, y, x)]
        if s is None:
            return None
        k = g.kh * g.kw * g.c
        return _Match("weight_grad", g, (x, g_root), (
            contiguous_strides(x.shape), (s[1], s[0], s[2], s[3]), (k, 1, g.kw * g.c, g.c)),
            mm, [n for n in (pad, unfold) if n] + b_chain + g_chain + [mm],
            _kept(unfold, leaving, users))
    # output gradient (rows, O) @ weight rows (O, K), then the windows folded into an image
    v, chain = mm.out, []
    while v not in leaving and len(users.get(v, [])) == 1 and users[v][0].op in _VIEWS:
        chain.append(users[v][0])
        v = chain[-1].out
    fold = users.get(v, [None])[0]
    if v in leaving or len(users.get(v, [])) != 1 or fold.op != "fold" or \
            not _is_plain_reshape(mm.out, chain, v.shape):
        return None
    attrs = fold.attr_dict
    n, c, h, w = fold.out.shape
    g = ConvGeometry(n, c, h, w, a.shape[1], *attrs["kernel"], tuple(attrs["stride"]), (0, 0),
                     tuple(attrs["dilation"]))
    oh, ow = g.out_size
    g_root, g_chain = _root(a, producer, held)
    w_root, w_chain = _root(b, producer, held)
    s = _strides_of(g_root, g_chain, (g.n, oh, ow, g.o))              # a[(n, y, x), o]
    ws = _strides_of(w_root, w_chain, (g.o, g.kh, g.kw, g.c))         # b[o, (i, j, c)]
    if s is None or ws is None:
        return None
    return _Match("input_grad", g, (g_root, w_root), (
        (s[0], s[3], s[1], s[2]), (ws[0], ws[3], ws[1], ws[2]), contiguous_strides(
            fold.out.shape)), fold, g_chain + w_chain + [mm] + chain + [fold])


def _route_graph(match: _Match) -> Graph:
    """The unfold route of one product as a graph over the kernel's inputs: what the kernel
    computes, for the step's inputs and outputs and for reading."""
    g = Graph(f"conv2d_{match.kind}")
    inner = {v: g.add_input(v.shape, v.dtype, v.name) for v in match.inputs}
    for node in match.nodes:            # in program order: producers first
        ins = tuple(inner[v] if v in inner else v for v in node.inputs)
        inner[node.out] = g.add_node(node.op, ins, node.attr_dict, node.out.shape,
                                     node.out.dtype, node.loc, node.scope)
    g.outputs = [inner[match.out_node.out]]
    return g


# ----------------------------------------------------------------------------- the rewrite

def rewrite_convolutions(steps: list, graph: Graph, slot: dict, leaving: set) -> list:
    """`steps` (LoweredSteps of a Triton program over `slot`-numbered values) with each
    convolution product whose route is implicit GEMM run as one kernel, and the steps that
    only fed it (unfold, a folded pad, views) dropped; a product left on the unfold route
    says why on its matmul step. `leaving`: slots the program returns or writes back."""
    producer = graph.producers()
    users = graph.users()
    value_of = {s: v for v, s in slot.items()}
    order = {n.out: i for i, n in enumerate(graph.nodes)}
    steps = list(steps)
    out_values, held = {value_of[s] for s in leaving}, set(slot)
    changed = False
    for i, st in enumerate(steps):
        if st.kind != "matmul":
            continue
        mm = producer.get(value_of[st.outs[0]])
        match = mm and _match(mm, producer, users, out_values, held)
        if match is None or any(v not in slot for v in match.inputs + (match.out_node.out,)):
            continue
        # the step computing the product's result: the matmul, or the fold's own step (a
        # fold inside a fused kernel has none, and stays)
        at = i if match.kind != "input_grad" else next(
            (j for j, s in enumerate(steps) if s.outs == (slot[match.out_node.out],)), None)
        if at is None:
            continue
        dtype = match.out_node.out.dtype
        route, why = conv_route(match.kind, match.geometry, dtype)
        if match.windows_kept and route == "implicit_gemm":
            # (a compiled forward whose backward runs as its own program, which reads them)
            route, why = "unfold", "its windows are made anyway, saved for the backward"
        if route == "unfold":
            steps[i] = dataclasses.replace(st, why=f"conv2d {match.kind.replace('_', ' ')} on "
                                                   f"the unfold route: {why}")
            continue
        match.nodes.sort(key=lambda n: order[n.out])
        tk = render_conv_kernel(match.kind, match.geometry, dtype, match.strides,
                                blocks=conv_blocks(match.kind, match.geometry, dtype))
        step = type(st)("triton", tuple(slot[v] for v in match.inputs),
                        (slot[match.out_node.out],), tk.name, "", tk, _route_graph(match),
                        why=f"implicit GEMM, {match.geometry.describe()}: {why}")
        steps[at] = step        # an input gradient's matmul then drops out, unread
        changed = True
    return _drop_unread(steps, leaving) if changed else steps


def _drop_unread(steps: list, leaving: set) -> list:
    """`steps` without those whose outputs nothing reads any more: the unfolds, pads, views and
    matmuls the kernels replaced (steps that cannot fail or write anything else)."""
    def pure(s) -> bool:
        if s.kind in ("view", "matmul"):
            return True
        if s.kind in ("array", "triton") and s.graph is not None:
            return all(n.op in PRIMITIVES and (PRIMITIVES[n.op].view or
                                               n.op in ("unfold", "fold", "pad"))
                       for n in s.graph.nodes)
        return False
    while True:
        read = set(leaving).union(*(s.ins for s in steps))
        keep = [s for s in steps if not pure(s) or any(o in read for o in s.outs)]
        if len(keep) == len(steps):
            return steps
        steps = keep


__all__ = ["MEASURED_ROUTES", "ROUTES", "conv_blocks", "conv_route", "record_route",
           "rewrite_convolutions", "route_key", "routes_path"]
