"""`@kiln.compile`, `kiln.compiler.trace` and `explain`: trace, guard, replay, fall back to eager.

The first call of a compiled function with a new guard key runs eagerly with a tracer
watching; later calls with the same key replay the captured program. A graph break (a tensor's
value read into Python) makes that key run eagerly from then on, with one message naming the
line; `fullgraph=True` raises instead. Programs whose outputs require grad get a compiled
backward, partitioned from the joint forward+backward trace. What the passes make of a traced
graph is kept on disk (`kiln.program_cache`): a new process that traces the same graph skips
them.
"""

from __future__ import annotations

import collections
import contextlib
import dis
import functools
import gc
import inspect
import os
import random
import re
import types
import warnings
import weakref
from dataclasses import dataclass, field

import numpy as np

from kiln.compiler import guards
from kiln.compiler.effects import EffectWatch, random_draws, random_states
from kiln.compiler.counters import count_graph
from kiln.compiler.numbers import (_STATE_NUMBERS, _group_number_writes, _holds_proxy,
                                   _lifted_as_types, _lifted_names, _number_arguments,
                                   _number_write, _proxies_in, _replay_counters, _stored_proxies,
                                   _without_proxies, _write_numbers)
from kiln.compiler.outputs import (_bound_tensor, _eager_layouts, _outputs_apart,
                                   _returned_views, _source, _view_again, output_roots)
from kiln.compiler.stance import current_stance, set_stance  # noqa: F401
from kiln.compiler.cache_artifacts import (load_cache_artifacts,  # noqa: F401
                                           save_cache_artifacts)
from kiln.compiler.hooks import (active_traces, as_number, composite,  # noqa: F401
                                 is_compiling, note_flag_read, note_grad_cleared,
                                 note_grads_checked, note_item_read, note_item_write,
                                 note_python_read, note_state_read, replay_after, scalar_input,
                                 untraced)
from kiln.ir import dtypes as dt
from kiln.ir.dtypes import DType, get_default_dtype
from kiln.ir.ops import BOUNDS_ERRORS, Primitive, as_user_error
from kiln.ir.primitive import SAVED
from kiln.ir.schedule import STRIDED_VIEWS
from kiln.runtime import pending_checks
from kiln.runtime.device import CPU, Device, to_device
from kiln.runtime.executor import ArrayExecutor
from kiln.runtime.layouts import grad_array, in_layout
from kiln.tracer.autocast import key as _autocast_key
from kiln.tracer.autograd import prim_class, record, record_several, saved_hooks_active
from kiln.tracer.creation import default_generator, get_default_device
from kiln.tracer.forward_ad import LEVEL as DUAL_LEVEL
from kiln.tracer.joint import trace_backward
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer import dispatch_subclass as _dispatch_subclass
from kiln.tracer import torch_function as _torch_function
from kiln.tracer.errors import GraphBreak, op_error, user_stacklevel  # noqa: F401
from kiln.tracer.storage import element_offset
from kiln.tracer.symbolic_number import (SymbolicNumber, describe, evaluate,
                                         math_of_proxies, operand_array)
from kiln.tracer.trace import TracedProgram, Tracer, flatten, unflatten  # noqa: F401

RECOMPILE_LIMIT = 8


