"""Control-flow operators (torch.cond, while_loop, scan, associative_scan, map, foreach_map)
and torch._check.

kiln compiles fixed graphs of static shapes, so each operator is written so that a trace
captures it without reading a tensor's value into Python:
- `cond` with a tensor predicate, while tracing, runs both branches on the operands and picks
  each output with `where` on the predicate. That equals running the chosen branch when the
  branches are pure functions of their operands whose outputs agree in structure, shape and
  dtype, which is checked (torch requires the same of a captured cond). Gradients follow from
  `where`'s, and each branch's operands are gated so that the branch not taken sends them no
  gradient (not even a NaN from 0 * inf). A tensor a branch closes over instead of taking as
  an operand is not gated: if the branch not taken has an infinite derivative there, its
  gradient is NaN, so pass such tensors as operands. Outside a trace cond runs the chosen
  branch.
- `while_loop` runs a data-dependent number of times, which no fixed graph can hold: under a
  trace it is a graph break (an error under fullgraph and export).
- `scan`, `associative_scan` and `map` loop over a dimension whose length is static, so a trace
  unrolls them; they are differentiable because every step is.
"""

from __future__ import annotations

from kiln.tracer import functional as F
from kiln.tracer.creation import default_generator
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.trace import flatten, unflatten


# ----------------------------------------------------------------------------- cond

def cond(pred, true_fn, false_fn, operands=()):
    """torch.cond: `true_fn(*operands)` if `pred` holds, else `false_fn(*operands)`.

    `pred` is a Python bool or number, or a one-element tensor. While tracing with a tensor
    predicate both branches run and `where` selects their outputs, so a compiled or exported
    program holds both and follows the predicate's value at every call.
    """
    if not isinstance(operands, (tuple, list)):
        raise RuntimeError(f"torch.cond: operands must be a tuple or list of tensors, got "
                           f"{type(operands).__name__}")
    if not (callable(true_fn) and callable(false_fn)):
        raise RuntimeError("torch.cond: true_fn and false_fn must be callable")
    if not isinstance(pred, Tensor):
        return true_fn(*operands) if bool(pred) else false_fn(*operands)
    if pred.numel() != 1:
        raise RuntimeError(f"torch.cond: expected pred to be a bool or a tensor with a single "
                           f"element, got a tensor of shape {list(pred.shape)}")
    if STATE.tracer is None:
        return true_fn(*operands) if bool(pred) else false_fn(*operands)
    return _traced_cond(pred, true_fn, false_fn, tuple(operands))


def _traced_cond(pred: Tensor, true_fn, false_fn, operands: tuple):
    """Both branches, merged by `where` on the predicate (a 0-d bool that broadcasts)."""
    which = F.reshape(pred, ()) if pred.dtype.name == "bool" else F.reshape(pred != 0, ())
    tracer = STATE.tracer
    draws, rng = _random_draws(tracer), default_generator._stream.get_state()
    true_out = _run_branch(tracer, true_fn, which, True, operands, "true_fn")
    if STATE.tracer is not None:
        false_out = _run_branch(tracer, false_fn, which, False, operands, "false_fn")
    if STATE.tracer is not None and _random_draws(tracer) != draws:
        # traced, both branches would draw on every call, where eager draws only the taken
        # one's: the generator would advance differently from eager
        tracer.graph_break("torch.cond's branches draw random numbers; traced, both branches "
                           "would draw them on every call, where eager draws only the taken "
                           "branch's")
    if STATE.tracer is None:
        # `compile` abandoned the trace at a break above: this call finishes as eager runs it,
        # the branches' draws undone and only the taken branch's result (and autograd graph)
        default_generator._stream.set_state(rng)
        return true_fn(*operands) if bool(pred) else false_fn(*operands)
    true_leaves, true_tree = flatten(true_out)
    false_leaves, false_tree = flatten(false_out)
    if true_tree != false_tree:
        raise RuntimeError(f"torch.cond: true_fn and false_fn must return the same output "
                           f"structure; true_fn returned {_describe(true_out)}, false_fn "
                           f"returned {_describe(false_out)}")
    merged = []
    for i, (a, b) in enumerate(zip(true_leaves, false_leaves)):
        if tuple(a.shape) != tuple(b.shape) or a.dtype is not b.dtype:
            raise RuntimeError(f"torch.cond: output {i} of the branches differs: true_fn gives "
                               f"{a.dtype.name}{list(a.shape)}, false_fn gives "
                               f"{b.dtype.name}{list(b.shape)}; kiln traces both branches into "
                               "one graph of static shapes, so they must match")
        merged.append(F.where(which, a, b))
    return unflatten(true_tree, merged)


