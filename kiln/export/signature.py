"""What torch.export's ExportedProgram says about itself: the graph signature (which graph
inputs are user inputs, parameters, buffers or constants, and the user outputs), the ranges of
its dynamic sizes, and `ShapesCollection` (dynamic_shapes given per tensor)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

from kiln.tracer.tensor import Tensor


class InputKind(Enum):
    USER_INPUT = 1
    PARAMETER = 2
    BUFFER = 3
    CONSTANT_TENSOR = 4


class OutputKind(Enum):
    USER_OUTPUT = 1


@dataclass(frozen=True)
class TensorArgument:
    name: str


@dataclass(frozen=True)
class InputSpec:
    """One graph input: its kind, its name in the graph, and for a lifted tensor the state-dict
    name it reads (`target`)."""

    kind: InputKind
    arg: TensorArgument
    target: str | None
    persistent: bool | None = None


@dataclass(frozen=True)
class OutputSpec:
    kind: OutputKind
    arg: TensorArgument
    target: str | None = None


# the prefix torch gives a lifted tensor's graph input name, by kind
PREFIX = {InputKind.PARAMETER: "p_", InputKind.BUFFER: "b_", InputKind.CONSTANT_TENSOR: "c_"}


def lifted_input_name(kind: InputKind, target: str) -> str:
    """torch's graph input name for a parameter/buffer/constant: `lin.weight` -> p_lin_weight."""
    return PREFIX[kind] + target.replace(".", "_")


@dataclass(frozen=True)
class ExportGraphSignature:
    """torch.export.ExportGraphSignature: the graph's inputs (lifted tensors first, then the
    user inputs, torch's order) and outputs, with the views torch derives from them."""

    input_specs: list
    output_specs: list

    def _inputs(self, kind: InputKind) -> tuple:
        return tuple(s for s in self.input_specs if s.kind is kind)

    def __str__(self) -> str:
        """torch's listing: one line per input (kind, target, persistence) and output."""
        def line(spec) -> str:
            text = f"{spec.arg.name}: {spec.kind.name}"
            if spec.target is not None:
                text += f" target={spec.target!r}"
            if getattr(spec, "persistent", None) is not None:
                text += f" persistent={spec.persistent}"
            return text
        ins = "\n".join(line(s) for s in self.input_specs)
        outs = "\n".join(line(s) for s in self.output_specs)
        return f"\n# inputs\n{ins}\n\n# outputs\n{outs}\n"

    @property
    def user_inputs(self) -> tuple:
        return tuple(s.arg.name for s in self._inputs(InputKind.USER_INPUT))

    @property
    def user_outputs(self) -> tuple:
        return tuple(s.arg.name for s in self.output_specs)

    @property
    def parameters(self) -> tuple:
        return tuple(s.target for s in self._inputs(InputKind.PARAMETER))

    @property
    def buffers(self) -> tuple:
        return tuple(s.target for s in self._inputs(InputKind.BUFFER))

    @property
    def lifted_tensor_constants(self) -> tuple:
        return tuple(s.target for s in self._inputs(InputKind.CONSTANT_TENSOR))

    @property
    def inputs_to_parameters(self) -> dict:
        return {s.arg.name: s.target for s in self._inputs(InputKind.PARAMETER)}

    @property
    def inputs_to_buffers(self) -> dict:
        return {s.arg.name: s.target for s in self._inputs(InputKind.BUFFER)}

    @property
    def inputs_to_lifted_tensor_constants(self) -> dict:
        return {s.arg.name: s.target for s in self._inputs(InputKind.CONSTANT_TENSOR)}

    @property
    def buffers_to_mutate(self) -> dict:
        return {}           # an exported kiln program writes nothing (export refuses it)

    @property
    def user_inputs_to_mutate(self) -> dict:
        return {}


@dataclass(frozen=True)
class ValueRange:
    """The sizes a dynamic dimension may take, inclusive (`upper` is math.inf when unbounded);
    prints as torch's `VR[lower, upper]`."""

    lower: int
    upper: float

    def __repr__(self) -> str:
        upper = "int_oo" if self.upper == math.inf else self.upper
        return f"VR[{self.lower}, {upper}]"


class ShapesCollection:
    """torch.export.ShapesCollection: dynamic dims given per tensor (`sc[x] = {0: batch}`);
    `dynamic_shapes(model, args, kwargs)` turns them into export's by-argument form."""

    def __init__(self) -> None:
        self._shapes: dict = {}         # id(tensor) -> (tensor, {dim: Dim})

    def __setitem__(self, tensor, shape) -> None:
        if not isinstance(tensor, Tensor):
            raise ValueError(f"ShapesCollection: keys must be tensors, got "
                             f"{type(tensor).__name__}")
        self._shapes[id(tensor)] = (tensor, shape)

    def __getitem__(self, tensor):
        return self._shapes[id(tensor)][1]

    def __contains__(self, tensor) -> bool:
        return id(tensor) in self._shapes

    def __len__(self) -> int:
        return len(self._shapes)

    def dynamic_shapes(self, m, args, kwargs=None) -> dict:
        """{argument name: its spec}, where a tensor's spec is what was set for it (None if
        nothing was) and a tuple, list or dict of tensors gets one of the same structure."""
        from kiln.export.program import _bound_arguments
        bound = _bound_arguments(m, tuple(args), dict(kwargs or {}))
        return {name: self._spec(value) for name, value in bound}

    def _spec(self, value):
        if isinstance(value, Tensor):
            return self._shapes.get(id(value), (None, None))[1]
        if isinstance(value, (tuple, list)):
            return type(value)(self._spec(v) for v in value)
        if isinstance(value, dict):
            return {k: self._spec(v) for k, v in value.items()}
        return None
