"""torch.cuda's CUDA graphs for eager code: `CUDAGraph`, `graph(g)`, `graph_pool_handle()` and
`make_graphed_callables`, on CuPy's stream capture.

PyTorch's recipe runs as written: warm up on a side stream, capture one step with
`with kiln.cuda.graph(g):` (model, loss, `backward()`, `optimizer.step()`), then copy each
batch into the captured (static) input tensors and `g.replay()`: one launch replays every
kernel, cuBLAS call and copy the captured step issued, reading and writing the same memory.
`kiln.compile` does this by itself for compiled programs (kiln.runtime.cuda_graph); this
module is for eager code that asks for it.

What a capture keeps, and how kiln makes it hold:

- Memory. Every array made during the capture comes from a memory pool of the graph's own
  (or one shared with other graphs through `pool=`), so memory the replays write is never
  handed to anything else, even after the tensors that held it are gone.
- Index bounds checks, which eager ops on a GPU keep on the device until the host next reads
  (kiln.runtime.pending_checks), are kept by the graph, folded over every replay, and read at
  the first host read after a replay: a bad index in any replay raises there.
- Optimizers: a step with step counts (Adam and the like) is captured only when made with
  `capturable=True`, as in PyTorch; its bias corrections are then computed on the device
  (kiln.optim.optimizer). Fused multi-tensor updates upload a table of pointers, which a
  capture cannot do, so a captured step takes the per-tensor update.

Work that reads device memory on the host (`.item()`, printing, `bool(t)`), copies host data
to the device (a tensor made from Python numbers; random numbers, which kiln draws on the host)
or synchronizes cannot be captured: CUDA refuses it, and the capture fails with an error
saying so. kiln always captures in CUDA's relaxed mode (the pool may allocate during the
capture, which the global mode refuses); `capture_error_mode` is checked and kept for
PyTorch's signature.
"""

from __future__ import annotations

import gc

from kiln.cuda.streams import _cupy
from kiln.runtime import pending_checks
from kiln.runtime.device import cupy_module

_MODES = ("global", "thread_local", "relaxed")


class _MemPool:
    """The memory a graph's captured work allocates from (`graph_pool_handle()`)."""

    def __init__(self):
        self.pool = _cupy("graph_pool_handle").cuda.MemoryPool()

    def __repr__(self) -> str:
        return f"<kiln.cuda graph memory pool: {self.pool.total_bytes()} bytes>"


def graph_pool_handle() -> _MemPool:
    """A memory pool to share between captures: `graph(g, pool=handle)`."""
    return _MemPool()


