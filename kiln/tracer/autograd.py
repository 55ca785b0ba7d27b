"""Reverse-mode autograd: graph nodes, the backward engine, grad modes and gradcheck.

A node remembers one primitive call (its inputs, attributes and output). Backward walks the
nodes from the output in reverse topological order and runs each primitive's gradient rule
(`kiln.ir.ops`), written with tensor ops: with `create_graph=True` the rules are themselves
recorded (higher-order gradients), and under a trace they become the backward graph.
"""

from __future__ import annotations

import contextlib
import functools
import sys
import threading
import warnings
import weakref

import numpy as np

from kiln.ir import dtypes as dt
from kiln.ir.ops import COPIED, PRIMITIVES, SAVED, P, Primitive
from kiln.runtime.device import CPU, MetaArray, is_writeable, to_device
from kiln.runtime.layouts import grad_array
from kiln.tracer.errors import op_error
from kiln.tracer.handles import DroppingHandle
from kiln.tracer.storage import internal_overlap
from kiln.tracer.tensor import INFERENCE, STATE, TRACING, WRAPPERS, Tensor, dispatches

_FREED = ("Trying to backward through the graph a second time (or directly access saved "
          "tensors after they have already been freed). Saved intermediate values of the graph "
          "are freed when you call .backward() or autograd.grad(). Specify retain_graph=True if "
          "you need to backward through the graph a second time or if you need to access saved "
          "tensors after calling backward.")


class Node:
    """The grad_fn of a tensor: one recorded primitive call. Each node is an instance of a
    subclass named after PyTorch's node for its op (SumBackward0, made once per name by
    `backward_class`): users and libraries dispatch on `type(grad_fn).__name__`."""

    __slots__ = ("prim", "inputs", "attrs", "out_data", "out_dtype", "out_device", "versions",
                 "out_version", "out_at", "edges", "hooks", "retained", "out_trace",
                 "packed", "forward_stack", "shown", "__weakref__")

    # whether a post hook sees the gradients the rule gives inputs that take none (a custom
    # Function's, whose backward's results PyTorch hands its hooks as they are)
    hooks_see_unused_grads = False
    # a node with several outputs (OutputSlot) says how many, and has `out_shapes`: per output
    # (shape, dtype, device), None for one that is not a tensor; its rule takes their gradients
    num_outputs = 1

    def name(self) -> str:
        return type(self).__name__

    def __repr__(self) -> str:
        return f"<{self.name()} object at {hex(id(self))}>"

    @property
    def next_functions(self):
        """((node, 0), ...) per input, as PyTorch's: the input's grad_fn, an AccumulateGrad
        naming a leaf that requires grad (`.variable`), or None for an input without one.
        Still there after a backward has freed the saved values, as in PyTorch."""
        edges = getattr(self, "edges", None)
        if edges is None:
            return ()
        composite = getattr(self, "shown", None)    # a named composite: its own inputs
        if composite is not None:
            return tuple((AccumulateGrad.of(e) if isinstance(e, Tensor) else e, 0)
                         for e in composite)
        shown = _SHOWN_INPUTS.get(self.prim)
        if shown is not None:       # the rest are values the node keeps for its rule
            edges = edges[:shown]
        return tuple((AccumulateGrad.of(e) if isinstance(e, Tensor) else e, 0) for e in edges)

    def register_hook(self, fn):
        """PyTorch's Node.register_hook: `fn(grad_inputs, grad_outputs)` runs after the node's
        rule (a tuple per `next_functions` entry, None where no gradient goes, and the tuple of
        the node's output gradient), and a tuple it returns replaces grad_inputs. Returns a
        handle whose remove() drops it. On a node kiln computes as several (a named
        composite's: AddmmBackward0 of linear, MvBackward0, CopySlices), backward runs the inner
        nodes at this one so that the hook sees the gradients of the inputs it lists."""
        if _composite_edges(self) is not None:
            _inner_nodes(self)              # refuses here what it cannot run
        return self._add_hook(_PostHook(fn))

    def register_prehook(self, fn):
        """PyTorch's Node.register_prehook: `fn(grad_outputs)` runs before the node's rule, and
        a tuple it returns replaces the gradients. Returns a handle whose remove() drops it."""
        return self._add_hook(_PreHook(fn))

    def _add_hook(self, hook) -> DroppingHandle:
        self.hooks = (getattr(self, "hooks", None) or ()) + (hook,)
        return DroppingHandle(functools.partial(drop_hook, self, "hooks", hook))

    # PyTorch's grad_fn._saved_<name>: what the gradient rule reads, through the unpack hook
    # where it was packed, and _raw_saved_<name>, the SavedTensor whose hooks can be set. kiln
    # names only the common three: the first input (self), the second (other) and the output
    # (result); PyTorch's op-specific names (mat2, exponent, ...) are not there.
    @property
    def _saved_self(self) -> Tensor:
        return self._saved_input(0, "_saved_self")

    @property
    def _raw_saved_self(self) -> "SavedTensor":
        return SavedTensor(self, self._saved_position(0, "_raw_saved_self"))

    @property
    def _raw_saved_other(self) -> "SavedTensor":
        return SavedTensor(self, self._saved_position(1, "_raw_saved_other"))

    @property
    def _raw_saved_result(self) -> "SavedTensor":
        return SavedTensor(self, self._saved_position(-1, "_raw_saved_result"))

    @property
    def _saved_other(self) -> Tensor:
        return self._saved_input(1, "_saved_other")

    @property
    def _saved_result(self) -> Tensor:
        self._saved_position(-1, "_saved_result")
        packed = getattr(self, "packed", None)
        out = self.output()
        if packed is None or -1 not in packed:
            return out
        value = unpack_tensor(packed[-1], out, None, self.name())
        value._grad_fn, value._requires_grad = self, True
        return value

    def _saved_position(self, i: int, name: str) -> int:
        """`i` (an input's position, -1 for the output) if the rule reads that value and the
        graph still holds it; else the error PyTorch gives."""
        if self.inputs is None:
            raise op_error(name, _FREED)
        if i < 0:
            saved = isinstance(self.prim, Primitive) and \
                self.prim.output_of(self.inputs) is not None
        else:
            reads = self.prim.reads_of(self.inputs)
            saved = i < len(self.inputs) and isinstance(self.inputs[i], Tensor) and (
                reads is None or i in reads)
        if not saved:
            raise AttributeError(f"'{self.name()}' object has no attribute '{name}' (its "
                                 "gradient rule does not read that value)")
        return i

    def _saved_input(self, i: int, name: str) -> Tensor:
        self._saved_position(i, name)
        packed = getattr(self, "packed", None)
        if packed is not None and i in packed:
            return unpack_tensor(packed[i], self.inputs[i], self.edges[i], self.name())
        return self.inputs[i]

    def output(self) -> Tensor:
        """The node's output as a tensor that is still attached to this node."""
        data = self.out_data
        if isinstance(data, Tensor):    # a wrapper subclass's output (dispatch_subclass)
            out = _wrapper_alias(data)
        else:
            out = Tensor._make(data, self.out_dtype, self.out_device)
        out._grad_fn, out._requires_grad, out._trace = self, True, self.out_trace
        return out


def _matmul_name(args: tuple, out) -> str:
    # PyTorch's node for each case of matmul's ranks (a batched product's node is Bmm's,
    # under PyTorch's UnsafeView of its result)
    ranks = tuple(a.ndim for a in args)
    if out.ndim == 0 or ranks == (1, 1):
        return "DotBackward0"
    if ranks == (2, 1):
        return "MvBackward0"
    return "BmmBackward0" if out.ndim >= 3 else "MmBackward0"


_MATMUL = PRIMITIVES["matmul"]
# PyTorch's names for the nodes of primitives whose own names differ from its op's: kiln's
# reshape is PyTorch's view (PyTorch has no ReshapeBackward0), and so on
_TORCH_NAMES = {"reshape": "ViewBackward0", "matmul": "MmBackward0",
                "batch_norm": "NativeBatchNormBackward0",
                "max_pool2d_with_indices": "MaxPool2DWithIndicesBackward0",
                "copy_slices": "CopySlices"}

_CLASSES: dict[str, type] = {}          # node name -> its Node subclass
_PRIM_CLASSES: dict[str, type] = {}     # primitive name -> the class of its nodes
# PyTorch's engine nodes: a write through a view (CopySlices), copy_ into a whole tensor
_ENGINE_NODES = ("CopySlices", "CopyBackwards")


class _EngineNode(Node):
    """A node PyTorch's engine makes itself, not an op's: its name() is C++-qualified."""

    __slots__ = ()

    def name(self) -> str:
        return "torch::autograd::" + type(self).__name__


def backward_class(name: str) -> type:
    """The Node subclass called `name` (one per name, so `type(a) is type(b)` for two nodes of
    the same op, as in PyTorch)."""
    cls = _CLASSES.get(name)
    if cls is None:
        base = _EngineNode if name in _ENGINE_NODES else Node
        cls = _CLASSES[name] = type(name, (base,), {"__slots__": (), "__module__": __name__})
    return cls


def prim_class(prim: Primitive) -> type:
    """The class of `prim`'s nodes: PyTorch's name for the op (a compiled program's backward is
    its CompiledFunctionBackward), else the primitive's name in PyTorch's spelling."""
    cls = _PRIM_CLASSES.get(prim.name)
    if cls is None:
        name = _TORCH_NAMES.get(prim.name)
        if name is None and prim.kind == "extern" and prim.name.startswith("compiled_"):
            name = "CompiledFunctionBackward"
        if name is None:
            name = "".join(p.capitalize() for p in prim.name.split("_")) + "Backward0"
        cls = _PRIM_CLASSES[prim.name] = backward_class(name)
    return cls


