"""Forward-mode AD on top of reverse mode: dual tensors and their tangents, found on demand.

kiln has no forward-mode rules. A dual tensor (`make_dual`) is an alias of its primal with an
autograd node of its own, whose tangent the current level records; ops on it record nodes as
for any tensor that requires grad. The tangent of a later tensor is found when asked for
(`tangent_of`), node by node from the duals up, and kept per node until the level exits. Each
node's gradient rule is linear in the output's gradient u, `rule(u) = J^T u`, so its output's
tangent is J v = d/du <J^T u, v> (v: its inputs' tangents): one call of the rule with a u that
requires grad and one backward pass over what that call recorded (the double-vjp trick that
`kiln.func.jvp` uses for a whole function, here per node so a custom Function's own `jvp`
can take the place of its node's).
"""

from __future__ import annotations

import weakref

from kiln.ir.ops import PRIMITIVES
from kiln.tracer import autograd
from kiln.tracer.tensor import STATE, Tensor


class _Level:
    """The one dual level that may be active (PyTorch does not nest them either)."""

    index: int | None = None
    # node -> (tangent of its output or None, whether its history reaches a tensor that
    # requires grad for its own sake: a leaf, or the primal of a dual that does)
    facts: "weakref.WeakKeyDictionary | None" = None


LEVEL = _Level()


def enter_dual_level() -> int:
    if LEVEL.index is not None:
        raise RuntimeError("Nested forward mode AD is not supported at the moment")
    if STATE.tracer is not None:
        STATE.tracer.graph_break("forward AD (dual_level): tangents are found through the "
                                 "eager autograd graph, which a compiled program does not keep")
    LEVEL.index, LEVEL.facts = 0, weakref.WeakKeyDictionary()
    return 0


def exit_dual_level(*, level: int | None = None) -> None:
    if LEVEL.index is None:
        raise RuntimeError("exit_dual_level: no forward AD level is active (enter one with "
                           "forward_ad.dual_level() or enter_dual_level())")
    if level is not None and level != LEVEL.index:
        raise RuntimeError("Trying to exit a forward AD level that was not the last one that "
                           "was created. This is not supported.")
    LEVEL.index = LEVEL.facts = None           # every tangent of the level goes with it


def _check_level(level: int | None, api: str) -> bool:
    """Whether `level` (None: the current one) is the active level."""
    if level is None or level == LEVEL.index:
        return LEVEL.index is not None
    raise RuntimeError(f"{api}: level {level} is not the active forward AD level "
                       f"({LEVEL.index})")


def make_dual(tensor: Tensor, tangent: Tensor, *, level: int | None = None) -> Tensor:
    """A tensor with `tensor`'s value (and memory) whose tangent is `tangent`."""
    if level is None and LEVEL.index is None:
        raise RuntimeError("Trying to create a dual Tensor for forward AD but no level exists, "
                           "make sure to enter_dual_level() first.")
    _check_level(level, "make_dual")
    if not isinstance(tensor, Tensor) or not isinstance(tangent, Tensor):
        raise TypeError(f"make_dual expects two tensors, got {type(tensor).__name__} and "
                        f"{type(tangent).__name__}")
    if not tensor.dtype.is_floating_point:
        raise ValueError(f"Expected primal to be floating point or complex, but got: "
                         f"{tensor.dtype}")
    if tuple(tangent.shape) != tuple(tensor.shape):
        raise RuntimeError(f"Trying to set a forward gradient that has a different size than "
                           f"that of the original Tensor, this is not supported. Tensor is of "
                           f"size {list(tensor.shape)} while the given forward gradient is of "
                           f"size {list(tangent.shape)}.")
    if tangent.device is not tensor.device:
        raise RuntimeError(f"make_dual: the tangent is on {tangent.device} but the primal on "
                           f"{tensor.device}; move the tangent there")
    if tangent_of(tensor) is not None:
        raise RuntimeError(f"Making a dual Tensor based on a Tensor that already has a forward "
                           f"gradient at the same level {LEVEL.index} is not supported.")
    if tangent.stride() != tensor.stride():
        # laid out as the primal (else kept as it is), as PyTorch does
        tangent = tangent.contiguous() if tensor.is_contiguous() else tangent.clone()
    real = tensor.requires_grad and (tensor.grad_fn is None or _facts(tensor.grad_fn)[1])
    dual = alias(tensor, tensor.requires_grad)
    LEVEL.facts[dual.grad_fn] = (tangent, real)
    return dual


