"""Fusion: groups a graph's nodes into kernels and orders them, with extern calls, as a Schedule.

The contract with codegen (what a `FusedKernel` promises):

* `kernel.subgraph` is a self-contained `Graph` whose nodes are only elementwise, reduction
  (`sum`, `max`, `prod`, `argmax`), movement (`reshape`, `permute`, `expand`, `slice`, `flip`,
  `pad`) and creation (`full`, `arange`) primitives. Its inputs (all of kind "arg") are, in
  order, `kernel.inputs`: buffers of the outer graph (graph inputs, constants, outputs of earlier
  steps). Its outputs are, in order, `kernel.outputs`: the buffers the outer graph reads later.
  Everything else in the subgraph lives in registers.
* One iteration space per kernel. Without a reduction, every node's output has the same number
  of elements N (views and broadcasts are index arithmetic on loads). With reductions, they all
  share one (input shape, reduced axes) pair: the input has D elements, the output R; every
  node's output then has D or R elements (row-wise work, as in softmax and layer_norm).
  A movement or creation node reading only outer buffers may have any size: it is index
  arithmetic on a load, and may appear in several kernels (it is never a reduction).
* An elementwise node whose inputs are all smaller than its output (a broadcast, e.g. a
  max-pool's window mask `ranks == best`) and whose readers are elementwise nodes of its size is
  computed again in every kernel reading it: its smaller inputs cross between kernels, not it.
* With `fuse(..., gathers=True)` (the default) a kernel may contain `take(x, idx)`: a gather,
  i.e. a load from `x` at computed positions. `x` is then always a kernel input (a buffer),
  never a value computed in the same kernel; `idx` may be computed in the kernel. Pass
  `gathers=False` to keep every `take` an extern call.
* Steps are in a valid execution order; running them in order with `run_schedule` gives the
  interpreter's results on the outer graph.

Extern steps are single nodes the backend calls as a library: matmul, indexing (take,
index_add, index_put), random draws, cat and cumsum.
"""

from __future__ import annotations

import collections
import heapq
import math
from dataclasses import dataclass

from kiln.ir.graph import Graph, Node, Value, kernel_name
from kiln.ir.interpreter import interpret
from kiln.ir.ops import CREATION, ELEMENTWISE, MOVEMENT, PRIMITIVES, REDUCE
from kiln.ir.schedule import STRIDED_VIEWS, ExternStep, FusedKernel, Schedule, padded_pieces
from kiln.passes.layout import transpose_matmul_outputs, transpose_thin_products

FUSIBLE_KINDS = frozenset([ELEMENTWISE, REDUCE, MOVEMENT, CREATION])
# fusible kinds that still run as a library call (Primitive.extern: a scan, a concatenation)
EXTERN_OPS = frozenset(name for name, p in PRIMITIVES.items() if p.extern)
VIEW_KINDS = frozenset([MOVEMENT, CREATION])
# elementwise ops cheap enough to compute again in each kernel reading their broadcast result
CHEAP_BROADCASTS = frozenset(["eq", "ne", "lt", "le", "gt", "ge", "where", "cast", "neg", "add",
                              "sub", "mul", "maximum", "minimum", "bitwise_and", "bitwise_or",
                              "bitwise_xor", "bitwise_not"])


def is_fusible(node: Node, gathers: bool = True) -> bool:
    """Whether `node` may go into a fused kernel (`take` only as a gather, see the contract)."""
    if gathers and node.op == "take":
        return True
    return node.prim.kind in FUSIBLE_KINDS and node.op not in EXTERN_OPS


# ----------------------------------------------------------------------------- schedule

