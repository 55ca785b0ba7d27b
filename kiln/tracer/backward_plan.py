"""A backward pass as data, for compiled autograd: the autograd graph below a loss walked once
into a `BackwardPlan` that holds no tensor, so one plan (and one compiled program of it) computes
the backward of every graph of the same structure.

`plan_backward(loss, seed)` walks the graph in the engine's order (`autograd._topological`) and
returns the plan with this graph's tensors: `saved` (the seed, then each value a gradient rule
reads, in plan order), the leaves reached, and the non-leaf tensors that retain their gradient.
`BackwardPlan.run(*saved)` runs the same gradient rules as `autograd.run_backward` does, with
the same hooks in the same order, and returns each leaf's gradient (its tensor hooks applied,
cast to its dtype) and each retained gradient; the caller stores them in `.grad`, so gradient
accumulation stays outside the program. `BackwardPlan.key` says what the plan assumes: node
primitives, attributes and wiring, hooks by identity, and each saved tensor's shape, dtype,
device and requires_grad.

A custom autograd Function's node is a `CustomStep`: its class's backward runs on a fresh ctx
holding stand-ins of the saved tensors and of tensor attributes, and the forward's other ctx
attributes (hashable values, part of the key). With several outputs, each output's grad_fn
(an autograd.OutputSlot) is a `SlotStep` filing its gradient for the Function's one
CustomStep, which runs once with all of them, as the engine does.

A graph the plan cannot describe exactly raises `Unplannable` with the reason, and the caller
runs the plain engine: saved-tensor hooks, post-accumulate-grad hooks, bfloat16 or complex
gradients (the engine computes those with rules of its own), sparse gradients, attributes
holding arrays inside containers (or objects that are neither hashable nor containers), and
the nodes of eager fast paths whose rules compute on arrays.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES
from kiln.tracer import autograd, custom_function
from kiln.tracer.functional import reductions, softmax_family
from kiln.tracer.tensor import Tensor


# autograd nodes of eager fast paths that are not registered primitives, whose gradient rules
# are written with dispatched ops (so they trace): views written in place, an alias, and the
# CPU fast paths of softmax, log_softmax and mean. The others (cuda pooling, RNN cells, a copy
# between devices) compute on arrays, which a trace would bake in as constants.
_TRACEABLE_EAGER_NODES = (autograd._COPY_SLICES, autograd._ALIAS, softmax_family._SOFTMAX,
                          softmax_family._LOG_SOFTMAX, reductions._MEAN)


class Unplannable(Exception):
    """The autograd graph has something a BackwardPlan cannot describe (the reason)."""


@dataclass(frozen=True)
class Step:
    """One node's gradient rule: `prim.grad(g, saved[out], *args, **attrs)`.

    `args` per input and `attrs` per (name, entry): an entry is ("saved", k) for the tensor
    `saved[k]`, or ("const", value) (a `Keyed` one where the value is unhashable). `edges` per
    input: None, ("node", i) for step i, or ("leaf", j) for leaf j. `retained`: the index of
    this node's output among the retained gradients, or None."""

    prim: object
    attrs: tuple
    args: tuple
    out: int
    edges: tuple
    hooks: tuple
    retained: int | None

    def rule(self, g: Tensor, saved: tuple, args: list) -> tuple:
        attrs = {name: _value(entry, saved) for name, entry in self.attrs}
        return self.prim.grad(g, saved[self.out], *args, **attrs)