def set_name(node, name: str | None) -> None:
    """Make a primitive's node report PyTorch's `name` for the op that made it (a composite's
    output node is its last primitive's); None, or a node that is not a primitive's (a custom
    Function's, a wrapper subclass's), is left as it is."""
    if name is not None and renamable(node):
        node.__class__ = backward_class(name)


def renamable(node) -> bool:
    """Whether `node` is a primitive's (its class one of backward_class's, which share Node's
    layout, so that the node can change class)."""
    return _CLASSES.get(type(node).__name__) is type(node)


# custom nodes whose rule also reads values passed as extra inputs (a fused softmax's saved
# exponentials): next_functions shows only the first inputs, as PyTorch's node has them
_SHOWN_INPUTS: dict = {}


def show_inputs(prim: Primitive, count: int) -> None:
    """Let next_functions of `prim`'s nodes show only their first `count` inputs."""
    _SHOWN_INPUTS[prim] = count


class _PreHook:
    """A hook given to a node's register_prehook: `fn(grad_outputs)`. The node's `hooks` holds
    it beside the tensor hooks (plain callables, `fn(grad)`), which run before it."""

    __slots__ = ("fn",)

    def __init__(self, fn):
        self.fn = fn

    def run(self, g):
        """The gradient after the hook: g, its replacement, or None (the hook dropped it)."""
        return self.run_several((g,))[0]

    def run_several(self, grad_outputs: tuple) -> tuple:
        """The gradients of a node's outputs after the hook (None where one has none)."""
        replaced = self.fn(grad_outputs)
        if replaced is None:
            return grad_outputs
        return _hook_result(self.fn, replaced, grad_outputs)


class _PostHook(_PreHook):
    """A hook given to a node's register_hook: `fn(grad_inputs, grad_outputs)`."""

    __slots__ = ()

    def run(self, grad_inputs: tuple, grad_outputs: tuple) -> tuple:
        replaced = self.fn(grad_inputs, grad_outputs)
        return grad_inputs if replaced is None else _hook_result(self.fn, replaced, grad_inputs)


def _hook_result(fn, replaced, given: tuple) -> tuple:
    """A node hook's returned gradients, checked as PyTorch checks them."""
    if not isinstance(replaced, tuple):
        raise TypeError(f"expected tuple, but hook returned '{type(replaced).__name__}'")
    if len(replaced) != len(given):
        raise RuntimeError(f"hook '{getattr(fn, '__name__', fn)}' has returned an incorrect "
                           f"number of values (got {len(replaced)}, but expected {len(given)})")
    for old, new in zip(given, replaced):
        if old is None and new is not None:
            raise RuntimeError("can't replace a None gradient with a non-None value")
    return replaced


def _pre_hooks(node: Node, g, create_graph: bool) -> tuple:
    """Run a node's hooks before its rule, in PyTorch's order: the tensor hooks of its output,
    then retain_grad's capture, then the node's pre-hooks. Returns (the gradient, None where a
    pre-hook dropped it; the node's post hooks)."""
    for hook in node.hooks:
        if not isinstance(hook, _PreHook):
            replaced = hook(g)
            g = replaced if replaced is not None else g
    _retain(node, g, create_graph)
    post = []
    for hook in node.hooks:
        if type(hook) is _PostHook:
            post.append(hook)
        elif g is not None and isinstance(hook, _PreHook):
            g = hook.run(g)
    return g, post


def _post_hooks(node: Node, post: list, grad_outputs: tuple, grads: tuple) -> tuple:
    """The rule's gradients after the node's post hooks (which see and replace those of the
    inputs next_functions lists, None where an input takes none, and get the node's output
    gradients, `grad_outputs`)."""
    shown = len(node.next_functions)
    if node.hooks_see_unused_grads:
        grad_inputs = tuple(grads[:shown])
    else:
        grad_inputs = tuple(None if e is None else ga for e, ga in zip(node.edges[:shown], grads))
    for hook in post:
        grad_inputs = hook.run(grad_inputs, grad_outputs)
    return tuple(grad_inputs) + tuple(grads[shown:])


def _composite_edges(node: Node) -> list | None:
    """The edges a named composite's node lists in next_functions (leaf tensors, nodes, None),
    where they are not its own edges (its inner nodes lead to them); else None."""
    shown = getattr(node, "shown", None)
    if shown is None:
        return None
    shown = [e.variable if type(e) is AccumulateGrad else e for e in shown]
    if len(shown) == len(node.edges) and all(a is b for a, b in zip(shown, node.edges)):
        return None
    return shown


def _inner_nodes(node: Node) -> list:
    """The nodes between a composite's node and the edges it lists, each after every inner
    node that consumes its output; refuses (NotImplementedError) what kiln cannot give a post
    hook: an input listed twice, or a path that leaves the composite."""
    shown = _composite_edges(node)
    listed = {id(e) for e in shown if e is not None}
    if len(listed) != sum(e is not None for e in shown):
        raise NotImplementedError(
            f"kiln cannot run a post hook on {node.name()} whose inputs are the same tensor "
            "twice: kiln computes this op as several nodes, which do not tell the two "
            "gradients apart (register_prehook, or a hook on the input tensor, work)")
    order, seen, stack = [], set(), [(node, False)]
    while stack:                        # as _topological, within the composite
        n, expanded = stack.pop()
        if expanded:
            order.append(n)
            continue
        if id(n) in seen:
            continue
        seen.add(id(n))
        stack.append((n, True))
        for e in n.edges:
            if e is None or id(e) in listed or id(e) in seen:
                continue
            if isinstance(e, Tensor) or not isinstance(e, Node) or len(seen) > 256:
                raise NotImplementedError(
                    f"kiln cannot run a post hook on {node.name()}: kiln computes it as "
                    "several nodes, and their gradients reach tensors its next_functions do "
                    "not list (register_prehook, or hooks on the input tensors, work)")
            stack.append((e, False))
    order.reverse()
    return order[1:]        # (the first is node itself)


def _composite_backward(node: Node, post: list, g, grads: tuple, saved: tuple,
                        order: list, create_graph: bool, retain_graph: bool) -> list:
    """A named composite's post hooks: its inner nodes run here, their gradients for the
    inputs next_functions lists are gathered into grad_inputs for the hooks, and the hooks'
    (edge, gradient) pairs are returned for the engine to pass on."""
    shown = _composite_edges(node)
    inner = _inner_nodes(node)
    local = {id(n): 0 for n in inner}
    for n in [node] + inner:
        for e in n.edges:
            if id(e) in local:
                local[id(e)] += 1
    for n in order:                     # an inner node another node also reads
        for e in n.edges:
            if id(e) in local:
                local[id(e)] -= 1
    if any(local.values()) or any(getattr(n, "hooks", None) or
                                  getattr(n, "retained", None) is not None for n in inner):
        raise NotImplementedError(
            f"kiln cannot run a post hook on {node.name()}: a node kiln computes it with is "
            "also used outside it (a view written in place and read elsewhere)")
    slot = {id(e): i for i, e in enumerate(shown) if e is not None}
    gathered = [None] * len(shown)
    pending: dict = {}

    def send(edges, grads, saved) -> None:
        for edge, ga, a in zip(edges, grads, saved):
            if ga is None or edge is None:
                continue
            if isinstance(a, Tensor) and ga.device is not a.device:
                ga = _moved_home(ga, a.device)
            i = slot.get(id(edge))
            if i is not None:
                gathered[i] = ga if gathered[i] is None else gathered[i] + ga
            else:
                key = id(edge)
                pending[key] = ga if key not in pending else pending[key] + ga

    send(node.edges, grads, saved)
    for n in inner:
        gn = pending.pop(id(n), None)
        if gn is not None:
            _check_versions(n)
            with _grad_scope(n) if TRACING[0] else _NO_SCOPE:
                saved_n, out = (n.inputs, n.output()) if getattr(n, "packed", None) is None \
                    else _unpack_saved(n)
                grads_n = _rule(n, gn, out, saved_n, create_graph)
                if ANOMALY[0] and ANOMALY[1] and not TRACING[0]:
                    _check_anomaly(n, grads_n)
                send(n.edges, grads_n, saved_n)
        if not retain_graph:
            n.inputs = n.out_data = n.packed = None
    grad_inputs = tuple(None if e is None else ga for e, ga in zip(shown, gathered))
    for hook in post:
        grad_inputs = hook.run(grad_inputs, (g,))
    return list(zip(shown, grad_inputs))


def _rule(node: Node, g, out, saved: tuple, create_graph: bool) -> tuple:
    """The node's gradient rule on g: widened for a half-precision gradient, conjugated for
    a complex one, as its primitive needs."""
    if not create_graph and g.dtype in _HALF and _widens(node.prim, g):
        return _widened_rule(node, g, out, saved)
    if g.dtype.is_complex and _conjugates(node.prim):
        return _conjugated_rule(node, g, out, saved)
    return node.prim.grad(g, out, *saved, **node.attrs)


def _retain(node: Node, g, create_graph: bool) -> None:
    t = node.retained() if node.retained is not None else None
    if t is not None and g is not None:
        t.grad = g if create_graph else g.detach()


