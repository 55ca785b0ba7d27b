"""Sinking permutes: elementwise ops computed in the memory order of the permuted value they read.

A convolution's product comes out of `unfold_matmul` as (N*oh*ow, Cout) rows, channels-last
memory, and `conv2d` reads it as NCHW through `permute(reshape(.), (0,3,1,2))`. The bias and
ReLU after it then write the activation NCHW-contiguous, and the next convolution's product,
which walks an image channels-last, copies it back to channels-last chunk by chunk. Since
elementwise ops commute with permutes,

    f(permute(x, P), b) == permute(f(x, b'), P)      (b' a broadcast operand reshaped to match)

e.g. relu(permute(x) + b.reshape(1,C,1,1)) == permute(relu(x + b.reshape(1,1,1,C))), the
elementwise ops can run in x's order and the permute move below them, where it meets its
reader: another permute that undoes it (the two cancel in cleanup), or a convolution product
whose image it is (a permuted view of channels-last memory, which the product reads with no
copy). The values are exactly the same: each element is computed by the same op from the same
operands; only where it is stored changes.

The backward's mirror image: a convolution's input gradient (`matmul_fold`) is channels-last
memory too (the NumPy backend folds into (N, H, W, C) images), which the ReLU mask and the bias
gradient then read as NCHW, so a kernel reading it had to copy it first. A fold read only by
fused ops is asked for its (N, H, W, C) result (`channels_last=True`) and read through a
permute, which the ops after it then sink; a reduction of a rewritten result (the bias
gradient's sum) reduces the same axes of its source when only dims of size 1 move after it.

Done only where it pays: a chain of rewritten ops is kept when the permute at its end is read
only by such readers (or by further rewritten ops), never when it would leave the graph or feed
another library call (a matmul would then read a strided view). An op that reads a rewritten
value and whose own result is read elsewhere (the ReLU's mask, read by the backward) is
rewritten too, so that the permuted view never becomes a kernel's output in the old order
unless that op's readers need one.
"""

from __future__ import annotations

from kiln.ir.graph import Graph, Node, Value
from kiln.ir.ops import ELEMENTWISE, MOVEMENT, REDUCE
from kiln.passes.cleanup import copy_graph, dce

# a convolution product -> the position of its image operand, which it reads channels-last
CONV_IMAGE_INPUT = {"unfold_matmul": 0, "matmul_unfold": 1}
CHANNELS_LAST_AS_NCHW = (0, 3, 1, 2)
# reductions of a rewritten op's result: reduced over the same axes of its source instead
REDUCTIONS = ("sum", "max")
MAX_SEARCH = 64


def _inverse(perm: tuple) -> tuple:
    inv = [0] * len(perm)
    for i, p in enumerate(perm):
        inv[p] = i
    return tuple(inv)


def _is_identity(perm: tuple) -> bool:
    return tuple(perm) == tuple(range(len(perm)))


