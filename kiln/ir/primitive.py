"""The primitive registry: what a primitive is, every fact kiln keeps about one, and `define`.

A leaf module (it imports nothing of kiln): `kiln.ir.ops` and `kiln.ir.ops_extra` register their
primitives here, and every later layer reads an op's facts from its `Primitive`, never from a
table of op names of its own. Only a renderer's spelling of an op lives elsewhere (one table per
renderer, in `kiln.codegen`), and a registry test checks that table is complete.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

ELEMENTWISE, REDUCE, MOVEMENT, INDEX, MATMUL, CREATION, RANDOM, NORMALIZE = (
    "elementwise", "reduce", "movement", "index", "matmul", "creation", "random", "normalize")

# cost classes: an EXPENSIVE op (a transcendental, a division loop) is worth a store and a
# load to avoid computing twice; a CHEAP one is recomputed where it is needed again
CHEAP, EXPENSIVE = "cheap", "expensive"

# what a gradient rule that reads the op's output needs from it (`Primitive.output`)
SAVED, COPIED = "saved", "copied"


@dataclass(frozen=True)
class ScalarMath:
    """An elementwise op as scalar math, which every kernel renderer spells (kiln.codegen.scalar).

    `result` is computed from the op's inputs `params` through `steps`, each `(name,
    expression)` in order (a name may be assigned again). Expressions are Python syntax: float
    constants, `+ - * /`, comparisons, `where(cond, a, b)`, the base functions `exp`, `log`,
    `expm1`, `abs`, and any primitive that has ScalarMath itself (`log1p(exp(x))`).
    """

    result: str
    steps: tuple = ()
    params: tuple = ("x",)
    comment: str = ""


class ShapeError(Exception):
    """An op got inputs whose shapes or dtypes it cannot take; the dispatcher adds the op name
    and the user's source line and re-raises it as the matching Python exception."""

    def __init__(self, message: str, kind: type = RuntimeError):
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, eq=False)
class Primitive:
    """One primitive op and every fact about it.

    Args:
        infer: `(shapes, dtypes, **attrs) -> (shape, dtype)`; raises ShapeError on bad input.
        impl: `(xp, *arrays, **attrs) -> array` with an array module; the op's meaning.
        grad: `(g, out, *inputs, **attrs) -> gradients`; None: not differentiable.
        reads: the inputs whose values `grad` reads (an in-place change to any other input is
            harmless, so only these are version-checked), or a function of the inputs giving
            them; None: all of them.
        output: whether `grad` reads the op's output: SAVED (PyTorch saves it too, so writing
            it in place before backward is an error) or COPIED (PyTorch's rule reads the
            inputs instead: such a write first gives the autograd node its own copy); or a
            function of the inputs giving one of these; None: the rule never reads it.
        cost: CHEAP or EXPENSIVE, for a kernel deciding whether to keep a value or recompute.
        decompose: `(builder, *inputs, **attrs) -> Value`, the op rewritten into fusible
            primitives before fusion (for ops that exist for eager speed); `builder.op(name,
            *inputs, **attrs)` appends a node.
        ufunc: the name of the NumPy ufunc computing the op (`np.<ufunc>(..., out=)`), which
            lets the NumPy executor write into a dead buffer.
        view: NumPy and CuPy compute it as a strided view of its input (no copy), so its
            result shares the input's buffer.
        extern: of a fusible kind, but runs as a library call between kernels (a scan, a
            concatenation of several inputs).
        scalar: the op as scalar math (ScalarMath), from which the C and Triton renderers
            write a helper function; an elementwise op without it needs an entry in each
            renderer's op table.
        complex_grad: `grad` is written for complex inputs in PyTorch's convention (a
            factorization with conjugate transposes: QR, eigh, SVD, ...), so the autograd
            engine passes it complex gradients as they are instead of conjugating around it.
    """

    name: str
    kind: str
    infer: Callable
    impl: Callable
    grad: Callable | None            # None: not differentiable (outputs never require grad)
    arity: int | None = None         # None: variadic (cat)
    quiet: bool = False              # impl may hit NaN/inf; silence NumPy's warnings
    doc: str = field(default="", compare=False)
    reads: tuple | Callable | None = None
    output: str | Callable | None = None
    cost: str = CHEAP
    decompose: Callable | None = None
    ufunc: str | None = None
    view: bool = False
    extern: bool = False
    scalar: ScalarMath | None = None
    complex_grad: bool = False

    def __repr__(self) -> str:
        return f"<primitive {self.name}>"

    def reads_of(self, inputs: tuple) -> tuple | None:
        """The inputs (positions) whose values the gradient rule reads for these inputs."""
        return self.reads(inputs) if callable(self.reads) else self.reads

    def output_of(self, inputs: tuple) -> str | None:
        """SAVED, COPIED or None: how the gradient rule reads the output, for these inputs."""
        return self.output(inputs) if callable(self.output) else self.output


PRIMITIVES: dict[str, Primitive] = {}


class _PrimitiveCalls:
    """`P.mul(a, b)` applies a primitive through the dispatcher the tracer installs.

    Gradient rules and composite ops call primitives this way, so `ir` never imports the layer
    that executes it.
    """

    dispatch: Callable | None = None


P = _PrimitiveCalls()


def define(name: str, kind: str, infer: Callable, impl: Callable | None,
           grad: Callable | None = None, arity: int | None = None, quiet: bool = False,
           doc: str = "", **facts) -> Primitive:
    """Register a primitive and make `P.<name>` call it. `facts` are the optional fields of
    `Primitive` (reads, output, cost, decompose, ufunc, view, extern, scalar,
    complex_grad). With
    `impl=None` the op is computed by its NumPy/CuPy ufunc, `xp.<ufunc>(*arrays)`."""
    if name in PRIMITIVES:
        raise ValueError(f"primitive {name!r} is defined twice")
    if impl is None:
        ufunc = facts.get("ufunc")
        if ufunc is None:
            raise ValueError(f"primitive {name!r} needs an impl or a ufunc")
        impl = _ufunc_impl(ufunc)
    prim = Primitive(name, kind, infer, impl, grad, arity, quiet, doc, **facts)
    PRIMITIVES[name] = prim

    def call(*args, device=None, **attrs):
        # `device`: where an op with no tensor input (a creation) puts its result; an op with
        # tensor inputs runs on theirs
        return P.dispatch(prim, args, attrs, device)

    call.__name__ = name
    setattr(P, name, call)
    return prim


def undefine(name: str) -> None:
    """Remove a primitive (tests registering a temporary one)."""
    del PRIMITIVES[name]
    if hasattr(P, name):
        delattr(P, name)


def _ufunc_impl(ufunc: str) -> Callable:
    def impl(xp, *arrays):
        return getattr(xp, ufunc)(*arrays)
    impl.__name__ = f"{ufunc}_impl"
    return impl
