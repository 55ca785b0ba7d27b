"""Layout rewrites: a matmul produces its result in the layout its readers read.

The gradient of a weight used as `x @ w.T` comes out of autograd as `(x.T @ g).T`: a matmul
whose result is read only through a transpose. Every reader then walks it with a stride of a
row (an optimizer step reads the gradient column by column), or it is copied to make it
contiguous. Since `(a @ b).T == b.T @ a.T`, the same matrix is produced in the layout its
readers want by multiplying the transposed operands instead; transposed operands cost a BLAS
call nothing (it reads them with a transpose flag), and a transpose of a transpose cancels.

One exception goes the other way: a product with few rows, `h @ w.T` (an RNN's recurrent step,
a small batch through a linear layer), runs markedly slower in OpenBLAS with its right
operand transposed than as `(w @ h.T).T` (measured 61 vs 38 us for 20x128 @ 128x512, 43 vs 22
for 16x128 @ 128x384); `transpose_thin_products` computes those (of some size, and an inner
dimension of 128 or more) transposed, the kernels that read them index the transposed buffer,
and `transpose_matmul_outputs` leaves them so.

The product is the same up to rounding: BLAS sums each dot product in its own blocked order,
which differs between the two layouts by an ulp or so, as between any two BLAS libraries.
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.passes.cleanup import copy_graph, dce


# A product (m x k) @ (k x n) whose right operand is a transposed matrix is "thin" when m is at
# most THIN_ROWS and n at least twice m: BLAS then computes its transpose faster. Below
# THIN_MIN_WORK multiply-adds the difference is a microsecond, less than the extra view costs.
# Below THIN_MIN_INNER the kernels reading the transposed result lose more than BLAS gains: they
# read it with a stride of a row (an RNN's gate kernel, which GCC then leaves scalar), a cost of
# the result's size, while BLAS's gain grows with k. One thread, per training step: a 2-layer
# BiLSTM of hidden 64 at batch 32 (32x64 @ 64x256) 26.6 ms as it is, 48.7 transposed; an LSTM
# of hidden 64, 2.1 vs 3.5; hidden 100 at batch 20 equal; hidden 200 at batch 16 (16x200 @
# 200x800) 6.0 vs 5.3.
THIN_ROWS = 32
THIN_MIN_WORK = 1 << 19
THIN_MIN_INNER = 128


def _thin(m: int, k: int, n: int) -> bool:
    return m <= THIN_ROWS and n >= 2 * m and k >= THIN_MIN_INNER and m * k * n >= THIN_MIN_WORK


def _is_last_two_swap(perm: tuple) -> bool:
    n = len(perm)
    return n >= 2 and tuple(perm) == tuple(range(n - 2)) + (n - 1, n - 2)


def transpose_matmul_outputs(graph: Graph) -> Graph:
    """Rewrite `permute(matmul(a, b))` (last two dims swapped) into `matmul(b.T, a.T)` when
    every reader of the matmul reads it through that transpose and it does not leave the graph.

    Returns a new graph (or `graph` itself when nothing matched); the permute's output Value
    keeps its identity, now computed by the matmul.
    """
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}
    rewrite: dict = {}            # the permute node -> the matmul node it replaces
    for n in graph.nodes:
        if n.op != "permute" or not _is_last_two_swap(n.attr_dict["perm"]):
            continue
        mm = producers.get(n.inputs[0])
        if mm is None or mm.op != "matmul" or mm.out in leaving:
            continue
        readers = users.get(mm.out, [])
        a, b = mm.inputs
        if len(a.shape) == 2 and _thin(b.shape[1], b.shape[0], a.shape[0]) and \
                _transpose_source(producers, a) is None:
            continue            # b.T @ a.T would be a thin product of a transposed matrix
        if all(r.op == "permute" and r.attrs == n.attrs for r in readers):
            rewrite[n] = mm
    if not rewrite:
        return graph

    g = copy_graph(graph, [])
    dropped = set(mm.out for mm in rewrite.values())
    kept_producers: dict = {}
    for n in graph.nodes:
        if n.out in dropped:
            continue            # computed transposed where it is read, below
        if n in rewrite:
            a, b = rewrite[n].inputs
            bt = _transposed(g, b, n, kept_producers)
            at = _transposed(g, a, n, kept_producers)
            n = Node("matmul", (bt, at), (), n.out, rewrite[n].loc,
                     rewrite[n].scope)
        g.nodes.append(n)
        kept_producers[n.out] = n
    return dce(g)           # the transposes the matmuls used to read may be dead now


def _transpose_source(producers: dict, v: Value) -> Value | None:
    """x when `v` is `x.T` (a 2-D transpose), else None."""
    p = producers.get(v)
    if p is not None and p.op == "permute" and tuple(p.attr_dict["perm"]) == (1, 0):
        return p.inputs[0]
    return None


def transpose_thin_products(graph: Graph, kept=None) -> Graph:
    """Rewrite `matmul(h, w.T)` into `permute(matmul(w, h.T))` when h has few rows (`_thin`):
    the same product, which OpenBLAS computes faster that way round. `kept(m, k, n, dtype)`:
    products the backend computes as they are, faster still (the C backend's own thin-product
    kernel, `kiln.runtime.gemm_cpu`), which stay.

    Returns a new graph (or `graph` itself when nothing matched); the matmul's output Value
    keeps its identity, now computed by the permute.
    """
    producers = graph.producers()
    thin = []
    for n in graph.nodes:
        if n.op != "matmul" or len(n.out.shape) != 2:
            continue
        h, wt = n.inputs
        if _transpose_source(producers, wt) is not None and \
                _thin(h.shape[0], h.shape[1], wt.shape[1]) and \
                not (kept is not None and kept(*h.shape, wt.shape[1], n.out.dtype)):
            thin.append(n)
    if not thin:
        return graph
    g = copy_graph(graph, [])
    for n in graph.nodes:
        if n in thin:
            h, wt = n.inputs
            w = _transpose_source(producers, wt)
            m, k = h.shape
            ht = _transpose_source(producers, h)
            if ht is None:
                ht = g.add_node("permute", (h,), {"perm": (1, 0)}, (k, m), h.dtype, n.loc)
            product = g.add_node("matmul", (w, ht), {}, (w.shape[0], m), n.out.dtype, n.loc)
            n = Node("permute", (product,), (("perm", (1, 0)),), n.out, n.loc)
        g.nodes.append(n)
    return dce(g)           # the transposes of w may be dead now


def _transposed(g: Graph, v: Value, near: Node, producers: dict) -> Value:
    """`v` with its last two dims swapped: the input of a transpose when `v` is one (only
    reader or not, the view stays where it was), else a new permute node appended to `g`."""
    p = producers.get(v)
    if p is not None and p.op == "permute" and p.attrs == near.attrs:
        return p.inputs[0]
    shape = v.shape[:-2] + (v.shape[-1], v.shape[-2])
    out = g.new_value(shape, v.dtype)
    g.nodes.append(Node("permute", (v,), near.attrs, out, near.loc, near.scope))
    return out


__all__ = ["transpose_matmul_outputs", "transpose_thin_products"]