@dataclass(frozen=True)
class CustomStep:
    """One output node of a custom autograd Function: its class's backward, called on a fresh
    ctx that holds the saved tensors' stand-ins (`ctx_saved`: slots, None for a None saved)
    and the attributes the forward set on ctx (`ctx_attrs`: (name, ("saved", k)) for a tensor,
    (name, ("const", value)) for a hashable value)."""

    fn_cls: type
    index: int | None       # None: the node of several outputs, given all their gradients
    out_shapes: tuple
    positions: tuple
    needs_input_grad: tuple
    materialize_grads: bool
    ctx_saved: tuple
    ctx_attrs: tuple
    args: tuple
    out: int | None
    edges: tuple
    hooks: tuple
    retained: int | None

    def rule(self, g: Tensor, saved: tuple, args: list) -> tuple:
        ctx = custom_function.FunctionCtx(())
        ctx.needs_input_grad, ctx.materialize_grads = self.needs_input_grad, \
            self.materialize_grads
        ctx._saved = tuple(None if k is None else saved[k] for k in self.ctx_saved)
        for name, entry in self.ctx_attrs:
            setattr(ctx, name, _value(entry, saved))
        node = custom_function._FunctionNode.__new__(custom_function._FunctionNode)
        node.ctx, node.index, node.fn_cls = ctx, self.index, self.fn_cls
        node.out_shapes, node.tensor_positions, node.inputs = self.out_shapes, \
            self.positions, tuple(args)
        return node._rule(g, None if self.out is None else saved[self.out], *args)


@dataclass(frozen=True)
class SlotStep:
    """The grad_fn of output `index` of a node with several outputs (autograd.OutputSlot): its
    gradient (after its tensor hooks) goes into that output's slot of step `owner`."""

    index: int
    num_outputs: int
    owner: int
    hooks: tuple
    retained: int | None


@dataclass(frozen=True)
class BackwardPlan:
    """The backward of one graph structure: its steps in the engine's order, its leaves, and
    `key`, which equals another plan's exactly when the same `run` computes both backwards."""

    steps: tuple
    leaves: tuple           # per leaf: (dtype, its tensor hooks)
    num_retained: int
    key: tuple

    def structure(self) -> tuple:
        """The key with each hook replaced by a mark: what two plans share when they differ
        only in their hooks (a lambda registered anew on each step)."""
        steps, leaves, saved = self.key
        return (tuple(dataclasses.replace(s, hooks=len(s.hooks)) for s in steps),
                tuple((dtype, len(hooks)) for dtype, hooks in leaves), saved)

    def hooks(self) -> tuple:
        """Every hook the plan runs, and every custom Function's backward, once each."""
        found = [h for step in self.steps for h in step.hooks]
        found += [step.fn_cls.backward for step in self.steps if isinstance(step, CustomStep)]
        found += [h for _, hooks in self.leaves for h in hooks]
        return tuple(dict.fromkeys(found))

    def run(self, *saved: Tensor) -> tuple:
        """(leaf gradients, retained gradients): None where no gradient arrives."""
        pending = {0: saved[0]}
        leaf_grads: dict[int, Tensor] = {}
        retained = [None] * self.num_retained
        for i, step in enumerate(self.steps):
            g = pending.pop(i, None)
            if g is None:
                continue
            for hook in step.hooks:
                replaced = hook(g)
                g = replaced if replaced is not None else g
            if step.retained is not None:
                retained[step.retained] = g
            if type(step) is SlotStep:
                slots = pending.setdefault(step.owner, [None] * step.num_outputs)
                slots[step.index] = g
                continue
            args = [_value(entry, saved) for entry in step.args]
            grads = step.rule(g, saved, args)
            for edge, ga, a in zip(step.edges, grads, args):
                if ga is None or edge is None:
                    continue
                if isinstance(a, Tensor) and ga.device is not a.device:
                    ga = autograd._moved_home(ga, a.device)
                kind, at = edge
                store = leaf_grads if kind == "leaf" else pending
                store[at] = ga if at not in store else store[at] + ga
        return tuple(_leaf_grad(leaf_grads.get(j), dtype, hooks)
                     for j, (dtype, hooks) in enumerate(self.leaves)), tuple(retained)


def _leaf_grad(g: Tensor | None, dtype, hooks: tuple) -> Tensor | None:
    """What `_store_leaf_grad` adds into `.grad`: the hooks' result, in the leaf's dtype."""
    if g is None:
        return None
    for hook in hooks:
        replaced = hook(g)
        g = replaced if replaced is not None else g
    return g if g.dtype is dtype else g.to(dtype)


