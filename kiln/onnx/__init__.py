"""`kiln.onnx.export`: a model (or an ExportedProgram) written as an ONNX file, as torch.onnx.

The model is exported with `kiln.export.export` first; its graph's primitives are then mapped
to ONNX ops (kiln/onnx/convert.py) and the parameters become initializers. The `onnx` package
is imported only when `export` runs (`pip install kiln[onnx]`), so `import kiln.onnx` always
works.
"""

from __future__ import annotations

import os

from kiln.export import ExportedProgram, export as export_program
from kiln.onnx.convert import OnnxBuilder, UnsupportedOperatorError, convert_node, onnx_type
from kiln.tracer.tensor import Tensor

__all__ = ["UnsupportedOperatorError", "export"]

DEFAULT_OPSET = 18
MIN_OPSET = 17
# the newest ONNX IR version ONNX Runtime releases of the last two years all read
_IR_VERSION = 8


def export(model, args, f, export_params: bool = True, verbose: bool = False,
           input_names: list | None = None, output_names: list | None = None,
           opset_version: int | None = None, dynamic_axes: dict | None = None,
           do_constant_folding: bool = True, composites: bool = True, **unused):
    """Export `model(*args)` to ONNX at `f` (a path or a binary file object).

    Args:
        model: a Module, a function, or a `kiln.export.ExportedProgram`.
        args: the example inputs: a tensor or a tuple of them.
        input_names, output_names: names of the ONNX graph's inputs and outputs, in order
            (default: the argument names, `output` / `output0`, ...).
        dynamic_axes: `{name: {dim: symbol}}` or `{name: [dims]}` for inputs (and outputs,
            which follow) whose sizes may change, as in torch.onnx.export.
        opset_version: 17 or newer (default 18).
        composites: write kiln's convolution, linear and eval-mode batch norm as ONNX Conv,
            Gemm and BatchNormalization (recognized from their primitives); False maps every
            primitive on its own.
        export_params, verbose, do_constant_folding: accepted for compatibility; parameters
            are always stored, the graph is already folded by tracing.

    Returns:
        The onnx ModelProto written (checked with onnx.checker.check_model).

    Raises:
        UnsupportedOperatorError: an op with no ONNX mapping, named with the user's line.
    """
    try:
        import onnx
        from onnx import helper
    except ImportError as e:
        raise ImportError("kiln.onnx.export needs the onnx package: pip install onnx "
                          "(or kiln[onnx])") from e
    opset = DEFAULT_OPSET if opset_version is None else int(opset_version)
    if opset < MIN_OPSET:
        raise ValueError(f"kiln.onnx.export: opset_version {opset} is too old; kiln writes "
                         f"opset {MIN_OPSET} or newer")
    if not isinstance(args, tuple):
        args = (args,)
    if isinstance(model, ExportedProgram):
        ep = model
    else:
        ep = export_program(model, args, dynamic_shapes=_dynamic_shapes(
            dynamic_axes, input_names, args))
    in_names = list(input_names or [s.name for s in ep.input_specs])
    in_names += [s.name for s in ep.input_specs[len(in_names):]]
    out_names = list(output_names or [s.name for s in ep.output_specs])
    out_names += [s.name for s in ep.output_specs[len(out_names):]]
    in_names, out_names = in_names[:len(ep.input_specs)], out_names[:len(ep.output_specs)]
    sources = {}
    for name, spec in zip(in_names, ep.input_specs):
        for d, size in enumerate(spec.shape):
            if not isinstance(size, int):
                (sym, _), = size.terms
                sources.setdefault(sym, (name, d))
    b = OnnxBuilder(opset, sources)
    graph = ep.graph
    inputs = []
    dim_names = _dim_names(dynamic_axes)
    for name, spec, v in zip(in_names, ep.input_specs, graph.inputs):
        b.names[v] = name
        inputs.append(helper.make_tensor_value_info(name, onnx_type(spec.dtype),
                                                    _dims(spec.shape, dim_names.get(name))))
    for v, pname in zip(graph.inputs[len(ep.input_specs):], ep.parameter_names):
        b.names[v] = b.const(ep.state_dict[pname].numpy(), pname)
    for v, array in graph.constants.items():
        b.names[v] = b.const(array, "constant")
    from kiln.onnx.patterns import find_composites
    recovered = find_composites(graph) if composites else {}
    for i, node in enumerate(graph.nodes):
        if node in recovered:
            b.names[node.out] = recovered[node](b)
            continue
        ins, attrs = ep.templates.get(i, (None, node.attrs))
        ins = node.inputs if ins is None else tuple(
            v if t is None else t for v, t in zip(node.inputs, ins))
        b.names[node.out] = convert_node(b, node, ins, dict(attrs))
    outputs = []
    for name, spec, v in zip(out_names, ep.output_specs, graph.outputs):
        b.op("Identity", [b.names[v]], out=name)
        outputs.append(helper.make_tensor_value_info(name, onnx_type(spec.dtype),
                                                     _dims(spec.shape, dim_names.get(name))))
    b.prune(out_names)
    onnx_graph = helper.make_graph(b.nodes, graph.name, inputs, outputs, b.initializers)
    proto = helper.make_model(onnx_graph, producer_name="kiln",
                              opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = _IR_VERSION
    onnx.checker.check_model(proto)
    if isinstance(f, (str, os.PathLike)):
        onnx.save_model(proto, os.fspath(f))
    else:
        f.write(proto.SerializeToString())
    if verbose:
        print(helper.printable_graph(proto.graph))
    return proto


def _dynamic_shapes(dynamic_axes, input_names, args):
    """torch.onnx's `dynamic_axes` (by ONNX input name) as kiln.export's `dynamic_shapes` (one
    entry per positional argument)."""
    if not dynamic_axes:
        return None
    names = list(input_names or [])
    spec = [None] * len(args)
    for key, axes in dynamic_axes.items():
        if key not in names:
            continue            # an output's axes: they follow the inputs'
        i = names.index(key)
        if i >= len(args) or not isinstance(args[i], Tensor):
            raise ValueError(f"kiln.onnx.export: dynamic_axes names input {key!r}, which is "
                             "not a tensor argument; name the positional tensor arguments")
        axes = axes if isinstance(axes, dict) else {d: f"{key}_dim{d}" for d in axes}
        spec[i] = {int(d): str(s) for d, s in axes.items()}
    unknown = [k for k in dynamic_axes if k not in names]
    if not names and unknown:
        raise ValueError("kiln.onnx.export: dynamic_axes needs input_names to say which "
                         "inputs it means")
    return tuple(spec)


def _dim_names(dynamic_axes) -> dict:
    out = {}
    for key, axes in (dynamic_axes or {}).items():
        out[key] = axes if isinstance(axes, dict) else {d: f"{key}_dim{d}" for d in axes}
    return out


def _dims(shape, names) -> list:
    dims = []
    for d, size in enumerate(shape):
        if isinstance(size, int):
            dims.append(size)
        elif names and d in names:
            dims.append(str(names[d]))
        else:
            dims.append(str(size))
    return dims