class AccumulateGrad(Node):
    """The node a leaf's gradient reaches in `next_functions`: `.variable` is the leaf. One per
    leaf for the leaf's lifetime, so walking a graph meets the same object for the same leaf
    (it holds the leaf weakly: the cache does not keep leaves alive)."""

    __slots__ = ("_variable",)
    _of: dict = {}                  # id(leaf) -> its AccumulateGrad, while the leaf lives
    next_functions = ()

    def __init__(self, variable: Tensor):
        self._variable = weakref.ref(variable)
        self.hooks = None

    @property
    def variable(self) -> Tensor | None:
        return self._variable()

    @classmethod
    def of(cls, leaf: Tensor) -> "AccumulateGrad":
        node = cls._of.get(id(leaf))
        if node is None:
            node = cls._of[id(leaf)] = cls(leaf)
            weakref.finalize(leaf, cls._of.pop, id(leaf), None)
        return node

    def name(self) -> str:
        return "torch::autograd::AccumulateGrad"

    def register_hook(self, fn):
        """`fn((), (grad,))` once the leaf's `.grad` has this backward's gradient added."""
        _ACCUMULATE_HOOKS[0] = True
        return self._add_hook(_PostHook(fn))

    def register_prehook(self, fn):
        """`fn((grad,))` before the gradient is added into `.grad` (after the leaf's tensor
        hooks); a tuple it returns replaces the gradient."""
        _ACCUMULATE_HOOKS[0] = True
        return self._add_hook(_PreHook(fn))

    @classmethod
    def hooked(cls, leaf: Tensor) -> "AccumulateGrad | None":
        """The leaf's AccumulateGrad if hooks were registered on it."""
        node = cls._of.get(id(leaf)) if _ACCUMULATE_HOOKS[0] else None
        return node if node is not None and node.hooks and node.variable is leaf else None

    def __repr__(self) -> str:
        return f"<AccumulateGrad object at {hex(id(self))}>"


# whether any AccumulateGrad has had a hook registered (until then, leaves skip the lookup)
_ACCUMULATE_HOOKS = [False]


def record(prim: Primitive, args: tuple, attrs: dict, result: Tensor) -> None:
    """Attach an autograd node for `prim(args)` to `result` (the dispatcher calls this)."""
    cls = _PRIM_CLASSES.get(prim.name) or prim_class(prim)
    if prim is _MATMUL and result._data.ndim != 2:
        cls = backward_class(_matmul_name(args, result))     # not MmBackward0
    node = cls()
    node.prim, node.inputs, node.attrs = prim, args, attrs
    node.out_data, node.out_dtype, node.out_device = result._data, result.dtype, result.device
    # list comprehensions: a generator in tuple() costs more than the rest of this function
    node.versions = [a._version[0] if isinstance(a, Tensor) else None for a in args]
    node.out_version = version = result._version
    node.out_at = version[0]
    # the slots behind the properties: the dispatcher refreshed each view input
    node.edges = [(a._grad_fn if a._grad_fn is not None else a)
                  if isinstance(a, Tensor) and a._requires_grad else None for a in args]
    node.hooks = node.retained = node.out_trace = node.packed = None
    if HOOKED[0] and STATE.saved_hooks:
        _pack_saved(node, args, result)
    if ANOMALY[0]:
        node.forward_stack = _user_stack()
    result._grad_fn = node
    result._requires_grad = True


# anomaly mode (torch.autograd.detect_anomaly): [enabled, check_nan]. Enabled, each node keeps
# the user's stack of the forward call that made it, and a backward rule returning NaN raises
# with that stack.
ANOMALY = [False, True]
_KILN_DIR = __file__.rsplit("/tracer/", 1)[0] + "/"


def _user_stack() -> list:
    """The stack of the forward call, without kiln's own frames."""
    import traceback
    return [f for f in traceback.extract_stack()[:-2] if not f.filename.startswith(_KILN_DIR)]


def _check_anomaly(node, grads) -> None:
    """PyTorch's anomaly check: a rule that returned NaN names itself and where its forward
    op was called."""
    for i, ga in enumerate(grads):
        if isinstance(ga, Tensor) and ga.dtype.is_floating_point and bool(
                ga.isnan().any()):
            import traceback
            import warnings
            stack = getattr(node, "forward_stack", None)
            where = "".join(traceback.format_list(stack)) if stack else \
                "  (not recorded: the forward ran before anomaly detection was enabled)\n"
            frame = sys._getframe(1)        # the warning points at the user's backward()
            while frame.f_back is not None and frame.f_code.co_filename.startswith(_KILN_DIR):
                frame = frame.f_back
            warnings.warn_explicit(f"Error detected in {node.name()}. Traceback of forward call "
                                   f"that caused the error:\n{where}", UserWarning,
                                   frame.f_code.co_filename, frame.f_lineno)
            raise RuntimeError(f"Function '{node.name()}' returned nan values in its {i}th "
                               "output.")


def edges_of(args: tuple) -> tuple:
    """Where each input's gradient goes: its grad_fn, the leaf tensor itself, or None.

    Taken when the op runs, so a later in-place write (which gives the written tensor a new
    grad_fn) does not re-route the gradient of ops that read the tensor before the write.
    """
    return tuple((a.grad_fn if a.grad_fn is not None else a)
                 if isinstance(a, Tensor) and a.requires_grad else None for a in args)


def set_history(tensor: Tensor, node) -> None:
    """Give `tensor` a new grad_fn (an in-place write, a view refreshed); a retained gradient
    moves with it, so `.grad` is the gradient of the tensor's current value, as in PyTorch."""
    if tensor._retains_grad:
        old = tensor._grad_fn
        if old is not None and old.retained is not None and old.retained() is tensor:
            old.retained = None
        node.retained = weakref.ref(tensor)
    tensor._grad_fn, tensor._requires_grad = node, True


def history_of(result: Tensor):
    """The grad_fn a tensor written with `result` takes: result's own, or for a leaf (`copy_`
    of a leaf) an identity node, so the gradient reaches that leaf and not the written one."""
    if result.grad_fn is None:
        result = P.reshape(result, shape=tuple(result._data.shape))
    return result.grad_fn


# ----------------------------------------------------------------------------- saved tensors
#
# torch.autograd.graph.saved_tensors_hooks: while a (pack, unpack) pair is active, every tensor
# a new node's gradient rule will read (the inputs its primitive `reads`, and its output where
# the rule reads that) is handed to `pack` as the node is recorded. The node then keeps what
# pack returned and a stand-in with the tensor's shape, dtype, version counter and autograd
# links but not its memory; backward calls `unpack` and runs the rule on what it gives back.

# The hooks are per thread (STATE.saved_hooks), as PyTorch's are; `record` reads this plain
# count of threads with hooks first, so an op pays for no thread-local read while none has any.
HOOKED = [0]


def push_saved_hooks(pack, unpack) -> None:
    if STATE.hooks_disabled:
        raise RuntimeError(STATE.hooks_disabled[-1])
    if not STATE.saved_hooks:
        HOOKED[0] += 1
    STATE.saved_hooks = STATE.saved_hooks + ((pack, unpack),)


def pop_saved_hooks() -> None:
    STATE.saved_hooks = STATE.saved_hooks[:-1]
    if not STATE.saved_hooks:
        HOOKED[0] -= 1


def saved_hooks_active() -> bool:
    """Whether this thread is inside a saved_tensors_hooks block."""
    return bool(HOOKED[0] and STATE.saved_hooks)


def pack_tensor(t: Tensor, hooks: tuple | None = None) -> tuple:
    """`t` through the innermost pack hook (or `hooks`' pack): (what pack returned, the paired
    unpack hook). Pack runs with grad mode off (as in PyTorch): a hook's ops record no nodes."""
    pack, unpack = STATE.saved_hooks[-1] if hooks is None else hooks
    prev = STATE.grad_enabled
    STATE.grad_enabled = False
    try:
        return pack(t), unpack
    finally:
        STATE.grad_enabled = prev


def stand_in(t: Tensor) -> Tensor:
    """A tensor with `t`'s shape, dtype, device, version counter and autograd links whose
    memory is one broadcast zero: what a node keeps of a tensor a pack hook took."""
    xp = np if t.device is CPU else t.device.xp
    data = xp.broadcast_to(xp.zeros((), dtype=t._data.dtype), t._data.shape)
    s = Tensor._make(data, t.dtype, t.device)
    s._version, s._requires_grad, s._grad_fn = t._version, t.requires_grad, t.grad_fn
    return s


def _pack_saved(node: Node, args: tuple, result: Tensor) -> None:
    prim = node.prim
    reads = prim.reads_of(args)
    packed, inputs = {}, list(args)
    for i, a in enumerate(args):
        if isinstance(a, Tensor) and (reads is None or i in reads):
            packed[i] = pack_tensor(a)
            inputs[i] = stand_in(a)
    if prim.output_of(args) is not None:
        packed[-1] = pack_tensor(result)
        node.out_data = stand_in(result)._data
    if packed:
        node.inputs, node.packed = tuple(inputs), packed


def unpack_tensor(packed: tuple, like: Tensor, edge, where: str) -> Tensor:
    """The unpack hook's value for a tensor saved as `like` (a stand-in or the tensor), checked
    and given the saved tensor's dtype, device and autograd link (`edge`: its grad_fn or leaf,
    or None), so gradients of a create_graph backward still reach the saved tensor's history."""
    value = packed[1](packed[0])
    if not isinstance(value, Tensor):
        raise TypeError(f"{where}: Output of saved tensor unpack_hook expected to be a Tensor "
                        f"but got result of type {type(value).__name__}")
    if tuple(value.shape) != tuple(like.shape):
        raise RuntimeError(f"{where}: the saved tensors unpack_hook returned a tensor of shape "
                           f"{list(value.shape)} for a tensor saved with shape "
                           f"{list(like.shape)}; unpack_hook must give back the value pack_hook "
                           "was given")
    data = value._data
    if value.device is not like.device:
        data = to_device(data, like.device)
    if data.dtype != like._data.dtype:
        data = data.astype(like._data.dtype)
    out = Tensor._make(data, like.dtype, like.device)
    if edge is not None:
        link_alias(out, like, (edge,))
    return out