def alias(tensor: Tensor, linked: bool) -> Tensor:
    """A new tensor on `tensor`'s memory with a node of its own; `linked`: its gradient
    passes on to `tensor`'s history (else it goes nowhere)."""
    out = Tensor._make(tensor._data, tensor.dtype, tensor.device)
    out._version = tensor._version
    autograd.link_alias(out, tensor, None if linked else (None,))
    return out


def unpack_dual(tensor, *, level: int | None = None) -> tuple:
    """(primal, tangent): `tensor`'s value without a tangent, and its tangent (None when it
    depends on no dual tensor of the level, or outside a level)."""
    if not isinstance(tensor, Tensor) or not _check_level(level, "unpack_dual"):
        return tensor, None
    tangent = tangent_of(tensor)
    if tangent is None:
        return tensor, None
    real = _facts(tensor.grad_fn)[1]
    if not real:           # requires grad only to carry its tangent: as PyTorch, it does not
        return tensor.detach(), tangent
    primal = alias(tensor, True)
    LEVEL.facts[primal.grad_fn] = (None, True)
    return primal, tangent


def tangent_of(tensor: Tensor) -> Tensor | None:
    """The tangent of `tensor` at the active level, or None."""
    if LEVEL.index is None or not isinstance(tensor, Tensor) or tensor.grad_fn is None:
        return None
    autograd.refresh_if_stale(tensor)
    return _facts(tensor.grad_fn)[0]


def set_tangent(node, tangent: Tensor | None) -> None:
    """Record `node`'s output tangent (a custom Function's `jvp` gave it)."""
    real = any(isinstance(e, Tensor) or (e is not None and _facts(e)[1]) for e in node.edges)
    LEVEL.facts[node] = (tangent, real)


def _facts(node) -> tuple:
    """(tangent, reaches a real requires-grad tensor) of `node`'s output, computed for every
    node below it not yet known, inputs first (no recursion: graphs may be deep)."""
    facts = LEVEL.facts
    known = facts.get(node) if facts is not None else (None, True)
    if known is not None:
        return known
    stack = [node]
    while stack:
        n = stack[-1]
        if n in facts:
            stack.pop()
            continue
        todo = [e for e in n.edges
                if e is not None and not isinstance(e, Tensor) and e not in facts]
        if todo:
            stack.extend(todo)
            continue
        stack.pop()
        facts[n] = _node_facts(n, facts)
    return facts[node]


def _node_facts(node, facts) -> tuple:
    if isinstance(node, autograd.OutputSlot):       # its owner's facts hold every output's
        tangents, real = facts[node.owner]
        return (None if tangents is None else tangents[node.index]), real
    tangents, real = [], False
    for e in node.edges:
        if e is None:
            tangents.append(None)
        elif isinstance(e, Tensor):
            tangents.append(None)
            real = True
        else:
            tangent, edge_real = facts[e]
            tangents.append(tangent)
            real = real or edge_real
    if all(t is None for t in tangents):
        return None, real
    if node.num_outputs > 1:
        return _push_tangents_several(node, tangents), real
    if not node.out_dtype.is_floating_point:
        return None, real
    return _push_tangents(node, tangents), real