class CUDAGraph:
    """A CUDA graph (torch.cuda.CUDAGraph): `capture_begin()`/`capture_end()` around work on a
    capturing stream (prefer `with kiln.cuda.graph(g):`), then `replay()`."""

    def __init__(self, keep_graph: bool = False):
        _cupy("CUDAGraph")
        self.keep_graph = keep_graph
        self._graph = None
        self._pool = None
        self._checks: list = []
        self._capture = None          # (stream, allocator context) while capturing
        self._ready = None            # an event replays wait for (the checks' start values)

    def capture_begin(self, pool=None, capture_error_mode: str = "global") -> None:
        """Start capturing the work queued on the current stream."""
        cp = _cupy("CUDAGraph.capture_begin")
        if capture_error_mode not in _MODES:
            raise ValueError(f"CUDAGraph.capture_begin: capture_error_mode must be one of "
                             f"{_MODES}, got {capture_error_mode!r}")
        if self._capture is not None or self._graph is not None:
            raise RuntimeError("CUDAGraph.capture_begin: this graph has been captured "
                               "already; call reset() first, or make a new CUDAGraph")
        stream = cp.cuda.get_current_stream()
        if stream.ptr == 0:
            raise RuntimeError("CUDAGraph.capture_begin: the current stream is the default "
                               "stream, which CUDA cannot capture; capture with `with "
                               "kiln.cuda.graph(g):` (it captures on a stream of its own) or "
                               "inside `with kiln.cuda.stream(kiln.cuda.Stream()):`")
        pool = getattr(pool, "id", pool)            # a kiln.cuda.MemPool: its pool
        if pool is not None and not isinstance(pool, _MemPool):
            raise TypeError("CUDAGraph.capture_begin: pool must come from "
                            "kiln.cuda.graph_pool_handle(), another graph's pool() or a "
                            "kiln.cuda.MemPool")
        self._pool = pool if pool is not None else _MemPool()
        pending_checks.begin_capture()        # reads what is queued: the last read before
        allocator = cp.cuda.using_allocator(self._pool.pool.malloc)
        allocator.__enter__()
        try:
            stream.begin_capture()
        except BaseException:
            allocator.__exit__(None, None, None)
            pending_checks.end_capture()
            raise
        self._capture = (stream, allocator)

    def capture_end(self) -> None:
        """Stop capturing; the graph is ready to replay."""
        if self._capture is None:
            raise RuntimeError("CUDAGraph.capture_end: capture_begin() was not called")
        cp = cupy_module()
        stream, allocator = self._capture
        self._capture = None
        try:
            checks = [pending_checks.GraphCheck(c, cp) for c in pending_checks.end_capture()]
            for check in checks:
                check.fold(cp)
        except BaseException:
            _abandon(stream)
            allocator.__exit__(None, None, None)
            raise
        try:
            graph = stream.end_capture()
        except Exception as e:
            raise RuntimeError(_failed(e)) from e
        finally:
            allocator.__exit__(None, None, None)
        with stream:
            for check in checks:
                check.reset()
        self._ready = stream.record() if checks else None
        self._graph, self._checks = graph, checks

    def _abort(self) -> None:
        """The captured code raised: end the capture and keep nothing."""
        if self._capture is None:
            return
        stream, allocator = self._capture
        self._capture = None
        pending_checks.end_capture()
        _abandon(stream)
        allocator.__exit__(None, None, None)
        self._pool = None

    def replay(self) -> None:
        """Run the captured work again, on the current stream."""
        if self._graph is None:
            raise RuntimeError("CUDAGraph.replay: nothing has been captured (use `with "
                               "kiln.cuda.graph(g):` first)")
        stream = cupy_module().cuda.get_current_stream()
        if self._ready is not None:
            stream.wait_event(self._ready)
            self._ready = None
        self._graph.launch(stream)
        for check in self._checks:
            check.queue()

    def reset(self) -> None:
        """Forget the graph and let its memory go (once no tensor holds it)."""
        self._abort()
        self._graph, self._checks, self._pool, self._ready = None, [], None, None

    def pool(self) -> _MemPool:
        """This graph's memory pool, to share with a later capture (`graph(g2, pool=...)`)."""
        if self._pool is None:
            self._pool = _MemPool()
        return self._pool

    def instantiate(self) -> None:
        """PyTorch's `keep_graph=True` step; CuPy instantiates at `capture_end`, so nothing
        is left to do."""

    def __repr__(self) -> str:
        state = "captured" if self._graph is not None else \
            "capturing" if self._capture is not None else "empty"
        return f"<kiln.cuda.CUDAGraph {state}>"


def _abandon(stream) -> None:
    """End a capture whose graph nobody will launch (CUDA may report it invalidated)."""
    try:
        stream.end_capture()
    except Exception:
        pass


def _failed(error: Exception) -> str:
    return (f"CUDA graph capture failed: {error}. Captured code must not read device memory "
            "on the host (.item(), .tolist(), printing, bool(tensor), .cpu()), copy host data "
            "to the device (tensors made from Python numbers or NumPy arrays; random numbers, "
            "which kiln draws on the host) or synchronize; do such work before or after the "
            "capture")