def _unpack_saved(node: Node) -> tuple:
    """(inputs, output) for `node`'s gradient rule, the packed ones through their unpack hook."""
    packed, where = node.packed, node.name()
    inputs = list(node.inputs)
    for i, p in packed.items():
        if i >= 0:
            inputs[i] = unpack_tensor(p, inputs[i], node.edges[i], where)
    out = node.output()
    if -1 in packed:
        value = unpack_tensor(packed[-1], out, None, where)
        value._grad_fn, value._requires_grad, value._trace = node, True, node.out_trace
        out = value
    return tuple(inputs), out


class SavedTensor:
    """`grad_fn._raw_saved_<name>`: one value a node saved, whose hooks can be set for it alone
    (torch.autograd.SavedTensor): `register_hooks` packs it now, and backward unpacks it."""

    def __init__(self, node: Node, position: int):
        self._node, self._position = node, position      # position -1: the node's output

    def register_hooks(self, pack_hook, unpack_hook) -> None:
        if not (callable(pack_hook) and callable(unpack_hook)):
            raise TypeError("register_hooks() expects two callables, pack_hook and unpack_hook")
        node, i = self._node, self._position
        if node.inputs is None:
            raise RuntimeError("Calling register_hooks on a saved tensor after it has been "
                               "freed. " + _FREED.split(". ", 1)[1])
        packed = node.packed or {}
        if i in packed:
            raise RuntimeError("Calling register_hooks on a saved tensor whose hooks have "
                               "already been set. Hint: only one pair of hooks is allowed at "
                               "a time.")
        if i >= 0:
            tensor = node.inputs[i]
            packed[i] = pack_tensor(tensor, (pack_hook, unpack_hook))
            node.inputs = node.inputs[:i] + (stand_in(tensor),) + node.inputs[i + 1:]
        else:
            out = node.output()
            packed[-1] = pack_tensor(out, (pack_hook, unpack_hook))
            node.out_data = stand_in(out)._data
        node.packed = packed

    def unpack(self) -> Tensor:
        """The saved value (through its unpack hook, if it has one)."""
        return {0: Node._saved_self, 1: Node._saved_other,
                -1: Node._saved_result}[self._position].fget(self._node)


# the identity, as the grad_fn that links an unpacked (or dual) tensor to the saved one's history
_ALIAS = Primitive("alias", "movement", None, None, lambda g, out, x: (g,), 1, reads=(),
                   doc="the same value under another tensor: its gradient passes through")


def link_alias(out: Tensor, source: Tensor, edges: tuple | None = None) -> None:
    """Make `out` (on `source`'s memory) a non-leaf whose gradient passes on along `edges`
    (default: into `source`'s history)."""
    node = prim_class(_ALIAS)()
    node.prim, node.inputs, node.attrs, node.versions = _ALIAS, (source,), {}, (None,)
    node.out_data, node.out_dtype, node.out_device = out._data, out.dtype, out.device
    node.out_version = node.out_at = None
    node.edges = edges_of((source,)) if edges is None else edges
    node.hooks = node.retained = node.out_trace = node.packed = None
    out._grad_fn, out._requires_grad = node, True


# ----------------------------------------------------------------------------- several outputs
#
# A node with several outputs (a custom Function's, a compiled function's) is one node, as in
# PyTorch, whose gradient rule runs once with every output's gradient. Where PyTorch's edges say (node, output number),
# kiln's are objects (a grad_fn, a leaf): the grad_fn of output i is an OutputSlot whose one
# edge is the node. The engine files the gradient reaching a slot in the node's slot i, and
# runs the node's rule on the list of them (None for an output that got none) when the
# topological order reaches the node: after all its slots, so after everything that sends any
# of its outputs a gradient.

def _no_slot_rule(g, out):
    raise RuntimeError("an output slot has no gradient rule: the engine files its gradient in "
                       "the slot of its node")


_OUTPUT_SLOT = Primitive("output_slot", "custom", None, None, _no_slot_rule, 0, reads=(),
                         doc="one output of a node with several: its gradient fills a slot")


class OutputSlot(Node):
    """The grad_fn of output `index` of `owner`, a node with several outputs (`num_outputs`,
    and its `prim.grad` takes the list of their gradients). It shows the owner's name, inputs
    (next_functions) and hooks: the owner's hooks see every output's gradient, as PyTorch's."""

    __slots__ = ("owner", "index")

    def name(self) -> str:
        return self.owner.name()

    @property
    def next_functions(self):
        return self.owner.next_functions

    def register_hook(self, fn):
        return self.owner.register_hook(fn)

    def register_prehook(self, fn):
        return self.owner.register_prehook(fn)


def output_slot(cls: type, owner: Node, index: int, out: Tensor) -> OutputSlot:
    """A new grad_fn (of class `cls`, an OutputSlot subclass) for `out`, output `index` of
    `owner`."""
    node = cls()
    node.owner, node.index = owner, index
    node.prim, node.inputs, node.attrs, node.versions = _OUTPUT_SLOT, (), {}, ()
    node.out_data, node.out_dtype, node.out_device = out._data, out.dtype, out.device
    node.out_version = node.out_at = None
    node.edges = (owner,)
    node.hooks = node.retained = node.out_trace = node.packed = None
    return node


class _NodeOfSeveral(Node):
    """A primitive's node with several outputs (a compiled program's), made by record_several."""

    __slots__ = ("num_outputs", "out_shapes")


_SEVERAL_CLASSES: dict[str, tuple] = {}     # node name -> (its node class, its slot class)


def record_several(prim: Primitive, args: tuple, outputs: list) -> None:
    """Attach one autograd node of `prim(args)` to all of `outputs`, each through its slot:
    `prim.grad(grads, None, *args)` gets the list of the outputs' gradients (None for one that
    got none) and runs once per backward."""
    name = prim_class(prim).__name__
    classes = _SEVERAL_CLASSES.get(name)
    if classes is None:
        classes = _SEVERAL_CLASSES[name] = tuple(
            type(name, (base,), {"__slots__": (), "__module__": __name__})
            for base in (_NodeOfSeveral, OutputSlot))
    node = classes[0]()
    node.prim, node.inputs, node.attrs = prim, args, {}
    node.out_data, node.out_dtype, node.out_device = None, outputs[0].dtype, outputs[0].device
    node.versions = [a._version[0] if isinstance(a, Tensor) else None for a in args]
    node.out_version = node.out_at = None
    node.edges = list(edges_of(args))
    node.hooks = node.retained = node.out_trace = node.packed = None
    node.num_outputs = len(outputs)
    node.out_shapes = [(tuple(o.shape), o.dtype, o.device) for o in outputs]
    if ANOMALY[0]:
        node.forward_stack = _user_stack()
    for i, out in enumerate(outputs):
        out._grad_fn, out._requires_grad = output_slot(classes[1], node, i, out), True


def _fill_slot(slot: OutputSlot, g: Tensor, filled: dict) -> None:
    """File `g` in the slot of `slot`'s output in its owner's list of gradients (in `filled`,
    which the engine reads when it reaches the owner)."""
    owner = slot.owner
    grads = filled.get(id(owner))
    if grads is None:
        grads = filled[id(owner)] = [None] * owner.num_outputs
    i = slot.index
    grads[i] = g if grads[i] is None else grads[i] + g


def _run_several(node: Node, grad_outputs: list, pending: dict, leaf_grads: dict, early,
                 create_graph: bool, retain_graph: bool) -> None:
    """The engine's step for a node with several outputs, once all its slots are filled: its
    pre-hooks, its rule on every output's gradient, its post hooks, then on to its edges."""
    grad_outputs = tuple(grad_outputs)
    post = []
    for hook in node.hooks or ():
        if type(hook) is _PostHook:
            post.append(hook)
        elif isinstance(hook, _PreHook):
            grad_outputs = hook.run_several(grad_outputs)
    if all(g is None for g in grad_outputs):    # the pre-hooks dropped every gradient
        grads = ()
    else:
        _check_versions(node)
        saved = node.inputs
        grads = node.prim.grad(list(grad_outputs), None, *saved, **node.attrs)
        if ANOMALY[0] and ANOMALY[1] and not TRACING[0]:
            _check_anomaly(node, grads)
        if post:
            grads = _post_hooks(node, post, grad_outputs, grads)
        for edge, ga, a in zip(node.edges, grads, saved):       # as run_backward's loop
            if ga is None or edge is None:
                continue
            if isinstance(a, Tensor) and ga.device is not a.device:
                ga = _moved_home(ga, a.device)
            if isinstance(edge, Tensor):
                _accumulate(leaf_grads, id(edge), edge, ga)
            else:
                key = id(edge)
                pending[key] = ga if key not in pending else pending[key] + ga
    if early:
        for edge in node.edges:
            if isinstance(edge, Tensor) and id(edge) in early:
                early[id(edge)] -= 1
                if early[id(edge)] == 0 and id(edge) in leaf_grads:
                    _post_accumulate(edge, _store_leaf_grad(
                        edge, leaf_grads.pop(id(edge))[1], create_graph))
    if not retain_graph:
        node.inputs = node.out_data = None


# ----------------------------------------------------------------------------- views
#
# A view shares its base's memory and version counter. An in-place write through a view
# changes the base, so the base's history is rebuilt around the write (PyTorch's CopySlices):
# its new grad_fn passes the gradient outside the view's region to the base's old history and
# routes the region's through the op that wrote it. Every other view of that memory then has
# a stale grad_fn (the counter moved on since it was set) and takes a fresh one from its base
# the next time it is used (`refresh_view`, called by the dispatcher).