def run_schedule(schedule: Schedule, inputs: list) -> tuple[list, list]:
    """Execute a schedule step by step with the interpreter; same results as `interpret`."""
    graph = schedule.graph
    env: dict = dict(zip(graph.inputs, inputs))
    env.update(graph.constants)
    for step in schedule.steps:
        if isinstance(step, FusedKernel):
            outs, _ = interpret(step.subgraph, [env[v] for v in step.inputs])
        else:
            outs, _ = interpret(step.subgraph, [env[v] for v in step.inputs])
        env.update(zip(step.outputs, outs))
    return [env[v] for v in graph.outputs], [env[new] for _, new in graph.mutations]


# ----------------------------------------------------------------------------- grouping

def _reduce_key(node: Node) -> tuple:
    """(input shape, reduced axes): reductions sharing it share one iteration space."""
    attrs = node.attr_dict
    axes = attrs["axes"] if "axes" in attrs else (attrs["axis"],)
    return (node.value_inputs[0].shape, tuple(sorted(axes)))


def _domain(node: Node) -> int:
    if node.prim.kind == REDUCE:
        return math.prod(node.value_inputs[0].shape)
    return math.prod(node.out.shape)


@dataclass(eq=False)
class _Group:
    """A vertex of the quotient graph: a kernel being grown, an extern, or an inlined view."""

    id: int
    nodes: list
    kind: str                       # "kernel" | "extern" | "view" | "extern_view"
    red_key: tuple | None = None
    sizes: frozenset = frozenset()
    first: int = 0
    pieces: bool = False            # stores sums of padded pieces piece by piece (`_place_pieces`)

    def allowed(self) -> set | None:
        if self.red_key is None:
            return None
        shape, axes = self.red_key
        d = math.prod(shape)
        return {d, math.prod(s for i, s in enumerate(shape) if i not in axes)}


def _compatible(a: _Group, b: _Group) -> bool:
    if a.kind != "kernel" or b.kind != "kernel":
        return False
    keys = {k for k in (a.red_key, b.red_key) if k is not None}
    if keys and (a.pieces or b.pieces):     # pieces are stored over a pointwise domain
        return False
    if len(keys) > 1:
        return False
    sizes = a.sizes | b.sizes
    if keys:
        probe = a if a.red_key is not None else b
        return sizes <= probe.allowed()
    return len(sizes) == 1


class _Dependencies:
    """A directed graph whose vertices can be merged: the groups and the data between them.

    Plain dicts, where networkx would cost ~0.1 s of import in every process that fuses.
    """

    def __init__(self):
        self.successors: dict = {}      # vertex -> {vertex: None} (ordered sets)
        self.predecessors: dict = {}

    def add(self, g) -> None:
        self.successors[g], self.predecessors[g] = {}, {}

    def add_edge(self, a, b) -> None:
        self.successors[a][b] = None
        self.predecessors[b][a] = None

    def contract(self, keep, gone) -> None:
        """`gone` merges into `keep`: its edges become keep's (an edge between the two goes)."""
        for s in self.successors.pop(gone):
            del self.predecessors[s][gone]
            if s is not keep:
                self.add_edge(keep, s)
        for p in self.predecessors.pop(gone):
            del self.successors[p][gone]
            if p is not keep:
                self.add_edge(p, keep)

    def topological_order(self, key) -> list:
        """Every vertex after those it reads from; among the ready ones, smallest `key` first."""
        waiting = {g: len(p) for g, p in self.predecessors.items()}
        ready = [(key(g), i, g) for i, g in enumerate(self.successors) if not waiting[g]]
        heapq.heapify(ready)
        tiebreak = {g: i for i, g in enumerate(self.successors)}
        order = []
        while ready:
            g = heapq.heappop(ready)[2]
            order.append(g)
            for s in self.successors[g]:
                waiting[s] -= 1
                if not waiting[s]:
                    heapq.heappush(ready, (key(s), tiebreak[s], s))
        assert len(order) == len(self.successors), "fusion created a cycle"
        return order