@contextlib.contextmanager
def _collector_paused():
    """Python's cycle collector off while a call traces and compiles, and during an entry's
    first replay (its kernel trials): they make some 10^5 objects, and in a process with a
    large heap (torch loaded, a dataset) each full collection they set off scans all of it,
    25-65% of the first two calls of `benchmarks/models_cpu.py`'s rows. Garbage made meanwhile
    is collected by the next collection after. A collector the user turned off stays off."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


# ----------------------------------------------------------------------------- naming

def _function_name(fn) -> str:
    if isinstance(fn, functools.partial):
        return f"partial({_function_name(fn.func)})"
    return getattr(fn, "__name__", type(fn).__name__)


def _referenced_objects(fn) -> dict:
    """Objects a function can reach by name: closure cells, referenced globals, `self`."""
    found = {}
    code = getattr(fn, "__code__", None)
    if code is None and hasattr(fn, "forward"):           # a Module: its own tensors
        return {"self": fn}
    if isinstance(fn, functools.partial):           # the arguments it binds, by their names
        return {**_referenced_objects(fn.func), **fn.keywords,
                **{f"partial.args[{i}]": v for i, v in enumerate(fn.args)}}
    if hasattr(fn, "__self__"):
        found["self"] = fn.__self__
        fn = fn.__func__
        code = fn.__code__
    if code is None:
        return found
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            found[name] = cell.cell_contents
        except ValueError:
            pass
    names = set(code.co_names)
    for const in code.co_consts:          # names used in nested functions and lambdas
        if hasattr(const, "co_names"):
            names |= set(const.co_names)
    glb = getattr(fn, "__globals__", {})
    for name in names:
        if name in glb and name not in found:
            found[name] = glb[name]
    return found


def _has(obj, *attributes) -> bool:
    """`hasattr` for each name, False where the object's own `__getattr__` raises another
    error (a user's config class raising KeyError), which eager code never asked it."""
    try:
        return all(hasattr(obj, a) for a in attributes)
    except Exception:
        return False


def _tensor_names(fn, depth: int = 2, tensors: dict | None = None) -> dict:
    """id(tensor) -> a readable name for parameters, buffers, optimizer state and tensors.

    Looks through what `fn` references by name, one level into containers and plain objects,
    and `depth` levels into the closures of functions it references (a loss function closing
    over weights). When `tensors` is given, it receives id(tensor) -> tensor for every tensor
    named.
    """
    names: dict = {}
    if tensors is None:
        tensors = {}

    def name(t, text):
        if id(t) not in names:
            names[id(t)] = text
            tensors[id(t)] = t

    def visit(obj_name, obj, level):
        if isinstance(obj, Tensor):
            name(obj, obj_name)
        elif _has(obj, "named_parameters", "named_buffers"):
            for n, t in obj.named_parameters():
                name(t, f"{obj_name}.{n}")
            for n, t in obj.named_buffers():
                name(t, f"{obj_name}.{n}")
        elif _has(obj, "param_groups", "state"):
            for i, (p, st) in enumerate(obj.state.items()):
                for k, t in st.items() if isinstance(st, dict) else ():
                    if isinstance(t, Tensor):
                        name(t, f"{obj_name}.state{i}.{k}")
        elif isinstance(obj, (list, tuple)) and level >= 0:
            for i, item in enumerate(obj[:256]):
                visit(f"{obj_name}.{i}", item, -1)
        elif isinstance(obj, dict) and level >= 0:
            for k, item in list(obj.items())[:256]:
                visit(f"{obj_name}.{k}", item, -1)
        elif callable(obj) and _has(obj, "__code__") and level > 0:
            for n, o in _referenced_objects(obj).items():
                visit(n, o, level - 1)
        elif level > 0 and _plain_object(obj):      # a trainer holding a model and optimizer
            for k, item in list(vars(obj).items())[:256]:
                visit(f"{obj_name}.{k}", item, level - 1)

    referenced = _referenced_objects(fn)
    for obj_name, obj in referenced.items():       # a tensor's own name beats a container path
        if isinstance(obj, Tensor):
            visit(obj_name, obj, depth)
    for obj_name, obj in referenced.items():
        visit(obj_name, obj, depth)
    return names


def _made_by(tracer, tensor: Tensor) -> bool:
    """Whether the traced call computed `tensor` (a value of its graph, not one it read)."""
    v = tensor._trace
    return v is not None and id(v) in tracer.known and id(tensor) not in tracer.input_of and \
        id(tracer.alias_of.get(id(tensor), tensor)) not in tracer.input_of


def _plain_object(obj) -> bool:
    """An object of the user's own class with attributes (not a class, module, function or
    library object): `_tensor_names` and `_grad_candidates` look into its attributes."""
    return isinstance(getattr(obj, "__dict__", None), dict) and \
        not isinstance(obj, (type, types.ModuleType, types.FunctionType)) and \
        not guards._library_class(type(obj))


def _is_record(obj) -> bool:
    """Whether an argument is a plain object of the user's (a batch with tensor attributes, a
    dataclass) whose tensor attributes a compiled function takes as inputs, keyed by their
    shapes as an argument tensor is, rather than by the object's identity. Modules, optimizers,
    callables, classes and library objects keep the identity key."""
    return isinstance(getattr(obj, "__dict__", None), dict) and not callable(obj) and \
        not isinstance(obj, type) and not hasattr(obj, "_parameters") and \
        not hasattr(obj, "param_groups") and not guards._library_class(type(obj))


def _flatten_args(obj):
    """flatten() of a call's arguments: batch objects' tensor attributes are leaves too."""
    return flatten(obj, record=_is_record)


def _batch_objects(args, kwargs) -> list:
    """The objects among a call's arguments that `_flatten_args` walks as batches (they hold a
    tensor), as its ("R", ...) trees."""
    found: list = []
    _holds_tensor((args, kwargs), found)
    return found


def _holds_tensor(x, found: list) -> bool:
    # (a function of its own, not a recursive closure: that is a cycle holding the arguments)
    if isinstance(x, Tensor):
        return True
    if isinstance(x, (tuple, list)):
        return any([_holds_tensor(v, found) for v in x])
    if isinstance(x, dict):
        return any([_holds_tensor(v, found) for v in x.values()])
    if _is_record(x) and any([_holds_tensor(v, found) for v in vars(x).values()]):
        found.append(x)
        return True
    return False


def _arg_names(fn, args, kwargs, leaves) -> dict:
    """id(tensor) -> the parameter name it was passed as (`x`, `batch.0`)."""
    names = {}
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
        items = bound.arguments.items()
    except (TypeError, ValueError):
        items = [(f"arg{i}", a) for i, a in enumerate(args)] + list(kwargs.items())
    for name, value in items:
        sub, _ = _flatten_args(value)
        for j, t in enumerate(sub):
            names.setdefault(id(t), name if len(sub) == 1 else f"{name}.{j}")
    return names


# ----------------------------------------------------------------------------- trace, explain

@dataclass
class TraceResult:
    """What `kiln.compiler.trace` captured: graphs in order, and the breaks between them."""

    programs: list
    breaks: list
    result: object = None

    @property
    def graphs(self) -> list:
        return [p.graph for p in self.programs]


def _trace_call(fn, args, kwargs, mode: str, snapshot: bool = False,
                names: dict | None = None, watch: bool = False,
                grad_holders: dict | None = None,
                grad_state: tuple | None = None, on_function=None,
                call: tuple | None = None, numbers: bool = False) -> tuple[Tracer, object]:
    """Run `fn` under a new Tracer; `names` is `_tensor_names(fn)` when the caller has it,
    `grad_holders` id(.grad) -> its tensor (`_grad_candidates`) and `grad_state` those tensors
    with whether each `.grad` was None at the call. With `watch`, a Python effect a replay
    would skip is a graph break (`EffectWatch`). `on_function(cls)` is told of each custom
    autograd.Function class before its first forward runs (`Tracer.custom_function`).
    `call`: (args, kwargs) the function is called with instead (lifted numbers as proxies);
    `numbers`: some are proxies (of arguments or state), which `math` functions then take."""
    leaves, _ = _flatten_args((args, kwargs))
    names = dict(_tensor_names(fn) if names is None else names)
    names.update(_arg_names(fn, args, kwargs, leaves))
    tracer = Tracer(_function_name(fn), on_break=mode, names=names, snapshot=snapshot)
    tracer.grad_holders = grad_holders or {}
    if grad_state is not None:
        tracer.grad_state = grad_state
    tracer.top_code = _code_of(fn)
    tracer.on_function = on_function
    for i, t in enumerate(leaves):
        tracer.add_arg(t, names.get(id(t), f"arg{i}"), i)
    def effect(what: str, where: str) -> None:
        if STATE.tracer is tracer:
            tracer.graph_break(f"{what}, which a replay would skip", where)
    lifted = math_of_proxies() if numbers else contextlib.nullcontext()
    if call is not None:
        args, kwargs = call
    if watch:
        with tracer, EffectWatch(effect), lifted:
            result = fn(*args, **kwargs)
    else:
        with tracer, lifted:
            result = fn(*args, **kwargs)
    return tracer, result


def trace(fn, *args, _snapshot: bool = False, **kwargs) -> TraceResult:
    """Run `fn` eagerly while tracing; return every graph captured and every graph break."""
    tracer, result = _trace_call(fn, args, kwargs, "split", _snapshot)
    programs = tracer.finish(result, tracer.returned_items)
    return TraceResult(programs, tracer.breaks, result)


@dataclass
class ExplainOutput:
    """A report in the spirit of torch._dynamo.explain: the graphs captured, the breaks, the
    guards, and per graph the CompiledArtifact that runs it (None when it runs eagerly)."""

    graphs: list
    breaks: list
    name: str = ""
    guards: list = field(default_factory=list)     # Guard: what a replay would check
    artifacts: list = field(default_factory=list)  # per graph: CompiledArtifact or None
    eager_reason: str | None = None                # why the function runs eagerly, if it does
    # how each fused group of the compiled function's programs runs (C or NumPy) and why,
    # decided by timing both on its first replays; empty before those replays
    kernel_choices: list = field(default_factory=list)
    cuda_graphs: list = field(default_factory=list)   # cuda_graph_notes: per GPU program
    after_replay: list = field(default_factory=list)  # names of Python steps replays repeat
    lifted: list = field(default_factory=list)        # number arguments read as graph inputs

    @property
    def graph_count(self) -> int:
        return len(self.graphs)

    @property
    def graph_break_count(self) -> int:
        return len(self.breaks)

    @property
    def op_count(self) -> int:
        return sum(len(g.nodes) for g in self.graphs)

    # torch._dynamo.explain's ExplainOutput names for the same facts
    @property
    def break_reasons(self) -> list:
        """Each graph break (its `.reason` and `.location`), in the order the call met them."""
        return self.breaks

    @property
    def ops_per_graph(self) -> list:
        return [[node.op for node in g.nodes] for g in self.graphs]

    @property
    def out_guards(self) -> list:
        return self.guards

    def __str__(self) -> str:
        lines = [f"kiln.compiler.explain: {self.name}",
                 f"  graphs: {self.graph_count}   graph breaks: {self.graph_break_count}   "
                 f"ops: {self.op_count} ({' + '.join(str(len(g.nodes)) for g in self.graphs)})"]
        for i, b in enumerate(self.breaks, 1):
            lines.append(f"  break {i}: {b.reason}")
            lines.append(f"           at {b.location}")
        if self.guards:
            lines.append(f"  guards ({len(self.guards)}; a replay runs only while all hold):")
            lines += [f"    {g.describe()}" for g in self.guards]
        if self.lifted:
            lines.append("  number arguments lifted to graph inputs (a new value replays, "
                         "no trace): " + ", ".join(self.lifted))
        if self.after_replay:
            lines.append("  after each replay, as the traced call did: " +
                         ", ".join(self.after_replay))
        if self.kernel_choices:
            lines.append("  kernels of the compiled programs, as their trial replays decided:")
            lines += [f"    {line}" for line in self.kernel_choices]
        if self.cuda_graphs:
            lines.append("  CUDA graphs of the compiled programs on a GPU:")
            lines += [f"    {line}" for line in self.cuda_graphs]
        for i, g in enumerate(self.graphs):
            artifact = self.artifacts[i] if i < len(self.artifacts) else None
            lines += ["", str(g)]
            if artifact is None:
                lines += ["", f"-- runs eagerly: {self.eager_reason or 'not compiled'} --"]
                continue
            for title, body in artifact.sections():
                lines += ["", f"-- {title} --", body]
        return "\n".join(lines)


def explain(fn, *args, **kwargs) -> ExplainOutput:
    """Compile `fn` once on these arguments (running it, as a compiled function's first call
    does) and print what was captured, where it broke, and the compiled artifact that runs.

    When the call does not compile (a graph break, a Python effect), `fn` is traced once more,
    split at each break, to list every graph; those run eagerly, so no artifact is printed.
    """
    out = explain_report(fn, args, kwargs)
    print(out)
    return out


def explain_report(fn, args: tuple, kwargs: dict) -> ExplainOutput:
    """`explain`'s report without printing it (torch._dynamo.explain returns it silently)."""
    fn = getattr(fn, "_compiled", fn)           # a compiled Module: its CompiledFunction
    target = fn.fn if isinstance(fn, CompiledFunction) else fn
    compiled = CompiledFunction(target, getattr(fn, "backend", "auto"))
    if isinstance(fn, CompiledFunction):        # the numbers it lifted stay lifted
        compiled._lifted = dict(fn._lifted)
        compiled._state_lifted = dict(fn._state_lifted)
    with warnings.catch_warnings():     # a break or a fallback is in the report itself
        warnings.simplefilter("ignore")
        compiled(*args, **kwargs)
    done = [e for e in compiled.entries.values() if e.artifact is not None]
    if done:
        entry = done[-1]
        out = ExplainOutput([entry.traced.graph], [], _function_name(target), entry.guards,
                            [entry.artifact], kernel_choices=kernel_choices(fn),
                            cuda_graphs=cuda_graph_notes(fn) or cuda_graph_notes(compiled),
                            after_replay=[name for name, _ in entry.program.after_replay] +
                            [f"{name} = (a tensor the program computes)"
                             for name, *_ in entry.program.attribute_writes] +
                            [f"{name} = {_number_write(where, value)}"
                             for name, _, where, value in entry.program.number_writes],
                            lifted=_lifted_names(entry.program))
    else:
        reasons = [e.eager_reason for e in compiled.entries.values() if e.eager_reason]
        captured = trace(target, *args, **kwargs)
        out = ExplainOutput(captured.graphs, captured.breaks, _function_name(target),
                            guards.collect(target, by_name=True).guards,
                            [None] * len(captured.graphs),
                            reasons[0] if reasons else None, kernel_choices(fn))
    return out


def cuda_graph_notes(fn) -> list:
    """Per program of a compiled function that runs on a GPU, whether it replays as a CUDA graph
    (`forward cuda graph: captured (N kernels, X MB; R replays)`) or why not, then the launch
    configuration of each kernel tuned on this GPU (`kiln.runtime.triton_tune`)."""
    lines = []
    for entry in getattr(fn, "entries", {}).values():
        for part, executor in (("forward", entry.executor), ("backward", entry.backward)):
            runner = getattr(executor, "cuda_graph", None)
            if runner is not None:
                lines.append(f"{part} {runner.describe()}")
            for step in getattr(executor, "triton_steps", {}).values():
                tuning = getattr(step.launcher, "tuning", None)
                if tuning is not None:
                    lines.append(f"{part} launch configuration {tuning.describe()}")
    return lines


def kernel_choices(fn) -> list:
    """Per fused group of a compiled function's programs so far, whether it runs as generated
    C or on NumPy and the trial times behind that (lines; none before the trials are over)."""
    lines = []
    for entry in getattr(fn, "entries", {}).values():
        for part, executor in (("forward", entry.executor), ("backward", entry.backward)):
            for choice in getattr(executor, "choices", ()):
                lines.append(f"{part} {choice.describe()}")
    return lines


# ----------------------------------------------------------------------------- compile

@dataclass
class CompiledEntry:
    """One guard key's outcome: a replayable program, or the reason it runs eagerly."""

    program: TracedProgram | None
    executor: object = None             # ArrayExecutor or ScheduleExecutor: .run(inputs)
    eager_reason: str | None = None
    calls: int = 0
    graph: object = None                # the optimized graph the executor runs
    pass_stats: list = field(default_factory=list)
    schedule: object = None             # the fusion schedule, when kernels are generated
    writebacks: list = field(default_factory=list)   # binding index per graph.mutations entry
    backward: object = None             # executor of the compiled backward program
    joint: object = None                # JointInfo: which outputs and inputs have gradients
    arg_requires_grad: tuple = ()       # (argument tensor's index, flag) the call set
    copied_outputs: tuple = ()          # outputs eager mode gave memory of their own (a copy)
    out_strides: tuple = ()             # eager's layout per output: `_eager_layouts`
    saved_inputs: tuple = ((), ())      # inputs the backward reads: `_saved_inputs`
    saved_outputs: frozenset = frozenset()  # outputs eager's backward reads (their versions)
    quiet_writes: tuple = ()            # writebacks moving no version counter (`t.data = `)
    partition: object = None            # PartitionReport: what the forward saves
    fetch: list = field(default_factory=list)        # (kind, where) per executor input
    out_dtypes: list = field(default_factory=list)   # dtype per user output
    guards: list = field(default_factory=list)       # Guard: the Python state it assumes
    lifted_bases: frozenset = frozenset()            # buffers of the state it reads
    _check: object = None                            # guards.checker(guards), made once
    _grad_reads: tuple | None = None                 # the inputs bound to a `.grad`, made once
    _artifact_at: tuple = ()                         # the kernel choices it was read at
    traced: object = None               # the TracedProgram compiled (kept if replays fail)
    compiled: object = None             # CompiledProgram: what the passes made of it
    target: str = ""                    # "c", "triton" or "numpy"
    _artifact: object = None

    @property
    def artifact(self):
        """The CompiledArtifact: what was traced, compiled and runs (None when eager). Read
        off the executors once, on first use (after their C build: a failed build shows)."""
        if self.compiled is None:
            return None
        executors = {"forward": self.executor, "backward": self.backward}
        # the kernel trials (schedule_executor) may move a group to NumPy after a few replays:
        # what runs then is read again
        decided = tuple(id(getattr(ex, "choices", None)) for ex in executors.values())
        if self._artifact is None or self._artifact_at != decided:
            from kiln.compiler.artifact import build_artifact
            self._artifact = build_artifact(self.traced, self.compiled, executors, self.target)
            self._artifact_at = decided
        return self._artifact

    def valid(self, leaves) -> bool:
        """Whether this entry may run for a call with tensors `leaves`: every guard holds, each
        written `.grad` is None exactly as when traced, and no argument shares memory with the
        state the program writes."""
        check = self._check
        if check is None:
            check = self._check = guards.checker(self.guards)
        if not check():
            return False
        program = self.program
        if program is None:
            return True
        if program.grad_writes and not _grad_state_matches(program, leaves):
            return False
        reads = self._grad_reads
        if reads is None:
            # inputs that are some tensor's `.grad` of the moment: (index, shape, dtype)
            reads = self._grad_reads = tuple(
                (i, program.graph.inputs[i].shape, program.graph.inputs[i].dtype)
                for i, b in enumerate(program.bindings) if b.kind == "grad")
        for i, shape, dtype in reads:
            grad = _bound_tensor(program, i, leaves)
            if grad is None or tuple(grad.shape) != shape or grad.dtype is not dtype:
                return False
        if self.writebacks and self.lifted_bases:
            for t in leaves:
                if id(_base(t._data)) in self.lifted_bases:
                    return False
        return True
    device: object = None               # where the program runs (a 0-d CPU input is moved there)


def _fetch_plan(program: TracedProgram, n: int, device) -> list:
    """How a replay finds each of the first `n` graph inputs, resolved once per entry; random
    numbers are drawn on the host and moved to `device`, the program's."""
    plan = []
    for i, b in enumerate(program.bindings[:n]):
        if b.kind == "arg":
            plan.append((_ARG, b.path))
        elif b.kind == "seed":
            plan.append((_SEED, (b.generator, b.draw, device)))
        elif b.kind == "grad":
            plan.append((_GRAD, i))
        elif b.kind == "scalar":
            plan.append((_SCALAR, (*b.path, device.xp)))
        elif b.kind == "number":
            plan.append((_NUMBER, (b.path, b.draw, device.xp)))
        else:
            plan.append((_LIFTED, b.tensor))
    return plan


_ARG, _LIFTED, _GRAD, _SEED, _SCALAR, _PLACE, _NUMBER = range(7)


def kernel_target(backend: str, device) -> str:
    """What a backend generates on `device`: "c", "triton" or "numpy" (no kernels).

    `auto` generates Triton kernels for CUDA tensors and C kernels for CPU tensors (the NumPy
    executor when no C compiler works, with a one-time message saying why); `c` asks for C
    kernels, `triton` for Triton kernels (Triton's interpreter on CPU memory); `numpy` never
    fuses.
    """
    if backend == "numpy":
        return "numpy"
    if device.type == "cpu" and backend in ("auto", "c"):
        from kiln.runtime import c_build
        problem = c_build.compiler_problem()
        if problem is not None:
            _note_no_compiler(problem)
            return "numpy"
        return "c"
    return "triton"


def compile_program(graph, joint, target: str, xp, stage: list | None = None) -> tuple:
    """Compile traced `graph` (`joint`: its JointInfo, or None) for `target`: the pipeline's
    named steps (`kiln.passes.pipeline.STEPS`), ending in `lower_schedule(schedule, target)`.

    Returns:
        (CompiledProgram, forward executor, backward executor or None). What the passes make
        of the graph and its lowered programs (C kernels included) come from the program cache
        when this graph was compiled before, and go there when not.
    """
    # codegen and the passes load on the first compile, not at `import kiln` (~40 ms)
    from kiln import program_cache
    from kiln.codegen.lower import lower_schedule
    from kiln.passes import pipeline
    lower = None if target == "numpy" else functools.partial(lower_schedule, target=target)
    key = program_cache.program_key(graph, joint, target)
    found = program_cache.load(key, graph, None if joint is None else joint.num_primals)
    if found is not None:
        compiled, lowered = found
        for name, part in (("forward", compiled.forward), ("backward", compiled.backward)):
            if part is not None and part.schedule is not None:
                part.lowered = lowered.get(name)
                if part.lowered is None:        # Triton kernels are not kept: lower again
                    pipeline.lower_part(part, lower)
    else:
        if stage is not None and lower is not None:
            stage[0] = f"optimizing the graph and generating {target} kernels"
        # a GPU program's convolutions become implicit-GEMM kernels at lowering
        # (codegen/conv.py), which looks for their unfold + matmul, not the CPU's products
        compiled = pipeline.compile_passes(graph, joint, fused=target != "numpy", lower=lower,
                                           conv_products=target != "triton",
                                           thin_kept=_thin_kept if target == "c" else None,
                                           pieces=target == "c")
    if stage is not None and lower is not None:
        stage[0] = f"building {target} kernels"
    executors = {"forward": build_executor(compiled.forward, xp)}
    if compiled.backward is not None:
        executors["backward"] = build_executor(compiled.backward, xp)
    if compiled.forward.output_roots is None:
        compiled.forward.output_roots = output_roots(compiled.forward.graph)
    if found is None:
        program_cache.store(key, compiled, {part: getattr(ex, "rendered", None)
                                            for part, ex in executors.items()})
    return compiled, executors["forward"], executors.get("backward")


def _thin_kept(m: int, k: int, n: int, dtype) -> bool:
    """The thin products the C backend's executor computes with its own kernel as they are
    (`kiln.runtime.gemm_cpu`), which the layout pass then leaves untransposed."""
    from kiln.runtime import gemm_cpu
    return dtype.name == "float32" and gemm_cpu.takes(m, k, n)


def lower_program(schedule, target: str):
    """The LoweredProgram (with its memory plan) of a fused `schedule` for `target` ("c" or
    "triton"): the pipeline's last steps, for running a schedule built by hand (tests)."""
    from kiln.codegen.lower import lower_schedule
    from kiln.passes import pipeline
    part = pipeline.CompiledPart(schedule.graph, [], schedule)
    return pipeline.lower_part(part, functools.partial(lower_schedule, target=target)).lowered


def build_executor(part, xp):
    """The executor of one compiled program (a `CompiledPart`): its lowered program, or the
    NumPy (CuPy) executor of its optimized graph when it was not fused."""
    if part.lowered is None:
        from kiln.passes.memory import plan_nodes       # see compile_program
        return ArrayExecutor(part.graph, xp, plan_nodes(part.graph))
    from kiln.runtime.schedule_executor import ScheduleExecutor     # see compile_program
    return ScheduleExecutor(part.lowered, xp)


_NO_COMPILER_NOTED: list = []


def _note_no_compiler(problem: str) -> None:
    """Say once per process that compiled CPU code runs on NumPy, and why."""
    if not _NO_COMPILER_NOTED:
        _NO_COMPILER_NOTED.append(problem)
        warnings.warn(f"kiln.compile: no working C compiler, so compiled functions run on the "
                      f"NumPy executor on the CPU: {problem}", stacklevel=user_stacklevel())


@dataclass
class CompiledFunction:
    fn: object
    backend: str = "auto"
    fullgraph: bool = False
    # torch.compile's `dynamic`: None lifts a number argument at its second value, True at its
    # first, False never (each value traces)
    dynamic: bool | None = None
    entries: dict = field(default_factory=dict)      # full key -> CompiledEntry, in trace order
    warned: set = field(default_factory=set)
    retraces: int = 0
    _chains: dict = field(default_factory=dict)      # guard key -> full keys of its entries
    _effect_keys: set = field(default_factory=set)   # keys whose trace changed Python state
    _flags_set: dict = field(default_factory=dict)   # (key, place) -> value a trace set there
    # numbers in Python state that an entry's trace set (place -> (the guard on what that call
    # found there, the value it set)); those since seen holding another value, lifted (place
    # -> that guard: traced as a SymbolicNumber, read by the program at run time and written
    # back by each replay: `_lift_counters`); those whose lifted trace read them into Python
    # (place -> what read it), guarded by value as before
    _flag_places: dict = field(default_factory=dict)
    _state_lifted: dict = field(default_factory=dict)
    _state_specialised: dict = field(default_factory=dict)
    # the attribute names the call can read (`guards.code_reads`), the only non-tensor fields
    # of a batch object the key holds; None: every field (it reads by computed name)
    _record_fields: frozenset | None = frozenset()
    # int/float arguments, (position, None) or (None, keyword): the guard value each had at
    # its first trace; those since seen with another value, lifted to graph inputs (their
    # type: the key holds only that); those whose lifted trace read the value into Python
    _numbers_seen: dict = field(default_factory=dict)
    _lifted: dict = field(default_factory=dict)
    _specialised: dict = field(default_factory=dict)    # argument -> what read it
    _numbers_now: tuple | None = None   # (args, kwargs) while a call's entry is looked up

    def __post_init__(self):
        # a function's name and doc; for a Module (or other object) not its __dict__, whose
        # copies would go stale (`training`, the parameter registry) as the module changes
        plain = isinstance(self.fn, (types.FunctionType, types.MethodType))
        functools.update_wrapper(self, self.fn, updated=functools.WRAPPER_UPDATES if plain
                                 else ())
        self._not_traceable = _not_traceable(self.fn)
        self._unread = _unread_parameters(self.fn)
        if len(_LIVE) >= 1024:      # drop the references of collected functions now and then
            _LIVE[:] = [ref for ref in _LIVE if ref() is not None]
        _LIVE.append(weakref.ref(self))

    @property
    def _orig_mod(self):
        """The compiled module (or function) itself, as torch's OptimizedModule names it."""
        return self.fn

    def forget(self) -> None:
        """Drop every traced entry: the next call traces again (`reset()`)."""
        self.entries.clear()
        self._chains.clear()
        self._effect_keys.clear()
        self._flags_set.clear()
        self._flag_places.clear()
        self._state_lifted.clear()
        self._state_specialised.clear()
        self._record_fields = frozenset()
        self._numbers_seen.clear()
        self._lifted.clear()
        self._specialised.clear()
        self.warned.clear()
        self.retraces = 0

    def __getattr__(self, name: str):
        """Everything else is the wrapped object's: `torch.compile(model)` keeps
        `model.parameters()`, `.train()`, `.state_dict()` working, as PyTorch's wrapper does."""
        if name.startswith("_") or name in ("fn", "entries", "warned"):
            raise AttributeError(name)
        return getattr(self.__dict__["fn"], name)

    def __get__(self, obj, objtype=None):
        return self if obj is None else functools.partial(self.__call__, obj)

    def _guard_key(self, args, kwargs) -> tuple:
        """(key, leaves): what an entry is specialized to, and the tensors of this call.

        The key holds each tensor's shape, strides, dtype, device and requires_grad (strides:
        eager's outputs take their layout from the inputs', and a replay gives eager's, as
        recorded by the trace: `CompiledEntry.out_strides`), which of them share memory, the
        grad mode, the autocast state (a trace records autocast's casts), the non-tensor
        arguments by type and value (of a batch object, only the fields named in
        `_record_fields`), and the default dtype and device. What the function reads from
        Python (globals, closures, modules, optimizers) is checked by each entry's guards
        (`kiln.compiler.guards`).
        """
        if not kwargs and all(type(a) is Tensor for a in args):
            leaves, tree = args, len(args)            # the common call: tensors only
        else:
            if self._unread is not None:
                args, kwargs = _unread_as_none(self._unread, args, kwargs)
            if self._lifted:
                args, kwargs = _lifted_as_types(self._lifted, args, kwargs)
            leaves, tree = _flatten_args((args, kwargs))
            tree = _typed_tree(tree, self._record_fields)
        tensors = tuple((t._data.shape, t._data.strides, t.dtype, t.device, t.requires_grad)
                        for t in leaves)
        # the default dtype and device decide what `kiln.ones(3)` in the function makes
        return (tensors, _alias_pattern(leaves), STATE.grad_enabled, _autocast_key(), tree,
                get_default_dtype(), get_default_device(), _own_attributes(leaves)), leaves

    def __call__(self, *args, **kwargs):
        if STATE.tracer is not None:            # compiled code called inside a trace: inline
            return self.fn(*args, **kwargs)
        stance = current_stance()
        if stance == "force_eager":
            return self.fn(*args, **kwargs)
        eager_mode = _eager_autograd_mode()
        if eager_mode is not None:
            # a replay would neither pack saved tensors nor carry tangents
            if self.fullgraph:
                raise GraphBreak(f"called inside {eager_mode}", _where(self.fn))
            self._note(eager_mode, f"{_function_name(self.fn)} is called inside {eager_mode}; "
                       "it runs eagerly while that is active")
            return self.fn(*args, **kwargs)
        if pending_checks.capturing():
            self._note("cuda graph capture", f"{_function_name(self.fn)} is called while a "
                       "CUDA graph is being captured (kiln.cuda.graph); it runs eagerly there, "
                       "its kernels captured into that graph (kiln.compile replays its own "
                       "programs as CUDA graphs: no capture of yours is needed)")
            return self.fn(*args, **kwargs)
        if STATE.dispatch_modes:
            # a replay runs no primitives one by one: the mode would see none of them
            mode = type(STATE.dispatch_modes[-1]).__name__
            if self.fullgraph:
                raise GraphBreak(f"the TorchDispatchMode {mode} is active", _where(self.fn))
            self._note("torch_dispatch", f"{_function_name(self.fn)} is called with the "
                       f"TorchDispatchMode {mode} active; it runs eagerly, so the mode sees "
                       "each op")
            return self.fn(*args, **kwargs)
        overridden = _torch_function.untraceable(args, kwargs) or \
            _dispatch_subclass.untraceable(args, kwargs)
        if overridden is not None:
            if self.fullgraph:
                raise GraphBreak(f"{overridden} would run on every call", _where(self.fn))
            tag = "torch_dispatch" if "__torch_dispatch__" in overridden else "torch_function"
            self._note(tag, f"{_function_name(self.fn)} is called with "
                       f"{overridden} in effect; it runs eagerly, so that runs on every call")
            return self.fn(*args, **kwargs)
        if self._not_traceable is not None:
            if self.fullgraph:
                raise GraphBreak(self._not_traceable, _where(self.fn))
            self._note("generator", f"{_function_name(self.fn)} {self._not_traceable}; it "
                       "runs eagerly")
            return self.fn(*args, **kwargs)
        if self._lifted or self._state_lifted:     # (what the entries' comparisons read)
            self._numbers_now = (args, kwargs)
        key, leaves = self._guard_key(args, kwargs)
        chain = self._chains.get(key)
        entry = self.entries[chain[0]] if chain is not None else None
        if entry is not None and not entry.valid(leaves):       # (most calls: the first holds)
            entry = self._valid_entry(key, leaves, first=1)
        if entry is None and self._record_fields_grew(key, args, kwargs):
            key, leaves = self._guard_key(args, kwargs)
            entry = self._valid_entry(key, leaves)
        if entry is None and len(self.entries) < RECOMPILE_LIMIT and \
                self._numbers_changed(args, kwargs):
            self._numbers_now = (args, kwargs)
            key, leaves = self._guard_key(args, kwargs)
            entry = self._valid_entry(key, leaves)
        self._numbers_now = None
        if entry is not None:
            entry.calls += 1
            if entry.program is None:
                return self.fn(*args, **kwargs)
            if entry.calls == 1:
                with _collector_paused():
                    return self._replay(entry, leaves, args, kwargs)
            return self._replay(entry, leaves, args, kwargs)
        if stance == "eager_on_recompile":
            return self.fn(*args, **kwargs)
        if stance == "fail_on_recompile":
            raise RuntimeError(f"Detected recompile when torch.compile stance is "
                               f"'fail_on_recompile': {_function_name(self.fn)} has no "
                               f"compiled entry valid for this call ({_where(self.fn)})")
        if len(self.entries) >= RECOMPILE_LIMIT:
            if "recompile" not in self.warned:      # what changed is worked out once
                self._numbers_now = (args, kwargs)
                self._note("recompile", f"{_function_name(self.fn)} hit the recompile limit "
                           f"({RECOMPILE_LIMIT} traced entries); running it eagerly from now "
                           f"on{_last_failure(self, key)}")
                self._numbers_now = None
            return self.fn(*args, **kwargs)
        with _collector_paused():
            return self._trace_and_run(key, args, kwargs)

    def _valid_entry(self, key, leaves, first: int = 0) -> CompiledEntry | None:
        """The first entry of `key` from the `first` on whose guards hold, moved to the front
        of its chain: checked first next call (a training step's first entry, traced before the
        optimizer had state, would fail its guards every call)."""
        chain = self._chains.get(key)
        if chain is None:
            return None
        for i in range(first, len(chain)):
            entry = self.entries[chain[i]]
            if entry.valid(leaves):
                if i:
                    chain.insert(0, chain.pop(i))
                return entry
        return None

    def _record_fields_grew(self, key, args, kwargs) -> bool:
        """Before a trace of a call with batch objects: add the attribute names the call can
        read now (`guards.code_reads`) to `_record_fields`. True when they grew (the key is
        made again): a field the call does not read (a growing `history`, a step counter)
        stays out of the key, so changing it traces nothing again, while every entry's key
        holds the fields its trace could read."""
        if not _has_record(key[4]) or self._record_fields is None:
            return False
        records = _batch_objects(args, kwargs)
        reads = guards.code_reads(self.fn, _object_arguments(args, kwargs))
        if reads.everything or any(id(r) in reads.whole for r in records):
            self._record_fields = None
            return True
        if reads.names <= self._record_fields:
            return False
        self._record_fields |= reads.names
        return True

    def _numbers_changed(self, args, kwargs) -> bool:
        """Before a trace: whether an int/float argument now has another value than at its
        first trace (then it is lifted: traced as a `SymbolicNumber`, keyed by type alone, and
        the key is made again). One whose lifted trace read it into Python stays keyed."""
        grew = False
        if self.dynamic is False:
            return False
        if self._lifted:
            # the code it reaches may have changed since (a global rebound to a function
            # calling type()): lifted numbers go back to their keys
            unseen = _type_reads(self.fn)
            if unseen is not None:
                self._specialised.update(dict.fromkeys(self._lifted, unseen))
                self._lifted.clear()
                return True
        for where, value in _number_arguments(args, kwargs):
            if where in self._lifted or where in self._specialised or self._unread is not None \
                    and (where[0] in self._unread[0] or where[1] in self._unread[1]):
                continue
            seen = self._numbers_seen.setdefault(where, guards.scalar_key(value))
            if seen != guards.scalar_key(value) or self.dynamic:
                unseen = _type_reads(self.fn)
                if unseen is not None:
                    self._specialised[where] = unseen
                    continue
                self._lifted[where] = True
                grew = True
        return grew

    def _symbolic_arguments(self, args, kwargs) -> tuple:
        """(args, kwargs, proxies): the call's arguments with each lifted number as a
        SymbolicNumber, for the traced call."""
        proxies = []
        if not self._lifted:
            return args, kwargs, proxies
        names = _parameter_names(self.fn)
        args, kwargs = list(args), dict(kwargs)
        for where, value in _number_arguments(args, kwargs):
            if where in self._lifted:
                i, k = where
                name = k if k is not None else names[i] if i < len(names) else f"arg{i}"
                proxy = SymbolicNumber(value, where, name)
                proxies.append(proxy)
                if k is None:
                    args[i] = proxy
                else:
                    kwargs[k] = proxy
        return tuple(args), kwargs, proxies

    def _condition_now(self, expression: tuple) -> bool:
        """A comparison a trace took into Python (`symbolic_number._condition`), of the
        arguments of the call being looked up."""
        args, kwargs = self._numbers_now
        try:
            return bool(evaluate(expression, args, kwargs))
        except (ArithmeticError, ValueError):     # (`computes`: eager raises there: trace)
            return None

    def _read_lifted(self, proxies: list, result) -> tuple:
        """After a trace with lifted numbers: (result, whether any was read into Python). Such
        a number is keyed by value from now on (the proxy answered every use with the
        number, so the call's result stands). A proxy in the result is returned as its
        number, and counts as read (a replay would return a stale one)."""
        returned = _without_proxies(result)
        escaped = returned is not result or _holds_proxy(returned)
        for proxy in proxies:
            if escaped:
                proxy.specialise("returned")
            if proxy.specialised is not None:
                self._lifted.pop(proxy.where, None)
                self._specialised[proxy.where] = proxy.specialised
        read = any(p.specialised is not None for p in proxies)
        return returned, read

    def _lift_counters(self) -> None:
        """Before a trace: lift each number in Python state that an entry's trace set
        (`_flag_places`) and that now holds another value than that trace found there (a
        counter: `self.n += 1`, a hand-written Adam's `state["step"] += 1`), as
        `_numbers_changed` lifts an argument seen with a second value: traces read it as a
        `SymbolicNumber` from now on (`_state_proxies`). One read into Python by a lifted
        trace stays guarded by value (`_state_specialised`)."""
        if self.dynamic is False or not self._flag_places:
            return
        for at, (g, after) in list(self._flag_places.items()):
            if at in self._state_lifted or at in self._state_specialised or \
                    ".param_groups[" in g.source:
                # (an optimizer's hyperparameter, which a scheduler the call steps sets, and
                # each replay steps again: `replay_after`)
                continue
            now = g.read()
            if type(now) not in _STATE_NUMBERS or g.expected[0] is not type(now) or \
                    type(after) is not type(now) or guards.scalar_key(now) == g.expected:
                continue
            unseen = _type_reads(self.fn)
            if unseen is not None:
                self._state_specialised[at] = unseen
                continue
            self._state_lifted[at] = g

    def _state_proxies(self) -> list:
        """For a trace: each lifted number in Python state replaced there by its proxy, whose
        `where` ("state", read) a replay reads afresh. Returns [(guard, proxy)]."""
        found = []
        for g in self._state_lifted.values():
            value = g.read()
            if type(value) not in _STATE_NUMBERS:       # removed or replaced since
                continue
            names = re.findall(r"[A-Za-z_]\w*", g.source)
            proxy = SymbolicNumber(value, ("state", g.read), names[-1] if names else "number")
            g.read.write(proxy)
            found.append((g, proxy))
        return found

    def _state_traced(self, placed: list, finals: dict, result) -> tuple:
        """After a trace with lifted numbers in state (`placed`: [(guard, proxy)], `finals`:
        place -> what the call left there, proxies already put back as numbers): (result with
        no proxy in it, {place: (guard, type)} for the places the program reads at run time,
        the writes a replay makes there (`TracedProgram.number_writes`)). A proxy the call
        read into Python, returned or stored elsewhere keeps its place guarded by value from
        now on; the call's change there is then an effect, as without lifting."""
        returned = _proxies_in(result)
        for proxy in returned:
            proxy.specialise("returned")
        if returned:
            result = _without_proxies(result)
        lifted, writes = {}, []
        for g, proxy in placed:
            final = finals.get(g.read.at, proxy)
            if proxy.specialised is not None:
                continue
            if type(final) is SymbolicNumber and final.specialised is not None:
                proxy.specialise(final.specialised)
            elif type(final) is not SymbolicNumber and type(final) not in _STATE_NUMBERS:
                proxy.specialise("replaced")            # deleted, or no number any more
        for g, proxy in placed:
            at = g.read.at
            if proxy.specialised is not None:
                self._state_lifted.pop(at, None)
                self._state_specialised[at] = proxy.specialised
                continue
            lifted[at] = (g, type(proxy.value))
            final = finals[at]
            if final is proxy:
                continue                                # read, not changed
            if type(final) is SymbolicNumber:
                writes.append((g.source, g.read.write, final.where, None))
            else:
                writes.append((g.source, g.read.write, None, final))
        return result, lifted, writes

    def _trace_again_or_eagerly(self, key, result, reason: str):
        """The traced call changed Python state a replay would not (`reason`): the first time
        for this key it may be lazy initialization, so the next call traces again; a second
        time it is an effect of every call, and this key runs eagerly with a warning (or
        raises, with fullgraph). Returns the traced call's result."""
        if key not in self._effect_keys and self.retraces < RECOMPILE_LIMIT:
            self._effect_keys.add(key)
            self.retraces += 1
            return result
        if self.fullgraph:
            raise GraphBreak(reason, _where(self.fn))
        self._add_entry(key, CompiledEntry(None, eager_reason=reason))
        self._note("effect", f"{reason}; this function runs eagerly")
        return result

    def _note(self, tag: str, message: str) -> None:
        if tag not in self.warned:
            self.warned.add(tag)
            warnings.warn(f"kiln.compile: {message}", stacklevel=user_stacklevel())

    def _run_bfloat16_eagerly(self, key, args, kwargs, run: bool = True, kind: str = "bfloat16",
                              what: str = ""):
        """A function that computes with bfloat16 tensors for the Triton backend (or with
        complex tensors) runs eagerly from now on (for this guard key), with a warning: kiln's
        Triton kernels have no bfloat16 (nor has kiln on CUDA), its kernels and passes no
        complex numbers, and eager computes them as PyTorch's CPU kernels do
        (kiln.tracer.dispatch). Checked before tracing, as a traced optimizer step takes other
        branches (tensor hyperparameters) than eager's. `what` names the tensor found.
        The C kernels and the NumPy executor compute bfloat16 (`kiln.codegen.c`)."""
        if kind == "bfloat16" and what:
            reason = (f"{_function_name(self.fn)} reads {what} as a tensor rounded to "
                      "bfloat16, where eager computes with the number itself (as float32); "
                      "compiled code would compute another value")
        elif kind == "bfloat16":
            reason = (f"{_function_name(self.fn)} computes with bfloat16 tensors (kiln's "
                      f"{self.backend!r} backend has no bfloat16; 'auto', 'c' and 'numpy' "
                      "compile it on the CPU)")
        else:
            reason = (f"{_function_name(self.fn)} computes with {kind} tensors{what} (compiled "
                      f"code has no {kind})")
        if self.fullgraph:
            raise GraphBreak(reason, _where(self.fn))
        self._add_entry(key, CompiledEntry(None, eager_reason=reason))
        self._note(kind, f"{reason}; this function runs eagerly")
        return self.fn(*args, **kwargs) if run else None

    def _add_entry(self, key, entry: CompiledEntry) -> None:
        full = (key, len(self.entries))
        self.entries[full] = entry
        self._chains.setdefault(key, []).append(full)

    def _trace_and_run(self, key, args, kwargs):
        mode = "raise" if self.fullgraph else "abandon"
        reachable: dict = {}
        names_before = _tensor_names(self.fn, tensors=reachable)
        # whether each `.grad` is None now, before the function's own code (zero_grad) runs;
        # arguments are lifted before it runs, so their GradWrite.was_none says it already
        none_at_call = {i: t.grad is None for i, t in reachable.items()}
        # and each requires_grad, of what it reaches and of its arguments (a replay sets again
        # what the call flips: `x.requires_grad_()`, WGAN's `p.requires_grad = False`)
        leaves = self._guard_key(args, kwargs)[1]
        rg_at_call = ({i: t.requires_grad for i, t in reachable.items()},
                      leaves, [t.requires_grad for t in leaves],
                      {id(t): t.grad_fn for t in [*leaves, *reachable.values()]
                       if isinstance(t, Tensor)})
        try:
            grad_candidates = _grad_candidates(self.fn, args, kwargs, reachable)
            # (with attribute counts: an attribute the call adds to a plain object it reaches,
            # `s.count = getattr(s, "count", 0) + 1`, is a change a replay would not make)
            before = guards.collect(self.fn, _object_arguments(args, kwargs),
                                    attribute_counts=True)
            arg_state = guards.collect(None, _argument_roots(args, kwargs),
                                       attribute_counts=True)
        except Exception as e:        # cannot say what a replay would assume: run eagerly
            reason = f"reading what it can reach failed ({e!r})"
            self._add_entry(key, CompiledEntry(None, eager_reason=reason))
            self._note("guards", f"{_function_name(self.fn)}: {reason}; it runs eagerly")
            return self.fn(*args, **kwargs)
        if self.backend not in _BFLOAT16_BACKENDS and _reaches_bfloat16(args, kwargs, reachable):
            return self._run_bfloat16_eagerly(key, args, kwargs)
        found = _reached_complex(args, kwargs, reachable, names_before)
        if found is not None:
            return self._run_bfloat16_eagerly(key, args, kwargs, kind="complex", what=found)
        rng = random_states((g.source, g.expected) for g in before.guards if g.kind == "id")
        grad_state = _grad_presence(grad_candidates)
        # what custom Functions' forward and backward can reach, as they were before each ran
        function_guards: list = []

        def on_function(cls) -> None:
            try:
                function_guards.extend(guards.custom_function(cls).guards)
            except Exception as e:      # cannot say what a replay would assume: a break
                STATE.tracer.graph_break(f"reading what {cls.__name__} can reach failed "
                                         f"({e!r})")
        call_args, call_kwargs, proxies = self._symbolic_arguments(args, kwargs)
        self._lift_counters()
        placed = self._state_proxies()
        read = False
        try:
            tracer, result = _trace_call(
                self.fn, args, kwargs, mode, names=names_before, watch=True,
                grad_holders={id(t.grad): t for t in grad_candidates if t.grad is not None},
                grad_state=(grad_candidates, grad_state), on_function=on_function,
                call=(call_args, call_kwargs), numbers=bool(proxies or placed))
        except BaseException as error:
            # the user's error, or one a proxy caused where the number would not have (C code
            # checking for a real float: json.dumps): either way its numbers are keyed by
            # value from now on, as without lifting; the error says so
            _put_back_numbers(placed, self.fn, args, kwargs)
            for proxy in proxies + [p for _, p in placed]:
                proxy.specialise("the traced call raised")
            self._read_lifted(proxies, None)
            self._state_traced(placed, {}, None)
            if (proxies or placed) and isinstance(error, Exception):
                lifted = [p.name for p in proxies] + [g.source for g, _ in placed]
                error.add_note(
                    f"(kiln.compile traced this call with the number(s) {', '.join(lifted)} "
                    "as graph inputs, since they changed between calls; code that needs a "
                    "real int or float (json.dumps, a C extension) can raise here where eager "
                    "would not. Later calls read them by value; kiln.compile(..., "
                    "dynamic=False) never lifts numbers.)")
            raise
        counted, number_writes = {}, []
        if placed:
            # numbers in state the trace read as proxies: each place gets its number back
            finals = _put_back_numbers(placed, self.fn, args, kwargs)
            result, counted, number_writes = self._state_traced(placed, finals, result)
        if proxies:
            result, read = self._read_lifted(proxies, result)
            if any(p.specialised == "returned" for p in proxies):
                tracer.release()        # the program would return the proxy: trace again
                return result
            if read:
                # the trace holds the value where the call read it into Python: an entry for
                # this value (its lifted operands still read the argument, which is the same)
                key = self._guard_key(args, kwargs)[0]
        # the lifted numbers whose comparisons the call took into Python: guards of its entry
        tracer.number_proxies = ([] if read else proxies) + \
            [p for _, p in placed if p.specialised is None]
        draws = random_draws(rng)
        if draws and not tracer.breaks:
            tracer.release()
            tracer.breaks.append(GraphBreak(f"a random draw from {draws[0]}, which a replay "
                                            "would skip", _where(self.fn)))
            if self.fullgraph:
                raise tracer.breaks[0]
        if tracer.breaks:
            b = tracer.breaks[0]
            self._add_entry(key, CompiledEntry(None, eager_reason=str(b)))
            self._note("break:" + b.location, f"graph break in {_function_name(self.fn)}: "
                       f"{b.reason} at {b.location}; this function runs eagerly")
            _dump_if_requested(self, tracer.programs)
            return result
        if self.backend not in _BFLOAT16_BACKENDS and _computes_in_bfloat16(tracer.graph):
            # bfloat16 made inside the function: the traced call ran eagerly, its result stands
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False)
            return result
        read = _number_rounded_to_bfloat16(tracer)
        if read is not None:
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False, what=read)
            return result
        made = _complex_node(tracer.graph)
        if made is not None:
            # complex made inside (an rfft of a real input): likewise
            tracer.release()
            self._run_bfloat16_eagerly(key, args, kwargs, run=False, kind="complex", what=made)
            return result
        # (an optimizer's state filled in by its first step is not an effect; a number already
        # there that the step changes, a hand-written Adam's `state["step"] += 1`, is one)
        effects = [g for g in guards.changed(before.guards) + guards.changed(arg_state.guards)
                   + guards.changed(function_guards) if not g.lazy or g.kind == "value"]
        if counted:
            # numbers in state the program reads and each replay writes (`_lift_counters`)
            effects = [g for g in effects if getattr(g.read, "at", None) not in counted]
        if proxies or placed:
            # a learning rate computed from the step number and set in the group: each replay
            # sets it again
            group_writes, effects = _group_number_writes(effects)
            number_writes = number_writes + group_writes
        if (proxies or placed) and _stored_proxies(effects):
            self._read_lifted(proxies, result)
            for g, proxy in placed:         # (stored where `_put_back_numbers` did not look)
                if proxy.specialised is not None:
                    self._state_lifted.pop(g.read.at, None)
                    self._state_specialised[g.read.at] = proxy.specialised
            tracer.release()
            return result
        run_time = {(c, k) for c, k, _, _ in tracer.scalars}
        if tracer.after_replay:
            # numbers the program reads on every call (a learning rate) that a Python step it
            # repeats after each replay (the scheduler's) changed: the replay changes them too
            read = run_time - tracer.python_reads
            effects = [g for g in effects if g.place not in read]
        # flags the call set (`model.train()`): a replay sets them again, and runs only when
        # each held what the trace found there. A place set to another value than an earlier
        # trace of this key set it to is a counter, which stays an effect.
        flags, effects = guards.flag_writes(effects, run_time)
        counters = [g for at, (g, value) in flags.items()
                    if self._flags_set.get((key, at), value) != value]
        if counters:
            effects, flags = effects + counters, {}
        # tensors the call computed and stored (a pruning hook's `module.weight`, an output
        # kept on the module): outputs of the program, written there by each replay
        held = collections.Counter(id(g.expected) for g in before.guards + arg_state.guards
                                   if g.kind == "id" and isinstance(g.expected, Tensor))
        writes, effects = guards.tensor_writes(
            effects, lambda t: _computed(tracer, t) or _detached_result(tracer, t),
            lambda t: id(t) in tracer.input_of and not (_carried(tracer, t) and held[id(t)] == 1))
        # a stored `h.detach()` is replayed as a copy of its own: only sound where nothing
        # else the caller gets shares that memory
        shared = _shares_memory_with_others(tracer, writes, flatten(result,
                                                                    tracer.returned_items)[0])
        shared = [writes.pop(at)[0] for at in shared]
        effects += shared
        if effects:
            # the call changed Python state a replay would leave alone: once may be lazy
            # initialization (trace again), twice is an effect of every call (run eagerly)
            tracer.release()
            what = ", ".join(dict.fromkeys(g.source for g in effects[:3]))
            # a counter the trace read into Python (`math.sqrt(1 - b ** step)`) stays keyed
            reads = dict.fromkeys(self._state_specialised.get(getattr(g.read, "at", None))
                                  for g in effects)
            reads.pop(None, None)
            if reads:
                what += (f"; a counter the trace read into Python ({', '.join(reads)}) is "
                         "keyed by value, so each call's change is an effect")
            if shared:
                what += ("; a tensor stored there shares memory with another the call returns "
                         "or stores, which a replay's stored copy would not: store a .clone()")
            return self._trace_again_or_eagerly(key, result, (
                f"{_function_name(self.fn)} changes Python state a replay would not change "
                f"({what})"))
        # places past the walk's limits, where a change the call made would not be seen
        unseen = [g for g in before.guards + arg_state.guards if g.kind == "unguarded"]
        try:
            added = len(self.entries)
            result = self._compile_traced(key, tracer, result, reachable, names_before,
                                          none_at_call, args, kwargs, flags, writes, unseen,
                                          rg_at_call, (counted, number_writes))
            if proxies and not read and any(p.specialised is not None for p in proxies):
                # read while the backward was derived (a custom Function's backward branching
                # on a number its ctx holds): the entry holds that value, not any value
                self._read_lifted(proxies, None)
                for full in list(self.entries)[added:]:
                    self.entries[full].program = None
                    self.entries[full].eager_reason = "it read a lifted number in its backward"
            return result
        except _StageFailed as failure:
            # the traced call already ran the function eagerly: its result stands, and its
            # side effects are not repeated; this key runs eagerly from now on
            tracer.release()
            if self.fullgraph:
                raise failure.error
            reason = f"{failure.stage} failed ({failure.error!r})"
            self._add_entry(key, CompiledEntry(None, eager_reason=reason))
            self._note("build", f"compiling {_function_name(self.fn)}: {reason}; it runs "
                       "eagerly")
            return result

    def _compile_traced(self, key, tracer, result, reachable, names_before, none_at_call,
                        args, kwargs, flags=None, writes=None, unseen=(), rg_at_call=None,
                        counters=({}, [])):
        leaves_in = _flatten_args((args, kwargs))[0]     # (as the bindings count them)
        num_ops = len(tracer.graph.nodes)        # the function's own, before its backward
        # what the program returns: the function's value, then each tensor it stored that the
        # value does not hold
        items = tracer.returned_items       # `return loss.item()`: the tensor is the output
        returned = flatten(result, items)[0]
        extra = [t for _, t in (writes or {}).values() if all(t is not r for r in returned)]
        traced = (result, extra) if writes else result
        outputs, tree = flatten(traced, items)
        not_rebuilt = _unreplayable_return(tree)
        consumed = [i for i, t in enumerate(outputs)
                    if t.requires_grad and t.grad_fn is not None and not _differentiable(t)]
        # a tensor the call was given (or read) and returns unchanged, or written in place
        # outside autograd (a parameter an optimizer stepped), is returned itself once the
        # replay's writes are in it: it needs no backward of its own (its gradient
        # accumulates into it, as in eager)
        given = {i: tracer.input_of[id(t)][1] for i, t in enumerate(outputs)
                 if id(t) in tracer.input_of and tracer.input_of[id(t)][0] is t
                 and (t._trace is tracer.input_of[id(t)][1] or t.grad_fn is None)
                 and _binding_of(tracer, tracer.input_of[id(t)][1]).kind in ("arg", "lifted")}
        joint = None
        with _stage("deriving the backward"):
            if STATE.grad_enabled and any(t.requires_grad and t.dtype.is_floating_point
                                          for i, t in enumerate(outputs)
                                          if i not in consumed and i not in given):
                joint = self._derive_backward(tracer, outputs, [*consumed, *given], args,
                                              kwargs)
        if tracer.breaks:       # in a custom Function's backward: the call's result stands
            b = tracer.breaks[0]
            tracer.release()
            self._add_entry(key, CompiledEntry(None, eager_reason=str(b)))
            self._note("break:" + b.location, f"graph break in {_function_name(self.fn)}: "
                       f"{b.reason} at {b.location}; this function runs eagerly")
            return result
        with _stage("finishing the trace"):
            (program,) = tracer.finish(traced if joint is None
                                       else list(outputs) + joint.grads, items)
        # (an output slot's node is the one of its several outputs: its owner)
        program.consumed = {i: getattr(outputs[i].grad_fn, "owner", outputs[i].grad_fn).prim
                            for i in consumed}
        program.returned_inputs = {i: program.graph.inputs.index(v) for i, v in given.items()}
        program.returned_views = _returned_views(
            program, outputs[:len(returned)], [*consumed, *given], leaves_in)
        for gw in program.grad_writes:
            gw.none_at_call = none_at_call.get(id(gw.tensor))
        reachable_after: dict = {}
        names_after = _tensor_names(self.fn, tensors=reachable_after)
        for b, v in zip(program.bindings, program.graph.inputs):
            if b.kind == "lifted" and id(b.tensor) not in names_before:
                v.name = names_after.get(id(b.tensor), v.name)   # state the call made
        stored = {id(t) for _, t in (writes or {}).values()}
        if any(t._trace is not None for i, t in reachable_after.items()
               if i not in reachable and i not in stored):
            # the graph made tensors that outlive the call (SGD's momentum buffer, cloned from
            # the first gradient): a replay would make them afresh each time, so trace again
            # once they exist. State made `untraced` (Adam's moments) is an input already.
            self.retraces += 1
            if self.retraces <= RECOMPILE_LIMIT:
                return result
        entry = CompiledEntry(program)
        # state the call read and replaced (a running average): read from its place each replay
        carried = {at: g for at, (g, _) in (writes or {}).items()
                   if isinstance(g.expected, Tensor) and id(g.expected) in tracer.input_of}
        if any(any(m is g.expected for m in program.mutated) for g in carried.values()):
            entry.program, entry.eager_reason = None, ("it writes in place into state it also "
                                                       "replaces")
            self._note("effect", f"{_function_name(self.fn)} {entry.eager_reason}; it runs "
                       "eagerly")
            self._add_entry(key, entry)
            return result
        # requires_grad flags the call flipped (WGAN's `p.requires_grad = False` on the critic
        # before each generator step) and what each was when the call began
        reached_rg, leaves, leaves_rg, grad_fns = rg_at_call or ({}, (), (), {})
        flipped = {i: was for i, was in reached_rg.items() if reachable[i].requires_grad != was}
        entry.arg_requires_grad = tuple((i, t.requires_grad) for i, (t, was)
                                        in enumerate(zip(leaves, leaves_rg))
                                        if t.requires_grad != was)
        olds = {id(g.expected) for g in carried.values()}
        lifted = [b.tensor for b in program.bindings
                  if b.kind == "lifted" and id(b.tensor) not in olds]
        # (a number user code also read into Python keeps its value guard: it may be baked in)
        inputs = {(id(b.path[0]), b.path[1]) for b in program.bindings
                  if b.kind == "scalar"} - tracer.python_reads
        # a batch object's tensors are inputs, keyed by shape: not guarded by identity
        fields = {id(t) for t in _flatten_args((args, kwargs))[0]}
        roots = _object_arguments(args, kwargs)
        with _stage("guarding what the call reads"):
            replay_guards = guards.collect(self.fn, roots, by_name=True,
                                           flag_reads=tracer.flag_reads)
        kept = list(dict.fromkeys(
            g.source for g in replay_guards.guards
            if g.kind == "id" and isinstance(g.expected, Tensor) and
            id(g.expected) not in stored and _made_by(tracer, g.expected)))
        if kept:
            # a tensor the graph made is held where the guards reach (an optimizer's state
            # made lazily, reached through an argument or a container the name walks above
            # missed): a replay would make it afresh and leave the held one stale
            return self._trace_again_or_eagerly(key, result, (
                f"{_function_name(self.fn)} keeps tensors it computes in Python state a "
                f"replay would not update ({', '.join(kept[:3])})"))
        keyed = _keyed_scalars(replay_guards.guards, roots, _batch_objects(args, kwargs),
                               self._record_fields, flags or {})
        entry.guards = ([g for g in replay_guards.guards
                         if not (g.kind == "id" and id(g.expected) in fields
                                 and g.source.startswith("argument ")) and id(g) not in keyed] +
                        guards.tensor_guards(lifted, names_after, flipped))
        _replay_requires_grad(entry, program, flipped, reachable, lifted, names_after)
        with _stage("guarding custom Functions"):
            for cls in tracer.functions:
                entry.guards += guards.custom_function(cls).guards
        entry.guards = guards.read_at_run_time(entry.guards, inputs) + [
            guards.Guard(f"{type(obj).__name__}.{attr} (read into Python by the call)",
                         functools.partial(getattr, obj, attr, guards.MISSING), "id", value)
            for obj, attr, value in tracer.object_reads]
        # comparisons of lifted arguments the call took into Python (its forward, or a custom
        # Function's backward, run by now): the entry holds while they give the same bool
        proxies = getattr(tracer, "number_proxies", [])
        names = {p.where: p.name for p in proxies}
        entry.guards += [guards.Guard(f"{describe(c, names)} (a comparison the call took into "
                                      "Python, of its arguments)",
                                      functools.partial(self._condition_now, c), "eq", v)
                         for c, v in {c: v for p in proxies
                                      for c, v in p.conditions.items()}.items()]
        # an item of a container that tells every read of it (a parameter group's learning rate)
        # that no code of the call read, in a branch that did not step the optimizer: no guard,
        # so a scheduler changing it between calls traces nothing again
        entry.guards = [g for g in entry.guards if not _unread_item(g, tracer.item_reads)]
        # which reachable tensors had a `.grad` when the call began, for those whose presence
        # an optimizer step or a clipping branched on while it still was the call's start
        # state (not after a zero_grad() or a backward in the call decided it): a forward
        # whose backward runs outside, or a full training step, needs no such guard
        candidates, state = tracer.grad_state
        kept = sorted(i for i in tracer.grads_depended if id(candidates[i]) not in tracer.cleared)
        if kept:
            tensors = [candidates[i] for i in kept]
            entry.guards.append(guards.Guard(
                f"which of {len(tensors)} tensors requiring grad have a .grad",
                functools.partial(_grad_presence, tensors), "eq",
                tuple(state[i] for i in kept)))
        unguarded = self._unguarded(entry, unseen)
        if unguarded is not None:
            entry.program, entry.eager_reason = None, unguarded
            self._add_entry(key, entry)
            return result
        if flags:
            _replay_flags(self, key, entry, program, flags)
        if counters[0] or counters[1]:
            _replay_counters(entry, program, *counters)
        if writes:      # the program never reads the old tensors there: no guard on them
            entry.guards = [g for g in entry.guards if getattr(g.read, "at", None) not in writes]
            position = {id(t): i for i, t in enumerate(returned + extra)}
            program.attribute_writes = [(g.source, g.read.write, position[id(t)],
                                         id(t) in tracer.alias_of)
                                        for g, t in writes.values()]
            entry.guards += [guards.carried_state_guard(g) for g in carried.values()]
        entry.lifted_bases = _lifted_bases(program)
        if not_rebuilt is not None:
            entry.program, entry.eager_reason = None, not_rebuilt
            self._note("return", f"{_function_name(self.fn)} {not_rebuilt}; it runs eagerly")
            self._add_entry(key, entry)
            return result
        rewired = _history_written(program, grad_fns)
        if rewired is not None:
            entry.program, entry.eager_reason = None, (
                f"it writes in place to {rewired}, recording autograd history there: a replay "
                "would leave that tensor's grad_fn as it was")
            self._note("alias", f"{_function_name(self.fn)}: {entry.eager_reason}; calls like "
                       "this one run eagerly")
            self._add_entry(key, entry)
            return result
        if program.graph.mutations or program.grad_writes:
            if _written_argument_shared(program, key[1]) or \
                    any(id(_base(t._data)) in entry.lifted_bases for t in leaves_in):
                entry.program = None
                entry.eager_reason = ("an argument it writes in place shares memory with "
                                      "another, or its arguments share memory with state it "
                                      "reads, and it writes some in place")
                self._note("alias", f"{_function_name(self.fn)}: {entry.eager_reason}; calls "
                           "like this one run eagerly")
                self._add_entry(key, entry)
                return result
        if joint is not None:
            program.output_tree = tree
            program.num_user_outputs = len(outputs)
            _grad_writes_forward(program, joint.info, len(joint.grads))
        try:
            stage = ["optimizing the graph"]
            device = entry.device = _device_of(outputs, args)
            target = kernel_target(self.backend, device)
            compiled, entry.executor, entry.backward = compile_program(
                program.graph, None if joint is None else joint.info, target, device.xp,
                stage)
            if compiled.backward is not None:
                entry.joint, entry.partition = joint.info, compiled.partition
            entry.traced, entry.compiled, entry.target = program, compiled, target
            forward = compiled.forward
            entry.graph, entry.pass_stats = forward.graph, forward.stats
            entry.schedule = forward.schedule
            index = {v: i for i, v in enumerate(entry.graph.inputs)}
            entry.writebacks = [index[src] for src, _ in entry.graph.mutations]
            quiet = {program.graph.inputs.index(program.graph.mutations[i][0])
                     for i in program.quiet_writes}
            entry.quiet_writes = tuple(i for i, b in enumerate(entry.writebacks) if b in quiet)
            entry.fetch = _fetch_plan(program, len(entry.graph.inputs), device)
            readers = {id(g.expected): g.read for g in carried.values()}
            for i, b in enumerate(program.bindings[:len(entry.fetch)]):
                if b.kind == "lifted" and id(b.tensor) in readers:
                    entry.fetch[i] = (_PLACE, readers[id(b.tensor)])
            entry.out_dtypes = [v.dtype for v in entry.graph.outputs]
            if entry.joint is not None:
                entry.saved_inputs = _saved_inputs(entry, program)
                entry.saved_outputs = _outputs_eager_saves(outputs[:len(returned)])
            entry.copied_outputs = _outputs_apart(
                forward.output_roots, outputs[:len(returned)],
                [_bound_tensor(program, i, leaves_in) for i, b in enumerate(program.bindings)
                 if b.kind == "lifted" or b.kind == "arg" and b.path is not None])
            entry.out_strides = _eager_layouts(program, outputs)
        except Exception as e:        # a compiler bug must never cost the user a result
            raise _StageFailed(stage[0], e) from e
        self._add_entry(key, entry)
        count_graph(num_ops)
        _dump_if_requested(self, [program])
        return result

    def _unguarded(self, entry: CompiledEntry, unseen: list) -> str | None:
        """Why the entry runs eagerly when the call can reach places past the guards' limits
        (`guards._OBJECT_DEPTH`, `_GUARD_BUDGET`), else None. A replay would not see a change
        there, and a compiled result must equal eager's: such calls run eagerly, with one
        warning naming the place (pass a value read there as an argument, or keep it nearer the
        function), and `explain` and `kiln dump` list the places with the entry's guards."""
        listed = {g.source for g in entry.guards if g.kind == "unguarded"}
        entry.guards += [g for g in unseen if g.source not in listed]
        found = [g for g in entry.guards if g.kind == "unguarded"]
        if not found:
            return None
        more = f" (and {len(found) - 1} more places)" if len(found) > 1 else ""
        reason = f"{found[0].describe()}{more}"
        self._note("unguarded", f"{_function_name(self.fn)}: {reason}; it runs eagerly (pass a "
                   "value read there as an argument, or keep it nearer the function, to have "
                   "it compiled)")
        return reason

    def _derive_backward(self, tracer, outputs: list, skip: list, args, kwargs):
        """`trace_backward`, after the call returned. The backward of a custom Function the
        call applied is the user's Python, run here once more than eager will run it (the
        caller's `backward()` runs the eager graph of this first call): what it prints is
        swallowed, what it changes in reachable places and random generators is put back
        (`guards.undo_writes`), and either is a graph break, as is anything else a trace
        cannot hold there."""
        if not tracer.functions:
            return trace_backward(tracer, outputs, skip)
        before = guards.collect(self.fn, _object_arguments(args, kwargs)).guards
        for cls in tracer.functions:
            before += guards.custom_function(cls).guards
        undo = guards.undo_writes(before)
        streams = random_states(())
        states = random.getstate(), np.random.get_state(), default_generator.get_state()

        def effect(what: str, where: str) -> None:
            if STATE.tracer is tracer:
                tracer.graph_break(f"{what}, which a replay would skip", where)
        try:
            with EffectWatch(effect, swallow=True):
                joint = trace_backward(tracer, outputs, skip)
        finally:
            changed = undo()
            drawn = random_draws(streams)
            random.setstate(states[0])
            np.random.set_state(states[1])
            default_generator.set_state(states[2])  # (a draw from it there is a break)
        if (changed or drawn) and not tracer.breaks:
            what = changed[0].source if changed else f"the state of {drawn[0]}"
            tracer.graph_break(f"the backward of a custom autograd.Function changes {what}, "
                               "which a replay would not change", _where(self.fn))
        return joint

    def _replay(self, entry: CompiledEntry, leaves, args, kwargs):
        program = entry.program
        device = entry.device
        inputs = []
        for kind, where in entry.fetch:
            if kind == _ARG:
                t = leaves[where]
            elif kind == _LIFTED:
                t = where
            elif kind == _PLACE:            # state the last call stored there
                t = where()
            elif kind == _SEED:
                generator, draw, seed_device = where
                inputs.append(to_device(draw(generator), seed_device))
                continue
            elif kind == _SCALAR:
                container, key, index, xp = where
                value = container[key] if index is None else container[key][index]
                inputs.append(xp.asarray(float(value), dtype=np.float64))
                continue
            elif kind == _NUMBER:           # a lifted number argument, as an op takes it
                path, dtype, xp = where
                inputs.append(operand_array(evaluate(path, args, kwargs), dtype, xp))
                continue
            else:
                t = _bound_tensor(program, where, leaves)
            # a 0-d CPU tensor goes along with a cuda program, as in eager mode
            inputs.append(t._data if t.device is device else to_device(t._data, device))
        try:
            if entry.schedule is not None and program.grad_writes:
                # each existing .grad computed straight into its array: the copy below is a no-op
                outs, new_values = entry.executor.run(inputs, _grad_arrays(program, leaves, device))
            else:
                outs, new_values = entry.executor.run(inputs)
        except BOUNDS_ERRORS as e:          # a bounds check's: raised as eager raises it,
            where = getattr(e, "user_location", "")     # at the line that traced the check
            raise as_user_error(e, f" (at {where})" if where else "") from None
        except IndexError:                  # a bounds check in a kernel: the user's error
            raise
        except Exception as e:            # nothing was written back yet: eager is still safe
            entry.program, entry.eager_reason = None, f"running the kernels failed: {e!r}"
            self._note("launch", f"running compiled {_function_name(self.fn)} failed ({e!r}); "
                       "it runs eagerly from now on")
            return self.fn(*args, **kwargs)
        if new_values:
            targets = [(_bound_tensor(program, i, leaves), new)
                       for i, new in zip(entry.writebacks, new_values)]
            for tensor, new in targets:
                if new is not tensor._data:     # else a CUDA graph wrote it in place
                    tensor._data[...] = new if tensor.device is device else \
                        to_device(new, tensor.device)
                tensor._version[0] += 1
            for i in entry.quiet_writes:        # `t.data = ...`: no version of its own
                targets[i][0]._version[0] -= 1
        for tensor in program.grad_clears:
            tensor.grad = None
        for gw in program.grad_writes:
            tensor = _bound_tensor(program, gw.input, leaves)
            if gw.output is None:
                tensor.grad = None
                continue
            value = outs[gw.output]
            if tensor.device is not device:
                value = to_device(value, tensor.device)
            if tensor.grad is not None and tensor.grad.shape == value.shape:
                tensor.grad._data[...] = value
            else:
                # (the parameter's layout, as eager's AccumulateGrad gives it)
                value = grad_array(tensor._data, value, tensor.device.xp, False)
                tensor.grad = Tensor._make(value, tensor.dtype, tensor.device)
        make = Tensor._make
        for i in entry.copied_outputs:
            outs[i] = outs[i].copy()
        for i, strides, recipe, offset in entry.out_strides:   # eager's layout, where the
            if outs[i].strides != strides or offset and element_offset(outs[i]) != offset:
                outs[i] = in_layout(outs[i], recipe, device.xp)     # program's differs
        user = [make(o, d, device) for o, d in zip(outs[:program.num_user_outputs],
                                                     entry.out_dtypes)]
        for i, flag in entry.arg_requires_grad:     # `x.requires_grad_()` in the call
            leaves[i].requires_grad = flag
        if entry.joint is not None:
            wrt = [_bound_tensor(program, i, leaves) for i in entry.joint.grad_inputs]
            saved = outs[program.num_user_outputs + program.num_grad_outputs:]
            checked, copied = entry.saved_inputs
            for k in copied:
                saved[k] = saved[k].copy()
            _attach_backward(entry, user, saved, wrt,
                             [_fetched_tensor(entry, program, j, leaves) for j in checked])
        for i, prim in program.consumed.items():
            _mark_consumed(user[i], prim)
        for i, index in program.returned_inputs.items():
            user[i] = _bound_tensor(program, index, leaves)
        for i, (where, recipe) in program.returned_views.items():
            source = _source(program, where, leaves, user)
            again = None if source is None else _view_again(source, recipe)
            if again is not None:       # else the source's strides changed: a copy, as before
                user[i] = again
        if program.number_writes:       # a step counter the traced call changed
            _write_numbers(program.number_writes, args, kwargs)
        for _, call in program.after_replay:     # the Python steps the traced call made
            call()
        tree = program.output_tree
        if tree == _ONE_TENSOR:
            return user[0]
        if not program.attribute_writes:
            return unflatten(tree, user)
        for _, write, i, copy in program.attribute_writes:
            write(make(outs[i].copy(), entry.out_dtypes[i], device) if copy else user[i])
        return unflatten(tree, user)[0]

    def programs(self) -> list:
        return [e.program for e in self.entries.values() if e.program is not None]

    def guards(self) -> list:
        """Per traced entry, the guards a replay checks (`Guard.describe()` says each)."""
        return [e.guards for e in self.entries.values()]


