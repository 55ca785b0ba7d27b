"""Custom autograd functions: `Function` subclasses with static forward/backward and `.apply`.

A custom Function's forward runs under no_grad on the caller's tensors; one application
gets one autograd node, whose gradient rule calls the user's `backward` once, as PyTorch's.
With several outputs each output's grad_fn is an `autograd.OutputSlot` of that node (named
`<Name>Backward` too): the engine calls `backward` once every output's gradient is in, with
zeros (None with `ctx.set_materialize_grads(False)`) for the outputs that got none or are not
differentiable, and None for non-tensor outputs. Unlike PyTorch's, the outputs' grad_fn are
distinct objects (`a.grad_fn is b.grad_fn` is False): kiln's edges name a node, not a (node,
output number) pair. A backward without retain_graph frees what ctx saved, as PyTorch does.

Under saved_tensors_hooks what `ctx.save_for_backward` saved is packed once the outputs have
their nodes and unpacked on each `ctx.saved_tensors`. In a forward AD dual level, a Function
with a `jvp` staticmethod has it called right after forward; one without has the tangents of
its outputs derived from its backward (kiln/tracer/forward_ad.py).

Under `@kiln.compile` a custom Function is traced through: its forward's ops are recorded as
any others (in a provenance scope named after the class), and deriving the backward graph calls
its `backward` on traced tensors, recording its ops too (scope `backward of <class>`). What a
trace cannot hold there (`.item()`, printing, a data-dependent branch) is a graph break naming
the backward's line, as it would be in the forward; so are `mark_dirty` (an input written in
place and returned), a sparse gradient or output, and kiln's own Functions that give an
`_eager_only` reason.
"""

from __future__ import annotations

import contextlib
import functools
import warnings

from kiln.ir.ops import Primitive
from kiln.tracer import autograd, forward_ad
from kiln.tracer.creation import zeros
from kiln.tracer.errors import op_error
from kiln.tracer.tensor import STATE, Tensor

# the provenance scope of a custom Function's backward in a trace (`backward of Exp`)
BACKWARD_OF = "backward of "


class FunctionCtx:
    """The `ctx` a custom Function's forward and backward share."""

    def __init__(self, args: tuple):
        self.needs_input_grad = tuple(isinstance(a, Tensor) and a.requires_grad for a in args)
        self._saved: tuple = ()
        self._packed: tuple | None = None     # (packed, stand-in, edge) per saved tensor
        self._non_differentiable: set[int] = set()
        self._dirty: set[int] = set()
        self.materialize_grads = True
        self._saved_forward: tuple | None = None   # save_for_forward's, read by jvp
        self._in_jvp = False
        self._freed = False     # a backward without retain_graph let go of what was saved
        self._versions: tuple | None = None    # each saved tensor's version once forward ended

    def save_for_forward(self, *tensors) -> None:
        """Tensors for `jvp`, which reads them as `ctx.saved_tensors` (backward reads the
        ones given to save_for_backward), as in PyTorch."""
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_forward can only save tensors (or None), got "
                                f"{type(t).__name__}; store other values as ctx attributes")
        self._saved_forward = tensors

    def save_for_backward(self, *tensors) -> None:
        for t in tensors:
            if t is not None and not isinstance(t, Tensor):
                raise TypeError(f"save_for_backward can only save tensors (or None), got "
                                f"{type(t).__name__}; store other values as ctx attributes")
        self._saved = tensors

    @property
    def saved_tensors(self) -> tuple:
        if self._in_jvp and self._saved_forward is not None:
            return self._saved_forward
        if self._freed:
            raise RuntimeError(autograd._FREED)
        if self._packed is None:
            for i, (t, version) in enumerate(zip(self._saved, self._versions or ())):
                if t is not None and t._version[0] != version:
                    # PyTorch's check of a saved variable, when backward unpacks it
                    raise RuntimeError(
                        "one of the variables needed for gradient computation has been "
                        f"modified by an inplace operation: [{t.dtype.name} {list(t.shape)}], "
                        f"saved tensor {i} of {self._fn_name}, is at version {t._version[0]}; "
                        f"expected version {version} instead. Hint: clone the tensor before "
                        "modifying it in place.")
            return self._saved
        # saved under saved_tensors_hooks: unpacked on each access, as in PyTorch
        where = f"{self._fn_name}.saved_tensors"
        return tuple(None if p is None else
                     autograd.unpack_tensor(p[0], p[1], p[2], where) for p in self._packed)

    def _pack_saved(self, fn_name: str) -> None:
        """Hand the saved tensors to the active pack hook (the Function got a node)."""
        self._fn_name = fn_name
        self._packed = tuple(None if t is None else
                             (autograd.pack_tensor(t), autograd.stand_in(t),
                              autograd.edges_of((t,))[0]) for t in self._saved)
        self._saved = ()

    def mark_non_differentiable(self, *tensors) -> None:
        self._non_differentiable.update(id(t) for t in tensors)

    def mark_dirty(self, *tensors) -> None:
        self._dirty.update(id(t) for t in tensors)

    def set_materialize_grads(self, value: bool) -> None:
        self.materialize_grads = bool(value)


