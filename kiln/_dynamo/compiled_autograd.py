"""torch._dynamo.compiled_autograd for kiln: an eager `loss.backward()` run as one compiled
program.

Inside `with enable(compiler_fn):` each `tensor.backward()` called outside a compiled function
walks its autograd graph into a `BackwardPlan` (kiln.tracer.backward_plan: the nodes' gradient
rules, their wiring and hooks, with no tensor in it), and looks the plan's key up in a cache:
node primitives, attributes and wiring, tensor and grad_fn hooks by identity, and every saved
tensor's shape, dtype, device and requires_grad. A new key is a capture
(`counters["compiled_autograd"]["captures"]`): `compiler_fn(plan.run)` is called once and what
it returns is kept for the key; kiln.compile by default. `compiler_fn` is what kiln.compile
returns for a function (`torch.compile(fullgraph=True)`, `kiln.compile(backend="numpy")`):
it is handed a kiln function computing the leaves' gradients from the saved tensors (the seed
gradient first), not an FX graph. kiln.compile traces it into one program on the first
backward of that structure and replays it after; the graphs of two backwards of one structure
differ only in their tensors, so the second replays the first's program. The gradients the
program returns are accumulated into `.grad` outside it, as the plain engine does (added into an
existing `.grad`), retained gradients stored, and the graph's saved values freed unless
`retain_graph=True`.

Hooks are keyed by identity: a graph captured `recompile_limit` times with other hooks (a
lambda registered anew each step) runs on the plain engine from then on, with a warning.

What kiln.compile cannot trace in `run` (a hook that reads a value into Python) makes it run
`run` eagerly, with kiln.compile's warning: the same rules, node by node. A custom autograd
Function's backward is traced like a hook (its ctx rebuilt around the saved tensors). What a
plan cannot describe (saved-tensor hooks, post-accumulate-grad hooks, bfloat16, complex or
sparse gradients, the nodes of fast paths computing on arrays: LSTM/GRU, cuda pooling, a
kiln.compile'd function's backward), `create_graph=True` and `inputs=` run the plain engine,
with a warning saying why; so does a graph whose hooks queue an end-of-backward callback, from
its second backward on. The gradients are the plain engine's, up to the rounding of compiled
kernels.

`kiln._dynamo.config.compiled_autograd = True` is accepted: a backward inside a compiled
function is already traced into that function's program (kiln.compile's joint trace), and, as
in PyTorch, an eager backward outside one is not affected by the flag.
"""

from __future__ import annotations

import contextlib
import warnings

from kiln.compiler import function
from kiln.compiler import compile as _compile
from kiln.compiler.counters import counters
from kiln.runtime.device import is_writeable
from kiln.runtime.layouts import grad_array
from kiln.tracer import autograd
from kiln.tracer.backward_plan import Unplannable, plan_backward
from kiln.tracer.tensor import Tensor

_CACHE: dict = {}               # plan key -> what compiler_fn made of that plan's run
_CAPTURES: dict = {}            # plan structure (hooks left out) -> captures of it
_COMPILERS: list = []           # the enable() blocks now open, innermost last


@contextlib.contextmanager
def enable(compiler_fn=None):
    """Compile each eager `backward()` in this block: `compiler_fn(fn)` returns what runs the
    backward function `fn` of a new graph structure (kiln.compile when None)."""
    _COMPILERS.append(_compile if compiler_fn is None else compiler_fn)
    autograd.COMPILED_BACKWARD[0] = _compiled_backward
    try:
        yield
    finally:
        _COMPILERS.pop()
        if not _COMPILERS:
            autograd.COMPILED_BACKWARD[0] = None


_enable = enable        # PyTorch 2.13's name for it


def compiled_autograd_enabled() -> bool:
    return bool(_COMPILERS)


def reset() -> None:
    """Forget every captured backward: the next backward of each structure captures again."""
    _CACHE.clear()
    _CAPTURES.clear()