def sink_permutes(graph: Graph) -> Graph:
    """Rewrite `f(permute(x, P), ...)` into `permute(f(x, ...), P)` for elementwise `f` where the
    permute then cancels against its reader or feeds a convolution product's image (see the
    module docstring). Returns a new graph (or `graph` itself when nothing matched); each
    rewritten op's output Value keeps its identity, now computed by the permute.
    """
    original = graph
    graph = _channels_last_folds(graph)
    producers = graph.producers()
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}

    def permute_of(v) -> tuple | None:
        """P when `v` is a (non-identity) permute node's output."""
        p = producers.get(v) if isinstance(v, Value) else None
        if p is not None and p.op == "permute" and not _is_identity(p.attr_dict["perm"]):
            return tuple(p.attr_dict["perm"])
        return None

    def eligible(n: Node, chosen: dict) -> tuple | None:
        """The perm P under which `n` can run in its operands' order: every full-size operand
        is a permute by P (or a chosen op's result, which becomes one); None otherwise."""
        if n.prim.kind != ELEMENTWISE or n.out in leaving:
            return None
        shape, perm = n.out.shape, None
        for v in n.inputs:
            if not isinstance(v, Value):
                continue
            if len(v.shape) > len(shape):
                return None
            if v.shape != shape:
                continue                    # a broadcast operand: reshaped to match below
            p = chosen.get(producers.get(v)) or permute_of(v)
            if p is None or (perm is not None and p != perm):
                return None
            perm = p
        return perm

    candidates: dict = {}           # Node -> P
    for n in graph.nodes:
        perm = eligible(n, candidates)
        if perm is not None:
            candidates[n] = perm

    def feeds_candidates(r: Node) -> bool:
        """Whether a reduction's result flows back into the ops being rewritten (batch norm's
        statistics, broadcast over the values they were reduced from): such a kernel reduces
        and broadcasts over the source's order, which the C renderer does markedly slower
        channels-last (digits' batch norm backward: 0.65 vs 0.25 ms). Searched through at
        most MAX_SEARCH readers; a longer search counts as yes."""
        stack, seen = [r.out], set()
        while stack:
            for u in users.get(stack.pop(), []):
                if u in candidates:
                    return True
                if u not in seen:
                    seen.add(u)
                    stack.append(u.out)
            if len(seen) > MAX_SEARCH:
                return True
        return False

    def absorbs(r: Node, perm: tuple) -> bool:
        """Whether reduction `r` of a rewritten result is rewritten to reduce its source."""
        return r.op in REDUCTIONS and _reduction_in_order(r, perm)[3] and \
            not feeds_candidates(r)

    def readers_of(n: Node) -> tuple:
        """(rewritten readers, readers the permute pays off for, other fusible readers,
        whether anything else reads it) of a candidate's result."""
        perm, own, good, fused, other = candidates[n], [], 0, 0, n.out in leaving
        for r in users.get(n.out, []):
            if r in candidates and candidates[r] == perm:
                own.append(r)
            elif r.op == "permute" and tuple(r.attr_dict["perm"]) == _inverse(perm):
                good += 1
            elif perm == CHANNELS_LAST_AS_NCHW and r.op in CONV_IMAGE_INPUT and \
                    all(v is not n.out or i == CONV_IMAGE_INPUT[r.op]
                        for i, v in enumerate(r.inputs)):
                good += 1
            elif absorbs(r, perm):
                own.append(r)               # reduced in the source's order (below)
            elif r.prim.kind in (ELEMENTWISE, REDUCE) or \
                    (r.prim.kind == MOVEMENT and r.op == "permute"):
                fused += 1
            else:
                other = True
        return own, good, fused, other

    # worth it: the permute at the end of the chain pays off and nothing else reads it
    pays: dict = {}
    for n in reversed(graph.nodes):
        if n not in candidates:
            continue
        own, good, fused, other = readers_of(n)
        pays[n] = not other and not fused and \
            (good > 0 or any(pays.get(r, False) for r in own))
    # kept: a paying op, or one reading a kept op's result (so that result's permute is read
    # by rewritten ops only); each kept op's full-size operands are permutes or kept results
    kept: dict = {}
    for n in graph.nodes:
        if n not in candidates or readers_of(n)[3]:
            continue
        reads_kept = any(producers.get(v) in kept for v in n.value_inputs)
        if (pays[n] or reads_kept) and eligible(n, kept) == candidates[n]:
            kept[n] = candidates[n]
    if not kept:
        return original if graph is original else dce(graph)

    g = copy_graph(graph, [])
    inner: dict = {}                # a kept op's output -> its value in the source's order
    for n in graph.nodes:
        if n.op in REDUCTIONS and n.inputs[0] in inner and \
                absorbs(n, kept[producers[n.inputs[0]]]):
            _reduce_in_order(g, n, inner[n.inputs[0]], kept[producers[n.inputs[0]]])
            continue
        if n not in kept:
            g.nodes.append(n)
            continue
        perm = kept[n]
        inv = _inverse(perm)
        rank = len(n.out.shape)
        ins = []
        for v in n.inputs:
            if not isinstance(v, Value):
                ins.append(v)
            elif v.shape == n.out.shape:
                ins.append(inner[v] if v in inner else producers[v].inputs[0])
            else:
                ins.append(_broadcast_operand(g, v, rank, inv, n))
        shape = tuple(n.out.shape[i] for i in inv)
        out = g.new_value(shape, n.out.dtype)
        g.nodes.append(Node(n.op, tuple(ins), n.attrs, out, n.loc, n.scope))
        g.nodes.append(Node("permute", (out,), (("perm", perm),), n.out, n.loc, n.scope))
        inner[n.out] = out
    return dce(g)


