"""`kiln.export.export`: a model traced once into a self-contained inference program.

An `ExportedProgram` is the traced graph (eval mode, no autograd), the parameters and buffers
it reads as a state dict, what its inputs and outputs are (names, dtypes, shapes, how they
nest) and what it assumes (its guards). It runs without the model's Python code: through the
IR interpreter (`ep(*args)`), or compiled by kiln's pipeline (`ep.compiled()`). It saves to one
file in kiln's checkpoint layout: the program as JSON in the header's metadata, the tensors as
safetensors data, checksummed, never pickled.
"""

from __future__ import annotations

import inspect
import json
import math
import os
from dataclasses import dataclass, field, replace

import numpy as np

from kiln.export.signature import (ExportGraphSignature, InputKind, InputSpec, OutputKind,
                                   OutputSpec, TensorArgument, ValueRange, lifted_input_name)
from kiln.export.symbolic import (Affine, concretize, templates_from_json,
                                  templates_to_json)
from kiln.compiler import compile_program, kernel_target
from kiln.compiler.tracing import _referenced_objects, _tensor_names
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType
from kiln.ir.graph import Graph, IRError
from kiln.ir.interpreter import interpret
from kiln.runtime.device import CPU, is_host_array
from kiln.tracer.autograd import no_grad
from kiln.tracer.errors import GraphBreak
from kiln.tracer.tensor import Tensor
from kiln.tracer.trace import Tracer, flatten, unflatten

