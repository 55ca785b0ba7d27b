"""A compiled program's backward: attached to the replayed outputs as one autograd node, with
the `.grad` writes the traced call made and the inputs the backward reads. An `entry` here is
the `CompiledEntry` (kiln/compiler/function.py, which imports this module) being replayed."""

from __future__ import annotations

from kiln.compiler.arguments import _base
from kiln.compiler.outputs import _bound_tensor
from kiln.compiler.traced import _ARG, _LIFTED, _PLACE
from kiln.ir.ops import Primitive
from kiln.ir.primitive import SAVED
from kiln.ir.schedule import STRIDED_VIEWS
from kiln.runtime.device import to_device
from kiln.tracer.autograd import prim_class, record, record_several
from kiln.tracer.errors import op_error
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import TracedProgram


def _mark_consumed(t: Tensor, prim) -> None:
    """Make a replayed output look like eager's after `backward()`: it requires grad, and its
    graph is spent, so another backward raises the same error eager does."""
    node = prim_class(prim)()
    node.prim, node.inputs, node.attrs, node.edges, node.versions = prim, None, {}, (), ()
    node.out_data, node.out_dtype, node.out_device = None, t.dtype, t.device
    node.hooks = node.retained = node.out_trace = None
    t._grad_fn, t._requires_grad = node, True


def _binding_of(tracer, v):
    """The binding of graph input `v` (a random draw's is a "seed": made afresh each call)."""
    return tracer.bindings[tracer.graph.inputs.index(v)]


def _grad_arrays(program: TracedProgram, leaves: list, device) -> dict:
    """Output index -> the array of the existing `.grad` that output is written to (on the
    program's `device`; the gradient of a 0-d CPU input is copied back instead)."""
    arrays = {}
    for gw in program.grad_writes:
        if gw.output is not None:
            grad = _bound_tensor(program, gw.input, leaves).grad
            if grad is not None and grad.device is device:
                arrays[gw.output] = grad._data
    return arrays


def _grad_state(program: TracedProgram, leaves: list) -> tuple:
    return tuple(_bound_tensor(program, gw.input, leaves).grad is None
                 for gw in program.grad_writes if not gw.cleared)


def _grad_state_matches(program: TracedProgram, leaves: list) -> bool:
    """Whether each written `.grad` is None now exactly when it was at the traced call's start
    (else, when that is not known, at the tensor's lift); one the trace cleared (zero_grad)
    before reading it may be either."""
    return all(gw.cleared or (_bound_tensor(program, gw.input, leaves).grad is None) ==
               (gw.was_none if gw.none_at_call is None else gw.none_at_call)
               for gw in program.grad_writes)


def _differentiable(t: Tensor) -> bool:
    """Whether a compiled output gets a backward: it requires grad and its graph is still there
    (a loss the function already ran `.backward()` through, as a training step returns it, or
    an RNN's hidden state computed on the way to that loss, has a freed graph, as in PyTorch,
    and no backward to derive)."""
    if not t.requires_grad:
        return False
    stack, seen = [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, Tensor) or id(node) in seen:
            continue
        seen.add(id(node))
        if node.inputs is None:
            return False
        stack.extend(node.edges)
    return True


def _grad_writes_forward(program: TracedProgram, info, num_grads: int) -> None:
    """Make the `.grad` values a call with a backward of its own wrote (its `loss.backward()`,
    before it returned a tensor requiring grad) forward outputs of the joint graph: the trace
    put them after the gradients, where the partition took them for gradients of the compiled
    backward and the replay wrote a saved value into `.grad` instead. They go between the
    user outputs and the gradients; a replay finds the saved values after them."""
    outputs = program.graph.outputs
    first = program.num_user_outputs
    written = outputs[first + num_grads:]
    if not written:
        return
    outputs[first:] = written + outputs[first:first + num_grads]
    for gw in program.grad_writes:
        if gw.output is not None:
            gw.output -= num_grads
    info.num_forward_outputs += len(written)
    program.num_grad_outputs = len(written)


def _saved_inputs(entry, program: TracedProgram) -> tuple:
    """(the forward inputs eager mode saves for the backward, the saved positions to copy) of a
    compiled call with a backward: inputs are arguments or state the caller may write in
    place before calling backward(). Eager mode saves an input where a gradient rule reads it
    (the partition's `save_all`), and backward() then refuses a write to it, as a replay's
    backward does; the partition may also keep an input to recompute from it what eager mode
    saved instead, which a replay copies as the forward leaves it."""
    graph, joint = entry.graph, program.graph

    def root(v, made):
        while v in made and made[v].op in STRIDED_VIEWS:
            v = made[v].inputs[0]
        return v
    made = {n.out: n for n in graph.nodes}
    joint_made = {n.out: n for n in joint.nodes}
    # (by position: the report points into the traced graph, the forward program may come
    # from the program cache with values of its own)
    read_by_rules = {root(v, joint_made) for v in entry.partition.save_all}
    held = {i for i, b in enumerate(program.bindings[:len(graph.inputs)])
            if b.kind in ("lifted", "grad") or b.kind == "arg" and b.path is not None}
    checked = tuple(j for j in sorted(held) if joint.inputs[j] in read_by_rules)
    index = {v: i for i, v in enumerate(graph.inputs)}
    first = program.num_user_outputs + program.num_grad_outputs
    copied = tuple(k for k, v in enumerate(graph.outputs[first:])
                   if index.get(root(v, made)) in held and index[root(v, made)] not in checked)
    return checked, copied


