"""Reverse-mode autograd: graph nodes, the backward engine, grad modes and gradcheck.

A node remembers one primitive call (its inputs, attributes and output). Backward walks the
nodes from the output in reverse topological order and runs each primitive's gradient rule
(`kiln.ir.ops`), written with tensor ops: with `create_graph=True` the rules are themselves
recorded (higher-order gradients), and under a trace they become the backward graph.
"""

from __future__ import annotations

import functools

import numpy as np

from kiln.ir.ops import Primitive
from kiln.tracer.dispatch import op_error
from kiln.tracer.tensor import STATE, Tensor

# The inputs whose values a primitive's gradient rule reads (default: all). An in-place change
# to any other input is harmless, so, like PyTorch, only these are version-checked.
_RULE_READS = {name: () for name in (
    "add", "sub", "neg", "reshape", "permute", "expand", "slice", "flip", "pad", "cat", "sum",
    "cast", "cumsum", "relu")}
_RULE_READS.update({"take": (1,), "index_add": (1,), "index_put": (1,), "where": (0,)})

_FREED = ("Trying to backward through the graph a second time (or directly access saved "
          "tensors after they have already been freed). Saved intermediate values of the graph "
          "are freed when you call .backward() or autograd.grad(). Specify retain_graph=True if "
          "you need to backward through the graph a second time or if you need to access saved "
          "tensors after calling backward.")


class Node:
    """The grad_fn of a tensor: one recorded primitive call."""

    __slots__ = ("prim", "inputs", "attrs", "out_data", "out_dtype", "out_device", "versions",
                 "edges", "hooks", "retained", "out_trace", "label", "__weakref__")

    def name(self) -> str:
        # `label`: the PyTorch name a composite op gives its output's node (MeanBackward0)
        label = getattr(self, "label", None)
        if label is not None:
            return label
        return "".join(p.capitalize() for p in self.prim.name.split("_")) + "Backward0"

    def __repr__(self) -> str:
        return f"<{self.name()} object at {hex(id(self))}>"

    @property
    def next_functions(self):
        if self.inputs is None:
            return ()
        return tuple((e if isinstance(e, Node) else "AccumulateGrad", 0)
                     for e in self.edges if e is not None)

    def register_hook(self, fn):
        self.hooks = (self.hooks or ()) + (fn,)

    def output(self) -> Tensor:
        """The node's output as a tensor that is still attached to this node."""
        out = Tensor._make(self.out_data, self.out_dtype, self.out_device)
        out.grad_fn, out.requires_grad, out._trace = self, True, self.out_trace
        return out


def record(prim: Primitive, args: tuple, attrs: dict, result: Tensor) -> None:
    """Attach an autograd node for `prim(args)` to `result` (the dispatcher calls this)."""
    node = Node()
    node.prim, node.inputs, node.attrs = prim, args, attrs
    node.out_data, node.out_dtype, node.out_device = result._data, result.dtype, result.device
    node.versions = tuple(a._version[0] if isinstance(a, Tensor) else None for a in args)
    node.edges = edges_of(args)
    node.hooks = node.retained = node.out_trace = None
    result.grad_fn = node
    result.requires_grad = True


def edges_of(args: tuple) -> tuple:
    """Where each input's gradient goes: its grad_fn, the leaf tensor itself, or None.

    Taken when the op runs, so a later in-place write (which gives the written tensor a new
    grad_fn) does not re-route the gradient of ops that read the tensor before the write.
    """
    return tuple((a.grad_fn if a.grad_fn is not None else a)
                 if isinstance(a, Tensor) and a.requires_grad else None for a in args)


# ----------------------------------------------------------------------------- grad modes