FORMAT = "kiln.export"
VERSION = 1


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of an exported program: its name, dtype and shape, where a dynamic
    dimension is an `Affine` of the symbols (plain `batch` prints as the symbol's name)."""

    name: str
    dtype: DType
    shape: tuple

    def shape_text(self) -> str:
        return "[" + ", ".join(str(d) for d in self.shape) + "]"

    def to_json(self) -> dict:
        return {"name": self.name, "dtype": self.dtype.name,
                "shape": [d.to_json() if isinstance(d, Affine) else d for d in self.shape]}

    @staticmethod
    def from_json(doc: dict) -> "TensorSpec":
        return TensorSpec(doc["name"], dt.from_name(doc["dtype"]),
                          tuple(Affine.from_json(d) if isinstance(d, dict) else int(d)
                                for d in doc["shape"]))


@dataclass
class ExportedProgram:
    """A traced inference program and its weights; call it like the model.

    Attributes:
        graph: the IR graph, traced at the example inputs' sizes. Its inputs are the user
            inputs (flattened) then one per `parameter_names` entry.
        state_dict: name -> Tensor, every parameter and buffer the graph reads.
        input_specs, output_specs: TensorSpec per flattened input and output.
        templates: for each node whose numbers follow a dynamic size, its inputs and
            attributes with `Affine`s (see kiln.export.dynamic).
        guards: what the program assumes, as sentences.
    """

    graph: Graph
    state_dict: dict
    parameter_names: list
    input_specs: list
    output_specs: list
    in_tree: object
    out_tree: object
    guards: list = field(default_factory=list)
    templates: dict = field(default_factory=dict)
    example_sizes: dict = field(default_factory=dict)       # symbol -> traced size
    # state-dict name -> "parameter", "buffer" or "constant" (what graph_signature reports)
    state_kinds: dict = field(default_factory=dict)
    ranges: dict = field(default_factory=dict)     # symbol -> (lowest, highest or None)
    _graphs: dict = field(default_factory=dict, repr=False)  # sizes -> concrete Graph
    _compiled: dict = field(default_factory=dict, repr=False)

    # ------------------------------------------------------------------ calling
    def __call__(self, *args, **kwargs):
        """Run the program through the IR interpreter (NumPy): the reference result."""
        graph, arrays = self._bind(args, kwargs)
        outs, _ = interpret(graph, arrays)
        return self._outputs(outs)

    def compiled(self, backend: str = "auto"):
        """A callable running the program through kiln's compiler pipeline (passes, fused C
        kernels on the CPU), built once per input size."""
        def run(*args, **kwargs):
            graph, arrays = self._bind(args, kwargs)
            key = (backend, tuple(v.shape for v in graph.inputs))
            executor = self._compiled.get(key)
            if executor is None:
                executor = self._compiled[key] = _build_executor(graph, backend)
            n = len(executor.graph.inputs) if hasattr(executor, "graph") else len(arrays)
            outs, _ = executor.run(arrays[:n])
            return self._outputs([np.asarray(o) for o in outs])
        return run

    def module(self):
        """The program as a kiln.nn.Module, as torch.export's `ExportedProgram.module()`: its
        state_dict has the original module's names, and `forward` runs the program on the
        module's current parameters and buffers. Like the program itself, it runs without
        autograd (its outputs do not require grad)."""
        from kiln.export.unflatten import unflatten
        return unflatten(self)

    # ------------------------------------------------------------------ torch's descriptions
    @property
    def graph_signature(self) -> ExportGraphSignature:
        """torch's ExportGraphSignature: the lifted parameters, buffers and constants (named
        p_/b_/c_ + the state-dict name, in that order, as torch has them) then the user inputs;
        the user outputs by kiln's output names."""
        kinds = {"parameter": InputKind.PARAMETER, "buffer": InputKind.BUFFER,
                 "constant": InputKind.CONSTANT_TENSOR}
        lifted = []
        for name in self.parameter_names:
            kind = kinds[self.state_kinds.get(name, "constant")]
            lifted.append(InputSpec(kind, TensorArgument(lifted_input_name(kind, name)), name,
                                    True if kind is InputKind.BUFFER else None))
        lifted.sort(key=lambda spec: spec.kind.value)     # torch's order: parameters first
        users = [InputSpec(InputKind.USER_INPUT, TensorArgument(s.name), None)
                 for s in self.input_specs]
        outs = [OutputSpec(OutputKind.USER_OUTPUT, TensorArgument(s.name))
                for s in self.output_specs]
        return ExportGraphSignature(lifted + users, outs)

    @property
    def range_constraints(self) -> dict:
        """symbol -> ValueRange of each dynamic size: the Dim's bounds, with the lowest at 1
        (torch reports 0 for an unbounded Dim; kiln's programs take sizes from 1)."""
        return {sym: ValueRange(lo, math.inf if hi is None else hi)
                for sym, (lo, hi) in self.ranges.items()}

    @property
    def graph_module(self):
        """The program as a kiln.fx GraphModule: one node per IR node, the lifted tensors
        and then the user inputs as placeholders (torch's layout); printable and callable."""
        from kiln.export.fx_view import graph_module
        return graph_module(self)

    def run_decompositions(self, decomp_table=None, decompose_custom_triton_ops=False):
        """An equivalent program. kiln's IR is already made of primitives (every composite op
        is decomposed while tracing), so there is nothing left to decompose: returns a copy
        sharing the graph and weights."""
        return replace(self)

    def parameters(self):
        return iter(t for n, t in self.named_parameters())

    def named_parameters(self):
        """(state-dict name, tensor) of the module parameters the program reads."""
        return iter((n, self.state_dict[n]) for n in self.parameter_names
                    if self.state_kinds.get(n) == "parameter")

    def buffers(self):
        return iter(t for n, t in self.named_buffers())

    def named_buffers(self):
        """(state-dict name, tensor) of the module buffers the program reads."""
        return iter((n, self.state_dict[n]) for n in self.parameter_names
                    if self.state_kinds.get(n) == "buffer")

    def graph_for(self, sizes: dict | None = None) -> Graph:
        """The graph at these symbol sizes (default: the traced ones), shapes re-derived."""
        sizes = dict(self.example_sizes, **(sizes or {}))
        key = tuple(sorted(sizes.items()))
        g = self._graphs.get(key)
        if g is None:
            if sizes == self.example_sizes:
                g = self.graph
            else:
                shapes = [self._input_shape(s, sizes) for s in self.input_specs]
                shapes += [v.shape for v in self.graph.inputs[len(shapes):]]
                g = concretize(self.graph, self.templates, shapes, sizes)
            self._graphs[key] = g
        return g

    @staticmethod
    def _input_shape(spec: TensorSpec, sizes: dict) -> tuple:
        return tuple(d.value(sizes) if isinstance(d, Affine) else d for d in spec.shape)

    def _bind(self, args, kwargs) -> tuple:
        """(the graph for these inputs' sizes, arrays for every graph input); checks each
        input's dtype and shape against its spec."""
        # NumPy arrays stand for tensors (deployments often hold NumPy data)
        args = tuple(Tensor._make(a, dt.from_numpy(a.dtype), CPU) if is_host_array(a)
                     else a for a in args)
        leaves, tree = flatten((args, kwargs))
        if tree_to_json(tree) != self.in_tree:
            raise TypeError(f"kiln.export: the program was exported for arguments shaped like "
                            f"{_tree_text(self.in_tree)}, got {_tree_text(tree_to_json(tree))}")
        sizes: dict = {}
        arrays = []
        for spec, t in zip(self.input_specs, leaves):
            a = t._data if isinstance(t, Tensor) else t
            if not is_host_array(a):
                # a CUDA tensor (the program runs on the CPU), or a number or list
                a = np.asarray(a.get()) if hasattr(a, "__cuda_array_interface__") else \
                    np.asarray(a)
            if a.dtype != spec.dtype.np:
                raise RuntimeError(f"kiln.export: input {spec.name!r} has dtype "
                                   f"{dt.from_numpy(a.dtype).name}; the exported program "
                                   f"expects {spec.dtype.name} of shape {spec.shape_text()}")
            self._match_shape(spec, a.shape, sizes)
            arrays.append(a)
        graph = self.graph_for(sizes)
        for n in self.parameter_names:     # weights of a model exported on a GPU: to the host
            a = self.state_dict[n]._data
            arrays.append(a if is_host_array(a) else np.asarray(a.get()))
        return graph, arrays

    def _match_shape(self, spec: TensorSpec, shape: tuple, sizes: dict) -> None:
        def fail(why):
            raise RuntimeError(f"kiln.export: input {spec.name!r} has shape {list(shape)}; the "
                               f"exported program expects {spec.shape_text()}{why}")
        if len(shape) != len(spec.shape):
            fail("")
        for d, want in zip(shape, spec.shape):
            if isinstance(want, Affine):
                (sym, c), = want.terms
                size, rem = divmod(d - want.offset, c)
                if rem or size < 1 or sizes.setdefault(sym, size) != size:
                    fail(f" ({sym} = {sizes.get(sym, '?')} from the inputs before it)"
                         if sym in sizes and sizes[sym] != size else "")
                lo, hi = self.ranges.get(sym, (1, None))
                if size < lo or (hi is not None and size > hi):
                    fail(f" with {sym} in [{lo}, {'inf' if hi is None else hi}], got {size}")
            elif d != want:
                fail(" (only dimensions marked dynamic may change)" if self.templates
                     or self.example_sizes else "")

    def _outputs(self, arrays: list):
        leaves = [Tensor._make(np.asarray(a), spec.dtype, CPU)
                  for a, spec in zip(arrays, self.output_specs)]
        return unflatten(tree_from_json(self.out_tree), leaves)

    # ------------------------------------------------------------------ text
    def __str__(self) -> str:
        ins = ", ".join(f"{s.name}: {s.dtype.short}{s.shape_text()}" for s in self.input_specs)
        outs = ", ".join(f"{s.name}: {s.dtype.short}{s.shape_text()}" for s in self.output_specs)
        lines = [f"ExportedProgram({ins}) -> ({outs})",
                 f"  {len(self.state_dict)} tensors in the state dict, "
                 f"{sum(t.numel() for t in self.state_dict.values())} values",
                 "  guards:"] + [f"    {g}" for g in self.guards] + [str(self.graph)]
        return "\n".join(lines)

    # ------------------------------------------------------------------ files
    def to_doc(self) -> dict:
        """Everything but the tensors, as JSON data (the file's `program` entry)."""
        return {"graph": self.graph.to_doc(), "parameters": list(self.parameter_names),
                "inputs": [s.to_json() for s in self.input_specs],
                "outputs": [s.to_json() for s in self.output_specs],
                "in_tree": self.in_tree, "out_tree": self.out_tree, "guards": self.guards,
                "templates": templates_to_json(self.templates),
                "example_sizes": self.example_sizes, "state_kinds": self.state_kinds,
                "ranges": {k: list(v) for k, v in self.ranges.items()}}

    def save(self, path) -> None:
        """Write the program to a path (atomically, through `kiln.save`) or a binary file
        object."""
        from kiln.serialization import save
        save({"format": FORMAT, "version": VERSION,
              "program": json.dumps(self.to_doc(), separators=(",", ":")),
              "state_dict": dict(self.state_dict)}, path)


def save(ep: ExportedProgram, f, **kwargs) -> None:
    """torch.export.save's form of `ep.save(f)` (to a path or a binary file object)."""
    ep.save(f)


def load(path, **kwargs) -> ExportedProgram:
    """Read a program `ExportedProgram.save` wrote, from a path or a binary file object; no
    code from the file runs. torch.export.load's other keywords (`extra_files`,
    `expected_opset_version`) are accepted and unused.

    Raises:
        CheckpointError: the file is not a readable exported program (truncated, corrupt,
            a plain checkpoint, a newer format version).
    """
    from kiln.serialization import CheckpointError
    from kiln.serialization import load as load_checkpoint
    name = os.fspath(path) if isinstance(path, (str, os.PathLike)) else "the file object"
    obj = load_checkpoint(path)
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"kiln.export.load: {name} is a kiln checkpoint but not an "
                              "exported program (use kiln.load for checkpoints)")
    version = obj.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(f"kiln.export.load: {name} has exported-program format version "
                              f"{version!r}; this kiln reads versions up to {VERSION}: upgrade "
                              "kiln")
    try:
        doc = json.loads(obj["program"])
        graph = Graph.from_doc(doc["graph"])
        graph.verify()
        state = obj["state_dict"]
        names = [str(n) for n in doc["parameters"]]
        ep = ExportedProgram(graph, state, names,
                             [TensorSpec.from_json(s) for s in doc["inputs"]],
                             [TensorSpec.from_json(s) for s in doc["outputs"]],
                             doc["in_tree"], doc["out_tree"], list(doc["guards"]),
                             templates_from_json(doc["templates"]),
                             {str(k): int(v) for k, v in doc["example_sizes"].items()},
                             {str(k): str(v) for k, v in doc.get("state_kinds", {}).items()},
                             {str(k): (int(v[0]), None if v[1] is None else int(v[1]))
                              for k, v in doc.get("ranges", {}).items()})
    except (KeyError, TypeError, ValueError, IndexError, AttributeError, IRError) as e:
        raise CheckpointError(f"kiln.export.load: {name}: the exported program in it is "
                              f"malformed ({type(e).__name__}: {e})") from None
    lifted = graph.inputs[len(ep.input_specs):]
    if len(lifted) != len(names):
        raise CheckpointError(f"kiln.export.load: {name}: the graph reads {len(lifted)} "
                              f"parameters but the file names {len(names)}")
    for v, n in zip(lifted, names):
        t = state.get(n)
        if not isinstance(t, Tensor) or tuple(t.shape) != v.shape or t.dtype is not v.dtype:
            raise CheckpointError(f"kiln.export.load: {name}: state dict entry {n!r} is "
                                  f"missing or not {v.type_str}")
    return ep