def plan_backward(loss: Tensor, seed: Tensor) -> tuple:
    """(plan, saved, leaves, retained tensors, nodes in plan order) for `loss.backward(seed)`.
    Raises Unplannable with the reason where the graph has what a plan cannot describe."""
    nodes = autograd._topological([loss.grad_fn])
    index = {id(n): i for i, n in enumerate(nodes)}
    saved, saved_meta, slot_of = [seed], [_meta(seed)], {}
    leaves, leaf_of, leaf_meta = [], {}, []
    retained_tensors, steps = [], []

    def slot(t: Tensor, stand_in: Tensor) -> int:
        if id(t) not in slot_of:
            slot_of[id(t)] = len(saved)
            saved.append(stand_in)
            saved_meta.append(_meta(stand_in))
        return slot_of[id(t)]

    for node in nodes:
        _check_node(node)
        kept = node.retained() if node.retained is not None else None
        if kept is not None:
            retained_tensors.append(kept)
        kept_at = len(retained_tensors) - 1 if kept is not None else None
        if isinstance(node, autograd.OutputSlot):
            steps.append(SlotStep(node.index, node.owner.num_outputs, index[id(node.owner)],
                                  tuple(node.hooks or ()), kept_at))
            continue
        args = [_entry(a, node, slot) for a in node.inputs]
        out_at = None
        if node.out_data is not None:   # (a node of several outputs has no one output)
            out = Tensor._make(node.out_data, node.out_dtype, node.out_device)
            saved.append(out)
            saved_meta.append(_meta(out))
            out_at = len(saved) - 1
        edges = []
        for e in node.edges:
            if e is None:
                edges.append(None)
            elif isinstance(e, Tensor):
                if id(e) not in leaf_of:
                    leaf_of[id(e)] = len(leaves)
                    leaves.append(e)
                    leaf_meta.append((e.dtype, _leaf_hooks(e)))
                edges.append(("leaf", leaf_of[id(e)]))
            else:
                edges.append(("node", index[id(e)]))
        common = (tuple(args), out_at, tuple(edges), tuple(node.hooks or ()), kept_at)
        if isinstance(node, custom_function._FunctionNode):
            steps.append(_custom_step(node, slot, common))
        else:
            attrs = tuple((name, _entry(v, node, slot)) for name, v in sorted(node.attrs.items()))
            steps.append(Step(node.prim, attrs, *common))
    key = (tuple(steps), tuple(leaf_meta), tuple(saved_meta))
    plan = BackwardPlan(tuple(steps), tuple(leaf_meta), len(retained_tensors), key)
    return plan, saved, leaves, retained_tensors, nodes


# what FunctionCtx sets itself; any other attribute of a ctx is the forward's
_CTX_OWN = frozenset(vars(custom_function.FunctionCtx(())))


def _custom_step(node, slot, common: tuple) -> CustomStep:
    ctx = node.ctx
    if ctx._packed is not None:
        raise Unplannable(f"{node.name()} saved its tensors through saved_tensors_hooks")
    saved = tuple(None if t is None else slot(t, _stand_in(t, t.requires_grad))
                  for t in ctx._saved)
    attrs = [(name, _entry(value, node, slot)) for name, value in sorted(vars(ctx).items())
             if name not in _CTX_OWN and name != "_fn_name"]
    return CustomStep(node.fn_cls, node.index, tuple(node.out_shapes),
                      tuple(node.tensor_positions), tuple(ctx.needs_input_grad),
                      ctx.materialize_grads, saved, tuple(attrs), *common)


