"""A traced call of a function: the names its tensors get, its arguments flattened, and
`trace`, which runs it under a Tracer and returns what it recorded."""

from __future__ import annotations

import contextlib
import functools
import gc
import inspect
import types
from dataclasses import dataclass

from kiln.compiler import guards
from kiln.compiler.effects import EffectWatch
from kiln.tracer.symbolic_number import math_of_proxies
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.trace import Tracer, flatten


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


def _where(fn) -> str:
    code = getattr(getattr(fn, "__func__", fn), "__code__", None)
    return f"{code.co_filename}:{code.co_firstlineno}" if code else _function_name(fn)


def _code_of(fn):
    """The code object a traced call of `fn` runs first (a function's, a method's, a Module's
    forward), or None."""
    fn = getattr(fn, "forward", fn) if getattr(fn, "__code__", None) is None else fn
    return getattr(getattr(fn, "__func__", fn), "__code__", None)