# ----------------------------------------------------------------------------- export

def export(model_or_fn, example_args, kwargs: dict | None = None, *, dynamic_shapes=None,
           strict: bool = False, preserve_module_call_signature: tuple = (),
           example_kwargs: dict | None = None) -> ExportedProgram:
    """Trace `model_or_fn(*example_args, **kwargs)` into an `ExportedProgram`.

    A Module is traced in eval mode (its train/eval flags are restored afterwards) and
    everything runs under `no_grad`. The whole call must be one graph: a graph break (a
    tensor's value read into Python) raises, naming the line.

    Args:
        example_args: a tuple of arguments (a single tensor is taken as one argument).
        kwargs: keyword arguments (`example_kwargs` is the same, kiln's older name).
        dynamic_shapes: dimensions that may change at run time, by argument name:
            `{"x": {0: "batch"}}` (or a tuple with one such dict or None per argument). The
            same symbol on several inputs means those sizes are equal.
        strict: accepted for torch's signature; kiln traces the same way either way (it runs
            the Python code on real tensors and records the ops, so there is no separate
            bytecode-analysing strict mode).
        preserve_module_call_signature: only () (kiln keeps no submodule call boundaries).

    Raises:
        RuntimeError: a graph break, a random op, or an in-place write to a parameter or
            buffer in the traced call.
        ValueError: a dynamic dimension the program cannot follow (the node and line that bake
            the traced size in are named).
    """
    if preserve_module_call_signature:
        raise NotImplementedError("kiln.export: preserve_module_call_signature is not "
                                  "supported: kiln's programs keep no submodule boundaries")
    if kwargs is not None and example_kwargs is not None:
        raise TypeError("kiln.export: give kwargs or example_kwargs, not both")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"kiln.export: kwargs must be a dict of keyword arguments, got "
                        f"{type(kwargs).__name__} (dynamic_shapes is keyword-only, as in "
                        "torch.export.export)")
    if not isinstance(example_args, tuple):
        example_args = (example_args,)
    kwargs = dict(kwargs or example_kwargs or {})
    leaves, tree = flatten((example_args, kwargs))
    in_tree = tree_to_json(tree)
    arg_names = _leaf_names(model_or_fn, example_args, kwargs)
    ranges: dict = {}
    hinted: set = set()
    dims = _dynamic_dims(dynamic_shapes, model_or_fn, example_args, kwargs, arg_names, leaves,
                         ranges, hinted)
    modules = _modules(model_or_fn)
    flags = [(m, m.training) for m in modules]
    try:
        for m, _ in flags:
            m.training = False
        program, result = _trace(model_or_fn, example_args, kwargs, arg_names)
        while True:
            try:
                example_sizes, templates, out_shapes = _follow_sizes(
                    model_or_fn, example_args, kwargs, arg_names, leaves, dims, program,
                    ranges)
                break
            except ValueError:
                # Dim.AUTO / DYNAMIC sizes the program needs equal (`x + y`): one symbol
                dims = _merge_hinted(dims, hinted, leaves, ranges)
                if dims is None:
                    raise
    finally:
        for m, training in flags:
            m.training = training
    graph = program.graph
    n_args = len(leaves)
    input_specs = []
    for i, v in enumerate(graph.inputs[:n_args]):
        shape = tuple(Affine(((dims[i][d], 1),), 0) if d in dims.get(i, {}) else s
                      for d, s in enumerate(v.shape))
        input_specs.append(TensorSpec(v.name, v.dtype, shape))
    out_leaves, out_tree = flatten(result)
    out_names = ["output"] if len(out_leaves) == 1 else \
        [f"output{i}" for i in range(len(out_leaves))]
    output_specs = [TensorSpec(n, v.dtype, s)
                    for n, v, s in zip(out_names, graph.outputs, out_shapes)]
    state, names = {}, []
    for v, b in zip(graph.inputs[n_args:], program.bindings[n_args:]):
        name = v.name if v.name and v.name not in state else f"{v.name or 'tensor'}_{len(state)}"
        v.name = name
        state[name] = b.tensor.detach().clone()      # a snapshot: later training leaves it
        names.append(name)
    guards = _guards(model_or_fn, input_specs, example_sizes, ranges, in_tree)
    kinds = _state_kinds(modules, program.bindings[n_args:], names)
    return ExportedProgram(graph, state, names, input_specs, output_specs, in_tree,
                           tree_to_json(out_tree), guards, templates,
                           example_sizes, state_kinds=kinds, ranges=ranges)


