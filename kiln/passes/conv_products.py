"""A convolution's products with their unfold or fold become one primitive each, so the windows
matrix is never kept whole.

`conv2d` is traced as pad, `unfold` (im2col), a reshape of the windows to a (N*oh*ow, kh*kw*C)
matrix and one matmul; autograd adds the weight gradient `g^T @ windows` and the input
gradient `fold(g @ w^T)`. The windows matrix is kh*kw times the conv's input: made whole, it
is written once, kept until the backward, read twice, and the input gradient's windows are
written whole before `fold` reads them back; each of those passes is bound by memory. Here

    matmul(reshape(unfold(x)), w)        ->  unfold_matmul(x, w)       the forward
    matmul(a, reshape(unfold(x)))        ->  matmul_unfold(a, x)       the weight gradient
    fold(reshape(matmul(a, b)))          ->  matmul_fold(a, b)         the input gradient

(primitives of `kiln.ir.ops`), which the NumPy backend runs a few images at a time through a
buffer that stays in cache. The products are the same; only the weight gradient's sum over
rows is added up in another order (chunk by chunk).

An unfold is rewritten only when every reader of its windows is rewritten, so that it goes
(otherwise the windows would be made twice); a matmul whose result is folded only when the
fold is its one reader.
"""

from __future__ import annotations

import math

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.cleanup import copy_graph, dce


def _windows_matrix_shape(shape: tuple) -> tuple:
    """The (N*oh*ow, kh*kw*C) matrix of unfold windows of shape (N, oh, ow, kh, kw, C)."""
    return (math.prod(shape[:3]), math.prod(shape[3:]))


def form_conv_products(graph: Graph) -> Graph:
    """Rewrite the three patterns above into `unfold_matmul`, `matmul_unfold` and `matmul_fold`.

    Returns a new graph (or `graph` itself when nothing matched); each rewritten matmul's or
    fold's Value keeps its identity, now computed by the new primitive.
    """
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}

    def windows_of(v) -> Node | None:
        """The unfold whose windows `v` is, as a matrix (a reshape of it), or None."""
        r = producers.get(v) if isinstance(v, Value) else None
        if r is None or r.op != "reshape" or not isinstance(r.inputs[0], Value):
            return None
        u = producers.get(r.inputs[0])
        if u is None or u.op != "unfold" or v.shape != _windows_matrix_shape(u.out.shape):
            return None
        return u

    def is_matrix_product(n: Node) -> bool:
        return n.op == "matmul" and all(isinstance(v, Value) and len(v.shape) == 2
                                        for v in n.inputs)

    rewrites: dict = {}             # Node -> (op, inputs, attrs) replacing it
    by_unfold: dict = {}            # unfold Node -> the matmuls reading its windows
    for n in graph.nodes:
        if is_matrix_product(n):
            a, b = n.inputs
            u = windows_of(a)
            if u is not None:
                rewrites[n] = ("unfold_matmul", (u.inputs[0], b), u.attrs)
            elif (u := windows_of(b)) is not None:
                rewrites[n] = ("matmul_unfold", (a, u.inputs[0]), u.attrs)
            if u is not None:
                by_unfold.setdefault(u, []).append(n)
        elif n.op == "fold" and isinstance(n.inputs[0], Value):
            r = producers.get(n.inputs[0])
            m = producers.get(r.inputs[0]) if r is not None and r.op == "reshape" else None
            if m is not None and is_matrix_product(m) and \
                    m.out.shape == _windows_matrix_shape(r.out.shape) and \
                    users.get(m.out) == [r] and users.get(r.out) == [n] and \
                    not {m.out, r.out} & leaving:
                rewrites[n] = ("matmul_fold", m.inputs, n.attrs)

    # an unfold stays when anything else reads it: its matmuls then read the windows it makes
    for u, matmuls in by_unfold.items():
        readers = users.get(u.out, [])
        matrices = [r.out for r in readers]
        if u.out in leaving or any(r.op != "reshape" or r.out in leaving for r in readers) or \
                sorted(id(m) for v in matrices for m in users.get(v, [])) != \
                sorted(id(m) for m in matmuls):
            for m in matmuls:
                del rewrites[m]
    if not rewrites:
        return graph
    nodes = []
    for n in graph.nodes:
        if n in rewrites:
            op, inputs, attrs = rewrites[n]
            n = Node(op, tuple(inputs), attrs, n.out, n.loc, n.scope)
        nodes.append(n)
    return dce(copy_graph(graph, nodes))


__all__ = ["form_conv_products"]
