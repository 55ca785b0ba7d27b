"""Tracing: while a Tracer is active, every dispatched op also appends a node to an IR graph.

The function runs eagerly as usual; the tracer watches. Tensors it has not seen before become
graph inputs ("lifted": parameters, buffers, optimizer state, closed-over tensors); seeds of
random ops become inputs too, so a replay draws fresh numbers exactly as eager would. In-place
updates are recorded functionally and listed as write-backs. Reading a tensor's value into
Python (`bool`, `item`, ...) is data-dependent control flow: a graph break.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph, Value
from kiln.ir.primitive import MOVEMENT, PRIMITIVES
from kiln.runtime.device import CPU, to_device
from kiln.tracer.autograd import memory_private
from kiln.tracer.bytecode import returned_unseen
from kiln.tracer.custom_function import BACKWARD_OF
from kiln.tracer.errors import GraphBreak, user_frame, user_location
from kiln.tracer import sparse
from kiln.tracer.sparse import SparseTensor
from kiln.tracer.sparse_compressed import SparseCompressedTensor, compressed
from kiln.tracer.symbolic_number import SymbolicNumber
from kiln.tracer.tensor import STATE, Tensor, set_tracer


@dataclass
class Binding:
    """Where a graph input's value comes from when the program runs.

    kind "arg": positional path `path` into the flattened arguments; "lifted": the tensor
    `tensor` itself (a parameter, buffer or state); "grad": the current `.grad` of graph input
    `path`, or of `tensor` when `path` is None (read when gradients accumulate, or by an
    optimizer step or a clipping; the `.grad` object may be replaced between calls);
    "seed": fresh random numbers, `draw(generator)` (an array); "scalar": the Python number
    `path[0][path[1]]` (an optimizer's learning rate, which a scheduler changes between
    calls), as a float64 scalar; "number": the call's own int/float argument `path` ((position,
    None) or (None, keyword)), or a number computed from such arguments (`path` its expression,
    `symbolic_number.evaluate`), as a 0-d input of dtype `draw`, as an op's operand
    (`kiln.tracer.symbolic_number`).
    """

    kind: str
    tensor: Tensor | None = None
    path: int | None = None
    generator: object = None
    draw: object = None


@dataclass
class GradWrite:
    """After the program, the `.grad` of graph input `input` is output `output` (None: cleared).

    `was_none` is whether that `.grad` was None when the trace lifted the tensor: the program
    either set a fresh gradient or accumulated into an existing one. `none_at_call` is whether
    it was None when the traced call began, which is what decides the Python path (a
    `zero_grad()` before the lift makes the two differ); a replay needs the same state as then,
    unless `cleared`: a `zero_grad()` set it to None before the trace read its old gradient,
    whatever it was.
    """

    tensor: Tensor                  # the tensor at trace time (for lifted inputs, the same)
    output: int | None
    input: int = -1
    was_none: bool = True
    none_at_call: bool | None = None     # None: not known, `was_none` stands in
    cleared: bool = False           # set to None before its old gradient was read: any state


@dataclass
class TracedProgram:
    """One captured graph and how it binds to the Python world."""

    graph: Graph
    bindings: list                         # one per graph input
    num_user_outputs: int = 0
    # with a compiled backward: the `.grad` values the call wrote, forward outputs between the
    # user outputs and the values saved for the backward
    num_grad_outputs: int = 0
    output_tree: object = None             # how to rebuild the function's return value
    mutated: list = field(default_factory=list)       # tensor per graph.mutations entry
    # graph.mutations entries eager mode wrote without moving a version counter (`t.data = `)
    quiet_writes: list = field(default_factory=list)
    grad_writes: list = field(default_factory=list)   # GradWrite
    complete: bool = True                  # False for a segment cut by a graph break
    snapshots: list = field(default_factory=list)     # input values at trace time, if kept
    consumed: dict = field(default_factory=dict)      # output index -> prim: graph spent
    # outputs that are the call's own tensors, unchanged (`return x` after x.contiguous()):
    # output index -> graph input index; a replay returns that tensor itself, as eager does
    returned_inputs: dict = field(default_factory=dict)
    # outputs that are views of such a tensor in eager mode's memory (`return x[0]`, or `x`
    # itself after `x.add_(1)`): output index -> (graph input index, the view primitives and
    # attrs taking the output from it); a replay takes them again once its writes are there
    returned_views: dict = field(default_factory=dict)
    # pure-Python calls the traced call made that a replay repeats after the program has run
    # (an lr scheduler's step: `after_replay`), each with a name for listings
    after_replay: list = field(default_factory=list)
    # numbers in Python state the traced call changed and the program reads at run time (a
    # step counter: `CompiledFunction._lift_counters`): (name, write, where, value) per place; a replay
    # writes `evaluate(where, ...)` there (the call's values before it ran), or `value` where
    # `where` is None (a number the call set)
    number_writes: list = field(default_factory=list)
    # places the traced call set to a tensor it computed (a pruning or weight-norm hook's
    # `module.weight`): (name, write, output index) per place; the program outputs each such
    # tensor (after the function's return value, unless that holds it) and a replay writes the
    # new one there
    attribute_writes: list = field(default_factory=list)
    # tensors outside the graph's inputs whose `.grad` the call set to None (a zero_grad() over
    # parameters the graph never reads): a replay sets them to None too
    grad_clears: list = field(default_factory=list)


# the reads of a tensor's values that give Python numbers (`Tensor._read`'s `what`)
_PYTHON_VALUE_READS = frozenset({"tolist()", "item()", "bool()", "float()", "int()", "complex()",
                                 "__index__"})
# host computations whose results the op makes constants of the trace when its input is one
_CONSTANT_HOST_READS = frozenset({"unique()", "unique_consecutive()"})
_FOLDED_SIZE = 1024             # the most elements an op on constants is folded into


def _constant_operands(tracer, args: tuple) -> bool:
    """Whether `args` hold a tensor and every tensor among them is a constant of `tracer`."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    return bool(tensors) and all(tracer.is_constant(a) for a in tensors)