class graph:   # noqa: N801 (PyTorch's name)
    """`with kiln.cuda.graph(g):` captures the work inside into CUDA graph `g`, on a side
    stream (`stream`, or one shared by every `graph` block), after synchronizing the device
    and emptying the allocator's cache, as PyTorch does."""

    default_capture_stream = None

    def __init__(self, cuda_graph: CUDAGraph, pool=None, stream=None,
                 capture_error_mode: str = "global"):
        from kiln.cuda.streams import Stream
        if stream is None:
            if graph.default_capture_stream is None:
                graph.default_capture_stream = Stream()
            stream = graph.default_capture_stream
        self.cuda_graph, self.pool, self.capture_stream = cuda_graph, pool, stream
        self.capture_error_mode = capture_error_mode

    def __enter__(self) -> None:
        from kiln.cuda import empty_cache, synchronize
        synchronize()
        gc.collect()
        empty_cache()
        self.capture_stream.__enter__()
        try:
            self.cuda_graph.capture_begin(self.pool, self.capture_error_mode)
        except BaseException:
            self.capture_stream.__exit__(None, None, None)
            raise

    def __exit__(self, kind, error, tb) -> bool:
        try:
            if kind is None:
                self.cuda_graph.capture_end()
            else:
                self.cuda_graph._abort()
                if _is_capture_refusal(error):
                    raise RuntimeError(_failed(error)) from error
        finally:
            self.capture_stream.__exit__(None, None, None)
        return False


def _is_capture_refusal(error) -> bool:
    """Whether CUDA refused an operation because a stream was capturing."""
    text = str(error)
    return type(error).__name__ == "CUDARuntimeError" and "Capture" in text


# ----------------------------------------------------------------------------- callables

def make_graphed_callables(callables, sample_args, num_warmup_iters: int = 3,
                           allow_unused_input: bool = False, pool=None):
    """Graphed versions of `callables` (modules or functions; one, or a tuple), as
    torch.cuda.make_graphed_callables: each one's forward and its backward are captured into
    CUDA graphs, with `sample_args` (a tuple of tensors per callable) as the static inputs.
    A call copies its arguments into those inputs (unless it passes them), replays the forward
    graph and returns its outputs, detached from it and alive until the next replay; autograd
    then replays the backward graph, and the parameters' gradients accumulate into `.grad` as
    in eager mode. A module's graphed forward runs only in the training mode it was captured
    in; the other mode runs the module as it was."""
    from kiln.nn import Module
    from kiln.utils._pytree import tree_flatten

    single = not isinstance(callables, tuple)
    if single:
        callables, sample_args = (callables,), (sample_args,)
    if len(callables) != len(sample_args):
        raise ValueError(f"make_graphed_callables: {len(callables)} callables but "
                         f"{len(sample_args)} sample_args")
    flat_args, surfaces = [], []
    for c, args in zip(callables, sample_args):
        _check_callable(c, Module)
        flat, _ = tree_flatten(args)
        _check_args(flat)
        params = tuple(c.parameters()) if isinstance(c, Module) else ()
        flat_args.append(tuple(flat))
        surfaces.append(tuple(flat) + params)
    pool = pool if pool is not None else graph_pool_handle()
    _warm_up(callables, sample_args, surfaces, num_warmup_iters, allow_unused_input)

    forwards = [_capture_forward(c, args, pool) for c, args in zip(callables, sample_args)]
    backwards = [None] * len(callables)
    for i in reversed(range(len(callables))):       # the order backward passes run in
        backwards[i] = _capture_backward(forwards[i][1], surfaces[i], allow_unused_input, pool)

    graphed = []
    for c, fwd, bwd, flat, surface in zip(callables, forwards, backwards, flat_args, surfaces):
        function = _graphed_function(fwd, bwd, flat, surface[len(flat):])
        if isinstance(c, Module):
            c.forward = _graphed_forward(c, c.training, function, c.forward)
            graphed.append(c)
        else:
            graphed.append(function)
    return graphed[0] if single else tuple(graphed)


def _check_callable(c, module_type) -> None:
    if isinstance(c, module_type):
        hooked = [name for name in ("_forward_hooks", "_forward_pre_hooks",
                                    "_backward_hooks", "_backward_pre_hooks")
                  if getattr(c, name, None)]
        if hooked:
            raise RuntimeError("make_graphed_callables: modules must not have hooks when they "
                               f"are graphed ({type(c).__name__} has {', '.join(hooked)})")
        if any(b.requires_grad for b in c.buffers()):
            raise RuntimeError("make_graphed_callables: a module's buffers must not require "
                               f"grad ({type(c).__name__})")
    elif not callable(c):
        raise TypeError(f"make_graphed_callables: {type(c).__name__} is not callable")