def view_origin(view: Tensor) -> tuple:
    """The tensor owning a view's memory, and the (primitive, attrs) steps from it to the view."""
    steps = []
    while view._base is not None:
        view, prim, attrs = view._base[:3]
        steps.append((prim, attrs))
    return view, tuple(reversed(steps))


def _stamp(view: Tensor) -> None:
    """The view's grad_fn is right for the current contents of its memory."""
    src, prim, attrs, _, tracked = view._base
    view._base = (src, prim, attrs, view._version[0], tracked)


def refresh_view(view: Tensor) -> None:
    """Give a view whose memory was written since its grad_fn was set a history taken anew from
    its base (and, while tracing, the base's current value)."""
    tracked = view._base[4]
    root, steps = view_origin(view)
    if tracked and (root.requires_grad or STATE.tracer is not None):
        prev = STATE.grad_enabled
        STATE.grad_enabled = True         # a view's history does not depend on the grad mode
        try:
            t = root
            for prim, attrs in steps:
                t = P.dispatch(prim, (t,), attrs)
        finally:
            STATE.grad_enabled = prev
        if root.requires_grad:
            set_history(view, t.grad_fn)
        if STATE.tracer is not None:
            view._trace = t._trace
    _stamp(view)


def refresh_if_stale(t: Tensor) -> None:
    """Refresh `t`'s history if it is a view whose memory was written since it was set."""
    view = t._base
    if view is not None and view[3] != t._version[0]:
        refresh_view(t)


def check_view_write(view: Tensor, op: str) -> None:
    """Refuse an in-place write through a view that PyTorch refuses (with grad mode on)."""
    tracked = view._base[4]
    root = view_origin(view)[0]
    if not (STATE.grad_enabled and root.requires_grad):
        return
    if root.grad_fn is None:
        raise op_error(op, "a view of a leaf Variable that requires grad is being used in an "
                       "in-place operation.")
    if any(getattr(p, "name", None) in _PART_VIEWS for p, _ in view_origin(view)[1]):
        raise op_error(op, "kiln cannot track an in-place write through .real, .imag, "
                       "view_as_real or view_as_complex of a tensor that requires grad (the "
                       "view's elements are parts of the base's): compute the new value out "
                       "of place instead, e.g. z = kiln.complex(z.real * 2, z.imag)")
    if not tracked:
        raise op_error(op, "A view was created in no_grad mode and is being modified inplace "
                       "with grad mode enabled. Given that this use case is ambiguous and "
                       "error-prone, it is forbidden. You can clarify your code by moving both "
                       "the view and the inplace either both inside the no_grad block (if you "
                       "don't want the inplace to be tracked) or both outside (if you want the "
                       "inplace to be tracked).")


# views whose elements are parts of their base's (a complex number's real or imaginary part)
_PART_VIEWS = ("real", "imag", "view_as_real", "view_as_complex")


def rebase_view(view: Tensor, result: Tensor | None, values: list | None = None) -> None:
    """`result` was just written through `view` (None: with grad mode off): rebuild the
    histories of the view and of the tensor owning its memory around the write.

    The base's node is PyTorch's CopySlices, whose next_functions are the base's old history
    and then those of the op that wrote, but the view: `values` where given (the edges of what
    was written, for writes that do not read the view), else the writing node's after its
    first."""
    if result is not None and result.requires_grad:
        root, steps = view_origin(view)
        history = history_of(result)
        node = prim_class(_COPY_SLICES)()
        node.prim = _COPY_SLICES
        node.inputs, node.versions = (None, None), (None, None)   # the rule reads no values
        node.attrs = {"outside": _outside_region(root, steps), "steps": steps}
        if internal_overlap(view._data):
            # written through an expand()ed view (a fill): PyTorch's backward refuses it
            node.attrs["overlapping"] = True
        node.out_data, node.out_dtype, node.out_device = root._data, root.dtype, root.device
        node.out_version = node.out_at = None
        node.edges = (edges_of((root,))[0], history)
        node.hooks = node.retained = node.out_trace = node.packed = None
        if values is None:
            values = [n for n, _ in history.next_functions[1:]]
        node.shown = [node.edges[0]] + values
        set_history(root, node)
        set_history(view, history)
    _stamp(view)


def _outside_region(root: Tensor, steps: tuple) -> Tensor:
    """A boolean tensor of root's shape: True where the view taken by `steps` does not reach."""
    if STATE.tracer is not None:
        # computed with traced ops: the backward reads it, and a tensor the trace did not make
        # would be lifted into the backward as an input the forward program does not have
        return _traced_outside_region(root, steps)
    xp = np if root.device is CPU else root.device.xp
    shape = root._data.shape
    positions = xp.arange(root._data.size).reshape(shape)
    for prim, attrs in steps:
        positions = prim.impl(xp, positions, **attrs)
    outside = xp.ones(root._data.size, dtype=bool)
    outside[positions.reshape(-1)] = False
    return Tensor._make(outside.reshape(shape), dt.bool_, root.device)


def _traced_outside_region(root: Tensor, steps: tuple) -> Tensor:
    shape, n = tuple(root._data.shape), root._data.size
    prev, STATE.grad_enabled = STATE.grad_enabled, False
    try:
        positions = P.reshape(P.arange(start=0, stop=n, step=1, dtype=dt.int64,
                                       device=root.device), shape=shape)
        for prim, attrs in steps:
            positions = P.dispatch(prim, (positions,), attrs)
        k = positions._data.size
        inside = P.reshape(positions, shape=(k,))
        outside = P.index_put(P.full(shape=(n,), value=True, dtype=dt.bool_, device=root.device),
                              inside, P.full(shape=(k,), value=False, dtype=dt.bool_,
                                             device=root.device), axis=0)
        return P.reshape(outside, shape=shape)
    finally:
        STATE.grad_enabled = prev


def _copy_slices_grad(g, out, base, value, outside, steps, overlapping=False):
    if overlapping:
        raise op_error("CopySlices", "unsupported operation: more than one element of the "
                       "written-to tensor refers to a single memory location. Please clone() "
                       "the tensor before performing the operation.")
    g_view = g
    for prim, attrs in steps:
        g_view = P.dispatch(prim, (g_view,), attrs)
    return P.where(outside, g, 0.0), g_view


_COPY_SLICES = Primitive("copy_slices", "movement", None, None, _copy_slices_grad, 2, reads=(),
                         doc="the base of a view written in place: the view's region comes "
                             "from the write, the rest from the base's previous value")


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
    """no_grad that also marks the tensors its ops make as inference tensors
    (`Tensor.is_inference()`, shared by their views) and shows in
    `is_inference_mode_enabled()`, as PyTorch's; `inference_mode(False)` turns both off."""

    def __init__(self, mode: bool = True):
        self.enabled = not mode

    def __enter__(self):
        self.prev_inference = STATE.inference
        STATE.inference = not self.enabled
        with _INFERENCE_LOCK:
            INFERENCE[0] += 1
        return super().__enter__()

    def __exit__(self, *exc):
        STATE.inference = self.prev_inference
        with _INFERENCE_LOCK:
            INFERENCE[0] -= 1
        return super().__exit__(*exc)

    def _args(self):
        return (not self.enabled,)


_INFERENCE_LOCK = threading.Lock()


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


def _leading_to(order: list[Node], inputs) -> tuple[list[Node], set[int]]:
    """The nodes of `order` that `inputs`' gradients pass through, and of those the ids of the
    ones to run: as PyTorch's engine, a backward with `inputs` captures a non-leaf input's
    gradient at its grad_fn and runs (and frees) no node beyond, so MAML's inner
    `autograd.grad` leaves the fast weights' own graph whole for the outer backward."""
    targets = {id(t.grad_fn if t.grad_fn is not None else t) for t in inputs}
    run: set[int] = set()
    for node in reversed(order):                    # producers first
        if any(e is not None and (id(e) in targets or id(e) in run) for e in node.edges):
            run.add(id(node))
    return [node for node in order if id(node) in run or id(node) in targets], run


def _accumulate(store: dict, key, tensor: Tensor, grad: Tensor) -> None:
    prev = store.get(key)
    store[key] = (tensor, grad if prev is None else _sum_grads(prev[1], grad))


def _sum_grads(a: Tensor, b: Tensor) -> Tensor:
    """Two gradients of one tensor added. Sparse ones (from `sparse=True` embedding lookups)
    are concatenated, uncoalesced, as PyTorch accumulates them; sparse and dense give dense."""
    if a.is_sparse and b.is_sparse:
        from kiln.tracer.sparse import concatenated
        return concatenated(a, b)
    return b + a if a.is_sparse else a + b     # dense + sparse (sparse + dense is refused)


def _check_versions(node: Node) -> None:
    # which of its inputs and output the gradient rule reads: facts of the primitive
    prim = node.prim
    if prim.output_of(node.inputs) == SAVED and node.out_version is not None and (
            node.out_version[0] != node.out_at):
        raise op_error(
            "backward", "one of the variables needed for gradient computation has been "
            f"modified by an inplace operation: [{node.out_dtype.name} "
            f"{list(node.out_data.shape)}], which is output 0 of {node.name()}, is at version "
            f"{node.out_version[0]}; expected version {node.out_at} instead. "
            "Hint: clone the tensor before modifying it in place.")
    reads = prim.reads_of(node.inputs)
    for i, (a, v) in enumerate(zip(node.inputs, node.versions)):
        if isinstance(a, Tensor) and a._version[0] != v and (reads is None or i in reads):
            raise op_error(
                "backward", "one of the variables needed for gradient computation has been "
                f"modified by an inplace operation: [{a.dtype.name} {list(a.shape)}], which is "
                f"an input of {node.name()}, is at version {a._version[0]}; expected version "
                f"{v} instead. "
                "Hint: clone the tensor before modifying it in place.")