def _follow_sizes(model_or_fn, example_args, kwargs, arg_names, leaves, dims, program,
                  ranges: dict) -> tuple:
    """(symbol -> example size, the templates that follow the dynamic sizes, the output
    shapes with Affines); a ValueError when the program cannot follow them."""
    example_sizes: dict = {}
    for i, spec in dims.items():
        for d, sym in spec.items():
            example_sizes.setdefault(sym, leaves[i].shape[d])
            if example_sizes[sym] != leaves[i].shape[d]:
                raise ValueError(f"kiln.export: dynamic_shapes gives size {sym!r} to "
                                 f"inputs whose example sizes differ "
                                 f"({example_sizes[sym]} and {leaves[i].shape[d]})")
    templates, out_shapes = {}, [v.shape for v in program.graph.outputs]
    if example_sizes:
        from kiln.export.dynamic import fit_shape, generalize

        def trace_at(sizes):
            args, kw = _resized((example_args, kwargs), leaves, dims, sizes)
            try:
                return _trace(model_or_fn, args, kw, arg_names)[0].graph
            except Exception as e:
                text = ", ".join(f"{k}={v}" for k, v in sizes.items())
                raise ValueError(f"kiln.export: tracing at {text} (to follow the dynamic "
                                 f"sizes) failed: {e}") from e
        templates, probes, steps = generalize(trace_at, program.graph, example_sizes, ranges)
        out_shapes = [fit_shape(v.shape, {s: g.outputs[k].shape for s, g in probes.items()},
                                example_sizes, steps)
                      for k, v in enumerate(program.graph.outputs)]
    return example_sizes, templates, out_shapes