# The backends whose compiled code computes bfloat16: on the CPU (bfloat16 tensors are only
# ever CPU tensors: kiln has no bfloat16 on CUDA), C kernels and the NumPy executor
_BFLOAT16_BACKENDS = ("auto", "c", "numpy")


def _reaches_bfloat16(args: tuple, kwargs: dict, reachable: dict) -> bool:
    """Whether a call's arguments (tensors, modules, optimizers, nested in containers) or the
    tensors its function reaches by name hold a bfloat16 tensor."""
    tensors = list(reachable.values())
    for v in _flatten_args((args, kwargs))[0] + list(args) + list(kwargs.values()):
        if isinstance(v, Tensor):
            tensors.append(v)
        elif hasattr(v, "named_parameters") and hasattr(v, "named_buffers"):
            tensors += [t for _, t in v.named_parameters()] + [t for _, t in v.named_buffers()]
        elif hasattr(v, "param_groups"):
            tensors += [p for group in v.param_groups for p in group["params"]]
    return any(isinstance(t, Tensor) and t.dtype is dt.bfloat16 for t in tensors)


def _reached_complex(args: tuple, kwargs: dict, reachable: dict, names: dict) -> str | None:
    """The first complex tensor a call's arguments or its function's reachable tensors hold,
    described for the user (" (freqs_cis: complex64[8, 4])"), or None."""
    def describe(name, t):
        return f" ({name}: {t.dtype.name}{list(t.shape)})"
    for i, v in enumerate(list(args) + list(kwargs.values())):
        if isinstance(v, Tensor) and v.dtype.is_complex:
            return describe(f"argument {i}", v)
    for v in _flatten_args((args, kwargs))[0] + list(args) + list(kwargs.values()):
        if isinstance(v, Tensor) and v.dtype.is_complex:
            return describe("an argument's tensor", v)
        if hasattr(v, "named_parameters") and hasattr(v, "named_buffers"):
            for n, t in list(v.named_parameters()) + list(v.named_buffers()):
                if t.dtype.is_complex:
                    return describe(n, t)
        elif hasattr(v, "param_groups"):
            for p in (p for group in v.param_groups for p in group["params"]):
                if p.dtype.is_complex:
                    return describe("an optimizer's parameter", p)
    for key, t in reachable.items():
        if isinstance(t, Tensor) and t.dtype.is_complex:
            return describe(names.get(key, "a tensor it reaches"), t)
    return None