class Tracer:
    """Records the ops of one eager run. Install with `with tracer:`.

    Args:
        name: the graph's name (the traced function's).
        on_break: what a graph break does: "raise" a GraphBreak (`fullgraph=True`), "split"
            the trace into a new graph and keep going (`explain`), or "abandon" the trace and
            let the function finish eagerly (`compile`: nothing runs twice).
        names: id(tensor) -> readable name for lifted tensors (e.g. "model.0.weight").
    """

    def __init__(self, name: str, on_break: str = "raise", names: dict | None = None,
                 snapshot: bool = False):
        if on_break not in ("raise", "split", "abandon"):
            raise ValueError(f"on_break must be 'raise', 'split' or 'abandon', not {on_break!r}")
        self.name = name
        self.on_break = on_break
        self.names = names or {}
        self.snapshot = snapshot      # keep a copy of every input's value (tests, debugging)
        self.breaks: list[GraphBreak] = []
        self.programs: list[TracedProgram] = []
        # the provenance stack (`kiln.tracer.provenance`): every node records the scopes open
        # when it is traced; `scope_loc` (a backward node's forward line) replaces the caller's
        self.scopes: tuple = ()
        self.scope_loc: str | None = None
        self.after_replay: list = []      # (name, call): see `replay_after`
        self.python_reads: set = set()    # (id(container), key) read into Python by user code
        self.top_code = None                # the traced function's code (set by the compiler)
        self.returned_items: dict = {}      # id(number) -> (number, tensor): `return t.item()`
        self.object_reads: list = []      # (object, attribute, value as read) likewise
        self.item_reads: set = set()      # (id(container), key): `hooks.note_item_read`
        self.item_writes: set = set()     # (id(container), key): `hooks.note_item_write`
        self.flag_reads: set = set()      # id() of each Module whose `training` was read
        # custom autograd.Function classes applied in the call (their forward and backward are
        # the user's Python, which the compiler guards and watches as the function's own);
        # `on_function(cls)`, when set, is told of each before its first forward runs
        self.functions: list = []
        self.on_function = None
        self._start_segment()

    # ------------------------------------------------------------------ lifecycle
    def _start_segment(self) -> None:
        suffix = f"_{len(self.programs)}" if self.programs else ""
        self.graph = Graph(self.name + suffix)
        self.bindings: list[Binding] = []
        self.known: set[int] = set()          # ids of Values of the current graph
        self.node_of: dict[int, object] = {}  # id(Value of a node) -> its Node
        self.input_of: dict[int, tuple] = {}  # id(tensor) -> (tensor, input Value)
        self.alias_of: dict[int, Tensor] = {}
        self.grads_before: dict[int, object] = {}
        self.grad_owner: dict[int, int] = {}  # id(.grad tensor) -> index of its owner input
        # id(.grad tensor) -> its owner, for tensors the function can reach (set by the
        # compiler): a gradient read while its owner is never read is still its `.grad`
        self.grad_holders: dict[int, Tensor] = {}
        # (tensors, whether each .grad was None) when the call began, for the compiler's guard
        self.grad_state: tuple = ((), ())
        # indices into grad_state's tensors whose `.grad` presence, when library code branched
        # on it, was still what it had been when the call began (the compiler guards those)
        self.grads_depended: set[int] = set()
        self._candidate_at: dict[int, int] | None = None    # id(candidate) -> its index
        self.cleared: set[int] = set()        # ids of tensors whose .grad was reset, unread
        # ids of tensors written in place (their version counter moved); `.data = ` is not
        self.bumped: set[int] = set()
        self.own_memory: set[int] = set()     # ids of tensors made here, their memory their own
        self.snapshots: list = []
        self.scalars: dict = {}               # (id(container), key, index, device) -> tensor
        self.numbers: dict = {}               # (argument, dtype, device) -> tensor
        # id(Value) -> whether it stands for a Python number (`stands_for_number`)
        self.number_values: dict[int, bool] = {}
        self._keep: list = []                 # keeps tensors alive so ids stay unique

    def __enter__(self) -> "Tracer":
        if STATE.tracer is not None:
            raise RuntimeError("kiln: a trace is already active (nested compile/trace)")
        set_tracer(self)
        return self

    def __exit__(self, *exc) -> bool:
        set_tracer(None)
        return False

    @contextmanager
    def scope(self, name: str | tuple, loc: str | None = None):
        """Nodes traced inside are in provenance scope `name` (a str, or a tuple of nested
        ones), within the open ones; with `loc`, they point at that source line rather than at
        the line running them."""
        saved = self.scopes, self.scope_loc
        self.scopes = self.scopes + ((name,) if isinstance(name, str) else tuple(name))
        if loc is not None:
            self.scope_loc = loc
        try:
            yield
        finally:
            self.scopes, self.scope_loc = saved

    # ------------------------------------------------------------------ inputs
    def add_arg(self, tensor: Tensor, name: str, path: int) -> None:
        self._input(tensor, name, Binding("arg", tensor=None, path=path))

    def _input(self, tensor: Tensor, name: str, binding: Binding) -> Value:
        kind = binding.kind
        v = self.graph.add_input(tuple(tensor.shape), tensor.dtype, name, kind)
        self.bindings.append(binding)
        self.known.add(id(v))
        self.input_of[id(tensor)] = (tensor, v)
        self.grads_before[id(tensor)] = tensor._grad
        if tensor._grad is not None:
            owner = len(self.graph.inputs) - 1
            self.grad_owner[id(tensor._grad)] = owner
            # the gradient was read before its tensor (an optimizer step computing from
            # `p.grad` first): it too is that tensor's `.grad` of the moment, which a
            # zero_grad(set_to_none=True) and a backward between calls replace
            read = self.input_of.get(id(tensor._grad))
            if read is not None:
                i = next(i for i, x in enumerate(self.graph.inputs) if x is read[1])
                if self.bindings[i].kind == "lifted":
                    self.bindings[i] = Binding("grad", path=owner)
        self._keep.append(tensor)
        if self.snapshot:
            self.snapshots.append(tensor._data.copy())
        tensor._trace = v
        return v

    def value(self, tensor: Tensor) -> Value:
        """The graph value of a tensor, lifting tensors from outside the trace to inputs."""
        v = tensor._trace
        if v is not None and id(v) in self.known:
            return v
        source = self.alias_of.get(id(tensor))
        if source is not None:
            return self.value(source)
        owner = self.grad_owner.get(id(tensor))
        if owner is not None:
            return self._input(tensor, f"{self.graph.inputs[owner].name}_grad",
                               Binding("grad", path=owner))
        holder = self.grad_holders.get(id(tensor))
        if holder is not None and holder._grad is tensor:
            name = self.names.get(id(holder)) or f"t{len(self.graph.inputs)}"
            return self._input(tensor, f"{name}_grad", Binding("grad", tensor=holder))
        name = self.names.get(id(tensor)) or f"t{len(self.graph.inputs)}"
        return self._input(tensor, name, Binding("lifted", tensor=tensor))

    def constant(self, tensor: Tensor) -> None:
        """A tensor made from Python data inside the trace: baked in as a constant."""
        data = to_device(tensor._data, CPU).copy()
        v = self.graph.add_constant(np.asarray(data), tensor.dtype)
        self.known.add(id(v))
        tensor._trace = v

    def scalar_input(self, container, key, device, index: int | None = None) -> Tensor:
        """`container[key]` (or `container[key][index]`; a Python number) as a float64 scalar
        input on `device`, which a replay reads afresh from the container on every call."""
        if self.after_replay:
            # a replay reads its inputs before it runs, and repeats the calls after it ran
            self.graph_break(f"a value an optimizer reads on every call (its {key!r}) is read "
                             f"after {self.after_replay[-1][0]} in the same call; a replay would "
                             "read it before that step")
        if (id(container), key) in self.item_writes:
            # the call set it before this read: every replay computes with what the call set
            # (a replay reads its scalar inputs as it begins, before the call's own write)
            value = container[key] if index is None else container[key][index]
            t = Tensor._make(to_device(np.array(float(value)), device), dt.float64, device)
            self.constant(t)
            self.number_values[id(t._trace)] = True
            return t
        k = (id(container), key, index, device)
        t = self.scalars.get(k)
        if t is None:
            value = container[key] if index is None else container[key][index]
            t = Tensor._make(to_device(np.array(float(value)), device), dt.float64, device)
            label = str(key) if index is None else f"{key}{index}"
            name = label if not self.scalars else f"{label}{len(self.scalars)}"
            self._input(t, name, Binding("scalar", path=(container, key, index)))
            self.number_values[id(t._trace)] = True
            self.scalars[k] = t
            self._keep.append(container)
        return t

    def item_written(self, container, key) -> None:
        """`hooks.note_item_write`: `container[key]` was set in the call."""
        self.item_writes.add((id(container), key))

    def mark_number(self, tensor: Tensor) -> None:
        """0-d `tensor` of this trace holds what eager holds as a Python number (an optimizer's
        step count, which eager reads with `.item()`): `stands_for_number` answers True for it
        and for what is computed from such tensors alone."""
        v = self.value(tensor)
        if tensor._data.ndim == 0:
            self.number_values[id(v)] = True

    def stands_for_number(self, tensor: Tensor) -> bool:
        """Whether 0-d `tensor` of this trace holds, at run time, what the eager call computes
        as a Python number: a `scalar_input` (an optimizer's hyperparameter), a `mark_number`
        tensor, or a 0-d result of ops whose tensor inputs all are (`1 - beta2 ** step`).
        `functional.common._binary` makes such an operand of a float16/bfloat16 op take the
        number's conversion, not a 0-d tensor's (eager's `-lr * g` rounds no lr to float16)."""
        v = tensor._trace
        if not self.number_values or v is None or id(v) not in self.known or \
                tensor._data.ndim != 0:
            return False
        return self._number_value(v)

    def _number_value(self, v: Value) -> bool:
        known = self.number_values.get(id(v))
        if known is None:
            node = self.node_of.get(id(v))
            values = [x for x in node.inputs if isinstance(x, Value)] if node is not None else []
            known = bool(values) and v.shape == () and \
                all(self._number_value(x) for x in values)
            self.number_values[id(v)] = known
        return known

    def number_input(self, number, dtype, device) -> Tensor:
        """Lifted argument `number` (a SymbolicNumber) as the 0-d `dtype` operand of an op on
        `device`, which a replay makes afresh from the call's argument (kind "number")."""
        from kiln.tracer.symbolic_number import operand_array
        k = (number.where, dtype, device)
        t = self.numbers.get(k)
        if t is None:
            t = Tensor._make(operand_array(number.value, dtype, device.xp), dtype, device)
            name = number.name if not self.numbers else f"{number.name}{len(self.numbers)}" \
                if number.where[0] == "expr" else f"{number.name}_{dtype.name}"
            self._input(t, name, Binding("number", path=number.where, draw=dtype))
            self.numbers[k] = t
        return t

    def replay_after(self, name: str, call) -> None:
        """`call()` (pure Python: it changes numbers an optimizer reads, such as a learning
        rate) ran in this call; every replay makes it again, after the program runs."""
        self.after_replay.append((name, call))

    def drop_replay_after(self, call) -> None:
        """`call`, given to `replay_after` earlier in this call, is not for replays after all
        (a DDP forward's arming of the next backward, used by the call's own backward)."""
        self.after_replay = [(n, c) for n, c in self.after_replay if c is not call]

    def random_input(self, values: Tensor, generator, draw) -> None:
        """Random numbers the eager call drew from `generator`; a replay calls
        `draw(generator)` for fresh ones (kind "seed")."""
        if self.function_backward() is not None:
            # a replay draws its inputs before the forward runs, not in the backward's turn
            self.graph_break("a random draw from a kiln generator, which a replay would make "
                             "out of eager's order")
            return
        self._input(values, f"random{sum(b.kind == 'seed' for b in self.bindings)}",
                    Binding("seed", generator=generator, draw=draw))

    # ------------------------------------------------------------------ ops
    def is_constant(self, tensor: Tensor) -> bool:
        """Whether `tensor` holds a constant of this trace (made from Python data inside it,
        or an integer op on such constants alone) that nothing has written since."""
        v = tensor._trace
        return v is not None and id(v) in self.known and v in self.graph.constants

    def record(self, prim, args: tuple, attrs: dict, result: Tensor) -> None:
        # runs for every op of a trace: the common input (a value of this graph) is read inline
        known, inputs = self.known, []
        if result.dtype.category < 2 and not result.requires_grad and \
                result._data.size <= _FOLDED_SIZE and _constant_operands(self, args):
            # integer arithmetic on tensors made from Python data (DINO's crop sizes through
            # unique_consecutive and cumsum): the same values on every replay, so a constant
            # too, whose values Python may read (`x[start:end]`) without a graph break
            self.constant(result)
            return
        for a in args:
            if isinstance(a, Tensor):
                v = a._trace
                inputs.append(v if v is not None and id(v) in known else self.value(a))
            elif type(a) is SymbolicNumber:      # a lifted number no operand rule took
                inputs.append(a.specialise(f"a literal of {prim.name}"))
            else:
                inputs.append(a)
        for k, a in attrs.items():
            if type(a) is not tuple and isinstance(a, tuple):
                # a kiln.Size (or another tuple type) becomes plain IR data, so a graph means
                # the same after a JSON round trip and prints the same in generated code
                attrs = {**attrs, k: tuple(a)}
            elif type(a) is SymbolicNumber:      # a lifted number as an attribute (clamp's min)
                attrs = {**attrs, k: a.specialise(f"an attribute of {prim.name}")}
        v = self.graph.add_node(prim.name, tuple(inputs), attrs, result._data.shape,
                                result.dtype, self.scope_loc or user_location(), self.scopes)
        self.known.add(id(v))
        self.node_of[id(v)] = self.graph.nodes[-1]
        result._trace = v
        if result.grad_fn is not None:
            result.grad_fn.out_trace = v

    def alias(self, out: Tensor, source: Tensor) -> None:
        """`out` shares `source`'s memory (detach, .data): same value, same write-backs."""
        self.alias_of[id(out)] = self.alias_of.get(id(source), source)
        self._keep.append(out)
        if source._trace is not None and id(source._trace) in self.known:
            out._trace = source._trace

    def replace_data(self, tensor: Tensor, other: Tensor) -> None:
        """`tensor.data = other` (a VQ-VAE's dead-code restart, `p.data = p - lr * g`): a write
        of `other`'s value, which each replay writes back; to another shape, dtype or device it
        is a graph break (a replay's write-backs keep the buffer they write into)."""
        if (tuple(tensor.shape), tensor.dtype, tensor.device) != \
                (tuple(other.shape), other.dtype, other.device):
            self.graph_break(f"setting .data of a tensor of shape {list(tensor.shape)} "
                             f"({tensor.dtype}) to one of shape {list(other.shape)} "
                             f"({other.dtype}) on {other.device}")
            return
        self.write(tensor, other, bump=False)

    def write(self, tensor: Tensor, result: Tensor, bump: bool = True) -> None:
        """`tensor` now holds `result` (an in-place op): later reads see the new value."""
        target = self.alias_of.get(id(tensor), tensor)
        if bump and tensor._version is target._version:
            # (a write through `p.data`, which has a version counter of its own, moves none
            # of p's)
            self.bumped.add(id(target))
        if id(target) not in self.input_of:
            if target._base is not None:
                self._write_root(target, result)
            elif getattr(target._data, "base", None) is not None and \
                    not self._owns_memory(target) and not memory_private(target._data):
                self.graph_break(f"an in-place write to a view ({type(tensor).__name__} of "
                                 f"shape {list(tensor.shape)}) also changes the tensor it views")
            else:
                # a tensor from outside written before it was read (`buf.copy_(x)`) becomes an
                # input here, so the write is one of the program's write-backs
                self.value(target)
        v = self.value(result)
        target._trace = v
        tensor._trace = v

    def _owns_memory(self, tensor: Tensor) -> bool:
        """Whether `tensor`, whose array views another, was made by an op of this trace that
        is no view: its memory is its own (the block its array views is a fresh one, as
        `a.t() + b` is laid out as PyTorch lays it), so a write to it changes no other."""
        if id(tensor) in self.own_memory:        # (written before: its value is the write's)
            return True
        node = self.node_of.get(id(tensor._trace))
        if node is None or PRIMITIVES[node.op].kind is MOVEMENT:
            return False
        self.own_memory.add(id(tensor))
        self._keep.append(tensor)
        return True

    def _write_root(self, view: Tensor, result: Tensor) -> None:
        """A write through `view` (`m[1][2] = 5`, `x[0].mul_(2)`): the tensor owning its memory
        now holds its old value with the view's elements put at their flat positions, which
        the view's steps from it select (as `refresh_view` takes them again)."""
        from kiln.ir.ops import P
        from kiln.tracer import autograd
        from kiln.tracer.functional.indexing import _put_at, arange
        root, steps = autograd.view_origin(view)
        prev, STATE.grad_enabled = STATE.grad_enabled, False    # the history is rebase_view's
        try:
            pos = P.reshape(arange(root.numel(), device=root.device), shape=tuple(root.shape))
            for prim, attrs in steps:
                pos = P.dispatch(prim, (pos,), attrs)
            new_root = _put_at(root, pos, result, P.index_put)
        finally:
            STATE.grad_enabled = prev
        self.write(root, new_root)

    def grad_cleared(self, tensor: Tensor) -> None:
        """`tensor.grad = None` ran (zero_grad); unless the trace read the old gradient first,
        this makes the gradient the program computes a fresh one, however `.grad` stood when
        the call began (the usual step: forward, zero_grad, backward, step)."""
        known = self.input_of.get(id(tensor))
        if known is not None:
            index = self.graph.inputs.index(known[1])
            if any(b.kind == "grad" and (b.path == index or b.tensor is tensor)
                   for b in self.bindings):
                return                      # its old gradient is a program input
        self.cleared.add(id(tensor))
        self._keep.append(tensor)

    def grad_read(self, tensor: Tensor) -> None:
        """Some code (the user's, an optimizer's) read `tensor.grad`: if the call has not changed
        whether it has one, what the code did with it may depend on how the call began."""
        if tensor._grad is not None and tensor._grad.is_sparse:
            # its indices and values are new tensors after every backward, which a replay,
            # reading the ones this call saw, would miss
            self.graph_break("a sparse .grad (an embedding's sparse=True) is read; a replay "
                             "would reuse this call's entries")
        candidates, at_start = self.grad_state
        if not candidates:
            return
        if self._candidate_at is None:
            self._candidate_at = {id(t): i for i, t in enumerate(candidates)}
        i = self._candidate_at.get(id(tensor))
        if i is not None and (tensor._grad is None) == at_start[i]:
            self.grads_depended.add(i)

    def grads_checked(self) -> None:
        """Library code is about to branch on which tensors have a `.grad`: those whose presence
        the call has not changed so far (no zero_grad, no backward gave them one) depend on how
        the call began."""
        candidates, at_start = self.grad_state
        for i, t in enumerate(candidates):
            if (t._grad is None) == at_start[i]:
                self.grads_depended.add(i)

    def returns_read(self) -> bool:
        """Whether the user's line reading a value (`.item()`) returns it straight from the
        traced function, so nothing in it can see the number (`kiln.tracer.bytecode`)."""
        frame = user_frame()
        if frame is None or frame.f_code is not self.top_code:
            return False
        outer = frame.f_back
        while outer is not None:            # a recursive call: its caller sees the number
            if outer.f_code is self.top_code:
                return False
            outer = outer.f_back
        return returned_unseen(frame.f_code, frame.f_lasti)

    def value_read(self, tensor: Tensor, what: str) -> None:
        v = tensor._trace
        if what in _PYTHON_VALUE_READS | _CONSTANT_HOST_READS and v is not None and \
                id(v) in self.known and v in self.graph.constants:
            # made from Python data inside the trace and not written since (a write gives the
            # tensor a new value), read as Python numbers: every replay has the same values,
            # baked in as a constant. (Not `numpy()`, whose array the caller may write behind
            # the trace's back, nor ops computing on the host from the values, whose results
            # the trace would not hold.)
            return
        self.graph_break(f"Tensor.{what} reads a tensor's value into Python "
                         "(data-dependent control flow)")

    def function_backward(self) -> str | None:
        """The scope of the custom Function's backward running now (`backward of Exp`: the
        user's Python, run while the backward graph is derived), or None."""
        inside = [s for s in self.scopes if isinstance(s, str) and s.startswith(BACKWARD_OF)]
        return inside[-1] if inside else None

    def custom_function(self, cls) -> None:
        """A custom autograd.Function `cls` is applied inside the trace."""
        if cls not in self.functions:
            self.functions.append(cls)
            if self.on_function is not None:
                self.on_function(cls)

    def graph_break(self, reason: str, location: str | None = None) -> None:
        inside = self.function_backward()
        if inside is not None:
            reason = f"{reason}, in the {inside} (a custom autograd.Function)"
        brk = GraphBreak(reason, location or user_location())
        self.breaks.append(brk)
        if self.on_break == "raise":
            raise brk
        if self.on_break == "abandon":
            set_tracer(None)             # stop watching; the function goes on eagerly
            return
        self.programs.append(self._finish(outputs=None, complete=False))
        self._start_segment()

    # ------------------------------------------------------------------ finishing
    def finish(self, outputs, items: dict | None = None) -> list[TracedProgram]:
        """Close the trace with the function's return value (`items`: numbers in it that are
        a returned `.item()`, see `flatten`); returns every captured program."""
        self.programs.append(self._finish(outputs, complete=True, items=items))
        return self.programs

    def _finish(self, outputs, complete: bool, items: dict | None = None) -> TracedProgram:
        g = self.graph
        program = TracedProgram(g, self.bindings, complete=complete, snapshots=self.snapshots)
        if complete:                    # the function's return value, None included
            program.after_replay = list(self.after_replay)
            leaves, tree = flatten(outputs, items)
            for t in leaves:
                g.outputs.append(self.value(t))
            program.num_user_outputs = len(leaves)
            program.output_tree = tree
        for tensor, v in list(self.input_of.values()):
            current = tensor._trace
            if current is not None and current is not v and id(current) in self.known:
                if self.bindings[g.inputs.index(v)].kind == "seed":
                    continue        # drawn in the call (`rand(n).mul_(2)`): its own tensor
                if current.shape == v.shape and current.dtype is v.dtype:
                    if id(tensor) not in self.bumped:
                        program.quiet_writes.append(len(g.mutations))
                    g.mutations.append((v, current))
                    program.mutated.append(tensor)
        for tensor, v in list(self.input_of.values()):
            # (one that no longer requires grad may have had its gradient written before it was
            # frozen: pix2pix's D, set requires_grad=False after its own step, for G's)
            if self.bindings[g.inputs.index(v)].kind == "seed":
                continue
            grad = tensor._grad
            index = g.inputs.index(v)
            was_none = self.grads_before.get(id(tensor)) is None
            cleared = id(tensor) in self.cleared
            if grad is None:
                # a zero_grad() in the call clears it on every replay, though it was None
                # when traced (the step's backward and optimizer step run outside the call)
                if not was_none or cleared:
                    program.grad_writes.append(GradWrite(tensor, None, index, was_none,
                                                         cleared=cleared))
                continue
            gv = grad._trace
            if gv is not None and id(gv) in self.known and gv not in g.inputs:
                program.grad_writes.append(GradWrite(tensor, len(g.outputs), index, was_none,
                                                     cleared=cleared))
                g.outputs.append(gv)
        program.grad_clears = list({id(t): t for t in self._keep if id(t) in self.cleared and
                                    id(t) not in self.input_of and t._grad is None}.values())
        self.release()
        return program

    def release(self) -> None:
        """Forget this trace's values on the tensors it saw: the next trace starts clean."""
        for tensor, _ in self.input_of.values():
            tensor._trace = None