def _merge_hinted(dims: dict, hinted: set, leaves: list, ranges: dict) -> dict | None:
    """`dims` with the Dim.AUTO/DYNAMIC symbols of equal example size made one symbol (torch
    infers such equalities); None when there are none to merge."""
    first: dict = {}
    rename = {}
    for i, spec in dims.items():
        for d, sym in spec.items():
            if sym in hinted:
                keep = first.setdefault(leaves[i].shape[d], sym)
                if keep != sym:
                    rename[sym] = keep
    if not rename:
        return None
    for sym in rename:
        hinted.discard(sym)
        ranges.pop(sym, None)
    return {i: {d: rename.get(sym, sym) for d, sym in spec.items()} for i, spec in dims.items()}


def _state_kinds(modules: list, bindings: list, names: list) -> dict:
    """state-dict name -> "parameter" / "buffer" (a module's) / "constant" (any other tensor
    the program reads)."""
    params = {id(p) for m in modules for p in m.parameters(recurse=False)}
    buffers = {id(b) for m in modules for b in m.buffers(recurse=False)}
    return {n: "parameter" if id(b.tensor) in params else
            "buffer" if id(b.tensor) in buffers else "constant"
            for n, b in zip(names, bindings)}


def _trace(fn, args, kwargs, arg_names):
    """(the one TracedProgram of `fn(*args, **kwargs)` under no_grad, its result)."""
    leaves, _ = flatten((args, kwargs))
    names = _parameter_names(fn)
    tracer = Tracer(getattr(fn, "__name__", type(fn).__name__), on_break="raise", names=names)
    for i, t in enumerate(leaves):
        tracer.add_arg(t, arg_names[i], i)
    try:
        with no_grad(), tracer:
            result = fn(*args, **kwargs)
    except GraphBreak as b:
        raise RuntimeError(f"kiln.export: {tracer.name} cannot be exported as one graph: "
                           f"{b.reason} at {b.location}. Remove the Python read of the tensor's "
                           "value there (or compute it with tensor ops, e.g. torch.where)") \
            from None
    (program,) = tracer.finish(result)
    g = program.graph
    for v, b in zip(g.inputs, program.bindings):
        if b.kind == "seed":
            users = [n for n in g.nodes if v in n.inputs]
            raise RuntimeError(f"kiln.export: {tracer.name} draws random numbers "
                               f"({users[0].op if users else 'rand'} at "
                               f"{users[0].loc if users else '?'}); an exported program is "
                               "deterministic: export the model in eval mode without them")
    if g.mutations:
        src, new = g.mutations[0]
        producer = g.producers().get(new)
        raise RuntimeError(f"kiln.export: {tracer.name} writes to {src.name or src.ref} in "
                           f"place (at {producer.loc if producer else '?'}); an exported "
                           "program has no side effects: remove the in-place update")
    return program, result