class _Fuser:
    def __init__(self, graph: Graph, gathers: bool = True, pieces: bool = False):
        self.graph = graph
        self.gathers = gathers
        self.pieces = pieces
        self.index = {n.out: i for i, n in enumerate(graph.nodes)}
        self.producer = {n.out: n for n in graph.nodes}
        self.group_of: dict = {}          # outer Value -> _Group (for computed values)
        self.quotient = _Dependencies()  # _Group -> _Group data dependencies
        self.next_id = 0
        self.views: set = set()           # nodes inlined into every kernel that reads them
        self.readers = graph.users()
        self.leaving = set(graph.outputs) | {new for _, new in graph.mutations}
        self.escaping = {n for n in graph.nodes if n.out in self.leaving}
        self.recompute: set = set()
        for n in graph.nodes:           # in order: a chain's later links see the earlier ones
            if self._is_cheap_broadcast(n) or self._is_cheap_derivative(n):
                self.recompute.add(n)

    def _is_cheap_broadcast(self, node: Node) -> bool:
        """An elementwise node that only broadcasts smaller values up (a max-pool's window mask
        `ranks == best`, from one byte per output): every kernel reading it computes it again
        from those values instead of reading its larger buffer, so the smaller values are
        what crosses between kernels (the forward stores one byte per pool output, not K)."""
        if node.op not in CHEAP_BROADCASTS or node in self.escaping:
            return False
        size = math.prod(node.out.shape)
        if not node.value_inputs or any(math.prod(v.shape) >= size for v in node.value_inputs):
            return False
        readers = self.readers.get(node.out, [])
        return bool(readers) and all(r.prim.kind == ELEMENTWISE and r.op not in EXTERN_OPS
                                     and math.prod(r.out.shape) == size for r in readers)

    def _is_cheap_derivative(self, node: Node) -> bool:
        """A cheap elementwise function of one value x of its own size (`1 - s`, `t * t`,
        `1 - t * t`: the saved factors of sigmoid's and tanh's gradients) that other nodes
        read x too: the kernels reading it compute it again from x, which crosses between
        kernels anyway, instead of their producer storing both x and it (an LSTM step
        stored five such factors per step beside the gates, and its backward read both)."""
        if node.op not in CHEAP_BROADCASTS or node in self.escaping:
            return False
        values = set(node.value_inputs)
        if len(values) != 1:
            return False
        (x,) = values
        size = math.prod(node.out.shape)
        if x.shape != node.out.shape or x.dtype is not node.out.dtype:
            return False
        readers = self.readers.get(node.out, [])
        if not readers or not all(r.prim.kind == ELEMENTWISE and r.op not in EXTERN_OPS and
                                  math.prod(r.out.shape) == size for r in readers):
            return False
        # x (through the links computed again before it) must be read by some other node
        sources = self._sources(x)
        return all(s not in self.producer or s in self.leaving or
                   any(r is not node and r not in self.recompute for r in self.readers.get(s, []))
                   for s in sources)

    def _sources(self, v) -> list:
        """The values `v` is computed from where it is recomputed by its readers, else [v]."""
        node = self.producer.get(v)
        if node is None or node not in self.recompute:
            return [v]
        return [s for u in node.value_inputs for s in self._sources(u)]

    def _new_group(self, node: Node, kind: str) -> _Group:
        red = _reduce_key(node) if node.prim.kind == REDUCE and kind == "kernel" else None
        g = _Group(self.next_id, [node], kind, red, frozenset([_domain(node)]),
                   self.index[node.out])
        self.next_id += 1
        self.quotient.add(g)
        for v in (s for u in node.value_inputs for s in self._sources(u)):
            src = self.group_of.get(v)
            if src is not None:
                self.quotient.add_edge(src, g)
        self.group_of[node.out] = g
        return g

    def _is_view(self, node: Node) -> bool:
        """A movement/creation node reading only outer buffers or other such nodes."""
        if node.prim.kind not in VIEW_KINDS or node.op in EXTERN_OPS:
            return False
        for v in node.value_inputs:
            src = self.group_of.get(v)
            if src is not None and src.kind == "kernel":
                return False
        return True

    def _reshapes_stored_value(self, node: Node) -> bool:
        """A reshape of a kernel's value that is stored anyway (an extern reads it, or it
        leaves the program), read only by fusible nodes: its readers index that buffer,
        where fused into the producer it would be the same values stored a second time (the
        logits' gradient, 2.8 MB in an LSTM LM step, for the matmuls and again, reshaped, for
        the bias gradient's sum)."""
        if node.op != "reshape" or node in self.escaping:
            return False
        (x,) = node.value_inputs
        src = self.group_of.get(x)
        if src is None or src.kind != "kernel":
            return False
        readers = self.readers.get(node.out, [])
        stored = x in self.leaving or any(not is_fusible(r, self.gathers) or r.op == "take"
                                          for r in self.readers.get(x, []))
        return stored and bool(readers) and all(is_fusible(r, self.gathers) and
                                                r.op != "take" for r in readers)

    def _feeds_externs_only(self, node: Node) -> bool:
        """A strided view (no copy in NumPy) of a computed value that only extern calls read."""
        if node.op not in STRIDED_VIEWS or node in self.escaping:
            return False
        readers = self.readers.get(node.out, [])
        return bool(readers) and not any(is_fusible(r, self.gathers) for r in readers)

    def _creates_cycle(self, a: _Group, b: _Group) -> bool:
        """Whether merging a and b closes a loop through some third vertex: a path from one to
        the other with a vertex between. Searched breadth-first from both ends at once (forward
        from the source, backward from the destination): it ends where the two meet or as soon
        as either side runs out. An
        LSTM's cell kernels, each tried against every earlier one, explored everything after
        the earlier (the whole backward) 14,000 times, 4 s of a compile."""
        q = self.quotient
        for src, dst in ((a, b), (b, a)):
            ahead = collections.deque(x for x in q.successors[src] if x is not dst)
            behind = collections.deque(x for x in q.predecessors[dst] if x is not src)
            seen_ahead, seen_behind = set(ahead), set(behind)
            if seen_ahead & seen_behind:
                return True
            while ahead and behind:
                for y in q.successors[ahead.popleft()]:
                    if y is dst or y in seen_behind:
                        return True
                    if y not in seen_ahead:
                        seen_ahead.add(y)
                        ahead.append(y)
                for y in q.predecessors[behind.popleft()]:
                    if y is src or y in seen_ahead:
                        return True
                    if y not in seen_behind:
                        seen_behind.add(y)
                        behind.append(y)
        return False

    def _gathers_read_buffers(self, a: _Group, b: _Group) -> bool:
        """A gather indexes a buffer: its data must not be computed in the merged kernel."""
        for n in a.nodes + b.nodes:
            if n.op == "take" and self.group_of.get(n.inputs[0]) in (a, b):
                return False
        return True

    def _merge(self, keep: _Group, gone: _Group) -> _Group:
        keep.nodes = sorted(keep.nodes + gone.nodes, key=lambda n: self.index[n.out])
        keep.red_key = keep.red_key or gone.red_key
        keep.sizes = keep.sizes | gone.sizes
        keep.first = min(keep.first, gone.first)
        for n in gone.nodes:
            self.group_of[n.out] = keep
        self.quotient.contract(keep, gone)
        return keep

    def _rows_stay_in_order(self, a: _Group, b: _Group) -> bool:
        """A kernel with a reduction computes row by row: a permute of a value computed from a
        reduction in the same kernel would read that reduction at other rows than the current
        one (which codegen cannot lower), so such a permute starts a kernel of its own (a copy
        reading the buffer). Permutes before the reductions are index arithmetic, as ever."""
        if a.red_key is None and b.red_key is None:
            return True
        nodes = sorted(a.nodes + b.nodes, key=lambda n: self.index[n.out])
        members = {n.out for n in nodes}
        reduced: set = set()        # values computed from a reduction of this kernel
        for n in nodes:
            if n.op == "permute" and n.inputs[0] in reduced:
                return False
            if n.prim.kind == REDUCE or any(s in reduced for v in n.value_inputs
                                            for s in self._sources(v) if s in members):
                reduced.add(n.out)
        return True

    def try_merge(self, a: _Group, b: _Group) -> _Group | None:
        if a is b:
            return a
        if not _compatible(a, b) or not self._gathers_read_buffers(a, b) or \
                not self._rows_stay_in_order(a, b) or self._creates_cycle(a, b):
            return None
        return self._merge(a, b)

    def run(self, horizontal: bool = True) -> list:
        for node in self.graph.nodes:
            if node in self.recompute:          # no group: inlined into each kernel reading it
                continue
            if not is_fusible(node, self.gathers):
                self._new_group(node, "extern")
                continue
            if self._is_view(node) or self._reshapes_stored_value(node):
                self.views.add(node)
                self._new_group(node, "view")
                continue
            if self._feeds_externs_only(node):
                # a transposed activation for a matmul: the library reads the computed buffer
                # through strides, while fused into its producer it would be a strided copy
                self._new_group(node, "extern_view")
                continue
            group = self._new_group(node, "kernel")
            producers = []
            for v in (s for u in node.value_inputs for s in self._sources(u)):
                src = self.group_of.get(v)
                if src is not None and src.kind == "kernel" and src is not group and \
                        src not in producers:
                    producers.append(src)
            # join the latest producer first: that is where the data is hottest
            for src in sorted(producers, key=lambda g: -max(self.index[n.out] for n in g.nodes)):
                merged = self.try_merge(src, group)
                if merged is not None:
                    group = merged
        if self.pieces:
            self._place_pieces()
        self._materialize_views()
        if horizontal:
            self._fuse_horizontally()
        return self.quotient.topological_order(key=self._demand())

    def _demand(self):
        """Per group, the earliest trace position among it and what reads it, directly or not:
        the order's key, so that work a group waits on runs when that group is due rather than
        at its own late position (an optimizer's `-lr`, traced last, held the update of a bias
        whose gradient was ready at once until after the whole LSTM backward, so the update
        read the gradient's 2.8 MB again from far caches)."""
        successors = self.quotient.successors
        demand: dict = {}
        for g in reversed(self.quotient.topological_order(key=lambda g: g.first)):
            demand[g] = min([g.first] + [demand[s] for s in successors[g]])
        return lambda g: (demand[g], g.first)

    def _place_pieces(self) -> None:
        """A kernel of only a sum of zero-padded pieces side by side (`padded_pieces`), all
        computed by one pointwise kernel, joins that kernel, which then stores each piece at
        its place in the sum: an LSTM step's four gate gradients go straight into the
        (batch, 4 * hidden) gradient its products read, with no kernel copying them there."""
        for n in self.graph.nodes:
            held = self.group_of.get(n.out)
            if n.op != "add" or held is None or held.kind != "kernel":
                continue
            info = padded_pieces(n.out, self.producer, self.readers, self.leaving)
            if info is None or set(held.nodes) != set(info[2]):
                continue
            owners = list(dict.fromkeys(self.group_of.get(piece) for _, piece in info[1]))
            size = math.prod(info[1][0][1].shape)
            if any(g is None or g is held or g.kind != "kernel" or g.red_key is not None or
                   g.sizes != {size} for g in owners):
                continue
            owner = owners[0]
            for other in owners[1:]:        # pieces computed apart: one kernel computes them
                owner = self.try_merge(owner, other) or owner
            if any(self.group_of[piece] is not owner for _, piece in info[1]) or \
                    self._creates_cycle(owner, held):
                continue
            self._merge(owner, held).sizes = frozenset([size])
            owner.pieces = True

    def _materialize_views(self) -> None:
        """A view read by an extern, or returned, needs a buffer: it gets a copy kernel."""
        needed = set(self.graph.outputs) | {new for _, new in self.graph.mutations}
        for n in self.graph.nodes:
            if not is_fusible(n, self.gathers):
                needed.update(n.value_inputs)
            elif n.op == "take":
                needed.add(n.inputs[0])
        for g in list(self.quotient.successors):
            if g.kind == "view" and g.nodes[0].out in needed:
                g.kind = "kernel"

    def _fuse_horizontally(self) -> None:
        """Merge independent kernels over the same iteration space (optimizer steps)."""
        heads: dict = {}
        for g in sorted(self.quotient.successors, key=lambda g: g.first):
            if g.kind != "kernel":
                continue
            key = (g.red_key, g.sizes if g.red_key is None else None)
            candidates = heads.get(key, [])
            if len(candidates) > 4:
                # many kernels alike before it (an RNN cell at each time step): those it reads
                # through another kernel would close a cycle, and are not tried one by one
                far = self._ancestors(set(self.quotient.predecessors[g]))
                candidates = [h for h in candidates if h not in far]
            for head in candidates:
                if self.try_merge(head, g) is not None:
                    break
            else:
                heads.setdefault(key, []).append(g)

    def _ancestors(self, groups: set) -> set:
        """Every vertex with a path to one of `groups` (not the groups themselves, unless one
        reaches another)."""
        preds = self.quotient.predecessors
        found: set = set()
        todo = [p for g in groups for p in preds[g]]
        while todo:
            x = todo.pop()
            if x not in found:
                found.add(x)
                todo.extend(preds[x])
        return found


