"""Activation checkpointing (torch.utils.checkpoint): run a segment of the forward pass without
keeping its intermediate tensors, and run it again during backward to get its gradients.

How it works in kiln. `checkpoint(function, *args)` runs `function` once with grad mode on, on
detached copies of the argument tensors, only to learn which tensors requiring grad it reads
without being passed them (module parameters): kiln has no saved-tensor hooks, so the
recorded graph is where those show. The graph is then dropped; what the returned tensors
keep is one autograd node whose inputs are the arguments and those parameters, and which holds
only the arguments and the RNG state. When backward reaches that node it restores the RNG
state (dropout draws the same mask), calls `function` again with grad mode on and
backpropagates through the recomputed graph to the arguments and the parameters, so
`loss.backward()`, `kiln.autograd.grad` and `backward(inputs=...)` all see the same gradients
as without checkpointing. Peak memory inside one segment is that segment's own activations,
during the forward as during its recomputation.

`use_reentrant`: kiln has one implementation, the one just described, whose behaviour is
PyTorch's `use_reentrant=False` variant (gradients reach parameters even when no argument
requires grad, and `autograd.grad` works). `use_reentrant=True` adds PyTorch's argument checks
for that variant (no keyword arguments for `function`, no `context_fn` or `debug`), turns the
determinism check off, and keeps the one difference in gradients: when no tensor argument
requires grad, PyTorch's reentrant variant warns and runs `function` under no_grad, so its
outputs require no grad and the parameters it reads get none (the frozen-embedding pitfall of
reentrant checkpointing); kiln does the same, eager and compiled. Left as
None it means False, with no warning: PyTorch warns because its default is changing between
two implementations, which kiln does not have.

Under `kiln.compile` (while a trace is recording) `checkpoint` calls `function` as a plain
call: the compiled program holds the segment's forward and backward ops like any others, and
what it keeps or recomputes for the backward is the partitioner's decision, as with
torch.compile. Gradients are the same as eager.

Limits: a tensor with autograd history that `function` reads from a closure (instead of as an
argument) gets correct gradients, but the recomputation then also backpropagates through that
tensor's history, once more; pass such tensors as arguments. Double backward
(`create_graph=True`) works; its recomputation runs on the arguments themselves and, likewise,
backpropagates once more through their history.
"""

from __future__ import annotations

import contextlib
import enum
import warnings
from typing import Any, Callable

import kiln
from kiln.autograd import Function
from kiln.utils._pytree import tree_flatten, tree_unflatten

__all__ = ["checkpoint", "checkpoint_sequential", "CheckpointError", "noop_context_fn",
           "CheckpointPolicy", "SelectiveCheckpointContext",
           "create_selective_checkpoint_contexts", "set_checkpoint_early_stop",
           "set_checkpoint_debug_enabled", "detach_variable", "check_backward_validity"]


class CheckpointError(RuntimeError):
    """The recomputation in backward did not reproduce the forward (torch's CheckpointError)."""


def noop_context_fn() -> tuple:
    """The default `context_fn`: no context around either run of the function."""
    return contextlib.nullcontext(), contextlib.nullcontext()


def _detached(x):
    """An argument as the segment sees it: a tensor with no history, requiring grad as the
    argument does, sharing its memory; anything else unchanged."""
    if isinstance(x, kiln.Tensor):
        return x.detach().requires_grad_(x.requires_grad)
    return x


def _leaves_read(outputs: list, arg_copies: list) -> list:
    """Tensors requiring grad, without history, that the graph of `outputs` reads, besides the
    arguments' copies: the parameters `function` reached by itself (the `variable` of each
    AccumulateGrad in the graph's `next_functions`)."""
    copies = {id(t) for t in arg_copies}
    found: dict[int, kiln.Tensor] = {}
    seen: set[int] = set()
    stack = []
    for o in outputs:
        if o.grad_fn is not None:
            stack.append(o.grad_fn)
        elif id(o) not in copies:         # `function` returned a parameter itself
            found[id(o)] = o
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        for n, _ in node.next_functions:
            leaf = getattr(n, "variable", None)
            if leaf is not None:
                if id(leaf) not in copies:
                    found[id(leaf)] = leaf
            elif n is not None and id(n) not in seen:
                stack.append(n)
    return list(found.values())


def _spec(t) -> tuple:
    return (tuple(t.shape), t.dtype, t.device)