def _moved_home(grad: Tensor, device) -> Tensor:
    """The gradient of a 0-d CPU tensor that met a cuda one, moved back to the CPU. Under a
    trace the copy stands for the same graph value: the compiled program computes it on its
    device and its replay copies it over."""
    if STATE.tracer is None:
        return grad.to(device)
    moved = Tensor._make(to_device(grad._data, device), grad.dtype, device)
    moved._trace = grad._trace
    return moved


def keep_saved_output(tensor: Tensor) -> None:
    """Before an in-place write into `tensor`: a node whose primitive's output is COPIED and is
    this memory (the tensor's own grad_fn, or its base's) takes a copy of the output first."""
    for t in (tensor, None if tensor._base is None else view_origin(tensor)[0]):
        node = None if t is None else t.grad_fn
        if (node is not None and node.out_version is t._version and node.inputs is not None
                and node.prim.output_of(node.inputs) == COPIED and node.out_data is not None):
            packed = getattr(node, "packed", None)
            if packed is not None and -1 in packed:
                # a saved_tensors_hooks pack took it, and what pack kept may share this memory
                value = unpack_tensor(packed.pop(-1), node.output(), None, node.name())
                node.out_data = value._data.copy()
            else:
                node.out_data = node.out_data.copy()
            node.out_version = None       # its output no longer shares the tensor's memory


def _owned(grad: Tensor, exclusive: bool = False, leaf: Tensor | None = None) -> Tensor:
    """A gradient safe to store in `.grad`: writeable memory that nothing else the user can
    reach shares. `exclusive`: nothing but the backward pass holds `grad` (`_held_once`), so
    its memory is taken as it is when no other array or tensor holds it either (PyTorch's
    AccumulateGrad steals such a gradient too); otherwise it is copied. `leaf`: the tensor
    whose `.grad` it becomes, whose strides it takes where that is dense (as PyTorch's
    AccumulateGrad lays out a transposed or channels_last weight's gradient)."""
    # (no local holds grad's array before the check: it counts the references to it)
    if WRAPPERS[0] and dispatches(grad):
        return _wrapper_call("detach.default", (grad,))    # as PyTorch's AccumulateGrad
    taken = exclusive and _COUNTS_HOLD and _memory_unshared(grad)
    if leaf is not None and type(leaf._data) is type(grad._data) and \
            not isinstance(grad._data, MetaArray) and leaf._data.shape == grad._data.shape:
        data = grad_array(leaf._data, grad._data, grad.device.xp, taken)
    else:
        data = grad._data if taken else grad._data.copy()
    owned = Tensor._make(data, grad.dtype, grad.device)
    owned._trace = grad._trace
    return owned


# Whether a gradient's memory is referenced by nothing but the gradient itself is told by
# reference counts, compared with those of a probe held the same way at the same moment (so the
# interpreter's own counting cancels out: it differs between Python versions, and within a
# process once something changes how frames hold their locals - PyTorch 2.13's TorchDynamo
# does after an error inside a compiled region, adding one to a count for each call level
# that holds the object from then on, so a probe is held through as many calls).

def _refs(x) -> int:
    return sys.getrefcount(x)


def _probe_refs() -> int:
    probe = object()
    return _refs(probe)


# Only where these counts were checked (tests/tracer/test_grad_ownership.py): CPython with its
# GIL, before 3.14, whose interpreter may borrow references to locals without counting them; a
# count that came out low would let `.grad` share memory the user holds, so elsewhere every
# gradient is copied, as before
_COUNTS_HOLD = (sys.implementation.name == "cpython" and sys.version_info < (3, 14)
                and getattr(sys, "_is_gil_enabled", lambda: True)())
_VIEW_REFS: dict = {}               # array type -> references a view of an array adds to it


def _view_refs(array) -> int:
    kind = type(array)
    refs = _VIEW_REFS.get(kind)
    if refs is None:
        base = array.reshape(-1)[:1].copy()     # a fresh array of the same kind, once
        before = _refs(base)
        held = [base.reshape(1)]                # a view of base, alive while counting
        refs = _VIEW_REFS[kind] = _refs(base) - before
        held.clear()
    return refs


def _held_once(g: Tensor) -> bool:
    """Whether the caller's one local is the only reference to `g`: its count as a probe held
    by one local and passed down through as many calls counts. (Each call level can add to a
    count: under TorchDynamo's frame hook, left installed after an error, each one does.)"""
    return _refs(g) == _held_once_probe()


def _held_once_probe() -> int:
    probe = object()
    return _passed_down(probe)


def _passed_down(x) -> int:
    return _refs(x)


def _memory_unshared(grad: Tensor) -> bool:
    """Whether `grad`'s memory is writeable, contiguous, and held by no array or tensor but
    `grad` and the chain of views it was taken through (each of which only it holds)."""
    data = grad._data
    if not (data.size and data.flags.c_contiguous and is_writeable(data)):
        return False
    root = getattr(data, "base", None)
    if root is None:
        return _refs(data) == _probe_refs() + 1    # grad._data, and this function's `data`
    if type(root) is not type(data) or root.base is not None or root.size != data.size:
        return False                  # memory owned by something else, or wider than grad
    view_refs = _view_refs(root)
    expected = view_refs              # `data` is a view of root
    t = grad
    while t._base is not None:        # the tensors grad was viewed from, each held only by
        t = t._base[0]                # its view's `_base` (and here by `t`)
        if _refs(t) != _probe_refs() + 1:
            return False
        if t._data is root:
            expected += 1
        elif getattr(t._data, "base", None) is root:
            expected += view_refs
        else:
            return False
    del t
    return _refs(root) == _probe_refs() + expected


def memory_private(data) -> bool:
    """Whether `data`, a NumPy view, is the only array that sees its memory: its base owns the
    memory and nothing but `data` holds that base (a conv's channels-last output, a view of its
    fresh product, which no tensor can reach). Where reference counts are not trusted, False."""
    root = getattr(data, "base", None)
    if not _COUNTS_HOLD or type(root) is not np.ndarray or type(data) is not np.ndarray or \
            root.base is not None:
        return False
    return _refs(root) == _probe_refs() + _view_refs(root)


# Hooks run once a leaf's `.grad` holds this backward's whole gradient (PyTorch's
# register_post_accumulate_grad_hook), keyed by id(tensor): Tensor has no slot for them.
_POST_ACCUMULATE: dict[int, tuple] = {}     # id -> (weakref to the tensor, hooks tuple)
_QUEUED: list = []                          # callables to run when the current backward ends


def grad_hooks_of(tensor: Tensor) -> tuple:
    """(register_hook's hooks, post-accumulate-grad hooks) of a leaf, as a value that changes
    when either changes (the compiler guards on it: a trace ran them into its backward)."""
    post = _POST_ACCUMULATE.get(id(tensor))
    node = AccumulateGrad.hooked(tensor) if _ACCUMULATE_HOOKS[0] else None
    return (tensor._hooks, None if post is None else post[1], node and node.hooks)


def register_post_accumulate_grad_hook(tensor: Tensor, hook) -> DroppingHandle:
    """Call `hook(tensor)` each backward, as soon as `tensor.grad` is complete (a leaf only)."""
    if tensor.grad_fn is not None:
        raise RuntimeError("post accumulate grad hooks cannot be registered on non-leaf tensors")
    key = id(tensor)
    entry = _POST_ACCUMULATE.get(key)
    if entry is None or entry[0]() is not tensor:
        # the table is bound now: at interpreter exit the module's globals may be gone (None)
        # before the tensor is collected
        ref = weakref.ref(tensor, lambda _r, key=key, table=_POST_ACCUMULATE:
                          table.pop(key, None))
        entry = (ref, ())
    _POST_ACCUMULATE[key] = (entry[0], entry[1] + (hook,))
    return DroppingHandle(functools.partial(_drop_post_accumulate_hook, key, hook))


def _drop_post_accumulate_hook(key: int, hook) -> None:
    entry = _POST_ACCUMULATE.get(key)
    if entry is not None:
        hooks = tuple(h for h in entry[1] if h is not hook)
        if hooks:
            _POST_ACCUMULATE[key] = (entry[0], hooks)
        else:
            del _POST_ACCUMULATE[key]


def drop_hook(owner, attr: str, hook) -> None:
    """Take `hook` out of the tuple of hooks at `owner.attr` (a tensor's or a node's)."""
    hooks = tuple(h for h in getattr(owner, attr) or () if h is not hook)
    setattr(owner, attr, hooks or None)


def queue_callback(fn) -> None:
    """Run `fn()` once the backward pass now running has written every `.grad`."""
    _QUEUED.append(fn)