class _FunctionNode(autograd.Node):
    """The node of one application of a custom Function: the grad_fn of its output, or with
    several outputs the node their OutputSlots lead to. Each Function has its subclass of this,
    `<Name>Backward` (its `_backward_cls`, as in PyTorch), and one of OutputSlot of that name
    (`_slot_cls`)."""

    hooks_see_unused_grads = True

    def __init__(self, fn_cls, ctx, inputs, index, outputs, out):
        # index: the output whose grad_fn this is; None: the node of several outputs, whose
        # rule gets the list of their gradients (autograd.OutputSlot)
        self.ctx, self.index, self.fn_cls = ctx, index, fn_cls
        self.out_shapes = [(tuple(o.shape), o.dtype, o.device) if isinstance(o, Tensor) else None
                           for o in outputs]
        self.num_outputs = len(outputs)
        self.prim = Primitive(f"{fn_cls.__name__}", "custom", None, None, self._rule,
                              len(inputs))
        self.inputs, self.attrs = inputs, {}
        self.out_data, self.out_dtype, self.out_device = out._data, out.dtype, out.device
        self.versions = tuple(a._version[0] for a in inputs)
        self.hooks = self.retained = self.out_trace = None
        self.out_version = self.out_at = None   # the user's backward owns what it saved
        self.edges = autograd.edges_of(inputs)

    # the engine frees a node by setting its inputs to None: then ctx lets go of what it saved
    @property
    def inputs(self):
        return self._inputs

    @inputs.setter
    def inputs(self, value) -> None:
        self._inputs = value
        if value is None:
            self.ctx._saved, self.ctx._packed, self.ctx._freed = (), None, True

    def name(self) -> str:
        return f"{self.fn_cls.__name__}Backward"

    def __repr__(self) -> str:
        return f"<{self.name()} object at {hex(id(self))}>"

    def _rule(self, g, out, *inputs):
        tracer = STATE.tracer
        if tracer is None:
            return self._backward(g)
        with tracer.scope(BACKWARD_OF + self.fn_cls.__name__):
            return self._backward(g)

    def _backward(self, g):
        """The inputs' gradients from one call of the user's backward, given the gradient of
        output `index` (g) or, for the node of several outputs, the list of all of them."""
        given = g if self.index is None else \
            [g if i == self.index else None for i in range(len(self.out_shapes))]
        grads_out = []
        for gi, spec in zip(given, self.out_shapes):
            if gi is None and spec is not None and self.ctx.materialize_grads:
                gi = zeros(spec[0], dtype=spec[1], device=spec[2])
            grads_out.append(None if spec is None else gi)
        result = self.fn_cls.backward(self.ctx, *grads_out)
        if not isinstance(result, tuple):
            result = (result,)
        n_args = len(self.ctx.needs_input_grad)
        if len(result) > n_args and all(r is None for r in result[n_args:]):
            result = result[:n_args]        # extra Nones are allowed, as in PyTorch
        if len(result) != n_args:
            raise op_error(self.name(), f"function backward returned an incorrect number of "
                           f"gradients (expected {n_args}, got {len(result)})")
        grads = []
        for arg_index in self.tensor_positions:
            ga = result[arg_index]
            x = self.inputs[len(grads)]
            if ga is not None:
                if not isinstance(ga, Tensor):
                    raise TypeError(f"{self.name()}: backward returned a {type(ga).__name__} "
                                    f"for input {arg_index}; expected a Tensor or None")
                if tuple(ga.shape) != tuple(x.shape):
                    try:
                        ga = ga.sum_to_size(tuple(x.shape))
                    except Exception:
                        raise op_error(self.name(), f"returned an invalid gradient at index "
                                       f"{arg_index} - got {list(ga.shape)} but expected shape "
                                       f"compatible with {list(x.shape)}") from None
                if STATE.tracer is not None and ga.layout.name != "strided":
                    # a sparse gradient: the backward graph's are dense
                    STATE.tracer.graph_break(f"{self.name()} returned a {ga.layout.name} "
                                             f"gradient for input {arg_index}, which compiled "
                                             "code would make dense")
            grads.append(ga)
        return tuple(grads)


class FunctionMeta(type):
    """Gives each Function its node class, `_backward_cls`, named `<Name>Backward`."""

    def __init__(cls, name, bases, namespace, **kwargs):
        super().__init__(name, bases, namespace, **kwargs)
        cls._backward_cls = type(f"{name}Backward", (_FunctionNode,),
                                 {"__module__": cls.__module__})
        cls._slot_cls = type(f"{name}Backward", (autograd.OutputSlot,),
                             {"__slots__": (), "__module__": cls.__module__})