# ops whose derivative is infinite somewhere in their domain (log 0, sqrt 0, x / 0, ...)
_SINGULAR = frozenset("""div log log1p sqrt pow atan2 asin acosh atanh digamma lgamma polygamma
erfinv ndtri log_ndtr zeta gammainc gammaincc prod linalg_inv linalg_cholesky linalg_eigh
linalg_eig linalg_svd linalg_slogdet linalg_qr linalg_lu""".split())


def _run_branch(tracer, fn, which: Tensor, taken_when: bool, operands: tuple, name: str):
    """One branch, traced on its gated operands (`_gated`). Tensors the branch closes over
    (module parameters) are not gated: where the branch not taken has an infinite derivative
    (a log or a division at values eager would never give it), 0 * inf would make their
    gradients NaN where eager's are finite. Such a branch breaks the graph instead: one that
    sends a closed-over tensor through a singular op while gradients are on."""
    gated = _gated(operands, which, taken_when)
    nodes = tracer.graph.nodes
    start = len(nodes)
    out = _run_pure(fn, gated, operands, name)
    if STATE.grad_enabled and _closure_reaches_singular_op(tracer, nodes[start:], gated):
        tracer.graph_break(f"torch.cond's {name} sends a tensor it closes over through an op "
                           "whose derivative can be infinite (log, sqrt, a division, ...); "
                           "traced, the branch not taken could make its gradient NaN where "
                           "eager's is finite: pass such tensors to cond as operands")
    return out


def _closure_reaches_singular_op(tracer, new_nodes: list, gated: tuple) -> bool:
    """Whether a value from outside the branch (not one of its gated operands; graph inputs
    only when their tensor requires grad) flows into one of the branch's singular ops."""
    mine = {id(t._trace) for t in flatten(gated)[0] if isinstance(t, Tensor) and
            t._trace is not None}
    inputs = {id(v): tensor for tensor, v in tracer.input_of.values()}
    produced, reached = set(), set()
    for node in new_nodes:
        from_outside = False
        for v in node.value_inputs:
            key = id(v)
            if key in reached:
                from_outside = True
            elif key not in produced and key not in mine:
                tensor = inputs.get(key)
                from_outside |= tensor is None or tensor.requires_grad
        if from_outside and node.op in _SINGULAR:
            return True
        produced.add(id(node.out))
        if from_outside:
            reached.add(id(node.out))
    return False


def _random_draws(tracer) -> int:
    return sum(b.kind == "seed" for b in tracer.bindings)


def _gated(operands: tuple, which: Tensor, taken_when: bool) -> tuple:
    """The operands as one branch sees them: the same values, but a gradient reaches an
    operand only when the predicate picks this branch. Without the gate, the branch not taken
    still back-propagates a zero gradient, and where its own derivative is infinite (sqrt, log
    of values it would never see eagerly) 0 * inf makes the operand's gradient NaN."""
    def gate(t):
        if not (isinstance(t, Tensor) and t.requires_grad and STATE.grad_enabled):
            return t
        return F.where(which, t, t.detach()) if taken_when else F.where(which, t.detach(), t)
    leaves, tree = flatten(operands)
    return tuple(unflatten(tree, [gate(t) for t in leaves]))


def _run_pure(fn, operands: tuple, originals: tuple, name: str):
    """`fn(*operands)`, refusing an in-place write to an operand or to a tensor the branch
    closes over, such as a module buffer (both branches run while tracing, so a write would
    happen whatever the predicate; torch refuses both too)."""
    tensors = [t for t in flatten(originals)[0] if isinstance(t, Tensor)]
    tensors += [t for t in flatten(operands)[0] if isinstance(t, Tensor)]
    versions = [t._version[0] for t in tensors]
    inputs = STATE.tracer.input_of
    values = {key: tensor._trace for key, (tensor, _) in inputs.items()}
    out = fn(*operands)
    n = len(tensors) // 2
    for i, (t, v) in enumerate(zip(tensors, versions)):
        if t._version[0] != v:
            raise RuntimeError(f"torch.cond: {name} writes in place to operand {i % n} "
                               f"({t.dtype.name}{list(t.shape)}); cond's branches must not "
                               "mutate their inputs: return a new tensor instead")
    for key, (tensor, start) in list(inputs.items()):
        if tensor._trace is not values.get(key, start):
            raise RuntimeError(f"torch.cond: {name} writes in place to a tensor it closes "
                               f"over ({STATE.tracer.names.get(key, 'a lifted tensor')}, "
                               f"{tensor.dtype.name}{list(tensor.shape)}); cond's branches "
                               "must not mutate state: return the new value instead")
    return out