class _GradMode:
    """Base of the grad-mode switches: each works as a context manager and as a decorator."""

    enabled = True

    def __enter__(self):
        self.prev = STATE.grad_enabled
        STATE.grad_enabled = self.enabled
        return self

    def __exit__(self, *exc):
        STATE.grad_enabled = self.prev
        return False

    def __call__(self, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with self.__class__(*self._args()):
                return fn(*args, **kwargs)
        return wrapper

    def _args(self):
        return ()


class no_grad(_GradMode):
    enabled = False


class enable_grad(_GradMode):
    enabled = True


class set_grad_enabled(_GradMode):
    def __init__(self, mode: bool):
        self.enabled = bool(mode)
        self.prev = STATE.grad_enabled
        STATE.grad_enabled = self.enabled   # also works as a plain function call

    def __enter__(self):
        return self

    def _args(self):
        return (self.enabled,)


class inference_mode(_GradMode):
    def __init__(self, mode: bool = True):
        self.enabled = not mode

    def _args(self):
        return (not self.enabled,)


def is_grad_enabled() -> bool:
    return STATE.grad_enabled


# ----------------------------------------------------------------------------- the engine

def _topological(roots: list[Node]) -> list[Node]:
    """Nodes reachable from `roots`, each after every node that consumes its output."""
    order, seen = [], set()
    stack = [(n, False) for n in roots]
    while stack:
        node, expanded = stack.pop()
        if expanded:
            order.append(node)
            continue
        if id(node) in seen:
            continue
        seen.add(id(node))
        if node.inputs is None:
            raise op_error("backward", _FREED)
        stack.append((node, True))
        for e in node.edges:
            if e is not None and not isinstance(e, Tensor) and id(e) not in seen:
                stack.append((e, False))
    order.reverse()
    return order


def _accumulate(store: dict, key, tensor: Tensor, grad: Tensor) -> None:
    prev = store.get(key)
    store[key] = (tensor, grad if prev is None else prev[1] + grad)


def _check_versions(node: Node) -> None:
    reads = _RULE_READS.get(node.prim.name)
    for i, (a, v) in enumerate(zip(node.inputs, node.versions)):
        if isinstance(a, Tensor) and a._version[0] != v and (reads is None or i in reads):
            raise op_error(
                "backward", "one of the variables needed for gradient computation has been "
                f"modified by an inplace operation: [{a.dtype.name} {list(a.shape)}], which is "
                f"an input of {node.name()}, is at version {a._version[0]}; expected version "
                f"{v} instead. "
                "Hint: clone the tensor before modifying it in place.")


def _owned(grad: Tensor) -> Tensor:
    """A gradient safe to store in `.grad`: its own writeable memory, not a view of another."""
    data = grad._data
    if getattr(data, "base", None) is not None or not data.flags.writeable:
        data = data.copy()
    owned = Tensor._make(data, grad.dtype, grad.device)
    owned._trace = grad._trace
    return owned


def run_backward(outputs, grad_outputs, retain_graph=False, create_graph=False, inputs=None):
    """Propagate gradients from `outputs`.

    With `inputs=None` gradients accumulate into the `.grad` of every leaf reached
    (Tensor.backward).
    Otherwise the gradients of `inputs` are returned and no `.grad` changes (autograd.grad).
    """
    roots, leaf_seeds = [], {}
    pending: dict[int, Tensor] = {}
    for out, g in zip(outputs, grad_outputs):
        if out.grad_fn is None:
            if not out.requires_grad:
                raise op_error("backward", "element 0 of tensors does not require grad and "
                               "does not have a grad_fn")
            _accumulate(leaf_seeds, id(out), out, g)
            continue
        roots.append(out.grad_fn)
        key = id(out.grad_fn)
        pending[key] = g if key not in pending else pending[key] + g

    wanted = {}
    if inputs is not None:
        for t in inputs:
            if t.grad_fn is not None:
                wanted[id(t.grad_fn)] = None
    captured: dict[int, Tensor] = {}
    leaf_grads = leaf_seeds

    prev_mode = STATE.grad_enabled
    STATE.grad_enabled = create_graph
    try:
        for node in _topological(roots):
            g = pending.pop(id(node), None)
            if g is None:
                continue
            if node.hooks:
                for hook in node.hooks:
                    replaced = hook(g)
                    g = replaced if replaced is not None else g
            if node.retained is not None:
                t = node.retained()
                if t is not None:
                    t.grad = g if create_graph else g.detach()
            if id(node) in wanted:
                captured[id(node)] = g
            _check_versions(node)
            grads = node.prim.grad(g, node.output(), *node.inputs, **node.attrs)
            for edge, ga in zip(node.edges, grads):
                if ga is None or edge is None:
                    continue
                if isinstance(edge, Tensor):
                    _accumulate(leaf_grads, id(edge), edge, ga)
                else:
                    key = id(edge)
                    pending[key] = ga if key not in pending else pending[key] + ga
            if not retain_graph:
                node.inputs = None
                node.out_data = None
    finally:
        STATE.grad_enabled = prev_mode

    if inputs is not None:
        result = []
        for t in inputs:
            if t.grad_fn is not None:
                result.append(captured.get(id(t.grad_fn)))
            else:
                hit = leaf_grads.get(id(t))
                result.append(hit[1] if hit is not None else None)
        return result

    for tensor, g in leaf_grads.values():
        if tensor._hooks:
            for hook in tensor._hooks:
                replaced = hook(g)
                g = replaced if replaced is not None else g
        if g.dtype is not tensor.dtype:
            g = g.to(tensor.dtype)
        if tensor.grad is None:
            tensor.grad = g if create_graph else _owned(g)
        elif create_graph or STATE.tracer is not None:
            tensor.grad = tensor.grad + g      # traced: a new value, written back by the tracer
        else:
            tensor.grad._data += g._data
        if POST_ACCUMULATE_HOOKS:
            entry = POST_ACCUMULATE_HOOKS.get(id(tensor))
            if entry is not None and entry[0]() is tensor:
                for hook in tuple(entry[1]):
                    hook(tensor)
    return None


# id(leaf) -> (weakref to it, hooks run after backward has accumulated into its .grad);
# Tensor.register_post_accumulate_grad_hook adds to it
POST_ACCUMULATE_HOOKS: dict = {}


def _seed(out: Tensor, g) -> Tensor:
    if g is None:
        if out.numel() != 1:
            raise op_error("backward", f"grad can be implicitly created only for scalar "
                           f"outputs; the output has shape {list(out.shape)}: pass `gradient=`")
        return out.new_ones(out.shape)
    if not isinstance(g, Tensor):
        g = out.new_tensor(g)
    if tuple(g.shape) != tuple(out.shape):
        raise op_error("backward", f"Mismatch in shape: grad_output[0] has a shape of "
                       f"{list(g.shape)} and output[0] has a shape of {list(out.shape)}.")
    return g


def backward(tensor: Tensor, gradient=None, retain_graph=None, create_graph=False,
             inputs=None) -> None:
    if not tensor.requires_grad:
        raise op_error("backward", "element 0 of tensors does not require grad and does not "
                       "have a grad_fn")
    retain = create_graph if retain_graph is None else retain_graph
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        grads = run_backward([tensor], [_seed(tensor, gradient)], retain, create_graph, inputs)
        for t, g in zip(inputs, grads):
            if g is not None:
                t.grad = g if t.grad is None else t.grad + g
        return
    run_backward([tensor], [_seed(tensor, gradient)], retain, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         allow_unused=None, materialize_grads=False):
    """Gradients of `outputs` with respect to `inputs` (PyTorch's torch.autograd.grad)."""
    single = isinstance(inputs, Tensor)
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if single else list(inputs)
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    for t in inputs:
        if not t.requires_grad:
            raise op_error("autograd.grad", "One of the differentiated Tensors does not "
                           "require grad")
    seeds = [_seed(o, g) for o, g in zip(outputs, grad_outputs)]
    retain = create_graph if retain_graph is None else retain_graph
    grads = run_backward(outputs, seeds, retain, create_graph, inputs)
    for i, g in enumerate(grads):
        if g is None:
            if materialize_grads:
                grads[i] = inputs[i].new_zeros(inputs[i].shape)
            elif not allow_unused:
                raise op_error("autograd.grad", "One of the differentiated Tensors appears to "
                               "not have been used in the graph. Set allow_unused=True if this is "
                               "the desired behavior.")
    return tuple(grads)


# ----------------------------------------------------------------------------- gradcheck

class GradcheckError(RuntimeError):
    pass


def gradcheck(func, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True) -> bool:
    """Compare autograd's Jacobian of `func` with central finite differences (use float64)."""
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def flat_outputs(args):
        out = func(*args)
        outs = (out,) if isinstance(out, Tensor) else tuple(out)
        return [o for o in outs if isinstance(o, Tensor)]

    outs = flat_outputs(inputs)
    for k, out in enumerate(outs):
        n_out = out.numel()
        for i in diff:
            x = inputs[i]
            numeric = np.zeros((x.numel(), n_out))
            flat = x._data.reshape(-1)
            for j in range(x.numel()):
                orig = flat[j].item()
                flat[j] = orig + eps
                with no_grad():
                    plus = flat_outputs(inputs)[k]._data.astype(np.float64).reshape(-1)
                flat[j] = orig - eps
                with no_grad():
                    minus = flat_outputs(inputs)[k]._data.astype(np.float64).reshape(-1)
                flat[j] = orig
                numeric[j] = (plus - minus) / (2 * eps)
            analytic = np.zeros((x.numel(), n_out))
            if out.requires_grad:
                for m in range(n_out):
                    seed = np.zeros(n_out)
                    seed[m] = 1.0
                    g = grad([out], [x], [out.new_tensor(seed.reshape(out.shape))],
                             retain_graph=True, allow_unused=True)[0]
                    if g is not None:
                        analytic[:, m] = g._data.reshape(-1)
            if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
                if raise_exception:
                    raise GradcheckError(
                        f"Jacobian mismatch for output {k} with respect to input {i},\n"
                        f"numerical:{numeric}\nanalytical:{analytic}")
                return False
    return True


__all__ = ["Node", "no_grad", "enable_grad", "set_grad_enabled", "inference_mode",
           "is_grad_enabled", "backward", "grad", "gradcheck", "GradcheckError"]