class Function(metaclass=FunctionMeta):
    """Base class of custom autograd operations (torch.autograd.Function).

        class Exp(Function):
            @staticmethod
            def forward(ctx, x):
                y = x.exp(); ctx.save_for_backward(y); return y
            @staticmethod
            def backward(ctx, g):
                y, = ctx.saved_tensors; return g * y
        Exp.apply(x)
    """

    # kiln's own Functions that a trace must not enter say why here (a graph break naming it)
    _eager_only: str = ""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError("a custom Function must define a static forward(ctx, ...)")

    @staticmethod
    def backward(ctx, *grad_outputs):
        raise NotImplementedError("a custom Function must define a static backward(ctx, ...) "
                                  "to be differentiated")

    @staticmethod
    def setup_context(ctx, inputs, output):
        return None

    @staticmethod
    def jvp(ctx, *grad_inputs):
        """The outputs' tangents from the inputs' (forward-mode AD). Optional in kiln: without
        it, forward AD derives the tangents from `backward` (which must then be
        differentiable); with it, forward AD calls it right after `forward`, as PyTorch does."""
        raise NotImplementedError("You must implement the jvp function for custom "
                                  "autograd.Function to use it with forward mode AD.")

    @classmethod
    def apply(cls, *args, **kwargs):
        ctx = FunctionCtx(args)
        tracer = STATE.tracer
        if tracer is not None and cls._eager_only:
            tracer.graph_break(f"{cls.__name__} {cls._eager_only}")
            tracer = None
        if tracer is not None:
            tracer.custom_function(cls)
        with autograd.no_grad(), (tracer.scope(cls.__name__) if tracer is not None
                                  else contextlib.nullcontext()):
            if cls.setup_context is not Function.setup_context:
                output = cls.forward(*args, **kwargs)
                cls.setup_context(ctx, args, output)
            else:
                output = cls.forward(ctx, *args, **kwargs)
        if STATE.tracer is not None:
            if ctx._dirty:
                STATE.tracer.graph_break(f"a custom autograd.Function ({cls.__name__}) marks "
                                         "an input dirty (written in place and returned), "
                                         "which kiln.compile does not trace")
            else:
                kind = _untraced_output(output if isinstance(output, tuple) else (output,))
                if kind is not None:
                    STATE.tracer.graph_break(f"a custom autograd.Function ({cls.__name__}) "
                                             f"returns a {kind} tensor, which kiln.compile "
                                             "does not trace")
        single = not isinstance(output, tuple)
        outputs = (output,) if single else output
        positions = [i for i, a in enumerate(args) if isinstance(a, Tensor)]
        inputs = tuple(args[i] for i in positions)
        tracked = STATE.grad_enabled and any(a.requires_grad for a in inputs)
        owner = None        # with several outputs: the one node their slots lead to
        if tracked and len(outputs) > 1:
            first = next((o for o in outputs if isinstance(o, Tensor)), None)
            if first is not None:
                owner = cls._backward_cls(cls, ctx, inputs, None, outputs, first)
                owner.tensor_positions = positions
                owner.out_data = None       # it is no one output's grad_fn
        results = []
        for i, o in enumerate(outputs):
            if not isinstance(o, Tensor):
                results.append(o)
                continue
            is_input = any(o is a for a in inputs)
            if is_input and id(o) not in ctx._dirty:
                o = o.view_as(o) if hasattr(o, "view_as") else o   # a new tensor, like torch
                with autograd.no_grad():
                    o = o.detach()
            elif not is_input:
                o = o.detach() if o.requires_grad else o
            if tracked and id(outputs[i]) not in ctx._non_differentiable \
                    and (o.dtype.is_floating_point or o.dtype.is_complex):
                if owner is not None:
                    node = autograd.output_slot(cls._slot_cls, owner, i, o)
                else:
                    node = cls._backward_cls(cls, ctx, inputs, i, outputs, o)
                    node.tensor_positions = positions
                o._grad_fn, o._requires_grad = node, True
            results.append(o)
        if tracked and ctx._saved:
            # (as PyTorch's saved variables: the versions once forward returned, which a write
            # before backward moves)
            ctx._fn_name = f"{cls.__name__}Backward"
            ctx._versions = tuple(None if t is None else t._version[0] for t in ctx._saved)
        if tracked and ctx._saved and autograd.saved_hooks_active():
            # after the outputs got their nodes: a saved output keeps its link to its node
            ctx._pack_saved(cls.__name__)
        if tracked and forward_ad.LEVEL.index is not None and cls.jvp is not Function.jvp:
            _call_jvp(cls, ctx, args, results)
        return results[0] if single else tuple(results)