@contextmanager
def untraced():
    """Run a block eagerly, unrecorded, inside a trace or not.

    To the trace, tensors the block creates come from outside: the graph reads and writes
    them by identity, as it does parameters. Meant for state that, once made, stays (an
    optimizer's lazily created moments): the first call's trace is then the graph every later
    call would trace, and need not be traced again.
    """
    tracer = STATE.tracer
    set_tracer(None)
    try:
        yield
    finally:
        set_tracer(tracer)


def note_grad_cleared(tensor: Tensor) -> None:
    """Tell an active trace that `tensor.grad` is being set to None."""
    if STATE.tracer is not None:
        STATE.tracer.grad_cleared(tensor)


# ----------------------------------------------------------------------------- pytrees

def flatten(obj, items: dict | None = None, record=None):
    """Tensors in a nested tuple/list/dict, and a tree that `unflatten` rebuilds from them. A
    sparse tensor is two leaves, its indices and values, and ("S", its size, coalesced); a CSR
    or CSC one three, and ("SC", its size, layout). A
    number in `items` (id -> (number, tensor): a traced `.item()` returned as it is) is its
    tensor's leaf and ("I",): unflatten reads the number from it. An object for which
    `record(obj)` holds and whose attributes hold tensors is walked like a dict of its
    attributes, ("R", its type, ((name, subtree), ...)): a compiled function's argument whose
    fields are its inputs (a batch object); such trees describe arguments and are not rebuilt."""
    leaves: list = []
    return leaves, _walk(obj, leaves, items, record)