def _check_args(flat: list) -> None:
    from kiln import Tensor
    for a in flat:
        if not isinstance(a, Tensor):
            raise TypeError("make_graphed_callables: sample_args must hold only tensors, got "
                            f"a {type(a).__name__}")
        if not a.is_cuda:
            raise ValueError("make_graphed_callables: sample_args must be cuda tensors, got "
                             f"one on {a.device}")


def _grads(outputs, surface, grad_outputs, allow_unused: bool):
    """d(outputs)/d(the inputs of `surface` that require grad), for `grad_outputs`."""
    import kiln
    wanted = tuple(i for i in surface if i.requires_grad)
    pairs = [(o, g) for o, g in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs or not wanted:
        return ()
    return kiln.autograd.grad([o for o, _ in pairs], wanted, [g for _, g in pairs],
                              allow_unused=allow_unused)


def _warm_up(callables, sample_args, surfaces, iters: int, allow_unused: bool) -> None:
    """Run each callable's forward and backward `iters` times on a side stream before
    capturing (kernels get built and loaded, lazily made state gets made)."""
    import kiln
    from kiln.cuda.streams import Stream
    from kiln.utils._pytree import tree_flatten
    kiln.cuda.synchronize()
    with Stream():
        for c, args, surface in zip(callables, sample_args, surfaces):
            for _ in range(iters):
                outputs, _ = tree_flatten(c(*args))
                _grads(outputs, surface, [kiln.ones_like(o) for o in outputs], allow_unused)
    kiln.cuda.synchronize()


def _capture_forward(c, args, pool):
    from kiln.utils._pytree import tree_flatten
    g = CUDAGraph()
    with graph(g, pool=pool):
        outputs, spec = tree_flatten(c(*args))
    return g, tuple(outputs), spec


def _capture_backward(outputs, surface, allow_unused: bool, pool):
    import kiln
    grad_outputs = tuple(kiln.empty_like(o) if o.requires_grad else None for o in outputs)
    g = CUDAGraph()
    with graph(g, pool=pool):
        grads = _grads(outputs, surface, grad_outputs, allow_unused)
    grads = iter(grads)
    grad_inputs = tuple(next(grads) if i.requires_grad else None for i in surface)
    return g, grad_outputs, grad_inputs


def _graphed_function(forward, backward, static_inputs: tuple, params: tuple):
    """The callable a graphed function becomes: an autograd Function replaying the graphs,
    with `static_inputs` (the flattened sample args) the forward graph's inputs."""
    from kiln.autograd import Function
    from kiln.utils._pytree import tree_flatten, tree_unflatten
    fwd_graph, static_outputs, spec = forward
    bwd_graph, static_grad_outputs, static_grad_inputs = backward
    n_args = len(static_inputs)

    class Graphed(Function):
        _eager_only = "replays CUDA graphs, which a trace cannot record"

        @staticmethod
        def forward(ctx, *inputs):
            for static, given in zip(static_inputs, inputs[:n_args]):
                if static.data_ptr() != given.data_ptr():
                    static.copy_(given)
            fwd_graph.replay()
            return tuple(o.detach() for o in static_outputs)

        @staticmethod
        def backward(ctx, *grads):
            for static, given in zip(static_grad_outputs, grads):
                if static is None:
                    continue
                if given is None:
                    static.zero_()
                elif static.data_ptr() != given.data_ptr():
                    static.copy_(given)
            bwd_graph.replay()
            # copies: kiln calls a Function's backward once per output that has a gradient
            # (kiln.tracer.custom_function), and each call's replay rewrites these buffers
            return tuple(None if g is None else g.detach().clone() for g in static_grad_inputs)

    def graphed(*args):
        flat, _ = tree_flatten(args)
        if len(flat) != n_args:
            raise TypeError(f"graphed callable: expected {n_args} tensor arguments (as in "
                            f"sample_args), got {len(flat)}")
        return tree_unflatten(list(Graphed.apply(*flat, *params)), spec)

    return graphed


def _graphed_forward(module, training: bool, graphed, eager_forward):
    def forward(*args, **kwargs):
        if module.training == training and not kwargs:
            return graphed(*args)
        return eager_forward(*args, **kwargs)
    return forward