def _complex_node(graph) -> str | None:
    """The first complex value a traced graph makes, described (" (%7 = rfft2(...), line)")."""
    for n in graph.nodes:
        if n.out.dtype.is_complex:
            where = getattr(n, "loc", None)
            return f" (made by {n.op} -> {n.out.dtype.name}{list(n.out.shape)}" + \
                (f" at {where}" if where else "") + ")"
    return None


def _number_rounded_to_bfloat16(tracer) -> str | None:
    """A Python number the trace made a graph input (an optimizer's hyperparameter, read on
    every call; a lifted number argument) that reaches a bfloat16 op rounded to bfloat16,
    described ("the optimizer's 'momentum'"), or None. Eager computes `buf.mul_(0.9)` on a
    bfloat16 `buf` with 0.9 as a float32, `p.add_(g, alpha=-lr)` in float32 rounded once; the
    traced step casts the number to bfloat16 first (momentum 0.8984375) and rounds `g * -lr`
    before adding, an error that compounds over a training run."""
    graph = tracer.graph
    numbers = {v: b for v, b in zip(graph.inputs, tracer.bindings)
               if b.kind in ("scalar", "number")}
    if not numbers:
        return None
    # (a lifted number that is a bfloat16 input holds the number as the op that reads it
    # takes it, rounded through float32: functional.common._with_half)
    found = [v for n in graph.nodes if n.out.dtype is dt.bfloat16
             for v in n.inputs if v in numbers and v.dtype is not dt.bfloat16]
    if not found:
        return None
    b = numbers[found[0]]
    return f"the optimizer's {b.path[1]!r}" if b.kind == "scalar" else \
        f"the number argument {found[0].name}"