def _describe(out) -> str:
    if isinstance(out, Tensor):
        return f"a tensor {out.dtype.name}{list(out.shape)}"
    if isinstance(out, (tuple, list)):
        return f"a {type(out).__name__} of {len(out)}"
    return type(out).__name__


# ----------------------------------------------------------------------------- while_loop

def while_loop(cond_fn, body_fn, carried_inputs):
    """torch.while_loop: apply `body_fn` to the carried values while `cond_fn` holds; returns
    the final values as a tuple. Under a trace a tensor-valued condition is a graph break."""
    if not isinstance(carried_inputs, (tuple, list)):
        raise RuntimeError(f"torch.while_loop: carried_inputs must be a tuple or list, got "
                           f"{type(carried_inputs).__name__}")
    values = tuple(carried_inputs)
    keep_going = cond_fn(*values)
    tracer = STATE.tracer
    if tracer is not None and isinstance(keep_going, Tensor):
        tracer.graph_break("torch.while_loop's iteration count depends on tensor values, and "
                           "kiln compiles fixed graphs (torch.compile captures it as a "
                           "while_loop higher-order op; kiln runs the loop eagerly)")
    while bool(keep_going):
        out = body_fn(*values)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        _check_carry("torch.while_loop", values, out)
        values = out
        keep_going = cond_fn(*values)
    return values


# ----------------------------------------------------------------------------- scan

def scan(combine_fn, init, xs, *, dim: int = 0, reverse: bool = False):
    """torch._higher_order_ops.scan: (final carry, ys). Each step calls
    `combine_fn(carry, x)` with the slices of `xs` (a pytree of tensors) at one index of `dim`
    and returns (next carry, y); the ys are stacked along `dim` (0-d ys into a vector)."""
    x_leaves, x_tree = flatten(xs)
    n = _scan_length("scan", x_leaves, dim)
    order = range(n - 1, -1, -1) if reverse else range(n)
    carry, ys = init, [None] * n
    for i in order:
        out = combine_fn(carry, unflatten(x_tree, [F.select(x, dim, i) for x in x_leaves]))
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RuntimeError("scan: combine_fn must return a tuple (next_carry, y)")
        _check_carry("scan", flatten(carry)[0], flatten(out[0])[0])
        carry, ys[i] = out
    y_leaves = [flatten(y)[0] for y in ys]
    stacked = [_stack_at([step[k] for step in y_leaves], dim) for k in range(len(y_leaves[0]))]
    return carry, unflatten(flatten(ys[0])[1], stacked)


def _stack_at(tensors: list, dim: int) -> Tensor:
    out = F.stack(tensors, 0)
    return F.movedim(out, 0, min(dim, out.dim() - 1))


def _check_carry(op: str, before, after) -> None:
    before, after = list(before), list(after)
    if len(before) != len(after):
        raise RuntimeError(f"{op}: the body returned {len(after)} carried values, expected "
                           f"{len(before)} (the structure of the initial carry)")
    for i, (a, b) in enumerate(zip(before, after)):
        if isinstance(a, Tensor) and (not isinstance(b, Tensor) or tuple(a.shape) != tuple(
                b.shape) or a.dtype is not b.dtype):
            got = f"{b.dtype.name}{list(b.shape)}" if isinstance(b, Tensor) else type(b).__name__
            raise RuntimeError(f"{op}: carried value {i} changes from {a.dtype.name}"
                               f"{list(a.shape)} to {got}; the carry must keep its shape and "
                               "dtype")


def _scan_length(op: str, leaves: list, dim: int) -> int:
    if not leaves or not all(isinstance(x, Tensor) for x in leaves):
        raise RuntimeError(f"{op}: xs must be a tensor or a pytree of tensors")
    sizes = {x.shape[dim] for x in leaves}
    if len(sizes) != 1:
        raise RuntimeError(f"{op}: all xs must have the same size along dim {dim}, got sizes "
                           f"{sorted(sizes)}")
    n = sizes.pop()
    if n == 0:
        raise RuntimeError(f"{op}: xs have size 0 along dim {dim}; there is nothing to scan")
    return n