def _push_tangents(node, tangents: list) -> Tensor:
    """J v for one node: d/du <rule(u), v> with the node's gradient rule."""
    if node.inputs is None:
        raise RuntimeError(f"forward AD: the graph through {node.name()} was freed by a "
                           "backward pass before this tangent was asked for; call unpack_dual "
                           "before backward(), or pass retain_graph=True to backward")
    autograd._check_versions(node)
    if getattr(node, "packed", None) is None:
        inputs, out = node.inputs, node.output()
    else:
        inputs, out = autograd._unpack_saved(node)
    # the rule runs on fresh leaves standing for the inputs (requiring grad where they did, so
    # it computes the same gradients): what it records then links to u and those leaves only,
    # and the backward below walks no part of the forward graph
    inputs = [(a.detach().requires_grad_(True) if a.requires_grad else a.detach())
              if isinstance(a, Tensor) else a for a in inputs]
    prev = STATE.grad_enabled
    STATE.grad_enabled = True
    try:
        u = Tensor._make(out._data * 0, out.dtype, out.device).requires_grad_(True)
        grads = node.prim.grad(u, out.detach(), *inputs, **node.attrs)
        total = _contract(node, grads, tangents, constants_allowed=_is_primitive(node))
        if total is None:
            return u.detach() * 0
        # retained: a custom Function's backward may reach the forward graph through what it
        # saved, which this pass must not free
        jv, = autograd.grad([total], [u], retain_graph=True, allow_unused=True)
    finally:
        STATE.grad_enabled = prev
    return u.detach() * 0 if jv is None else jv.detach()


def _push_tangents_several(node, tangents: list) -> tuple:
    """J v for a node with several outputs (autograd.OutputSlot): the tuple of each output's
    tangent (None for one that is not a floating-point tensor), from one call of its rule with
    a u per output."""
    if node.inputs is None:
        raise RuntimeError(f"forward AD: the graph through {node.name()} was freed by a "
                           "backward pass before this tangent was asked for; call unpack_dual "
                           "before backward(), or pass retain_graph=True to backward")
    autograd._check_versions(node)
    inputs = [(a.detach().requires_grad_(True) if a.requires_grad else a.detach())
              if isinstance(a, Tensor) else a for a in node.inputs]
    prev = STATE.grad_enabled
    STATE.grad_enabled = True
    try:
        from kiln.tracer.creation import zeros
        us = [None if spec is None or not spec[1].is_floating_point else
              zeros(spec[0], dtype=spec[1], device=spec[2]).requires_grad_(True)
              for spec in node.out_shapes]
        grads = node.prim.grad(list(us), None, *inputs, **node.attrs)
        total = _contract(node, grads, tangents, constants_allowed=False)
        wrt = [u for u in us if u is not None]
        jvs = [None] * len(wrt) if total is None or not wrt else \
            autograd.grad([total], wrt, retain_graph=True, allow_unused=True)
    finally:
        STATE.grad_enabled = prev
    found = iter(jvs)
    return tuple(None if u is None else _tangent_or_zero(next(found), u) for u in us)


def _contract(node, grads, tangents: list, constants_allowed: bool):
    """sum_i <grad_i(u), v_i>: the scalar whose gradient in u is J v (None where no input has
    both a gradient and a tangent). A gradient that does not depend on u is a constant of a
    primitive's rule (skipped where `constants_allowed`), or a custom Function's backward run
    outside autograd, whose tangent cannot be derived."""
    total = None
    for ga, v in zip(grads, tangents):
        if ga is None or v is None:
            continue
        if not ga.requires_grad:
            if constants_allowed:
                continue
            raise RuntimeError(
                f"forward AD through {node.name()}: its backward is not differentiable "
                "(once_differentiable, or computed outside autograd), so its tangent "
                "cannot be derived from it; give the custom Function a jvp staticmethod")
        term = (ga * v).sum()
        total = term if total is None else total + term
    return total


def _tangent_or_zero(jv, u) -> Tensor:
    return u.detach() * 0 if jv is None else jv.detach()


def _is_primitive(node) -> bool:
    prim = node.prim
    return PRIMITIVES.get(prim.name) is prim or prim is autograd._ALIAS