def fuse(graph: Graph, horizontal: bool = True, gathers: bool = True,
         thin_kept=None, pieces: bool = False) -> Schedule:
    """Group `graph`'s nodes into fused kernels and extern calls, in execution order.

    Matmuls read only through a transpose first produce the transposed result directly, and
    thin products of a transposed matrix are computed transposed (`kiln.passes.layout`); the
    schedule's graph is that rewritten graph (same inputs, outputs and write-backs).

    Args:
        horizontal: also merge independent kernels over one iteration space.
        gathers: let `take` fuse as a gather load (see the module docstring).
        thin_kept: `kept` of `transpose_thin_products`: the thin products the backend
            computes as they are.
        pieces: a kernel computing the pieces of a sum of padded pieces side by side stores
            them in place in that sum (`_Fuser._place_pieces`; the C renderer's kernels).
    """
    graph = transpose_thin_products(transpose_matmul_outputs(graph), thin_kept)
    fuser = _Fuser(graph, gathers, pieces)
    order = fuser.run(horizontal)
    consumers = _outside_readers(graph)
    steps: list = []
    for g in order:
        if g.kind == "extern":
            steps.append(ExternStep(g.nodes[0]))
        elif g.kind in ("kernel", "extern_view"):
            steps.append(_build_kernel(g, fuser, consumers))
    return Schedule(graph, steps)