def _channels_last_folds(graph: Graph) -> Graph:
    """Each `matmul_fold` read only by fused ops made channels-last, read through a permute:
    what the NumPy backend computes (its result is channels-last memory viewed as NCHW), now
    visible to the rewrites above and to the kernels, which then read it with no copy."""
    users = graph.users()
    leaving = set(graph.outputs) | {new for _, new in graph.mutations}
    folds = [n for n in graph.nodes if n.op == "matmul_fold" and n.out not in leaving and
             not n.attr_dict.get("channels_last") and users.get(n.out) and
             all(r.prim.kind in (ELEMENTWISE, REDUCE) for r in users[n.out])]
    if not folds:
        return graph
    g = copy_graph(graph, [])
    for n in graph.nodes:
        if n in folds:
            b, c, h, w = n.out.shape
            out = g.new_value((b, h, w, c), n.out.dtype)
            attrs = tuple(sorted(n.attrs + (("channels_last", True),)))
            g.nodes.append(Node(n.op, n.inputs, attrs, out, n.loc, n.scope))
            n = Node("permute", (out,), (("perm", CHANNELS_LAST_AS_NCHW),), n.out, n.loc,
                     n.scope)
        g.nodes.append(n)
    return g


def _reduction_in_order(n: Node, perm: tuple) -> tuple:
    """For `n`, a reduction of `permute(x, perm)`: (the axes of x it reduces, the shape of that
    reduction of x, the permute that puts its dims in `n`'s order, whether that permute only
    moves dims of size 1, i.e. is a reshape: a bias gradient's sum)."""
    attrs = n.attr_dict
    keepdim = attrs["keepdim"]
    axes = sorted(perm[a] for a in attrs["axes"])
    source = [n.value_inputs[0].shape[perm.index(i)] for i in range(len(perm))]
    shape = tuple(1 if i in axes else d for i, d in enumerate(source) if keepdim or
                  i not in axes)
    kept_dims = [i for i in range(len(perm)) if keepdim or perm[i] not in axes]
    remaining = [i for i in range(len(perm)) if keepdim or i not in axes]
    order = tuple(remaining.index(perm[i]) for i in kept_dims)   # n's dims in out's order
    moved = [o for o in order if shape[o] != 1]
    return tuple(axes), shape, order, moved == sorted(moved)


def _reduce_in_order(g: Graph, n: Node, source: Value, perm: tuple) -> None:
    """Append `n` (a reduction of `permute(source, perm)`) as the reduction of `source` over
    the same axes, then the reshape that puts its result's dims in `n`'s order."""
    axes, shape, _, _ = _reduction_in_order(n, perm)
    out = g.new_value(shape, n.out.dtype)
    attrs = tuple(sorted({**n.attr_dict, "axes": axes}.items()))
    g.nodes.append(Node(n.op, (source,), attrs, out, n.loc, n.scope))
    g.nodes.append(Node("reshape", (out,), (("shape", n.out.shape),), n.out, n.loc, n.scope))


def _broadcast_operand(g: Graph, v: Value, rank: int, inv: tuple, near: Node) -> Value:
    """`v` (broadcast against a rank-`rank` result) permuted by `inv`, padded to `rank` dims: a
    reshape when its dims larger than 1 keep their order (a bias), else a permute of one."""
    full = (1,) * (rank - len(v.shape)) + tuple(v.shape)
    target = tuple(full[i] for i in inv)
    if target == tuple(v.shape):
        return v
    order = [i for i in inv if full[i] != 1]
    if order == sorted(order):
        out = g.new_value(target, v.dtype)
        g.nodes.append(Node("reshape", (v,), (("shape", target),), out, near.loc, near.scope))
        return out
    if full != tuple(v.shape):
        padded = g.new_value(full, v.dtype)
        g.nodes.append(Node("reshape", (v,), (("shape", full),), padded, near.loc, near.scope))
        v = padded
    out = g.new_value(target, v.dtype)
    g.nodes.append(Node("permute", (v,), (("perm", inv),), out, near.loc, near.scope))
    return out


__all__ = ["sink_permutes"]
