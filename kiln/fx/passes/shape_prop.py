"""`ShapeProp`: run a GraphModule on example inputs and record each node's tensor shape, dtype,
requires_grad, stride and memory format in `node.meta['tensor_meta']` (torch.fx's pass)."""

from __future__ import annotations

from typing import Any, NamedTuple

import kiln
from kiln.fx.interpreter import Interpreter
from kiln.fx.node import Node, map_aggregate


class TensorMetadata(NamedTuple):
    shape: Any
    dtype: Any
    requires_grad: bool
    stride: tuple
    memory_format: Any
    is_quantized: bool
    qparams: dict


def _memory_format(t: kiln.Tensor):
    formats = [kiln.contiguous_format]
    if t.ndim == 4:
        formats.append(kiln.channels_last)
    elif t.ndim == 5:
        formats.append(kiln.channels_last_3d)
    for fmt in formats:
        if t.is_contiguous(memory_format=fmt):
            return fmt
    return None


def _extract_tensor_metadata(t: kiln.Tensor) -> TensorMetadata:
    return TensorMetadata(t.shape, t.dtype, t.requires_grad, tuple(t.stride()),
                          _memory_format(t), False, {})


class ShapeProp(Interpreter):
    """`ShapeProp(gm).propagate(*example_inputs)`: runs the graph and fills in every node's
    `meta['tensor_meta']` (a TensorMetadata, or a structure of them) and `meta['type']`."""

    def run_node(self, n: Node) -> Any:
        try:
            result = super().run_node(n)
        except Exception as e:
            raise RuntimeError(f"ShapeProp error for: node={n.format_node()} with "
                               f"meta={n.meta}") from e
        found = False

        def extract(obj: Any) -> Any:
            nonlocal found
            if isinstance(obj, kiln.Tensor):
                found = True
                return _extract_tensor_metadata(obj)
            return obj

        meta = map_aggregate(result, extract)
        if found:
            n.meta["tensor_meta"] = meta
        n.meta["type"] = type(result)
        return result

    def propagate(self, *args) -> Any:
        """Run the graph on `args`, recording metadata; returns its result."""
        return super().run(*args)