class _Segment:
    """What one checkpointed call keeps for its backward: the function, its arguments, the RNG
    and autocast state it ran under, and which of its outputs each recompute node answers for."""

    def __init__(self, function, leaves, tree, rng_state, autocast, recompute_ctx_fn,
                 out_specs, determinism_check):
        self.function = function
        self.leaves, self.tree = leaves, tree            # the flattened (args, kwargs)
        self.num_args = sum(isinstance(x, kiln.Tensor) for x in leaves)
        self.rng_state, self.autocast = rng_state, autocast
        self.recompute_ctx_fn = recompute_ctx_fn
        self.out_specs = out_specs                       # (shape, dtype, device) or None
        self.determinism_check = determinism_check

    def recompute(self, on_originals: bool = False) -> tuple[list, list]:
        """Run the function again as the forward did; returns (its flat outputs, the argument
        tensors it was given): detached copies, or with `on_originals` the arguments
        themselves, so that gradients taken with create_graph=True depend on them."""
        copies = list(self.leaves) if on_originals else [_detached(x) for x in self.leaves]
        args, kwargs = tree_unflatten(copies, self.tree)
        prev_rng = kiln.get_rng_state() if self.rng_state is not None else None
        try:
            if self.rng_state is not None:
                kiln.set_rng_state(self.rng_state)
            with contextlib.ExitStack() as stack:
                # each device type's autocast as the forward had it (CPU's bfloat16 too)
                for device, enabled, dtype, cache in self.autocast:
                    stack.enter_context(kiln.amp.autocast(device, dtype=dtype, enabled=enabled,
                                                          cache_enabled=cache))
                stack.enter_context(kiln.enable_grad())
                stack.enter_context(self.recompute_ctx_fn())
                out = self.function(*args, **kwargs)
        finally:                              # the caller's random stream goes on unchanged
            if prev_rng is not None:
                kiln.set_rng_state(prev_rng)
        outputs, _ = tree_flatten(out)
        if self.determinism_check == "default":
            self._check(outputs)
        return outputs, [c for c in copies if isinstance(c, kiln.Tensor)]

    def _check(self, outputs: list) -> None:
        got = [_spec(o) if isinstance(o, kiln.Tensor) else None for o in outputs]
        if got != self.out_specs:
            lines = [f"  output {i}: forward {a}, recomputed {b}"
                     for i, (a, b) in enumerate(zip(self.out_specs, got)) if a != b]
            if len(got) != len(self.out_specs):
                lines.append(f"  the forward returned {len(self.out_specs)} values, the "
                             f"recomputation {len(got)}")
            raise CheckpointError(
                "kiln.utils.checkpoint: the function recomputed in backward returned "
                "tensors with different shapes, dtypes or devices than during the forward "
                "(does it depend on global state that changed?):\n" + "\n".join(lines) +
                "\nPass determinism_check='none' to skip this check.")


class CheckpointFunction(Function):
    """The node a checkpointed segment leaves in the graph: its inputs are the segment's
    argument tensors and the parameters it read; its outputs are the segment's differentiable
    outputs, one per dtype and device (flattened and joined when several share them). One
    node for all of them: backward recomputes the segment once."""

    @staticmethod
    def forward(ctx, segment, groups, holder, *inputs):
        ctx.segment, ctx.groups = segment, groups
        ctx.args, ctx.params = inputs[:segment.num_args], inputs[segment.num_args:]
        ctx.set_materialize_grads(False)    # an output that got no gradient seeds nothing
        # computed by checkpoint(); in a list, so apply sees no tensor argument
        return holder[0] if len(holder) == 1 else tuple(holder)

    @staticmethod
    def backward(ctx, *grads):
        # the caller's backward has create_graph=True: the gradients must depend on the
        # arguments themselves, so the recomputation runs on them (a backward that then
        # walks on into the arguments' own history, to no effect but time)
        create_graph = kiln.is_grad_enabled()
        outputs, copies = ctx.segment.recompute(on_originals=create_graph)
        targets, seeds = [], []
        for indices, grad in zip(ctx.groups, grads):
            if grad is None:
                continue
            at = 0
            for i in indices:
                o = outputs[i]
                n = o.numel()
                if o.requires_grad:
                    seed = grad if len(indices) == 1 else grad[at:at + n]
                    targets.append(o)
                    seeds.append(seed.reshape(tuple(o.shape)))
                at += n
        wrt = copies + list(ctx.params)
        live = [k for k, t in enumerate(wrt) if t.requires_grad]
        grads_in: list = [None] * len(wrt)
        if targets and live:
            # retain_graph: a tensor with history read from a closure (or, with create_graph,
            # an argument) leads this backward into the caller's graph, which the caller's
            # own backward still has to run
            got = kiln.autograd.grad(targets, [wrt[k] for k in live], seeds, allow_unused=True,
                                     retain_graph=True, create_graph=create_graph)
            for k, g in zip(live, got):
                grads_in[k] = g
        return (None, None, None) + tuple(grads_in)