# ----------------------------------------------------------------------------- associative_scan

def associative_scan(combine_fn, xs, dim: int, reverse: bool = False,
                     combine_mode: str = "pointwise"):
    """torch.associative_scan: the inclusive scan of `xs` (a pytree of tensors) along `dim`
    under the associative `combine_fn`: out[i] = combine_fn(out[i-1], xs[i]), or from the end
    with `reverse`. kiln runs it as a sequential loop in either `combine_mode` (torch's
    'pointwise' mode needs CUDA; here both give the same values), calling combine_fn on
    slices that keep `dim` with size 1."""
    if combine_mode not in ("pointwise", "generic"):
        raise ValueError(f"associative_scan: combine_mode must be 'pointwise' or 'generic', "
                         f"got {combine_mode!r}")
    leaves, tree = flatten(xs)
    n = _scan_length("associative_scan", leaves, dim)
    order = range(n - 1, -1, -1) if reverse else range(n)
    outs = [None] * n
    acc = None
    for i in order:
        x = unflatten(tree, [F.narrow(t, dim, i, 1) for t in leaves])
        acc = x if acc is None else combine_fn(acc, x)
        acc_leaves, acc_tree = flatten(acc)
        if acc_tree != tree:
            raise RuntimeError("associative_scan: combine_fn must return the structure of xs")
        outs[i] = acc_leaves
    return unflatten(tree, [F.cat([o[k] for o in outs], dim) for k in range(len(leaves))])


# ----------------------------------------------------------------------------- map

def map(f, xs, *args):
    """torch._higher_order_ops.map: `f(x, *args)` for each slice `x` of `xs` (a pytree of
    tensors) along dimension 0, the outputs stacked along dimension 0."""
    leaves, tree = flatten(xs)
    n = _scan_length("map", leaves, 0)
    outs = [f(unflatten(tree, [F.select(x, 0, i) for x in leaves]), *args) for i in range(n)]
    out_leaves = [flatten(o)[0] for o in outs]
    stacked = [F.stack([o[k] for o in out_leaves], 0) for k in range(len(out_leaves[0]))]
    return unflatten(flatten(outs[0])[1], stacked)


def foreach_map(op, *operands, **kwargs):
    """torch._higher_order_ops.foreach_map: `op` applied index by index across the list
    operands (a non-list operand is passed to every call), as a list; `op(*operands)` when
    none is a list."""
    if kwargs:
        raise NotImplementedError(f"foreach_map: keyword arguments ({', '.join(kwargs)}) are "
                                  "not supported; bind them into op (functools.partial)")
    if not any(isinstance(a, (list, tuple)) for a in operands):
        return op(*operands)
    lengths = {len(a) for a in operands if isinstance(a, (list, tuple))}
    if len(lengths) != 1:
        raise ValueError(f"foreach_map: the list operands have different lengths "
                         f"{sorted(lengths)}")
    n = lengths.pop()
    columns = [a if isinstance(a, (list, tuple)) else [a] * n for a in operands]
    return [op(*args) for args in zip(*columns)]


# ----------------------------------------------------------------------------- torch._check

def _check_with(error_type, cond, message=None) -> None:
    """torch._check_with: raise `error_type(message())` if `cond` is False. `cond` must be a
    Python bool (a tensor condition is torch's `_check_tensor_all`); kiln's shapes are static,
    so a trace has nothing to record or guard."""
    if isinstance(cond, Tensor):
        raise TypeError("cond must be a bool, but got a Tensor. For tensor conditions, use "
                        "torch._check_tensor_all() to assert that all elements are true.")
    if not cond:
        text = message() if message is not None else \
            "Expected cond to be True, but got False."
        raise error_type(text)


def _check(cond, message=None) -> None:
    """torch._check: a RuntimeError if `cond` is False (`message` is a callable giving the
    text)."""
    _check_with(RuntimeError, cond, message)


def _check_is_size(i, message=None, *, max=None) -> None:
    """torch._check_is_size: `i` must be a valid size (>= 0, and <= max when given)."""
    _check(i >= 0, message)
    if max is not None:
        _check(i <= max, message)
