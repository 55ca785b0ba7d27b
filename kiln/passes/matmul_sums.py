"""Batching rewrite: a sum of small matrix products becomes one product of concatenations.

A weight used at every step of a loop (an RNN's recurrent and input weights, a layer applied
to several inputs) gets its gradient as a sum of one product per use, `sum_i A_i @ B_i`, each
with a small inner dimension (the batch). Each product is a BLAS call writing a full
weight-sized matrix, and the sum then reads all of them back. Since

    A_1 @ B_1 + ... + A_n @ B_n == cat([A_1, ..., A_n], axis=1) @ cat([B_1, ..., B_n], axis=0)

the same sum is one BLAS call over the concatenated operands: the operands are copied once
(small when the inner dimensions are), no per-use matrix is written or re-read, and BLAS gets
one large product instead of many thin ones. An RNN weight gradient's `A_i` are transposed
views (`g_i.T`); their concatenation is taken as `cat([g_1, ..., g_n], axis=0).T`, a plain copy
of contiguous blocks, which BLAS then reads with its transpose flag.

The result is the same sum up to rounding (the terms are added in another order).
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.cleanup import copy_graph, dce

# At least this many products in one sum before they are merged.
MIN_TERMS = 2


def _worth_merging(m: int, k: int, n: int) -> bool:
    """Whether a product (m x k) @ (k x n) is thin enough to merge: copying its operands
    ((m + n) * k elements) costs less memory traffic than writing and re-reading its result
    (m * n elements)."""
    return (m + n) * k <= m * n


def merge_matmul_sums(graph: Graph) -> Graph:
    """Rewrite each tree of `add`s that sums at least two thin 2-D matmuls (read nowhere else)
    into one matmul over their concatenated operands, plus the tree's other terms.

    Returns a new graph (or `graph` itself when nothing matched); the tree's root Value keeps
    its identity.
    """
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}

    def sum_node(v) -> Node | None:
        """The add producing `v` that a tree may contain: same shape and dtype in and out."""
        n = producers.get(v) if isinstance(v, Value) else None
        if n is None or n.op != "add" or len(n.inputs) != 2:
            return None
        if not all(isinstance(x, Value) and x.shape == n.out.shape and x.dtype is n.out.dtype
                   for x in n.inputs):
            return None
        return n

    def read_once_by(v: Value, node: Node) -> bool:
        return v not in leaving and users.get(v, []) == [node]

    def term_matmul(v: Value, parent: Node) -> Node | None:
        mm = producers.get(v)
        if mm is None or mm.op != "matmul" or not read_once_by(v, parent):
            return None
        a, b = mm.inputs
        if len(a.shape) != 2 or len(b.shape) != 2 or a.dtype is not b.dtype:
            return None
        (m, k), n = a.shape, b.shape[1]
        return mm if _worth_merging(m, k, n) else None

    rewrites: dict = {}             # root add node -> (matmul nodes, other terms)
    for node in graph.nodes:
        if sum_node(node.out) is None:
            continue
        readers = users.get(node.out, [])
        if node.out not in leaving and len(readers) == 1 and \
                sum_node(readers[0].out) is readers[0]:
            continue                # not a root: its reader continues the tree
        matmuls, others = [], []
        stack = [node]
        while stack:
            n = stack.pop()
            for x in n.inputs:
                child = sum_node(x)
                if child is not None and read_once_by(x, n):
                    stack.append(child)
                    continue
                mm = term_matmul(x, n)
                (matmuls if mm is not None else others).append(mm if mm is not None else x)
        if len(matmuls) >= MIN_TERMS:
            rewrites[node] = (matmuls, others)
    if not rewrites:
        return graph

    g = copy_graph(graph, [])
    cats: dict = {}             # frozenset of a row-wise cat's inputs -> that cat node
    for node in graph.nodes:
        if node in rewrites:
            matmuls, others = rewrites[node]
            _emit_merged(g, node, matmuls, others, producers, cats)
        else:
            g.nodes.append(node)
            if node.op == "cat" and node.attr_dict["axis"] == 0 and \
                    len(set(node.inputs)) == len(node.inputs):
                cats[frozenset(node.inputs)] = node
    return dce(g)       # the per-term matmuls, their transposes and the old adds are dead


def _emit_merged(g: Graph, root: Node, matmuls: list, others: list, producers: dict,
                 cats: dict) -> None:
    """Append to `g` the nodes computing `root.out` as one matmul of concatenations plus
    `others`; `cats`: row-wise concatenations computed before, by their set of inputs."""
    loc = root.loc
    dtype = root.out.dtype
    m, n = root.out.shape

    def transposed_source(v: Value) -> Value | None:
        p = producers.get(v)
        if p is not None and p.op == "permute" and tuple(p.attr_dict["perm"]) == (1, 0):
            return p.inputs[0]
        return None
    sources = [transposed_source(mm.inputs[0]) for mm in matmuls]
    known = cats.get(frozenset(sources)) if len(set(sources)) == len(sources) else None
    if known is not None:
        # the same blocks are concatenated already (an RNN's per-step gradients, for its
        # input weights): take the terms in that order and read that concatenation
        order = {v: i for i, v in enumerate(known.inputs)}
        matmuls = sorted(matmuls, key=lambda mm: order[transposed_source(mm.inputs[0])])
        sources = list(known.inputs)
    lhs = [mm.inputs[0] for mm in matmuls]
    rhs = [mm.inputs[1] for mm in matmuls]
    k = sum(a.shape[1] for a in lhs)
    if all(s is not None for s in sources):
        # cat(g_i.T, axis=1) == cat(g_i, axis=0).T: contiguous blocks, and a free transpose
        stacked = known.out if known is not None else \
            g.add_node("cat", tuple(sources), {"axis": 0}, (k, m), dtype, loc)
        a = g.add_node("permute", (stacked,), {"perm": (1, 0)}, (m, k), dtype, loc)
    else:
        a = g.add_node("cat", tuple(lhs), {"axis": 1}, (m, k), dtype, loc)
    b = g.add_node("cat", tuple(rhs), {"axis": 0}, (k, n), dtype, loc)
    if not others:
        g.nodes.append(Node("matmul", (a, b), (), root.out, loc))
        return
    total = g.add_node("matmul", (a, b), {}, (m, n), dtype, loc)
    for i, x in enumerate(others):
        out = root.out if i == len(others) - 1 else g.new_value((m, n), dtype)
        g.nodes.append(Node("add", (total, x), (), out, loc))
        total = out


__all__ = ["merge_matmul_sums"]
