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

A graph the plan cannot describe exactly raises `Unplannable` with the reason, and the caller
runs the plain engine: custom autograd Functions (their backward reads the state of `ctx`),
saved-tensor hooks, post-accumulate-grad hooks, bfloat16 or complex gradients (the engine
computes those with rules of its own), sparse gradients and attributes holding arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import PRIMITIVES
from kiln.tracer import autograd
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

    `args` per input: ("saved", k) for `saved[k]`, or ("const", value); `edges` per input:
    None, ("node", i) for step i, or ("leaf", j) for leaf j; `retained`: the index of this
    node's output among the retained gradients, or None."""

    prim: object
    attrs: tuple
    args: tuple
    out: int
    edges: tuple
    hooks: tuple
    retained: int | None


@dataclass(frozen=True)
class BackwardPlan:
    steps: tuple
    leaves: tuple           # per leaf: (dtype, its tensor hooks)
    num_retained: int
    key: tuple

    def hooks(self) -> tuple:
        """Every hook the plan runs, once each."""
        found = [h for step in self.steps for h in step.hooks]
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
            args = [saved[v] if kind == "saved" else v for kind, v in step.args]
            grads = step.prim.grad(g, saved[step.out], *args, **dict(step.attrs))
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
        args = []
        for a in node.inputs:
            if isinstance(a, Tensor):
                args.append(("saved", slot(a, _stand_in(a, a.requires_grad))))
            else:
                args.append(("const", _frozen(a, node)))
        out = Tensor._make(node.out_data, node.out_dtype, node.out_device)
        saved.append(out)
        saved_meta.append(_meta(out))
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
        kept = node.retained() if node.retained is not None else None
        if kept is not None:
            retained_tensors.append(kept)
        steps.append(Step(node.prim, _frozen(tuple(sorted(node.attrs.items())), node),
                          tuple(args), len(saved) - 1, tuple(edges), tuple(node.hooks or ()),
                          len(retained_tensors) - 1 if kept is not None else None))
    key = (tuple(steps), tuple(leaf_meta), tuple(saved_meta))
    plan = BackwardPlan(tuple(steps), tuple(leaf_meta), len(retained_tensors), key)
    return plan, saved, leaves, retained_tensors, nodes


def _check_node(node) -> None:
    prim = getattr(node, "prim", None)
    if not isinstance(node, autograd.Node):
        raise Unplannable(f"{node.name()} is a custom autograd Function, whose backward reads "
                          "the state its ctx saved")
    if PRIMITIVES.get(prim.name) is not prim and prim not in _TRACEABLE_EAGER_NODES:
        raise Unplannable(f"{node.name()} is an eager fast path's node whose gradient rule "
                          "kiln does not trace")
    if node.packed is not None:
        raise Unplannable(f"{node.name()} saved its tensors through saved_tensors_hooks")
    if node.out_dtype is dt.bfloat16 or node.out_dtype.is_complex:
        raise Unplannable(f"{node.name()} has a {node.out_dtype.name} gradient (compiled code "
                          f"has no {node.out_dtype.name})")
    for a in node.inputs:
        if isinstance(a, Tensor) and a.is_sparse:
            raise Unplannable(f"{node.name()} reads a sparse tensor")


def _leaf_hooks(leaf: Tensor) -> tuple:
    if autograd.grad_hooks_of(leaf)[1]:
        raise Unplannable("a leaf has a post-accumulate-grad hook, which runs with the leaf "
                          "during the backward")
    return tuple(leaf._hooks or ())


def _stand_in(t: Tensor, requires_grad: bool) -> Tensor:
    """A fresh tensor over `t`'s data: the program's input in its place (rules read only its
    values and whether it wants a gradient)."""
    s = Tensor._make(t._data, t.dtype, t.device)
    s.requires_grad = requires_grad
    return s


def _meta(t: Tensor) -> tuple:
    return (tuple(t.shape), t.dtype, t.device, t.requires_grad)


def _frozen(value, node):
    """`value` as a key part: lists become tuples; an array or tensor cannot be keyed."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v, node) for v in value)
    if isinstance(value, Tensor) or (hasattr(value, "__array__") and
                                     not isinstance(value, np.generic)):
        raise Unplannable(f"{node.name()} keeps an array among its attributes")
    try:
        hash(value)
    except TypeError:
        raise Unplannable(f"{node.name()} keeps a {type(value).__name__} among its "
                          "attributes") from None
    return value