def _outputs_eager_saves(outputs: list) -> frozenset:
    """The indices of the traced call's outputs whose memory eager mode's backward reads (a
    tanh's result, or a view of it, saved for its gradient): a caller's in-place write to one
    before backward() makes eager's backward raise. Found on eager's own autograd graph, as
    `_check_versions` tests it, not on the compiled program's, whose passes may save other
    memory (CSE's `h` for a second `x * w` eager computed afresh)."""
    read, seen = set(), set()
    stack = [t.grad_fn for t in outputs if isinstance(t, Tensor)]
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, Tensor) or id(node) in seen:
            continue
        seen.add(id(node))
        prim, inputs = getattr(node, "prim", None), getattr(node, "inputs", None)
        if prim is not None and inputs is not None:
            version = getattr(node, "out_version", None)
            if version is not None and prim.output_of(inputs) == SAVED:
                read.add(id(version))
            reads = prim.reads_of(inputs)
            read.update(id(a._version) for i, a in enumerate(inputs)
                        if isinstance(a, Tensor) and (reads is None or i in reads))
        ctx = getattr(node, "ctx", None)        # a custom Function's ctx.save_for_backward
        if ctx is not None:
            read.update(id(t._version) for t in getattr(ctx, "_saved", ())
                        if isinstance(t, Tensor))
        stack.extend(getattr(node, "edges", None) or ())
        stack.append(getattr(node, "owner", None))     # an output slot's node of several
    return frozenset(j for j, t in enumerate(outputs)
                     if isinstance(t, Tensor) and id(t._version) in read)


def _fetched_tensor(entry, program: TracedProgram, j: int, leaves) -> Tensor:
    """The tensor a replay of `entry` reads as its forward input `j`."""
    kind, where = entry.fetch[j]
    if kind == _ARG:
        return leaves[where]
    if kind == _LIFTED:
        return where
    if kind == _PLACE:
        return where()
    return _bound_tensor(program, j, leaves)


def _attach_backward(entry, user: list, saved: list, wrt: list, held: list) -> None:
    """Give the differentiable outputs a grad_fn that runs the compiled backward program.
    `held`: the inputs (arguments, parameters, buffers) eager mode saves for the backward.

    With several differentiable outputs they share one node (autograd.record_several), whose
    rule runs the backward once with every output's gradient (zeros for those that got none):
    a backward is linear in the output gradients only if every custom Function's in it is.
    """
    diff = entry.joint.differentiable_outputs
    name = f"compiled_{entry.graph.name.removesuffix('_forward')}"
    # outputs and inputs whose memory the backward reads (saved for it): an in-place write to
    # one of them before backward() (an argument the caller changes, a parameter an optimizer
    # steps) would change what the backward computes, so it raises, as eager does
    read_back = [(f"output {j}", user[j], user[j]._version[0]) for j in entry.saved_outputs]
    read_back += [("an input", t, t._version[0]) for t in held]
    # memory of an output the compiled backward reads where eager's did not (the passes
    # merged eager's two `x * w` into the returned one): its own copy, which a caller's write
    # to the output leaves alone
    apart = {id(_base(u._data)) for j, u in enumerate(user) if j not in entry.saved_outputs}
    if apart:
        saved = [a.copy() if id(_base(a)) in apart else a for a in saved]

    def rule(gs: list, out, *inputs):
        for what, u, version in read_back:
            if u._version[0] != version:
                raise op_error("backward", "one of the variables needed for gradient "
                               f"computation has been modified by an inplace operation: "
                               f"{what} of the compiled {name[9:]} "
                               f"[{u.dtype.name} {list(u.shape)}] is at version "
                               f"{u._version[0]}; expected version {version} instead. "
                               "Hint: clone the tensor before modifying it in place.")
        device = next(g for g in gs if g is not None).device
        tangents = [device.xp.zeros(tuple(user[j].shape), user[j].dtype.np) if g is None
                    else g._data for j, g in zip(diff, gs)]
        grads, _ = entry.backward.run(list(saved) + tangents)
        return tuple(Tensor._make(gr if t.device is device else to_device(gr, t.device),
                                  t.dtype, t.device) for gr, t in zip(grads, inputs))

    # (reads=(): the rule checks the versions of what the backward reads, above; the inputs it
    # differentiates for are not all read, `x * w` reads x for w's gradient)
    if len(diff) == 1:
        prim = Primitive(name, "extern", None, None,
                         lambda g, out, *inputs: rule([g], out, *inputs), arity=len(wrt),
                         reads=())
        record(prim, tuple(wrt), {}, user[diff[0]])
    else:
        prim = Primitive(name, "extern", None, None, rule, arity=len(wrt), reads=())
        record_several(prim, tuple(wrt), [user[i] for i in diff])