def _modules(fn) -> list:
    if hasattr(fn, "named_modules"):
        return [m for _, m in fn.named_modules()]
    found = []
    for obj in _referenced_objects(fn).values():
        if hasattr(obj, "named_modules"):
            found += [m for _, m in obj.named_modules()]
    return found


def _parameter_names(fn) -> dict:
    """id(tensor) -> state-dict name: a Module's own names, else `model.0.weight` by how the
    function reaches the tensor."""
    if hasattr(fn, "named_parameters") and hasattr(fn, "named_buffers"):
        names: dict = {}
        for n, t in list(fn.named_parameters()) + list(fn.named_buffers()):
            names.setdefault(id(t), n)
        for prefix, m in fn.named_modules():      # plain tensor attributes (torch's constants)
            for key, value in vars(m).items():
                if isinstance(value, Tensor) and not key.startswith("_"):
                    names.setdefault(id(value), f"{prefix}.{key}" if prefix else key)
        return names
    return _tensor_names(fn)


def _signature(fn):
    target = fn.forward if hasattr(fn, "forward") and hasattr(fn, "named_modules") else fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def _bound_arguments(fn, args, kwargs) -> list:
    """(name, value) per argument, by the function's (a Module's forward's) signature."""
    sig = _signature(fn)
    if sig is not None:
        try:
            return list(sig.bind(*args, **kwargs).arguments.items())
        except TypeError:
            pass
    return [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())