def checkpoint(function: Callable, *args, use_reentrant: bool | None = None,
               preserve_rng_state: bool = True, determinism_check: str = "default",
               debug: bool = False, context_fn: Callable = noop_context_fn, **kwargs) -> Any:
    """`function(*args, **kwargs)`, keeping none of its intermediate tensors for backward:
    backward runs it again (torch.utils.checkpoint.checkpoint; see the module docstring).

    Args:
        function: what to run; may read module parameters it is not passed.
        args, kwargs: its arguments: tensors (requiring grad or not), nested in tuples,
            lists and dicts or not, and any other values.
        use_reentrant: True adds PyTorch's reentrant-variant argument checks; the gradients
            are the same either way, except that with no argument requiring grad the
            reentrant variant warns and records nothing (module docstring).
        preserve_rng_state: restore the random state for the recomputation, so dropout draws
            the mask it drew in the forward.
        determinism_check: "default" checks that the recomputation returns tensors of the
            same shapes, dtypes and devices (CheckpointError otherwise); "none" does not.
        debug: accepted for compatibility; kiln prints nothing more.
        context_fn: returns two context managers, entered around the forward run and around
            the recomputation.

    Returns:
        What `function` returns; its tensors requiring grad are attached to the recompute node.
    """
    if use_reentrant:
        if kwargs:
            raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
        if context_fn is not noop_context_fn or debug is not False:
            raise ValueError("Passing `context_fn` or `debug` is only supported when "
                             "use_reentrant=False.")
        determinism_check = "none"
        if not _any_requires_grad(args):
            # PyTorch's reentrant Function sees only these arguments: none requires grad,
            # so nothing recorded inside reaches the graph
            check_backward_validity(args, stacklevel=3)
            with kiln.no_grad():
                return function(*args)
    if determinism_check not in ("default", "none"):
        raise ValueError(f"determinism_check should be one of ['default', 'none'], but got "
                         f"{determinism_check!r}")
    if kiln.compiler.is_compiling() or not kiln.is_grad_enabled():
        # traced: the compiled program decides what to keep; no_grad: nothing is kept anyway
        return function(*args, **kwargs)

    leaves, tree = tree_flatten((args, kwargs))
    rng_state = kiln.get_rng_state() if preserve_rng_state else None
    autocast = _autocast_state()
    forward_ctx, recompute_ctx = context_fn()
    copies = [_detached(x) for x in leaves]
    inner_args, inner_kwargs = tree_unflatten(copies, tree)
    with kiln.enable_grad(), forward_ctx:
        out = function(*inner_args, **inner_kwargs)
    outputs, out_tree = tree_flatten(out)

    differentiable = [i for i, o in enumerate(outputs)
                      if isinstance(o, kiln.Tensor) and o.requires_grad]
    if not differentiable:
        return out
    arg_tensors = [c for c in copies if isinstance(c, kiln.Tensor)]
    params = _leaves_read([outputs[i] for i in differentiable], arg_tensors)
    segment = _Segment(function, leaves, tree, rng_state, autocast,
                       _second(context_fn, recompute_ctx), [
                           _spec(o) if isinstance(o, kiln.Tensor) else None for o in outputs],
                       determinism_check)
    originals = [x for x in leaves if isinstance(x, kiln.Tensor)]

    groups: dict[tuple, list[int]] = {}
    for i in differentiable:
        groups.setdefault((outputs[i].dtype, outputs[i].device), []).append(i)
    result = list(outputs)
    packed = [outputs[indices[0]].detach() if len(indices) == 1 else
              kiln.cat([outputs[i].detach().reshape(-1) for i in indices])
              for indices in groups.values()]
    attached = CheckpointFunction.apply(segment, tuple(map(tuple, groups.values())), packed,
                                        *originals, *params)
    if len(packed) == 1:
        attached = (attached,)
    for indices, joined in zip(groups.values(), attached):
        if len(indices) == 1:
            result[indices[0]] = joined
            continue
        at = 0
        for i in indices:
            n = outputs[i].numel()
            result[i] = joined[at:at + n].reshape(tuple(outputs[i].shape))
            at += n
    return tree_unflatten(result, out_tree)