def _computes_in_bfloat16(graph) -> bool:
    """Whether a traced graph has a bfloat16 input, constant or node."""
    return any(v.dtype is dt.bfloat16 for v in graph.inputs) or \
        any(v.dtype is dt.bfloat16 for v in graph.constants) or \
        any(n.out.dtype is dt.bfloat16 for n in graph.nodes)


class _StageFailed(Exception):
    def __init__(self, stage: str, error: Exception):
        super().__init__(f"{stage}: {error!r}")
        self.stage, self.error = stage, error


class _stage:
    """`with _stage("deriving the backward"):` turns a failure into a _StageFailed."""

    def __init__(self, name: str):
        self.name = name

    def __enter__(self):
        return self

    def __exit__(self, kind, error, tb) -> bool:
        if error is not None and isinstance(error, Exception) and \
                not isinstance(error, _StageFailed):
            raise _StageFailed(self.name, error) from error
        return False


def _not_traceable(fn) -> str | None:
    """Why `fn` can never be replayed, or None: a generator (or async) function's body runs
    when its result is iterated, after the call returned."""
    target = getattr(fn, "__func__", fn)
    if inspect.isgeneratorfunction(target) or inspect.isasyncgenfunction(target):
        return "is a generator function (its body runs as the result is iterated)"
    if inspect.iscoroutinefunction(target):
        return "is a coroutine function (its body runs when awaited)"
    return None