def _store_leaf_grad(tensor: Tensor, g: Tensor, create_graph: bool,
                     exclusive: bool = False) -> Tensor | None:
    """Run the leaf's tensor hooks and its AccumulateGrad's pre-hooks on `g` and accumulate it
    into `tensor.grad`; returns what was added (None: a pre-hook dropped it). `exclusive`:
    nothing but the backward pass holds `g`, whose memory `.grad` may then take."""
    if tensor._hooks:
        exclusive = False           # a hook may keep the gradient it is given, or returns
        for hook in tensor._hooks:
            replaced = hook(g)
            g = replaced if replaced is not None else g
    node = AccumulateGrad.hooked(tensor) if _ACCUMULATE_HOOKS[0] else None
    if node is not None:
        exclusive = False
        for hook in node.hooks:
            if type(hook) is _PreHook and g is not None:
                g = hook.run(g)
        if g is None:
            return None
    if g.dtype is not tensor.dtype:
        g = g.to(tensor.dtype)
    if g.is_sparse or (tensor.grad is not None and tensor.grad.is_sparse):
        # a sparse gradient is made fresh by its lookup's backward: stored as it is
        tensor.grad = g if tensor.grad is None else _sum_grads(tensor.grad, g)
    elif tensor.grad is None:
        tensor.grad = g if create_graph else _owned(g, exclusive, tensor)
    elif create_graph or STATE.tracer is not None:
        tensor.grad = tensor.grad + g      # traced: a new value, written back by the tracer
    elif WRAPPERS[0] and (dispatches(tensor.grad) or dispatches(g)):
        tensor.grad.add_(g)                # aten.add_, computed by the wrapper's class
    elif isinstance(g._data, MetaArray):
        pass                               # meta + meta: the same shape, and no values
    else:
        tensor.grad._data += g._data
    return g


def _post_accumulate(tensor: Tensor, g: Tensor | None) -> None:
    """The hooks that run once `g` was added into the leaf's `.grad`: its post-accumulate-grad
    hooks, then its AccumulateGrad's post hooks (`fn((), (g,))`), in PyTorch's order."""
    entry = _POST_ACCUMULATE.get(id(tensor))
    if entry is not None and entry[0]() is tensor:
        for hook in entry[1]:
            hook(tensor)
    node = AccumulateGrad.hooked(tensor) if _ACCUMULATE_HOOKS[0] else None
    if node is not None and g is not None:
        for hook in node.hooks:
            if type(hook) is _PostHook:
                hook.run((), (g,))


def _leaf_counts(order: list[Node]) -> dict[int, int]:
    """How many nodes send gradient to each leaf that has post-accumulate hooks."""
    counts: dict[int, int] = {}
    for node in order:
        for e in node.edges:
            if isinstance(e, Tensor) and id(e) in _POST_ACCUMULATE:
                counts[id(e)] = counts.get(id(e), 0) + 1
    return counts


def run_backward(outputs, grad_outputs, retain_graph=False, create_graph=False, inputs=None):
    """Propagate gradients from `outputs`.

    With `inputs=None` gradients accumulate into the `.grad` of every leaf reached
    (Tensor.backward).
    Otherwise the gradients of `inputs` are returned and no `.grad` changes (autograd.grad).
    """
    roots, leaf_seeds = [], {}
    pending: dict[int, Tensor] = {}
    for t in list(outputs) + list(inputs or ()):
        refresh_if_stale(t)
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
    plain = not create_graph and not TRACING[0]     # gradients are data: see _add_slice_grad
    filled: dict = {}       # id(node of several outputs) -> its outputs' gradients so far
    buffers: dict[int, Tensor] = {}
    try:
        order = _topological(roots)
        to_run = None
        if inputs is not None:
            order, to_run = _leading_to(order, inputs)
        # leaves with post-accumulate hooks get their .grad once their last producer has run,
        # so a hook (DDP's bucketed all-reduce) overlaps the rest of backward
        early = _leaf_counts(order) if inputs is None and _POST_ACCUMULATE else None
        for node in order:
            g = pending.pop(id(node), None)
            if g is None:
                if filled:              # a node of several outputs gets them here, not pending
                    grads = filled.pop(id(node), None)
                    if grads is not None:
                        _run_several(node, grads, pending, leaf_grads, early, create_graph,
                                     retain_graph)
                continue
            post = None
            if node.hooks:
                g, post = _pre_hooks(node, g, create_graph)
                if g is None:           # a pre-hook returned (None,): nothing flows on
                    if not retain_graph:
                        node.inputs = node.out_data = node.packed = None
                    continue
            elif node.retained is not None:
                _retain(node, g, create_graph)
            if id(node) in wanted:
                captured[id(node)] = g
                if id(node) not in to_run:
                    continue
            _check_versions(node)
            prim = node.prim
            if prim is _SLICE and plain and not isinstance(node.edges[0], Tensor) \
                    and node.edges[0] is not None and not type(g)._dispatches:
                _add_slice_grad(pending, buffers, node, g)
                if not retain_graph:
                    node.inputs = node.out_data = None
                continue
            if prim is _OUTPUT_SLOT:
                _fill_slot(node, g, filled)
                if not retain_graph:
                    node.inputs = node.out_data = None
                continue
            # under a trace, the rule's nodes are `grad of %7 mul`, at %7's line
            packed = getattr(node, "packed", None)
            with _grad_scope(node) if TRACING[0] else _NO_SCOPE:
                if packed is None:
                    saved, out = node.inputs, node.output()
                else:
                    saved, out = _unpack_saved(node)
                grads = _rule(node, g, out, saved, create_graph)
                if ANOMALY[0] and ANOMALY[1] and not TRACING[0]:
                    _check_anomaly(node, grads)
                edges = node.edges
                if post:
                    if _composite_edges(node) is None:
                        grads = _post_hooks(node, post, (g,), grads)
                    else:           # its inner nodes ran: the hooks' gradients go on
                        edges, grads = zip(*_composite_backward(
                            node, post, g, grads, saved, order, create_graph, retain_graph))
                        saved = (None,) * len(edges)
                for edge, ga, a in zip(edges, grads, saved):
                    if ga is None or edge is None:
                        continue
                    if isinstance(a, Tensor) and ga.device is not a.device:
                        ga = _moved_home(ga, a.device)      # a 0-d CPU input of a cuda op
                    if isinstance(edge, Tensor):
                        _accumulate(leaf_grads, id(edge), edge, ga)
                    else:
                        key = id(edge)
                        pending[key] = ga if key not in pending else pending[key] + ga
            if early:
                for edge in node.edges:
                    if isinstance(edge, Tensor) and id(edge) in early:
                        early[id(edge)] -= 1
                        if early[id(edge)] == 0 and id(edge) in leaf_grads:
                            _post_accumulate(edge, _store_leaf_grad(
                                edge, leaf_grads.pop(id(edge))[1], create_graph))
            if not retain_graph:
                node.inputs = None
                node.out_data = None
                if packed is not None:
                    node.packed = None
    except BaseException:
        _QUEUED.clear()
        raise
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

    g = grads = ga = None      # this frame's last references to gradients, besides `leaf_grads`
    try:
        for key in list(leaf_grads):
            tensor, g = leaf_grads.pop(key)
            exclusive = not create_graph and STATE.tracer is None and _held_once(g)
            g = _store_leaf_grad(tensor, g, create_graph, exclusive)
            if _POST_ACCUMULATE or _ACCUMULATE_HOOKS[0]:
                _post_accumulate(tensor, g)
        while _QUEUED:
            _QUEUED.pop(0)()
    finally:
        _QUEUED.clear()
    return None




_SLICE = PRIMITIVES["slice"]
_HALF = dt.HALF


def _widens(prim, g: Tensor) -> bool:
    """Whether the gradient rule of a float16 or bfloat16 node runs in float32
    (`_widened_rule`): that of every registered primitive but the movement ops, whose gradients
    move values without rounding (custom Functions' and hooks' backward see the dtypes they
    were given), on the CPU (kiln's GPU kernels take float16 as it is)."""
    return PRIMITIVES.get(getattr(prim, "name", None)) is prim and prim.kind != "movement" \
        and (g.dtype is dt.bfloat16 or g.device.type == "cpu")


def _widened_rule(node, g: Tensor, out, saved: tuple) -> tuple:
    """A first-order gradient rule of a primitive with a float16 (bfloat16) output, computed as
    PyTorch's CPU backward kernels compute it: on float32 copies of the gradient, the output and
    the inputs of that dtype, each input's gradient rounded to it once (tanh's g * (1 - y * y)
    rounds once, not after each of its three ops)."""
    half = g.dtype

    def wide(t):
        if isinstance(t, Tensor) and t.dtype is half:
            w = P.cast(t, dtype=dt.float32)         # grad mode is off: records no history
            w._requires_grad = t.requires_grad       # rules skip inputs that want no gradient
            return w
        return t
    grads = node.prim.grad(wide(g), wide(out), *[wide(a) for a in saved], **node.attrs)
    return tuple(P.cast(ga, dtype=half) if ga is not None and ga.dtype is dt.float32
                 and isinstance(a, Tensor) and a.dtype is half else ga
                 for ga, a in zip(grads, saved))


def _conjugates(prim) -> bool:
    """Whether a complex gradient reaches this node's rule through `_conjugated_rule`: every
    registered primitive's but the movement ops' (linear maps with real coefficients, and the
    views between real and complex, whose rules are written for complex gradients) and the
    complex primitives' (kiln.ir.ops_complex) and those marked `complex_grad` (their rules are
    complex-aware)."""
    return PRIMITIVES.get(getattr(prim, "name", None)) is prim and \
        prim.kind not in ("movement", "complex") and not prim.complex_grad


def _conjugated_rule(node, g: Tensor, out, saved: tuple) -> tuple:
    """A real-number gradient rule applied to a complex gradient, PyTorch's way.

    The rules are written as g * f'(x) (or g @ B^T, ...): linear in g, with the derivative of
    a holomorphic op. PyTorch's gradient of a complex input is g * conj(f'(x)), which is
    conj(rule(conj(g))); a real input of an op with a complex result (real * complex) gets the
    real part of its gradient."""
    grads = node.prim.grad(P.conj(g), out, *saved, **node.attrs)
    return tuple(None if ga is None else
                 (P.conj(ga) if a.dtype.is_complex else P.real(ga)) if ga.dtype.is_complex and
                 isinstance(a, Tensor) else ga
                 for ga, a in zip(grads, saved))