def gathers_as_externs(kernel: FusedKernel) -> list:
    """`kernel` as steps with its gathers (`take`) as extern calls, over the outer graph's
    Values: for code generators that cannot gather yet, so only the gathers leave the kernel
    (cross-entropy's other work still runs as generated kernels)."""
    sub = kernel.subgraph
    outer = dict(zip(sub.inputs, kernel.inputs)) | dict(zip(sub.outputs, kernel.outputs))

    def out(v):
        return outer.get(v, v) if isinstance(v, Value) else v
    steps: list = []
    for st in fuse(sub, gathers=False).steps:
        if isinstance(st, FusedKernel):
            steps.append(FusedKernel(st.name, st.subgraph, [out(v) for v in st.inputs],
                                     [out(v) for v in st.outputs], st.nodes))
        else:
            n = st.node
            steps.append(ExternStep(Node(n.op, tuple(out(v) for v in n.inputs), n.attrs,
                                         out(n.out), n.loc, n.scope)))
    return steps


def split_gathers(schedule: Schedule) -> tuple[Schedule, list]:
    """(the schedule with each kernel that gathers split around its `take` calls, kernel number
    or None per step).

    No code generator gathers yet, so a kernel with a `take` runs as kernels around a `take`
    extern call rather than all on the array executor; its parts keep its number (k6a, k6b).
    Kernels are numbered k0, k1, ... in the order `str(schedule)` lists them. This is the
    pipeline's step before `kiln.codegen.lower.lower_schedule`, at compile time.
    """
    flat, numbers, index = [], [], 0
    for step in schedule.steps:
        parts = [step]
        if isinstance(step, FusedKernel) and any(n.op == "take" for n in step.subgraph.nodes):
            parts = gathers_as_externs(step)
        kernels = [p for p in parts if isinstance(p, FusedKernel)]
        for p in parts:
            number = None
            if isinstance(p, FusedKernel):
                number = f"k{index}" if len(kernels) == 1 else \
                    f"k{index}{chr(ord('a') + kernels.index(p))}"
            flat.append(p)
            numbers.append(number)
        index += isinstance(step, FusedKernel)
    if len(flat) == len(schedule.steps):
        return schedule, numbers
    return Schedule(schedule.graph, flat), numbers


