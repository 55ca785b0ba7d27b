"""`@kiln.compile`, `kiln.compiler.trace` and `explain`: trace, guard, replay, fall back to eager.

The first call of a compiled function with a new guard key runs eagerly with a tracer
watching; later calls with the same key replay the captured program. A graph break (a tensor's
value read into Python) makes that key run eagerly from then on, with one message naming the
line; `fullgraph=True` raises instead. Programs whose outputs require grad get a compiled
backward, partitioned from the joint forward+backward trace. What the passes make of a traced
graph is kept on disk (`kiln.program_cache`): a new process that traces the same graph skips
them.

The package's modules, in the order a call meets them: `function` (`CompiledFunction`: the
guard key, the entries, trace, compile, replay, the fall back to eager), `tracing` (a call run
under a Tracer), `arguments` and `guards` (what the key and the guards read), `refusals` (why a
call runs eagerly), `traced` (what the trace made), `pipeline` (passes, lowering, kernel builds),
`backward` (the compiled backward attached to the outputs), `outputs` and `numbers` (returned
views, lifted Python numbers), `explain` (the report); `hooks` are what the rest of kiln calls.
"""

from __future__ import annotations

import functools
import warnings
import weakref

from kiln.compiler import guards  # noqa: F401
from kiln.compiler.cache_artifacts import (load_cache_artifacts,  # noqa: F401
                                           save_cache_artifacts)
from kiln.compiler.counters import count_graph
from kiln.compiler.explain import (ExplainOutput, cuda_graph_notes, explain,  # noqa: F401
                                   explain_report, kernel_choices)
from kiln.compiler.function import _LIVE, CompiledEntry, CompiledFunction  # noqa: F401
from kiln.compiler.hooks import (active_traces, as_number, composite,  # noqa: F401
                                 is_compiling, note_flag_read, note_grad_cleared,
                                 note_grads_checked, note_item_read, note_item_write,
                                 note_python_read, note_state_read, replay_after, scalar_input,
                                 untraced)
from kiln.compiler.pipeline import (build_executor, compile_program,  # noqa: F401
                                    kernel_target, lower_program)
from kiln.compiler.stance import current_stance, set_stance  # noqa: F401
from kiln.compiler.tracing import TraceResult, _function_name, trace  # noqa: F401
from kiln.tracer.errors import GraphBreak, user_stacklevel  # noqa: F401
from kiln.tracer.tensor import STATE, Tensor
from kiln.tracer.trace import flatten


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