def _leaf_names(fn, args, kwargs) -> list:
    names = []
    for name, value in _bound_arguments(fn, args, kwargs):
        sub, _ = flatten(value)
        names += [name] if len(sub) == 1 else [f"{name}.{j}" for j in range(len(sub))]
    return names


class _DimHint:
    """Dim.AUTO / Dim.DYNAMIC (a dimension of its own) and Dim.STATIC (not dynamic)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __repr__(self) -> str:
        return f"DimHint({self.kind})"


class Dim:
    """A named dynamic dimension (torch.export.Dim): inputs marked with the same Dim have equal
    sizes there. `min`/`max` bound it; the example's size must lie inside them."""

    AUTO = _DimHint("AUTO")
    DYNAMIC = _DimHint("DYNAMIC")
    STATIC = _DimHint("STATIC")

    def __init__(self, name: str, *, min: int | None = None, max: int | None = None) -> None:
        self.__name__, self.min, self.max = name, 0 if min is None else min, max

    def __repr__(self) -> str:
        # PyTorch's printout: min unless it is 2 (its usual lower bound), max when given
        bounds = "".join(f", {k}={v}" for k, v in (("min", self.min), ("max", self.max))
                         if v is not None and not (k == "min" and v == 2))
        return f"Dim({self.__name__!r}{bounds})"

    __str__ = __repr__


def _dynamic_dims(spec, fn, args, kwargs, leaf_names, leaves, ranges: dict,
                  hinted: set) -> dict:
    """leaf index -> {dim: symbol} from `dynamic_shapes`; fills `ranges` (symbol -> (lowest,
    highest or None) size) and `hinted` (the symbols of Dim.AUTO / Dim.DYNAMIC)."""
    if not spec:
        return {}
    bound = _bound_arguments(fn, args, kwargs)
    if isinstance(spec, (tuple, list)):
        if len(spec) != len(bound):
            raise ValueError(f"kiln.export: dynamic_shapes has {len(spec)} entries for "
                             f"{len(bound)} arguments")
        spec = {name: s for (name, _), s in zip(bound, spec)}
    out: dict = {}
    at = 0
    known = {}
    for name, value in bound:
        n = len(flatten(value)[0])
        known[name] = list(range(at, at + n))
        at += n
    for name, dims in spec.items():
        if dims is None:
            continue
        if name not in known:
            raise ValueError(f"kiln.export: dynamic_shapes names {name!r}, which is not an "
                             f"argument; the arguments are {list(known)}")
        if len(known[name]) != 1:
            raise ValueError(f"kiln.export: dynamic_shapes[{name!r}]: the argument holds "
                             f"{len(known[name])} tensors; mark one tensor argument")
        i = known[name][0]
        ndim = len(leaves[i].shape)
        for d, sym in dict(dims).items():
            if not isinstance(d, int) or not -ndim <= d < ndim:
                raise ValueError(f"kiln.export: dynamic_shapes[{name!r}] marks dim {d!r}; "
                                 f"{name} has {ndim} dims")
            if sym is Dim.STATIC:
                continue
            if isinstance(sym, _DimHint):      # AUTO / DYNAMIC: a size of its own
                sym = f"{name}_dim{d % ndim}"
                ranges[sym] = (1, None)
                hinted.add(sym)
            elif isinstance(sym, Dim):
                size = leaves[i].shape[d]
                if size < sym.min or (sym.max is not None and size > sym.max):
                    raise ValueError(f"kiln.export: {name}'s dim {d} is {size} in the example, "
                                     f"outside {sym!r}'s range [{sym.min}, {sym.max}]")
                ranges[sym.__name__] = (max(sym.min, 1), sym.max)
                sym = sym.__name__          # the symbol is the Dim's name, as in torch
            else:
                ranges.setdefault(str(sym), (1, None))
            out.setdefault(i, {})[d % ndim] = str(sym)
    return out


