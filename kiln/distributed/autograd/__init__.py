"""`kiln.distributed.autograd`: autograd across RPC (torch.distributed.autograd, FAST mode).

Inside `with context() as ctx_id:`, a tensor that requires grad and travels in an RPC's
arguments or result is recorded on both sides: the sender keeps it under a send id, and the
receiver gets a tensor whose grad_fn is RecvRpcBackward (a clone of a hidden leaf remembered
with the sender and send id). `backward(ctx_id, roots)` runs local autograd from the roots and
puts the gradients of real leaves into the context (not into `.grad`); the gradient of each
hidden leaf goes back by RPC to its sender, which continues backward from the tensor it sent,
and so on. Gradients are linear, so each incoming gradient is propagated on its own (the
sender's graph is kept until the context ends) and the contributions add up in the context.
`backward` returns once every worker reached by the gradients has finished.
"""

from __future__ import annotations

import contextlib
import itertools
import threading

import numpy as np

from kiln.runtime.device import CPU
from kiln.tracer.autograd import set_name
from kiln.tracer.tensor import Tensor

__all__ = ["backward", "context", "get_gradients"]

_LOCAL = threading.local()              # .ctx_id: the context this thread runs in
_CONTEXTS: dict[int, "_Context"] = {}
_LOCK = threading.Lock()
_ENGINE = threading.Lock()              # one local backward at a time on this worker
_IDS = itertools.count(1)
_SEND_IDS = itertools.count()


class _Context:
    """One distributed backward's bookkeeping on one worker."""

    def __init__(self, ctx_id: int):
        self.id = ctx_id
        self.lock = threading.Lock()
        self.sent: dict[int, Tensor] = {}            # send id -> the tensor as sent
        self.received: dict[int, tuple] = {}         # id(leaf) -> (leaf, sender rank, send id)
        self.grads: dict[int, tuple] = {}            # id(leaf) -> (leaf, accumulated gradient)

    def accumulate(self, leaf: Tensor, grad: Tensor) -> None:
        with self.lock:
            held = self.grads.get(id(leaf))
            self.grads[id(leaf)] = (leaf, grad if held is None else held[1] + grad)


def _agent(what: str):
    from kiln.distributed.rpc import api
    return api._require(what)


def _lookup(ctx_id: int, what: str) -> _Context:
    with _LOCK:
        ctx = _CONTEXTS.get(ctx_id)
    if ctx is None:
        raise RuntimeError(f"dist_autograd.{what}: Could not find autograd context with id: "
                           f"{ctx_id}; use the id `with dist_autograd.context() as ctx_id:` "
                           "gives, inside that block")
    return ctx


def _context_here(ctx_id: int) -> _Context:
    with _LOCK:
        ctx = _CONTEXTS.get(ctx_id)
        if ctx is None:
            ctx = _CONTEXTS[ctx_id] = _Context(ctx_id)
    return ctx


def _current_id() -> int | None:
    return getattr(_LOCAL, "ctx_id", None)


@contextlib.contextmanager
def _running_in(ctx_id: int | None):
    """Run a served RPC in the caller's context (made here on first use)."""
    prev = _current_id()
    if ctx_id is not None:
        _context_here(ctx_id)
    _LOCAL.ctx_id = ctx_id
    try:
        yield
    finally:
        _LOCAL.ctx_id = prev


@contextlib.contextmanager
def context():
    """A distributed autograd context; yields its id, which backward, get_gradients and
    DistributedOptimizer.step take. Leaving it frees the context on every worker."""
    agent = _agent("context")
    if _current_id() is not None:
        raise RuntimeError("dist_autograd.context: already inside a distributed autograd "
                           "context on this thread; contexts do not nest")
    ctx_id = (agent.rank << 48) + next(_IDS)     # unique across workers, as torch's
    _context_here(ctx_id)
    _LOCAL.ctx_id = ctx_id
    try:
        yield ctx_id
    finally:
        _LOCAL.ctx_id = None
        from kiln.distributed.rpc import api
        from kiln.futures import wait_all
        futs = [api.rpc_async(r, _release, (ctx_id,)) for r in range(agent.size)
                if r != agent.rank]
        _release(ctx_id)
        wait_all(futs)


def _release(ctx_id: int) -> None:
    with _LOCK:
        _CONTEXTS.pop(ctx_id, None)


def _clear() -> None:
    with _LOCK:
        _CONTEXTS.clear()


def get_gradients(context_id: int) -> dict:
    """{tensor: gradient} of the leaves this worker's part of backward reached in the context."""
    ctx = _lookup(context_id, "get_gradients")
    with ctx.lock:
        return {leaf: grad for leaf, grad in ctx.grads.values()}


# ----------------------------------------------------------------------------- sending tensors

def _reduce_tensor(obj, ctx_id: int | None):
    """The RPC pickler's rule for tensors (see the module docstring): the values travel as one
    contiguous NumPy array (a view arrives as a tensor of its own; a cuda tensor arrives on the
    CPU) with the dtype, requires_grad and Parameter-ness; NotImplemented keeps pickle's way for
    everything else."""
    if not isinstance(obj, Tensor) or type(obj).__name__ not in ("Tensor", "Parameter"):
        return NotImplemented
    t = obj.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    data = t._data if t._data.flags.c_contiguous else t._data.copy(order="C")  # 0-d stays 0-d
    parameter = type(obj).__name__ == "Parameter"
    # torch pickles a Parameter through its own reduce, outside the autograd recording: it
    # arrives as a Parameter (a new leaf) even inside a context
    if ctx_id is not None and obj.requires_grad and not parameter:
        ctx = _context_here(ctx_id)
        send_id = next(_SEND_IDS)
        with ctx.lock:
            ctx.sent[send_id] = obj
        return (_received, (data, obj.dtype, ctx_id, _agent("send").rank, send_id))
    # outside a context a tensor arrives as a leaf with the sender's requires_grad (torch's
    # rule; the graph behind a non-leaf stays with the sender)
    return (_rebuilt, (data, obj.dtype, obj.requires_grad, parameter))