def _untraced_output(outputs: tuple) -> str | None:
    """What no trace can hold among a Function's outputs (a sparse layout, a subclass with its
    own __torch_function__ or __torch_dispatch__: a DTensor), or None."""
    from kiln.tracer import dispatch_subclass, torch_function
    for o in outputs:
        if isinstance(o, Tensor) and type(o) is not Tensor:
            if o.layout.name != "strided":
                return o.layout.name
            why = torch_function.untraceable((o,), {}) or dispatch_subclass.untraceable((o,), {})
            if why is not None:
                return f"{type(o).__name__} ({why})"
    return None


def _call_jvp(cls, ctx, args: tuple, results: list) -> None:
    """Give the outputs of a custom Function the tangents its `jvp` computes from the inputs'
    (zeros for a floating-point input without one, None for a non-tensor argument)."""
    tangents = [forward_ad.tangent_of(a) if isinstance(a, Tensor) else None for a in args]
    if all(t is None for t in tangents):
        return
    tangents = [zeros(tuple(a.shape), dtype=a.dtype, device=a.device)
                if t is None and isinstance(a, Tensor) and a.dtype.is_floating_point else t
                for a, t in zip(args, tangents)]
    with autograd.no_grad():
        ctx._in_jvp = True
        try:
            out = cls.jvp(ctx, *tangents)
        finally:
            ctx._in_jvp = False
    out = out if isinstance(out, tuple) else (out,)
    if len(out) != len(results):
        raise RuntimeError(f"{cls.__name__}.jvp returned {len(out)} tangents for "
                           f"{len(results)} outputs")
    owner, found = None, [None] * len(results)
    for i, (o, t) in enumerate(zip(results, out)):
        if not isinstance(o, Tensor) or not isinstance(o.grad_fn, (_FunctionNode,
                                                                   autograd.OutputSlot)):
            continue
        if t is not None and tuple(t.shape) != tuple(o.shape):
            raise RuntimeError(f"{cls.__name__}.jvp returned a tangent of shape "
                               f"{list(t.shape)} for an output of shape {list(o.shape)}")
        found[i] = None if t is None else t.detach()
        if isinstance(o.grad_fn, autograd.OutputSlot):
            owner = o.grad_fn.owner
        else:
            forward_ad.set_tangent(o.grad_fn, found[i])
    if owner is not None:       # its slots' tangents are read from it
        forward_ad.set_tangent(owner, tuple(found))


def once_differentiable(fn):
    """A backward that is not itself differentiable: runs with grad mode off."""
    @functools.wraps(fn)
    def wrapper(ctx, *args):
        with autograd.no_grad():
            return fn(ctx, *args)
    return wrapper


class _VariableMeta(type):
    def __instancecheck__(cls, obj) -> bool:
        return isinstance(obj, Tensor)


class Variable(metaclass=_VariableMeta):
    """The pre-0.4 wrapper, kept as PyTorch keeps it: `Variable(t)` is the tensor itself."""

    def __new__(cls, data, requires_grad: bool = False, volatile: bool = False):
        if requires_grad and not data.requires_grad:
            data = data.detach().requires_grad_(True)
        return data


class set_detect_anomaly:
    """Anomaly detection on or off (torch.autograd.set_detect_anomaly): while on, every autograd
    node keeps the stack of the forward call that made it, and a backward rule that returns NaN
    raises `RuntimeError: Function 'DivBackward0' returned nan values in its 0th output.` after
    a warning showing that stack. As a context manager, the old state comes back on exit."""

    def __init__(self, mode: bool, check_nan: bool = True):
        self.prev = list(autograd.ANOMALY)
        autograd.ANOMALY[:] = [bool(mode), bool(check_nan)]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        autograd.ANOMALY[:] = self.prev
        return False


class detect_anomaly(set_detect_anomaly):
    """`with detect_anomaly():` (or as a decorator): anomaly detection for the block."""

    def __init__(self, check_nan: bool = True):
        warnings.warn("Anomaly Detection has been enabled. This mode will increase the runtime "
                      "and should only be enabled for debugging.", UserWarning, stacklevel=2)
        super().__init__(True, check_nan)

    def __call__(self, fn):
        check_nan = autograd.ANOMALY[1]
        autograd.ANOMALY[:] = self.prev     # a decorator: on only while `fn` runs

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with set_detect_anomaly(True, check_nan):
                return fn(*args, **kwargs)
        return wrapper


def is_anomaly_enabled() -> bool:
    return autograd.ANOMALY[0]


def is_anomaly_check_nan_enabled() -> bool:
    return autograd.ANOMALY[1]


def set_anomaly_enabled(enabled: bool, check_nan: bool = True) -> None:
    autograd.ANOMALY[:] = [bool(enabled), bool(check_nan)]