def _autocast_state() -> list[tuple]:
    """(device type, enabled, dtype, cache_enabled) of every device type's autocast now, for
    the recomputation to run under (PyTorch's checkpoint keeps CUDA's and CPU's)."""
    cache = kiln.amp.is_autocast_cache_enabled()
    state = []
    for device in ("cpu", "cuda"):
        enabled = kiln.amp.is_autocast_enabled(device)
        # a disabled device's dtype is not needed (and bfloat16 may not be there)
        dtype = kiln.amp.get_autocast_dtype(device) if enabled else None
        state.append((device, enabled, dtype, cache))
    return state


def _second(context_fn, first_recompute_ctx):
    """A factory of the recompute context: the one `context_fn` gave with the forward's, then
    a fresh pair's second for each later backward (retain_graph=True runs it again)."""
    pending = [first_recompute_ctx]

    def make():
        if pending:
            return pending.pop()
        return context_fn()[1]
    return make


def checkpoint_sequential(functions, segments: int, input, use_reentrant: bool | None = None,
                          **kwargs):
    """Run `functions` (an nn.Sequential or a list of modules/functions) one after another on
    `input`, checkpointing all but the last of `segments` equal chunks
    (torch.utils.checkpoint.checkpoint_sequential).

    Args:
        functions: the layers, each taking and returning one tensor.
        segments: how many chunks to cut them into; each chunk's input is kept for backward.
        input: the first layer's input.
        use_reentrant: as in `checkpoint`.
        preserve_rng_state: as in `checkpoint` (a keyword argument).
    """
    preserve = kwargs.pop("preserve_rng_state", True)
    if kwargs:
        raise ValueError("Unexpected keyword arguments: " + ",".join(kwargs))
    if isinstance(functions, kiln.nn.Sequential):
        functions = list(functions.children())
    functions = list(functions)

    def run(start: int, end: int):
        def forward(x):
            for j in range(start, end + 1):
                x = functions[j](x)
            return x
        return forward

    size = len(functions) // segments
    end = -1
    for start in range(0, size * (segments - 1), size):
        end = start + size - 1
        input = checkpoint(run(start, end), input, use_reentrant=use_reentrant,
                           preserve_rng_state=preserve)
    return run(end + 1, len(functions) - 1)(input)


# ----------------------------------------------------------------------------- the rest of
# torch.utils.checkpoint's public names

class CheckpointPolicy(enum.Enum):
    """What a selective-checkpointing policy says of one op (torch's enum). kiln records no
    per-op policy: every op of a segment is recomputed, whatever the policy says."""

    MUST_SAVE = 0
    PREFER_SAVE = 1
    MUST_RECOMPUTE = 2
    PREFER_RECOMPUTE = 3


class SelectiveCheckpointContext:
    """The context a selective-checkpointing policy function receives."""

    def __init__(self, *, is_recompute: bool):
        self.is_recompute = is_recompute


def create_selective_checkpoint_contexts(policy_fn_or_list, allow_cache_entry_mutation=False):
    """The `context_fn` pair for selective checkpointing. kiln checks the policy's type and
    then recomputes every op (the gradients are the same; only what is saved differs)."""
    if not (callable(policy_fn_or_list) or isinstance(policy_fn_or_list, (list, tuple))):
        raise TypeError("policy_fn_or_list must be either a function or a list of ops.")
    return contextlib.nullcontext(), contextlib.nullcontext()


@contextlib.contextmanager
def set_checkpoint_early_stop(enable: bool):
    """torch stops a recomputation once it has every saved tensor it needs; kiln always runs
    the whole function, so the setting is accepted and changes nothing."""
    yield


@contextlib.contextmanager
def set_checkpoint_debug_enabled(enabled: bool | None):
    """Accepted for compatibility; kiln's checkpoint has no extra debug output."""
    yield


def detach_variable(inputs: tuple) -> tuple:
    """Each tensor of `inputs` detached, requiring grad as before; other values unchanged."""
    if not isinstance(inputs, tuple):
        raise RuntimeError(f"Only tuple of tensors is supported. Got Unsupported input type: "
                           f"{type(inputs).__name__}")
    return tuple(_detached(x) for x in inputs)


def check_backward_validity(inputs, *, stacklevel: int = 2) -> None:
    """Warn, as torch does, when no input tensor requires grad (then only the reentrant
    variant of kiln's checkpoint, as PyTorch's, gives the parameters no gradient)."""
    if not _any_requires_grad(inputs):
        warnings.warn("None of the inputs have requires_grad=True. Gradients will be None",
                      stacklevel=stacklevel)


def _any_requires_grad(inputs) -> bool:
    return any(isinstance(x, kiln.Tensor) and x.requires_grad for x in inputs)