def _check_node(node) -> None:
    if any(isinstance(h, autograd._PreHook) for h in node.hooks or ()):
        raise Unplannable(f"{node.name()} has a hook registered on the node (register_hook, "
                          "register_prehook), which sees all its gradients at once")
    if node.out_dtype is dt.bfloat16 or node.out_dtype.is_complex:
        raise Unplannable(f"{node.name()} has a {node.out_dtype.name} gradient (compiled code "
                          f"has no {node.out_dtype.name})")
    if isinstance(node, (custom_function._FunctionNode, autograd.OutputSlot)):
        return
    prim = getattr(node, "prim", None)
    if not isinstance(node, autograd.Node):
        raise Unplannable(f"{node.name()} is a {type(node).__name__}, which kiln cannot plan")
    if PRIMITIVES.get(prim.name) is not prim and prim not in _TRACEABLE_EAGER_NODES:
        what = ("the backward of a kiln.compile'd function, a compiled program already"
                if prim.kind == "extern" else
                "an eager fast path's node, whose gradient rule computes on arrays")
        raise Unplannable(f"{node.name()} is {what}: kiln does not trace it")
    if node.packed is not None:
        raise Unplannable(f"{node.name()} saved its tensors through saved_tensors_hooks")


def _leaf_hooks(leaf: Tensor) -> tuple:
    _, post, node_hooks = autograd.grad_hooks_of(leaf)
    if post:
        raise Unplannable("a leaf has a post-accumulate-grad hook, which runs with the leaf "
                          "during the backward")
    if node_hooks:
        raise Unplannable("a leaf's AccumulateGrad node has hooks (register_hook, "
                          "register_prehook), which see the gradient as it is accumulated")
    return tuple(leaf._hooks or ())


def _stand_in(t: Tensor, requires_grad: bool) -> Tensor:
    """A fresh tensor over `t`'s data: the program's input in its place (rules read only its
    values and whether it wants a gradient)."""
    s = Tensor._make(t._data, t.dtype, t.device)
    s._requires_grad = requires_grad
    return s


def _meta(t: Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device, t.requires_grad)


def _entry(value, node, slot) -> tuple:
    """How a step gets `value`: ("saved", k) for a tensor (its stand-in is a program input),
    else ("const", value), wrapped in `Keyed` where the value itself is unhashable."""
    if isinstance(value, Tensor):
        if value.is_sparse:
            raise Unplannable(f"{node.name()} reads a sparse tensor")
        return ("saved", slot(value, _stand_in(value, value.requires_grad)))
    frozen = _frozen(value, node)
    try:
        hash(value)
    except TypeError:
        return ("const", Keyed(value, frozen))
    return ("const", value)


def _value(entry: tuple, saved: tuple):
    kind, v = entry
    if kind == "saved":
        return saved[v]
    return v.value if isinstance(v, Keyed) else v


@dataclass(frozen=True, eq=False)
class Keyed:
    """An unhashable constant (a list, a dict of a CopySlices node's view steps), compared and
    hashed by its `frozen` form; the rule receives `value` itself."""

    value: object
    frozen: tuple

    def __eq__(self, other) -> bool:
        return isinstance(other, Keyed) and self.frozen == other.frozen

    def __hash__(self) -> int:
        return hash(self.frozen)


def _frozen(value, node):
    """`value` as a key part: lists become tuples, dicts tuples of items; an array or a
    tensor inside a container, or another unhashable object, cannot be keyed."""
    if isinstance(value, (list, tuple)):
        return (type(value).__name__,) + tuple(_frozen(v, node) for v in value)
    if isinstance(value, dict):
        return ("dict",) + tuple((k, _frozen(v, node)) for k, v in value.items())
    if isinstance(value, slice):
        return ("slice", value.start, value.stop, value.step)
    if isinstance(value, Tensor) or (hasattr(value, "__array__") and
                                     not isinstance(value, np.generic)):
        raise Unplannable(f"{node.name()} keeps an array among its attributes")
    try:
        hash(value)
    except TypeError:
        raise Unplannable(f"{node.name()} keeps a {type(value).__name__} among its "
                          "attributes") from None
    return value