# names a function's code may read its locals through, by a computed name or all at once
_READS_LOCALS = frozenset({"locals", "vars", "eval", "exec", "inspect", "sys", "traceback"})


def _unread_parameters(fn) -> tuple | None:
    """(positions in a call's arguments, keyword names) of the parameters `fn`'s code never
    reads: a number passed there (`training_step(batch, batch_idx)`) cannot change what the call
    computes, so the key holds no value for it. None when there are none, and for what runs
    other code on its arguments first (a Module's hooks, a partial, a `*args` wrapper)."""
    function = getattr(fn, "__func__", fn)
    code = getattr(function, "__code__", None)
    if not isinstance(function, types.FunctionType) or code is None or \
            code.co_flags & (inspect.CO_VARARGS | inspect.CO_VARKEYWORDS):
        return None
    if guards.global_names(code) & _READS_LOCALS:
        return None
    named = code.co_varnames[:code.co_argcount + code.co_kwonlyargcount]
    used = set(code.co_cellvars)
    for ins in dis.get_instructions(code):
        if ins.opname != "LOAD_GLOBAL" and ins.opname != "LOAD_ATTR":
            value = ins.argval
            used.update(value if isinstance(value, tuple) else (value,))
    unread = [i for i, name in enumerate(named) if name not in used]
    if not unread:
        return None
    shift = 1 if isinstance(fn, types.MethodType) else 0        # (its `self` is bound)
    positions = frozenset(i - shift for i in unread if shift <= i < code.co_argcount)
    return positions, frozenset(named[i] for i in unread)


def _unread_as_none(unread: tuple, args: tuple, kwargs: dict) -> tuple:
    """The arguments with each Python number (or string, None) at an unread parameter as None."""
    positions, names = unread
    args = tuple(None if i in positions and type(a) in guards.SCALARS else a
                 for i, a in enumerate(args))
    if kwargs:
        kwargs = {k: None if k in names and type(v) in guards.SCALARS else v
                  for k, v in kwargs.items()}
    return args, kwargs


class _TypeReach(guards._Reach):
    """`guards.code_reads`' walk of the code a call can run, noting code that names `type`."""

    def __init__(self, names: frozenset):
        super().__init__(names, False)
        self.names_type = False

    def code(self, code) -> None:
        super().code(code)
        self.names_type = self.names_type or "type" in guards.global_names(code)


def _type_reads(fn) -> str | None:
    """Why a number argument of `fn` is not lifted, or None: code the call can run names the
    builtin `type` (`type(lr) is float` tells a SymbolicNumber from a float, and no use of the
    proxy is seen), or cannot be looked through."""
    reads = guards.code_reads(fn)
    if reads.everything:
        return "the code it runs cannot be looked through"
    reach = _TypeReach(reads.names)
    reach.run([fn])
    if reach.everything:
        return "the code it runs cannot be looked through"
    return "the code it runs calls type()" if reach.names_type else None