def _walk(x, leaves: list, items, record):
    if items and type(x) is float and items.get(id(x), (None,))[0] is x:
        leaves.append(items[id(x)][1])
        return ("I",)
    if isinstance(x, Tensor):
        if type(x) is SparseTensor:
            leaves.extend((x._idx, x._vals))
            return ("S", tuple(x.shape), x._coalesced)
        if type(x) is SparseCompressedTensor:
            leaves.extend((x._compressed, x._plain, x.values()))
            return ("SC", tuple(x.shape), x.layout.name)
        leaves.append(x)
        return ("T",)
    if isinstance(x, (tuple, list)):
        return (type(x), tuple(_walk(v, leaves, items, record) for v in x))
    if isinstance(x, dict):
        return (dict, tuple((k, _walk(v, leaves, items, record)) for k, v in x.items()))
    if record is not None and record(x):
        before = len(leaves)
        fields = tuple((k, _walk(v, leaves, items, record)) for k, v in vars(x).items())
        if len(leaves) > before:
            return ("R", type(x), fields)
    return ("C", x)


def unflatten(tree, leaves):
    """The nested value `flatten` took apart, with `leaves` in its tensors' places."""
    return _build(tree, iter(leaves))


def _build(t, it):
    # (module level, not a closure: a recursive closure is a reference cycle that held the
    # built outputs until the garbage collector ran, so replays could not reuse their memory)
    tag = t[0]
    if tag == "T":
        return next(it)
    if tag == "C":
        return t[1]
    if tag == "I":
        return next(it).item()
    if tag == "S":
        indices = next(it)
        return sparse.make(indices, next(it), t[1], t[2])
    if tag == "SC":
        pointers, plain = next(it), next(it)
        return compressed(pointers, plain, next(it), t[1], t[2])
    if tag is dict:
        return {k: _build(v, it) for k, v in t[1]}
    items = [_build(v, it) for v in t[1]]
    if hasattr(tag, "_fields"):           # a namedtuple takes its fields one by one
        return tag(*items)
    return tag(items)