def _rebuilt(data: np.ndarray, dtype, requires_grad: bool, parameter: bool) -> Tensor:
    t = Tensor._make(data, dtype, CPU)
    if parameter:
        from kiln.nn.parameter import Parameter
        return Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_(True) if requires_grad else t


def _received(data: np.ndarray, dtype, ctx_id: int, sender: int, send_id: int) -> Tensor:
    """A tensor received in a context: as in torch, not a leaf but the output of a
    RecvRpcBackward node, here a clone of a hidden leaf whose gradient goes back to the
    sender."""
    leaf = Tensor._make(data, dtype, CPU).requires_grad_(True)
    t = leaf.clone()
    set_name(t.grad_fn, "torch::distributed::autograd::RecvRpcBackward")
    ctx = _context_here(ctx_id)
    with ctx.lock:
        ctx.received[id(leaf)] = (leaf, sender, send_id)
    return t


# ----------------------------------------------------------------------------- backward

def backward(context_id: int, roots: list, retain_graph: bool = False) -> None:
    """Backward from `roots` (scalars) across every worker the context's RPCs reached; the
    gradients land in each worker's context (`get_gradients`), not in `.grad`."""
    ctx = _lookup(context_id, "backward")
    roots = list(roots)
    for r in roots:
        if not isinstance(r, Tensor) or not r.requires_grad:
            raise RuntimeError("dist_autograd.backward: each root must be a tensor that "
                               "requires grad")
        if r.numel() != 1:
            raise RuntimeError(f"dist_autograd.backward: roots must be scalars (one element); "
                               f"got shape {list(r.shape)}")
    seeds = [r.new_ones(r.shape) for r in roots]
    # a tensor this worker sent may share graph with the roots' (a skip connection around a
    # remote call): its gradient comes back after this pass, so the graph must stay for it
    with ctx.lock:
        sent_any = bool(ctx.sent)
    _send_back(ctx, _local_backward(ctx, roots, seeds, retain_graph or sent_any))


def _local_backward(ctx: _Context, outputs: list, seeds: list, retain: bool) -> list:
    """Run this worker's autograd from `outputs`; store leaf gradients in the context and
    return [(sender, send id, gradient)] for the received leaves reached."""
    import kiln.autograd
    leaves: dict[int, Tensor] = {}
    with _ENGINE:
        for out, seed in zip(outputs, seeds):
            if out.grad_fn is None:             # a leaf as a root: its own gradient
                leaves[id(out)] = out
        with_graph = [(o, s) for o, s in zip(outputs, seeds) if o.grad_fn is not None]
        grads = {}
        for out, seed in zip(outputs, seeds):
            if out.grad_fn is None:
                grads[id(out)] = seed if id(out) not in grads else grads[id(out)] + seed
        if with_graph:
            found = _leaves_of([o.grad_fn for o, _ in with_graph])
            leaves.update(found)
            flat = list(found.values())
            got = kiln.autograd.grad([o for o, _ in with_graph], flat,
                                     [s for _, s in with_graph], retain_graph=retain,
                                     allow_unused=True)
            for leaf, g in zip(flat, got):
                if g is not None:
                    grads[id(leaf)] = g if id(leaf) not in grads else grads[id(leaf)] + g
    outgoing = []
    for key, g in grads.items():
        with ctx.lock:
            hit = ctx.received.get(key)
        if hit is not None:
            outgoing.append((hit[1], hit[2], g.detach()))
        else:
            ctx.accumulate(leaves[key], g.detach())
    return outgoing


def _leaves_of(nodes: list) -> dict[int, Tensor]:
    """The leaf tensors (that require grad) the graph below `nodes` reaches."""
    leaves, seen, stack = {}, set(), list(nodes)
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for edge in getattr(node, "edges", None) or ():
            if edge is None:
                continue
            if isinstance(edge, Tensor):
                leaves[id(edge)] = edge
            elif id(edge) not in seen:
                stack.append(edge)
    return leaves


def _send_back(ctx: _Context, outgoing: list) -> None:
    """Hand each received leaf's gradient to its sender and wait for their backward."""
    if not outgoing:
        return
    from kiln.distributed.rpc import api
    from kiln.futures import wait_all
    futs = [api.rpc_async(sender, _continue_backward, (ctx.id, send_id, g), timeout=0)
            for sender, send_id, g in outgoing]
    wait_all(futs)


def _continue_backward(ctx_id: int, send_id: int, grad: Tensor) -> None:
    """On a sender: backward from the tensor it sent, seeded with the receiver's gradient."""
    ctx = _lookup(ctx_id, "backward")
    with ctx.lock:
        sent = ctx.sent.get(send_id)
    if sent is None:
        raise RuntimeError(f"dist_autograd.backward: worker has no tensor sent with id "
                           f"{send_id} in context {ctx_id}")
    # the sent tensor's graph stays: other gradients for it, or for tensors sharing its graph,
    # may still come
    _send_back(ctx, _local_backward(ctx, [sent], [grad], retain=True))