def _resized(obj, leaves, dims, sizes):
    """`obj` with each dynamic dim of its tensors made `sizes[symbol]` long, by repeating the
    example along that dim (so indices and such stay valid)."""
    flat, tree = flatten(obj)
    out = []
    for i, t in enumerate(flat):
        a = t._data
        xp = np if t.device.type == "cpu" else t.device.xp     # a cuda example stays there
        for d, sym in dims.get(i, {}).items():
            a = xp.take(a, xp.arange(sizes[sym]) % a.shape[d], axis=d)
        out.append(Tensor._make(xp.ascontiguousarray(a), t.dtype, t.device) if i in dims
                   else t)
    return unflatten(tree, out)


def _guards(fn, specs, example_sizes, ranges, in_tree) -> list:
    guards = [f"input {s.name!r}: {s.dtype.name}{s.shape_text()}" for s in specs]
    for sym, v in example_sizes.items():
        lo, hi = ranges.get(sym, (1, None))
        guards.append(f"{sym} >= {lo}" if hi is None else f"{lo} <= {sym} <= {hi}")
        guards[-1] += f" (traced at {v})"
    if _modules(fn):
        guards.append("modules in eval mode (dropout off, batch norm uses running statistics)")
    guards.append("no autograd: outputs do not require grad")
    consts = _tree_constants(in_tree)
    if consts:
        guards.append(f"non-tensor arguments fixed: {consts}")
    return guards


# ----------------------------------------------------------------------------- pytrees

def tree_to_json(tree):
    """The tracer's pytree (`flatten`'s second result) as JSON data."""
    if tree == ("T",):
        return "T"
    tag = tree[0]
    if tag == "S" or tag == "SC":
        raise TypeError("kiln.export: a sparse tensor argument or result cannot be exported; "
                        "pass its .to_dense() or its indices and values")
    if tag == "C":
        value = tree[1]
        if value is not None and not isinstance(value, (bool, int, float, str)):
            raise TypeError(f"kiln.export: a non-tensor argument or result of type "
                            f"{type(value).__name__} cannot be saved; pass numbers, strings, "
                            "None or tensors")
        return {"const": value}
    if tag is dict:
        return {"dict": [[k, tree_to_json(v)] for k, v in tree[1]]}
    kind = "list" if tag is list else "tuple"
    return {kind: [tree_to_json(v) for v in tree[1]]}


def tree_from_json(doc):
    if doc == "T":
        return ("T",)
    if "const" in doc:
        return ("C", doc["const"])
    if "dict" in doc:
        return (dict, tuple((k, tree_from_json(v)) for k, v in doc["dict"]))
    kind = list if "list" in doc else tuple
    return (kind, tuple(tree_from_json(v) for v in doc["list" if kind is list else "tuple"]))


def _tree_text(doc) -> str:
    if doc == "T":
        return "Tensor"
    if "const" in doc:
        return repr(doc["const"])
    if "dict" in doc:
        return "{" + ", ".join(f"{k!r}: {_tree_text(v)}" for k, v in doc["dict"]) + "}"
    if "list" in doc:
        return "[" + ", ".join(_tree_text(v) for v in doc["list"]) + "]"
    return "(" + ", ".join(_tree_text(v) for v in doc["tuple"]) + ")"


def _tree_constants(doc) -> list:
    if doc == "T":
        return []
    if "const" in doc:
        return [doc["const"]]
    items = doc.get("dict") or doc.get("list") or doc.get("tuple") or []
    return [c for item in items for c in _tree_constants(item[1] if "dict" in doc else item)]


def _build_executor(graph: Graph, backend: str):
    """The forward executor kiln's compiler builds for `graph` on the CPU."""
    import numpy
    _, executor, _ = compile_program(graph, None, kernel_target(backend, CPU), numpy)
    return executor