def _outside_readers(graph: Graph) -> dict:
    """Value -> the nodes reading it; outputs and write-backs read it from outside (None)."""
    readers: dict = {}
    for n in graph.nodes:
        for v in n.value_inputs:
            readers.setdefault(v, []).append(n)
    for v in list(graph.outputs) + [new for _, new in graph.mutations]:
        readers.setdefault(v, []).append(None)
    return readers


def _build_kernel(group: _Group, fuser: _Fuser, readers: dict) -> FusedKernel:
    own = set(n.out for n in group.nodes)
    members = {n.out: n for n in group.nodes}
    stack = [v for n in group.nodes for v in n.value_inputs]
    while stack:          # pull in the views the kernel reads (index arithmetic on loads)
        v = stack.pop()   # and the cheap broadcasts it computes again
        node = fuser.producer.get(v)
        if node is not None and v not in members and \
                (node in fuser.recompute or fuser.group_of[v].kind == "view"):
            members[v] = node
            stack.extend(node.value_inputs)
    ordered = sorted(members.values(), key=lambda n: fuser.index[n.out])
    sub = Graph(kernel_name(ordered))
    inner: dict = {}
    inputs = []
    for n in ordered:
        for v in n.value_inputs:
            if v not in members and v not in inner:
                inner[v] = sub.add_input(v.shape, v.dtype, v.name)
                inputs.append(v)
    for n in ordered:
        ins = tuple(inner[v] if isinstance(v, Value) else v for v in n.inputs)
        inner[n.out] = sub.add_node(n.op, ins, n.attr_dict, n.out.shape, n.out.dtype, n.loc,
                                    n.scope)
    # each value keeps the program's number, so a kernel's listing and the comments in its
    # generated source say %5 where the program's listing does
    for outer, v in inner.items():
        v.id = outer.id
    sub._next_id = max((v.id + 1 for v in inner.values()), default=0)

    def read_outside(v) -> bool:       # through the broadcasts each reader computes again
        return any(r is None or (read_outside(r.out) if r in fuser.recompute else r.out not in own)
                   for r in readers.get(v, []))

    outputs = [n.out for n in group.nodes if read_outside(n.out)]
    sub.outputs = [inner[v] for v in outputs]
    computed = sorted(group.nodes + [n for n in members.values() if n in fuser.recompute],
                      key=lambda n: fuser.index[n.out])
    return FusedKernel(sub.name, sub, inputs, outputs, computed)




__all__ = ["STRIDED_VIEWS", "FusedKernel", "ExternStep", "Schedule", "fuse", "gathers_as_externs",
           "run_schedule", "is_fusible", "split_gathers"]