def _add_slice_grad(pending: dict, buffers: dict, node: Node, g: Tensor) -> None:
    """The gradient of a slice, added into its input's pending gradient in place.

    A slice's rule pads its gradient to the input's size, so the T slices of `unbind`, `chunk`
    or an RNN's time steps would cost T full-size pads and sums. Eagerly (no graph to build),
    the input's gradient is instead one zeros buffer that each slice's gradient is added into
    where it came from: the same sums in the same order, so the same values.
    """
    key = id(node.edges[0])
    region = tuple(map(slice, node.attrs["starts"], node.attrs["stops"], node.attrs["steps"]))
    acc = pending.get(key)
    if acc is None or buffers.get(key) is not acc:
        data = g.device.xp.zeros(node.inputs[0].shape, dtype=g._data.dtype)
        if acc is not None:
            data += acc._data
        acc = pending[key] = buffers[key] = Tensor._make(data, g.dtype, g.device)
    into = acc._data[region]        # a view: `data[region] += g` would also copy it back
    into += g._data


def _grad_scope(node: Node):
    """The provenance scope of `node`'s gradient rule while a trace records it: `grad of %7
    mul`, inside `grad of gelu` when %7 was traced inside gelu, located at the line that traced
    %7 (not at the `backward()` call); else nothing."""
    tracer = STATE.tracer
    v = node.out_trace
    if tracer is None or v is None:
        return _NO_SCOPE
    forward = tracer.node_of.get(id(v))
    if forward is None:             # a node from before this trace (or its segment)
        return _NO_SCOPE
    return tracer.scope(tuple(f"grad of {s}" for s in forward.scope) +
                        (f"grad of {v.ref} {node.prim.name}",), forward.loc)


_NO_SCOPE = contextlib.nullcontext()


def _wrapper_alias(t: Tensor) -> Tensor:
    from kiln.tracer.dispatch_subclass import alias     # (it imports this module)
    return alias(t)


def _wrapper_call(key: str, args: tuple):
    from kiln.tracer.dispatch_subclass import call
    return call(key, args)


def _seed(out: Tensor, g) -> Tensor:
    if g is None:
        if out.numel() != 1:
            raise op_error("backward", f"grad can be implicitly created only for scalar "
                           f"outputs; the output has shape {list(out.shape)}: pass `gradient=`")
        if out.dtype.is_complex:
            raise op_error("backward", "grad can be implicitly created only for real scalar "
                           f"outputs, got {out.dtype.name}: take a real loss (.abs(), .real) "
                           "or pass `gradient=`")
        if WRAPPERS[0] and dispatches(out):      # PyTorch's seed: aten.ones_like
            return _wrapper_call("ones_like.default", (out,))
        return out.new_ones(out.shape)
    if not isinstance(g, Tensor):
        g = out.new_tensor(g)
    if tuple(g.shape) != tuple(out.shape):
        raise op_error("backward", f"Mismatch in shape: grad_output[0] has a shape of "
                       f"{list(g.shape)} and output[0] has a shape of {list(out.shape)}.")
    return g


# compiled autograd (kiln._dynamo.compiled_autograd.enable): while set, an eager
# `tensor.backward(...)` is handed to it as (tensor, seed, retain_graph, create_graph, inputs)
COMPILED_BACKWARD: list = [None]


def backward(tensor: Tensor, gradient=None, retain_graph=None, create_graph=False,
             inputs=None) -> None:
    refresh_if_stale(tensor)
    if not tensor.requires_grad:
        raise op_error("backward", "element 0 of tensors does not require grad and does not "
                       "have a grad_fn")
    retain = create_graph if retain_graph is None else retain_graph
    seed = _seed(tensor, gradient)
    if COMPILED_BACKWARD[0] is not None and STATE.tracer is None:
        COMPILED_BACKWARD[0](tensor, seed, retain, create_graph, inputs)
    else:
        plain_backward(tensor, seed, retain, create_graph, inputs)


def plain_backward(tensor: Tensor, seed: Tensor, retain: bool, create_graph: bool,
                   inputs=None) -> None:
    """`tensor.backward(seed)` on this engine, node by node."""
    if inputs is not None:
        inputs = [inputs] if isinstance(inputs, Tensor) else list(inputs)
        grads = run_backward([tensor], [seed], retain, create_graph, inputs)
        for t, g in zip(inputs, grads):
            if g is not None:
                t.grad = g if t.grad is None else t.grad + g
        return
    run_backward([tensor], [seed], retain, create_graph)


def grad(outputs, inputs, grad_outputs=None, retain_graph=None, create_graph=False,
         only_inputs=True, allow_unused=None, is_grads_batched=False, materialize_grads=False):
    """Gradients of `outputs` with respect to `inputs` (PyTorch's torch.autograd.grad).
    `only_inputs` is accepted as PyTorch accepts it: deprecated, and ignored."""
    if is_grads_batched:
        raise NotImplementedError("autograd.grad: is_grads_batched=True is not supported by "
                                  "kiln; call grad once per row of grad_outputs, or use "
                                  "kiln.func.vmap over kiln.func.vjp")
    if not only_inputs:
        warnings.warn("only_inputs argument is deprecated and is ignored now "
                      "(defaults to True). To accumulate gradient for other parts of the "
                      "graph, please use torch.autograd.backward.", stacklevel=2)
    single = isinstance(inputs, Tensor)
    outputs = [outputs] if isinstance(outputs, Tensor) else list(outputs)
    inputs = [inputs] if single else list(inputs)
    if not inputs:
        raise op_error("autograd.grad", "`inputs` argument to `grad()` cannot be empty.")
    if grad_outputs is None:
        grad_outputs = [None] * len(outputs)
    elif isinstance(grad_outputs, Tensor):
        grad_outputs = [grad_outputs]
    for t in outputs + inputs:
        refresh_if_stale(t)
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
              raise_exception: bool = True, check_forward_ad: bool = False,
              check_backward_ad: bool = True, check_undefined_grad: bool = True,
              check_batched_grad: bool = False, check_batched_forward_grad: bool = False,
              nondet_tol: float = 0.0, fast_mode: bool = False, masked=None,
              check_grad_dtypes: bool = False) -> bool:
    """Compare autograd's Jacobian of `func` with central finite differences (use float64):
    reverse mode's (`check_backward_ad`) and forward mode's, column by column through dual
    tensors (`check_forward_ad`); with `check_grad_dtypes`, each gradient's dtype must be its
    input's. The undefined-grad, batched and fast-mode checks of PyTorch's signature are
    accepted and not run: kiln compares the full Jacobians."""
    inputs = (inputs,) if isinstance(inputs, Tensor) else tuple(inputs)
    diff = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def flat_outputs(args):
        out = func(*args)
        outs = (out,) if isinstance(out, Tensor) else tuple(out)
        return [o for o in outs if isinstance(o, Tensor)]

    def mismatch(kind: str, k: int, i: int, numeric, analytic) -> bool:
        if raise_exception:
            raise GradcheckError(
                f"Jacobian mismatch for output {k} with respect to input {i} ({kind} mode),\n"
                f"numerical:{numeric}\nanalytical:{analytic}")
        return False

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
            if check_backward_ad:
                analytic = np.zeros((x.numel(), n_out))
                if out.requires_grad:
                    for m in range(n_out):
                        seed = np.zeros(n_out)
                        seed[m] = 1.0
                        g = grad([out], [x], [out.new_tensor(seed.reshape(out.shape))],
                                 retain_graph=True, allow_unused=True)[0]
                        if g is not None:
                            if check_grad_dtypes and g.dtype != x.dtype:
                                if raise_exception:
                                    raise GradcheckError(
                                        f"Gradient has dtype mismatch: input {i} is {x.dtype},"
                                        f" its gradient {g.dtype}")
                                return False
                            analytic[:, m] = g._data.reshape(-1)
                if not np.allclose(analytic, numeric, atol=atol, rtol=rtol):
                    return mismatch("backward", k, i, numeric, analytic)
            if check_forward_ad:
                forward = _forward_jacobian(flat_outputs, inputs, i, k, n_out)
                if not np.allclose(forward, numeric, atol=atol, rtol=rtol):
                    return mismatch("forward", k, i, numeric, forward)
    return True


def _forward_jacobian(flat_outputs, inputs: tuple, i: int, k: int, n_out: int) -> np.ndarray:
    """Output k's Jacobian with respect to input i, one row per input element, each the
    tangent of the output for a one-hot tangent of the input (forward-mode AD)."""
    from kiln.tracer import forward_ad
    x = inputs[i]
    rows = np.zeros((x.numel(), n_out))
    for j in range(x.numel()):
        onehot = np.zeros(x.numel(), dtype=x._data.dtype)
        onehot[j] = 1
        forward_ad.enter_dual_level()
        try:
            dual = forward_ad.make_dual(x, x.new_tensor(onehot.reshape(x.shape)))
            args = inputs[:i] + (dual,) + inputs[i + 1:]
            tangent = forward_ad.tangent_of(flat_outputs(args)[k])
        finally:
            forward_ad.exit_dual_level()
        if tangent is not None:
            rows[j] = tangent._data.astype(np.float64).reshape(-1)
    return rows


__all__ = ["Node", "queue_callback", "register_post_accumulate_grad_hook", "no_grad", "enable_grad", "set_grad_enabled", "inference_mode",
           "is_grad_enabled", "backward", "grad", "gradcheck", "GradcheckError"]