def _parameter_names(fn) -> list:
    """The names of `fn`'s positional parameters as a call passes them (for graph inputs); of a
    Module, its forward's."""
    if getattr(fn, "__code__", None) is None and hasattr(fn, "forward"):
        fn = fn.forward
    try:
        return [p.name for p in inspect.signature(fn).parameters.values()
                if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return []


def _unread_item(g: guards.Guard, reads: set) -> bool:
    """Whether `g` guards an item no code of the traced call read (`reads`: the places
    `hooks.note_item_read` was told of), of a container whose class tells every read of it."""
    owner, place = getattr(g.read, "owner", None), getattr(g.read, "at", None)
    return owner is not None and place is not None and place not in reads and \
        place[1] in getattr(type(owner), "_kiln_noted_keys", ())


def _put_back_numbers(placed: list, fn, args, kwargs) -> dict:
    """After a trace that read numbers in state as proxies (`placed`: [(guard, proxy)]): each
    place gets back a number (a derived proxy left there, `n + 1`, as its value), and so does
    any other place the function reaches where the call stored a proxy (`self.last = self.n`;
    that proxy counts as read, `_stored_proxies`). Returns {place: what the call left there}."""
    finals = {}
    for g, _ in placed:
        value = g.read()
        finals[g.read.at] = value
        if type(value) is SymbolicNumber:
            g.read.write(value.value)
    try:
        reached = guards.collect(fn, _object_arguments(args, kwargs)).guards + \
            guards.collect(None, _argument_roots(args, kwargs)).guards
    except Exception:       # (the walk before the call succeeded; the user's error goes first)
        reached = []
    _stored_proxies(reached)
    return finals


def _where(fn) -> str:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else _function_name(fn)


def _typed_tree(t, fields: frozenset | None = None):
    """A flatten tree with each constant tagged by type (2, 2.0 and True differ; so do 0.0
    and -0.0; NaN equals NaN), hashable when its constants are. Of a batch object, the fields
    that hold tensors and those named in `fields` (all when None). (Recursive as a function
    of its own: a recursive closure would be a reference cycle made on every call.)"""
    tag = t[0]
    if tag == "T" or tag == "S" or tag == "SC":   # a sparse tensor's size and flag/layout
        return t
    if tag == "R":                                # a batch object: its type and fields
        return ("R", t[1], tuple((k, _typed_tree(v, fields)) for k, v in t[2]
                                 if fields is None or k in fields or _holds_tensors(v)))
    if tag == "C":
        x = t[1]
        if type(x) in guards.SCALARS:
            return ("C", guards.scalar_key(x))
        try:
            hash(x)
        except TypeError:
            return ("C", type(x), id(x))
        return ("C", type(x), x) if not isinstance(x, tuple) else ("C", repr(x))
    if tag is dict:
        return (dict, tuple((guards.scalar_key(k) if type(k) in guards.SCALARS else k,
                             _typed_tree(v, fields)) for k, v in t[1]))
    return (tag, tuple(_typed_tree(v, fields) for v in t[1]))


def _holds_tensors(tree) -> bool:
    tag = tree[0]
    if tag in ("T", "S", "SC", "I", "R"):       # (a batch object holds one, or it is a constant)
        return True
    if tag == "C":
        return False
    return any(_holds_tensors(v) for _, v in tree[1]) if tag is dict else \
        any(_holds_tensors(v) for v in tree[1])


def _has_record(tree) -> bool:
    """Whether a (typed) argument tree holds a batch object."""
    if not isinstance(tree, tuple) or not tree:
        return False
    tag = tree[0]
    if tag == "R":
        return True
    if tag in ("T", "S", "SC", "I", "C"):
        return False
    return any(_has_record(v) for _, v in tree[1]) if tag is dict else \
        any(_has_record(v) for v in tree[1])


def _base(array):
    base = getattr(array, "base", None)
    return array if base is None else base


def _written_argument_shared(program: TracedProgram, pattern: tuple) -> bool:
    """Whether an argument the program writes in place shares memory with another argument
    (`pattern`: `_alias_pattern` of the call's tensors). The program reads each argument as
    a value of its own, so only a write can disagree with eager; arguments sliced from one
    tensor (a language model's inputs and targets) that it only reads replay."""
    if not pattern:
        return False
    written = [program.bindings[program.graph.inputs.index(src)] for src, _ in
               program.graph.mutations]
    shared = collections.Counter(pattern)
    return any(b.kind == "arg" and shared[pattern[b.path]] > 1 for b in written)


def _history_written(program: TracedProgram, grad_fns: dict) -> str | None:
    """A tensor the call was given or read that it wrote in place with autograd recording
    (`x.mul_(w)`, `x[1:] *= 2` with x requiring grad): its grad_fn is not the one it had when
    the call began (`grad_fns`: id -> grad_fn then). Described for the user, or None."""
    for (src, _), t in zip(program.graph.mutations, program.mutated):
        if t.grad_fn is not None and t.grad_fn is not grad_fns.get(id(t)):
            name = src.name or "a tensor"
            return f"{name} [{t.dtype.name} {list(t.shape)}]"
    return None


def _alias_pattern(leaves) -> tuple:
    """Which tensor arguments share memory: () when none does, else for each argument the index
    of the first argument with the same buffer."""
    if len(leaves) < 2:
        return ()
    ids = [id(_base(t._data)) for t in leaves]
    if len(set(ids)) == len(ids):
        return ()
    return tuple(ids.index(i) for i in ids)


def _replay_flags(compiled: CompiledFunction, key, entry: CompiledEntry,
                  program: TracedProgram, flags: list) -> None:
    """Make `entry` replay the flags its traced call set: it runs only while each holds what the
    call found there (reads before the assignment saw that), and sets each afterwards, as the
    call did, next to the scheduler steps a replay repeats."""
    entry.guards = [flags[g.read.at][0] if getattr(g.read, "at", None) in flags else g
                    for g in entry.guards]
    for at, (g, value) in flags.items():
        compiled._flags_set[(key, at)] = value
        compiled._flag_places[at] = (g, value)
        program.after_replay.append((f"{g.source} = {value!r}",
                                     functools.partial(g.read.write, value)))


def _replay_requires_grad(entry: CompiledEntry, program: TracedProgram, flipped: dict,
                          reachable: dict, lifted: list, names: dict) -> None:
    """Make `entry` replay the `requires_grad` flags its traced call flipped (`flipped`: id ->
    the value the call found): it runs only while each holds what the call found (the guards of
    the lifted ones say so already), and sets each afterwards as the call left it. Guarded on
    the value the call left instead, two steps that flip it in turn would trace every call."""
    lifted_ids = {id(t) for t in lifted}
    for i, was in flipped.items():
        t = reachable[i]
        name = names.get(i, "a tensor the function reaches")
        if i not in lifted_ids:
            entry.guards.append(guards.Guard(f"{name}.requires_grad",
                                             lambda t=t: t.requires_grad, "value",
                                             guards.scalar_key(was)))
        program.after_replay.append((f"{name}.requires_grad = {t.requires_grad}",
                                     functools.partial(setattr, t, "requires_grad",
                                                       t.requires_grad)))


def _carried(tracer, t: Tensor) -> bool:
    """Whether `t`, which the trace read, may be read from the place holding it on each replay
    instead of by identity: a lifted tensor without autograd history (running state)."""
    found = tracer.input_of.get(id(t))
    if found is None or t.requires_grad or t.grad_fn is not None:
        return False
    return tracer.bindings[tracer.graph.inputs.index(found[1])].kind == "lifted"


def _code_of(fn):
    """The code object a traced call of `fn` runs first (a function's, a method's, a Module's
    forward), or None."""
    fn = getattr(fn, "forward", fn) if getattr(fn, "__code__", None) is None else fn
    return getattr(getattr(fn, "__func__", fn), "__code__", None)


def _computed(tracer, t: Tensor) -> bool:
    """Whether `t` is a value the trace computed in memory of its own: not one of its inputs,
    and not a view or alias (a replay's output would not share the memory eager's did)."""
    return (t._trace is not None and id(t._trace) in tracer.known and t._base is None
            and id(t) not in tracer.input_of and id(t) not in tracer.alias_of)


def _detached_result(tracer, t: Tensor) -> bool:
    """Whether `t` is `s.detach()` (or `s.data`) of a value `s` the trace computed: a replay
    stores a copy of `s`'s output there (see `_shares_memory_with_others`)."""
    source = tracer.alias_of.get(id(t))
    return source is not None and t._base is None and _computed(tracer, source)


def _memory_root(tracer, t: Tensor) -> int:
    """The id of the tensor whose memory `t` uses: through aliases and views."""
    t = tracer.alias_of.get(id(t), t)
    while t._base is not None:              # (source, op, attrs, version, tracked)
        t = tracer.alias_of.get(id(t._base[0]), t._base[0])
    return id(t)


def _shares_memory_with_others(tracer, writes: dict, returned: list) -> list:
    """The places among `writes` holding a detached result whose memory something else the
    caller gets also uses (a returned tensor, another stored one). Eager mode shares that
    memory; a replay stores a copy, so such a place stays an effect. Where nothing else sees
    the memory, the copy differs from eager only in the version counter it does not share (an
    in-place write to it cannot invalidate the call's saved tensors)."""
    roots = collections.Counter(_memory_root(tracer, t) for t in returned)
    roots.update(_memory_root(tracer, t) for _, t in writes.values())
    return [at for at, (_, t) in writes.items()
            if id(t) in tracer.alias_of and roots[_memory_root(tracer, t)] > 1]


def _lifted_bases(program: TracedProgram) -> frozenset:
    return frozenset(id(_base(b.tensor._data)) for b in program.bindings
                     if b.kind == "lifted")


def _grad_candidates(fn, args, kwargs, reachable: dict) -> list:
    """Every tensor requiring grad (or holding a `.grad`) the call can reach: the tensors `fn`
    names, and the parameters of the modules and optimizers it names or is passed (two levels
    into lists, tuples, dicts and plain objects: a trainer's model and optimizer).

    A gradient the call reads is bound to its owner's `.grad` of the moment (zero_grad() and
    backward replace it between calls), and which of them have a `.grad` at all is guarded:
    an optimizer step branches on `p.grad is None`."""
    found: dict = {}

    def add(t) -> None:
        if isinstance(t, Tensor) and (t.requires_grad or t.grad is not None):
            found.setdefault(id(t), t)

    def visit(obj, level: int) -> None:
        if hasattr(obj, "named_parameters") and hasattr(obj, "_parameters"):
            for _, p in obj.named_parameters():
                add(p)
        elif hasattr(obj, "param_groups") and hasattr(obj, "state"):
            for group in obj.param_groups:
                for p in group.get("params", ()):
                    add(p)
        elif isinstance(obj, (list, tuple)) and level > 0:
            for item in obj[:256]:
                visit(item, level - 1)
        elif isinstance(obj, dict) and level > 0:
            for item in list(obj.values())[:256]:
                visit(item, level - 1)
        elif level > 0 and _plain_object(obj):
            for item in list(vars(obj).values())[:256]:
                visit(item, level - 1)

    for t in reachable.values():
        add(t)
    for obj in list(_referenced_objects(fn).values()) + list(args) + list(kwargs.values()):
        visit(obj, 2)
    return list(found.values())


def _grad_presence(tensors: list) -> tuple:
    return tuple(t.grad is None for t in tensors)


def _own_attributes(leaves) -> tuple:
    """The argument tensors' own attributes (`x.scale`), for the key: a number by value, any
    other object by identity (`_object_arguments` makes it a guard root, for what it holds);
    () when none has any, as in most calls."""
    if not any(map(vars, leaves)):
        return ()
    return tuple(tuple((name, guards.scalar_key(v) if type(v) in guards.SCALARS else
                        (type(v), id(v))) for name, v in vars(t).items()) for t in leaves)


def _object_arguments(args, kwargs) -> list:
    """Guard roots for the objects passed as arguments (`self` of a compiled method, a module
    or a config), also inside the lists, tuples and dicts passed (`step([model, opt])`), and
    held in an argument tensor's own attributes (`x.meta`): the key holds them by identity,
    their guards hold what is inside."""
    found = []

    def visit(where: str, a, depth: int) -> None:
        if isinstance(a, Tensor):
            found.extend((f"{where}.{name}", guards.constant(v), v) for name, v in
                         vars(a).items() if type(v) not in guards.SCALARS)
            return
        if type(a) in guards.SCALARS:
            return
        if isinstance(a, (list, tuple, dict)):
            if depth < 4:
                items = a.items() if isinstance(a, dict) else enumerate(a)
                for k, v in items:
                    visit(f"{where}[{k!r}]", v, depth + 1)
            return
        found.append((where, guards.constant(a), a))
    for i, a in enumerate(list(args) + list(dict(kwargs).values())):
        visit(f"argument {i}", a, 0)
    return found


def _keyed_scalars(found: list, roots: list, records: list, fields, flags: dict) -> set:
    """The ids of the guards in `found` on a scalar field of a batch object passed as an argument
    that the guard key holds (`_typed_tree`: the value of the argument of each call, typed as a
    value guard types it), where the object is reached by no other path and the call does not
    set the field: the guard would read the object the trace was given, which a later call need
    not pass (a new batch holding the first one's value, after that one was changed, replays)."""
    batches = {id(r) for r in records}
    at_root = {where: obj for where, _, obj in roots if id(obj) in batches}
    elsewhere = {id(g.expected) for g in found if g.kind == "id" and g.source not in at_root}
    keyed = set()
    for g in found:
        where, _, name = g.source.rpartition(".")
        obj = at_root.get(where)
        if obj is not None and g.kind == "value" and id(obj) not in elsewhere and \
                (fields is None or name in fields) and name in vars(obj) and \
                getattr(g.read, "at", None) not in flags:
            keyed.add(id(g))
    return keyed


def _argument_roots(args, kwargs) -> list:
    """Guard roots for the containers, objects and tensors among the arguments: a call that
    appends to a list it was passed, or sets an attribute on a tensor it was passed, changes
    Python state too."""
    found = []
    for i, a in enumerate(list(args) + list(kwargs.values())):
        if type(a) not in guards.SCALARS:
            found.append((f"argument {i}", guards.constant(a), a))
    return found


_REBUILDABLE = (type, slice, type(None))


def _unreplayable_return(tree) -> str | None:
    """Why a replay could not rebuild this return value, or None: every constant in it must be
    a Python scalar (or a type, slice, dtype or device); another object may be one the call made,
    or may change, and a replay would hand back the traced call's."""
    bad = []

    def walk(t):
        tag = t[0]
        if tag == "T" or tag == "S" or tag == "SC" or tag == "I":
            return
        if tag == "C":
            x = t[1]
            if not (type(x) in guards.SCALARS or isinstance(x, (*_REBUILDABLE, DType, Device))):
                bad.append(type(x).__name__)
            return
        for v in t[1]:
            walk(v[1] if tag is dict else v)
    walk(tree)
    if bad:
        return f"returns a {bad[0]} object, which a replay cannot rebuild"
    return None


def _eager_autograd_mode() -> str | None:
    """The autograd mode active on this thread that compiled replays do not honour, if any."""
    if saved_hooks_active():
        return ("saved_tensors_hooks, whose pack and unpack hooks a compiled replay would not "
                "run")
    if DUAL_LEVEL.index is not None:
        return "a forward AD dual_level, whose tangents a compiled program would not carry"
    return None


def _mark_consumed(t: Tensor, prim) -> None:
    """Make a replayed output look like eager's after `backward()`: it requires grad, and its
    graph is spent, so another backward raises the same error eager does."""
    node = prim_class(prim)()
    node.prim, node.inputs, node.attrs, node.edges, node.versions = prim, None, {}, (), ()
    node.out_data, node.out_dtype, node.out_device = None, t.dtype, t.device
    node.hooks = node.retained = node.out_trace = None
    t.grad_fn, t.requires_grad = node, True


def _last_failure(compiled: CompiledFunction, key) -> str:
    """`; last change: <guard>` for the newest entry of `key` whose guards failed, or the
    input whose shape is new when `key` differs from a traced one in shapes only."""
    for full in reversed(compiled._chains.get(key, [])):
        failed = guards.first_failure(compiled.entries[full].guards)
        if failed is not None:
            return f" (last change: {failed.source})"
    for old in reversed(list(compiled._chains)):
        if old[1:] == key[1:] and len(old[0]) == len(key[0]):
            for i, (was, now) in enumerate(zip(old[0], key[0])):
                if was[2:] == now[2:] and was[0] != now[0]:
                    return (f" (last change: tensor input {i} has shape {list(now[0])}, traced "
                            f"at {list(was[0])}: each new shape is traced and compiled again, "
                            "as kiln specializes to shapes; pad inputs to a few sizes, or raise "
                            "kiln._dynamo.config.recompile_limit)")
                if was[2:] == now[2:] and was[1] != now[1]:
                    return (f" (last change: tensor input {i} has another memory layout, byte "
                            f"strides {list(now[1])}, traced at {list(was[1])}: each layout is "
                            "traced again, as eager's results take their layout from the "
                            "inputs'; pass inputs laid out alike, e.g. with .contiguous())")
    return _keyed_number(compiled)


def _keyed_number(compiled: CompiledFunction) -> str:
    """` (last change: ...)` naming a number argument of the call that a trace read into
    Python (`float(step)`, stored in `group["lr"]`), so that each of its values is traced."""
    if not compiled._specialised or compiled._numbers_now is None:
        return ""
    args, kwargs = compiled._numbers_now
    names = _parameter_names(compiled.fn)
    for (i, k), value in _number_arguments(args, kwargs):
        why = compiled._specialised.get((i, k))
        if why is None or not isinstance(why, str):
            continue
        name = k if k is not None else names[i] if i < len(names) else f"argument {i}"
        if why in ("stored", "returned"):
            why = f"a trace {why} it"
        elif not why.startswith("the code"):
            why = f"a trace read it into Python ({why})"
        return (f" (last change: the number argument {name} is {value!r}, keyed by value as "
                f"{why}: each new value is traced again; compute with it by arithmetic and "
                "comparisons only, or pass it as a tensor)")
    return ""


_ONE_TENSOR = ("T",)          # flatten's tree for a function returning one tensor


def _cpu():
    return CPU


def _binding_of(tracer, v):
    """The binding of graph input `v` (a random draw's is a "seed": made afresh each call)."""
    return tracer.bindings[tracer.graph.inputs.index(v)]


def _grad_arrays(program: TracedProgram, leaves: list, device) -> dict:
    """Output index -> the array of the existing `.grad` that output is written to (on the
    program's `device`; the gradient of a 0-d CPU input is copied back instead)."""
    arrays = {}
    for gw in program.grad_writes:
        if gw.output is not None:
            grad = _bound_tensor(program, gw.input, leaves).grad
            if grad is not None and grad.device is device:
                arrays[gw.output] = grad._data
    return arrays


def _grad_state(program: TracedProgram, leaves: list) -> tuple:
    return tuple(_bound_tensor(program, gw.input, leaves).grad is None
                 for gw in program.grad_writes if not gw.cleared)


def _grad_state_matches(program: TracedProgram, leaves: list) -> bool:
    """Whether each written `.grad` is None now exactly when it was at the traced call's start
    (else, when that is not known, at the tensor's lift); one the trace cleared (zero_grad)
    before reading it may be either."""
    return all(gw.cleared or (_bound_tensor(program, gw.input, leaves).grad is None) ==
               (gw.was_none if gw.none_at_call is None else gw.none_at_call)
               for gw in program.grad_writes)


def _differentiable(t: Tensor) -> bool:
    """Whether a compiled output gets a backward: it requires grad and its graph is still there
    (a loss the function already ran `.backward()` through, as a training step returns it, or
    an RNN's hidden state computed on the way to that loss, has a freed graph, as in PyTorch,
    and no backward to derive)."""
    if not t.requires_grad:
        return False
    stack, seen = [t.grad_fn], set()
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, Tensor) or id(node) in seen:
            continue
        seen.add(id(node))
        if node.inputs is None:
            return False
        stack.extend(node.edges)
    return True