def _compiled_backward(tensor: Tensor, seed: Tensor, retain: bool, create_graph: bool,
                       inputs) -> None:
    why = _not_compiled(tensor, create_graph, inputs)
    if why is None:
        try:
            plan, saved, leaves, retained, nodes = plan_backward(tensor, seed)
        except Unplannable as error:
            why = str(error)
    if why is not None:
        if tensor.grad_fn is not None:
            warnings.warn(f"compiled autograd: this backward runs on the plain autograd engine: "
                          f"{why}", stacklevel=3)
        autograd.plain_backward(tensor, seed, retain, create_graph, inputs)
        return
    for node in nodes:          # an in-place write since the forward: the engine's error
        autograd._check_versions(node)
    run = _CACHE.get(plan.key)
    captured = run is None
    if captured:
        structure = plan.structure()
        _CAPTURES[structure] = _CAPTURES.get(structure, 0) + 1
        if _CAPTURES[structure] > function.RECOMPILE_LIMIT:
            # new hook objects on every backward: each would be one more capture and compile
            warnings.warn(f"compiled autograd: this graph was captured "
                          f"{function.RECOMPILE_LIMIT} times with other hooks (hooks are keyed "
                          "by identity: register them once, outside the loop); it runs on "
                          "the plain autograd engine", stacklevel=3)
            autograd.plain_backward(tensor, seed, retain, create_graph, inputs)
            return
        counters["compiled_autograd"]["captures"] += 1
        run = _CACHE[plan.key] = _COMPILERS[-1](_backward_function(plan))
    with autograd.no_grad():
        grads, kept = run(*saved)
    if captured and autograd._QUEUED:
        # a hook queued a callback (queue_callback, register_multi_grad_hook): a replay would
        # not run the hook, so this structure's backward runs its steps eagerly from now on
        _CACHE[plan.key] = plan.run
        warnings.warn("compiled autograd: a hook queued a callback for the end of the "
                      "backward; backwards of this graph run its hooks eagerly", stacklevel=3)
    _store(leaves, grads, retained, kept, saved, plan)
    if not retain:
        _free(nodes)
    try:
        while autograd._QUEUED:
            autograd._QUEUED.pop(0)()
    finally:
        autograd._QUEUED.clear()


def _backward_function(plan):
    """`plan.run` as a function whose closure names every hook the plan runs, so kiln.compile's
    guards see what the hooks reach and a hook's Python effect (a list it appends to) makes
    the backward run eagerly, as a replay would skip it."""
    hooks, run = plan.hooks(), _PlanRun(plan)

    def compiled_backward(*saved):
        hooks  # noqa: B018  (named, so the guards walk from each hook's globals and cells)
        return run(*saved)
    return compiled_backward


class _PlanRun:
    """`plan.run` behind an object of a kiln class, which the guards check by identity only:
    the plan never changes, and walking its every step would cost a guard per field."""

    def __init__(self, plan):
        self.plan = plan

    def __call__(self, *saved):
        return self.plan.run(*saved)


def _not_compiled(tensor: Tensor, create_graph: bool, inputs) -> str | None:
    if tensor.grad_fn is None:
        return "the tensor is a leaf"
    if create_graph:
        return "create_graph=True (a compiled backward records no graph of its own)"
    if inputs is not None:
        return "inputs= is given (only the gradients of all leaves are compiled)"
    if tensor.device.type == "meta":
        return "the tensors are on the meta device (no data to compile)"
    if autograd.ANOMALY[0]:
        return "anomaly detection is on (it checks each node's gradient as it is computed)"
    return None


def _store(leaves: list, grads: tuple, retained: list, kept: tuple, saved: list, plan) -> None:
    """Each leaf's gradient into its `.grad` (added to one already there), as the engine's
    `_store_leaf_grad` does after the hooks the program ran; retained gradients likewise."""
    taken = {id(t._data) for t in saved}      # arrays the caller's tensors hold
    for leaf, g, (_, hooks) in zip(leaves, grads, plan.leaves):
        if g is None:
            continue
        if leaf.grad is None:
            data = _owned(g._data, taken, hooks)
            if type(leaf._data) is type(data) and leaf._data.shape == data.shape:
                # the leaf's strides, as the engine's AccumulateGrad gives them
                data = grad_array(leaf._data, data, g.device.xp, True)
            leaf.grad = Tensor._make(data, g.dtype, g.device)
        else:
            leaf.grad._data += g._data
    for t, g in zip(retained, kept):
        if g is not None:
            t.grad = Tensor._make(g._data.copy(), g.dtype, g.device)


def _owned(data, taken: set, hooks: tuple):
    """`data` for a `.grad` of its own: as it is where it is a writeable array of its own
    memory that nothing else holds (a replay's output buffer), else a copy. A hook may have
    kept the gradient it was given (when the backward ran eagerly)."""
    own = getattr(getattr(data, "flags", None), "owndata", False)
    if hooks or not own or id(data) in taken or not is_writeable(data):
        data = data.copy()
    taken.add(id(data))
    return data


def _free(nodes: list) -> None:
    """What the engine frees after a backward without retain_graph: each node's saved values."""
    for node in nodes:
        node.inputs = node.out_data = None