def _grad_writes_forward(program: TracedProgram, info, num_grads: int) -> None:
    """Make the `.grad` values a call with a backward of its own wrote (its `loss.backward()`,
    before it returned a tensor requiring grad) forward outputs of the joint graph: the trace
    put them after the gradients, where the partition took them for gradients of the compiled
    backward and the replay wrote a saved value into `.grad` instead. They go between the
    user outputs and the gradients; a replay finds the saved values after them."""
    outputs = program.graph.outputs
    first = program.num_user_outputs
    written = outputs[first + num_grads:]
    if not written:
        return
    outputs[first:] = written + outputs[first:first + num_grads]
    for gw in program.grad_writes:
        if gw.output is not None:
            gw.output -= num_grads
    info.num_forward_outputs += len(written)
    program.num_grad_outputs = len(written)


def _saved_inputs(entry: CompiledEntry, program: TracedProgram) -> tuple:
    """(the forward inputs eager mode saves for the backward, the saved positions to copy) of a
    compiled call with a backward: inputs are arguments or state the caller may write in
    place before calling backward(). Eager mode saves an input where a gradient rule reads it
    (the partition's `save_all`), and backward() then refuses a write to it, as a replay's
    backward does; the partition may also keep an input to recompute from it what eager mode
    saved instead, which a replay copies as the forward leaves it."""
    graph, joint = entry.graph, program.graph

    def root(v, made):
        while v in made and made[v].op in STRIDED_VIEWS:
            v = made[v].inputs[0]
        return v
    made = {n.out: n for n in graph.nodes}
    joint_made = {n.out: n for n in joint.nodes}
    # (by position: the report points into the traced graph, the forward program may come
    # from the program cache with values of its own)
    read_by_rules = {root(v, joint_made) for v in entry.partition.save_all}
    held = {i for i, b in enumerate(program.bindings[:len(graph.inputs)])
            if b.kind in ("lifted", "grad") or b.kind == "arg" and b.path is not None}
    checked = tuple(j for j in sorted(held) if joint.inputs[j] in read_by_rules)
    index = {v: i for i, v in enumerate(graph.inputs)}
    first = program.num_user_outputs + program.num_grad_outputs
    copied = tuple(k for k, v in enumerate(graph.outputs[first:])
                   if index.get(root(v, made)) in held and index[root(v, made)] not in checked)
    return checked, copied


def _outputs_eager_saves(outputs: list) -> frozenset:
    """The indices of the traced call's outputs whose memory eager mode's backward reads (a
    tanh's result, or a view of it, saved for its gradient): a caller's in-place write to one
    before backward() makes eager's backward raise. Found on eager's own autograd graph, as
    `_check_versions` tests it, not on the compiled program's, whose passes may save other
    memory (CSE's `h` for a second `x * w` eager computed afresh)."""
    read, seen = set(), set()
    stack = [t.grad_fn for t in outputs if isinstance(t, Tensor)]
    while stack:
        node = stack.pop()
        if node is None or isinstance(node, Tensor) or id(node) in seen:
            continue
        seen.add(id(node))
        prim, inputs = getattr(node, "prim", None), getattr(node, "inputs", None)
        if prim is not None and inputs is not None:
            version = getattr(node, "out_version", None)
            if version is not None and prim.output_of(inputs) == SAVED:
                read.add(id(version))
            reads = prim.reads_of(inputs)
            read.update(id(a._version) for i, a in enumerate(inputs)
                        if isinstance(a, Tensor) and (reads is None or i in reads))
        ctx = getattr(node, "ctx", None)        # a custom Function's ctx.save_for_backward
        if ctx is not None:
            read.update(id(t._version) for t in getattr(ctx, "_saved", ())
                        if isinstance(t, Tensor))
        stack.extend(getattr(node, "edges", None) or ())
        stack.append(getattr(node, "owner", None))     # an output slot's node of several
    return frozenset(j for j, t in enumerate(outputs)
                     if isinstance(t, Tensor) and id(t._version) in read)


def _fetched_tensor(entry: CompiledEntry, program: TracedProgram, j: int, leaves) -> Tensor:
    """The tensor a replay of `entry` reads as its forward input `j`."""
    kind, where = entry.fetch[j]
    if kind == _ARG:
        return leaves[where]
    if kind == _LIFTED:
        return where
    if kind == _PLACE:
        return where()
    return _bound_tensor(program, j, leaves)


def _attach_backward(entry: CompiledEntry, user: list, saved: list, wrt: list,
                     held: list) -> None:
    """Give the differentiable outputs a grad_fn that runs the compiled backward program.
    `held`: the inputs (arguments, parameters, buffers) eager mode saves for the backward.

    With several differentiable outputs they share one node (autograd.record_several), whose
    rule runs the backward once with every output's gradient (zeros for those that got none):
    a backward is linear in the output gradients only if every custom Function's in it is.
    """
    diff = entry.joint.differentiable_outputs
    name = f"compiled_{entry.graph.name.removesuffix('_forward')}"
    # outputs and inputs whose memory the backward reads (saved for it): an in-place write to
    # one of them before backward() (an argument the caller changes, a parameter an optimizer
    # steps) would change what the backward computes, so it raises, as eager does
    read_back = [(f"output {j}", user[j], user[j]._version[0]) for j in entry.saved_outputs]
    read_back += [("an input", t, t._version[0]) for t in held]
    # memory of an output the compiled backward reads where eager's did not (the passes
    # merged eager's two `x * w` into the returned one): its own copy, which a caller's write
    # to the output leaves alone
    apart = {id(_base(u._data)) for j, u in enumerate(user) if j not in entry.saved_outputs}
    if apart:
        saved = [a.copy() if id(_base(a)) in apart else a for a in saved]

    def rule(gs: list, out, *inputs):
        for what, u, version in read_back:
            if u._version[0] != version:
                raise op_error("backward", "one of the variables needed for gradient "
                               f"computation has been modified by an inplace operation: "
                               f"{what} of the compiled {name[9:]} "
                               f"[{u.dtype.name} {list(u.shape)}] is at version "
                               f"{u._version[0]}; expected version {version} instead. "
                               "Hint: clone the tensor before modifying it in place.")
        device = next(g for g in gs if g is not None).device
        tangents = [device.xp.zeros(tuple(user[j].shape), user[j].dtype.np) if g is None
                    else g._data for j, g in zip(diff, gs)]
        grads, _ = entry.backward.run(list(saved) + tangents)
        return tuple(Tensor._make(gr if t.device is device else to_device(gr, t.device),
                                  t.dtype, t.device) for gr, t in zip(grads, inputs))

    # (reads=(): the rule checks the versions of what the backward reads, above; the inputs it
    # differentiates for are not all read, `x * w` reads x for w's gradient)
    if len(diff) == 1:
        prim = Primitive(name, "extern", None, None,
                         lambda g, out, *inputs: rule([g], out, *inputs), arity=len(wrt),
                         reads=())
        record(prim, tuple(wrt), {}, user[diff[0]])
    else:
        prim = Primitive(name, "extern", None, None, rule, arity=len(wrt), reads=())
        record_several(prim, tuple(wrt), [user[i] for i in diff])


def _device_of(outputs, args):
    for t in list(outputs) + flatten(args)[0]:
        return t.device
    return _cpu()


# torch.compile's backend names, as kiln reads them: inductor's and cudagraphs' work is kiln's
# default (generated kernels, CUDA graphs on a GPU); aot_eager runs the traced graph op by op
_TORCH_BACKENDS = {"inductor": "auto", "cudagraphs": "auto", "aot_eager": "numpy"}


def disable(fn=None, recursive: bool = True, *, reason: str | None = None):
    """`fn` is never compiled (torch.compiler.disable): a compiled function that calls it has
    a graph break there, so it runs eagerly (kiln does not split a function around a break);
    given a compiled function, its eager original."""
    if fn is None:
        return lambda f: disable(f, recursive, reason=reason)
    if isinstance(fn, CompiledFunction):
        return fn.fn
    why = f"{_function_name(fn)} is marked torch.compiler.disable" + \
        (f" ({reason})" if reason else "")

    @functools.wraps(fn)
    def not_compiled(*args, **kwargs):
        if STATE.tracer is not None:
            STATE.tracer.graph_break(why)
        return fn(*args, **kwargs)
    return not_compiled


def allow_in_graph(fn):
    """`fn` itself (torch.compiler.allow_in_graph): kiln traces by running Python, so every
    function's tensor ops are in the graph already."""
    return fn


def assume_constant_result(fn):
    """`fn` itself (torch.compiler.assume_constant_result): kiln's trace runs `fn`, and a
    Python value it returns is a constant of the traced program already."""
    return fn


def is_dynamo_compiling() -> bool:
    return is_compiling()


def cudagraph_mark_step_begin() -> None:
    """A new training iteration starts (torch.compiler.cudagraph_mark_step_begin). Nothing
    to do in kiln: a CUDA graph replay copies its outputs out of the graph's memory, so the
    next replay never overwrites a tensor the caller holds (kiln.runtime.cuda_graph)."""


def list_backends(exclude_tags=("debug", "experimental")) -> list[str]:
    """The backend names kiln.compile takes (PyTorch's spellings included)."""
    return sorted({"inductor", "cudagraphs", "c", "numpy", "triton"})


_LIVE: list = []     # weak references to every CompiledFunction made, for reset()


def reset() -> None:
    """Forget what every compiled function traced (torch.compiler.reset / torch._dynamo.reset):
    each traces again on its next call, with its recompile count back at zero. The kernels
    already built stay cached, keyed by their source."""
    alive = [ref for ref in _LIVE if ref() is not None]
    _LIVE[:] = alive
    for ref in alive:
        compiled = ref()
        if compiled is not None:
            compiled.forget()


class BackendFunction:
    """`fn` compiled by the caller's own backend (`torch.compile(fn, backend=my_backend)`,
    `my_backend(gm, example_inputs)` returning what runs the graph): on the first call kiln.fx
    captures `fn` whole as a GraphModule and the backend is handed it with that call's tensor
    arguments. TorchDynamo splits a function at data-dependent control flow into several
    graphs; kiln does not split: where fx cannot capture `fn`, it warns and runs `fn` eagerly
    (with `fullgraph=True` the capture error is raised)."""

    def __init__(self, fn, backend, fullgraph: bool = False):
        self.fn, self.backend, self.fullgraph = fn, backend, fullgraph
        self._run = None
        _LIVE.append(weakref.ref(self))

    def forget(self) -> None:
        self._run = None

    def __call__(self, *args, **kwargs):
        if self._run is None:
            self._run = self._capture(args, kwargs)
        return self._run(*args, **kwargs)

    def _capture(self, args, kwargs):
        from kiln import fx            # kiln.fx traces through this package: import on use
        try:
            gm = fx.symbolic_trace(self.fn)
        except Exception as error:     # fx's refusal: control flow, a value read into Python
            if self.fullgraph:
                raise
            warnings.warn(f"torch.compile: {_function_name(self.fn)} cannot be captured as "
                          f"one FX graph for backend {_function_name(self.backend)} "
                          f"({type(error).__name__}: {error}); it runs eagerly",
                          stacklevel=user_stacklevel())
            return self.fn
        examples = [a for a in flatten((args, kwargs))[0] if isinstance(a, Tensor)]
        count_graph(len(gm.graph.find_nodes(op="call_function")) +
                    len(gm.graph.find_nodes(op="call_method")) +
                    len(gm.graph.find_nodes(op="call_module")))
        return self.backend(gm, examples)


def compile(fn=None, *, backend: str = "auto", fullgraph: bool = False, dynamic=None,
            mode=None, options=None, disable: bool = False):
    """Compile a function (or Module): `@kiln.compile` or `kiln.compile(fn, backend=...)`.

    PyTorch's spellings are accepted: `backend="inductor"` (kiln's "auto"), "cudagraphs",
    "aot_eager" (the traced graph run op by op: kiln's "numpy"), "eager" (not compiled, as
    `disable=True`); `mode` and `options` tune inductor and change nothing here. `dynamic`
    says when an int/float argument is lifted to a graph input (`CompiledFunction.dynamic`).
    A callable backend is given kiln.fx's GraphModule of the function (`BackendFunction`).
    """
    if callable(backend):
        if fn is None:
            return lambda f: compile(f, backend=backend, fullgraph=fullgraph, disable=disable)
        if disable:
            return fn
        return _wrap_module(fn, BackendFunction(fn, backend, fullgraph))
    backend = _TORCH_BACKENDS.get(backend, backend)
    if backend not in ("auto", "c", "numpy", "triton", "eager"):
        raise ValueError(f"kiln.compile: unknown backend {backend!r}; use 'auto', 'c', "
                         "'numpy' or 'triton' (or PyTorch's 'inductor', 'cudagraphs', "
                         "'aot_eager', 'eager')")
    if fn is None:
        return lambda f: compile(f, backend=backend, fullgraph=fullgraph, dynamic=dynamic,
                                 disable=disable)
    if disable or backend == "eager":
        return fn
    if isinstance(fn, CompiledFunction):
        # compiling a compiled function compiles the function it wraps (what that reaches is
        # what a replay must guard: through the wrapper it went unseen, and replays were stale)
        fn = fn.fn
    return _wrap_module(fn, CompiledFunction(fn, backend, fullgraph, dynamic))


def _wrap_module(fn, compiled):
    from kiln.nn.module import Module       # kiln.nn imports this module: import on use
    if isinstance(fn, Module):              # a Module, as torch.compile returns it
        from kiln.nn.compiled_module import OptimizedModule
        return OptimizedModule(fn, compiled)
    return compiled


# ----------------------------------------------------------------------------- dump hook

_DUMP_SINKS: list = []


def _dump_if_requested(compiled: CompiledFunction, programs: list) -> None:
    """Hand newly captured programs to `kiln dump` / KILN_DUMP, when one is listening."""
    directory = os.environ.get("KILN_DUMP")
    if not directory and not _DUMP_SINKS:
        return
    from kiln import dump
    for sink in _DUMP_SINKS:
        sink(compiled, programs)
    if directory and not _DUMP_SINKS:
        dump.write_programs(directory, _function_name(compiled.fn), programs,
                            notes=dump.compiled_notes(compiled), compiled=compiled)

