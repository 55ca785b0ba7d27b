"""CUDA graph replay of a compiled program: one graph launch per call instead of one launch per
kernel, matmul and copy.

A `CudaGraphRunner` stands in front of a ScheduleExecutor whose kernels run on a GPU. Its first
call runs the executor plainly (the warm-up: kernels get built and loaded, and their launch
configurations settled, `kiln.runtime.triton_tune`; a kernel still waiting for its candidates'
builds keeps the program on plain runs, `MAX_UNSETTLED_CALLS` at most, then one run waits for
them); the next captures the executor's run into a CUDA graph on a CuPy stream of its own, with
every array the run makes coming from a memory pool of the graph's own (so nothing else is ever
handed that memory), and every later call replays the graph on the caller's stream:

- inputs whose device address did not change between the warm-up and the capture (parameters,
  optimizer state: "stable") are read where they are; the others (a new batch each call, a
  learning rate or a seed made per call) are copied into static buffers of the graph, unless
  the caller passes that very buffer. A stable input found at a new address drops the graph; the
  next call captures again (at most `MAX_CAPTURES` times, then plain launches from then on);
- the new values of inputs the program updates in place (parameters, optimizer state) are
  copied back into stable inputs inside the graph, and the executor returns that input itself
  (the compiler then has nothing to copy); other outputs are copied out of the graph's memory
  after each replay, so results the caller keeps are never overwritten by the next replay;
- index bounds checks, which read the host in eager mode, are evaluated on the device inside
  the graph (the write-backs are masked by their result) and read once after each replay (the
  only synchronization), raising the same error as eager with nothing written back.

Where capture is impossible (a host read or synchronization inside the program, an input that is
not a device array, an error from CUDA) the program runs with plain launches, and `describe()`
says why; `kiln.compiler.explain` and `kiln dump` print it. `KILN_CUDA_GRAPHS=0` in the
environment when a function is compiled turns graphs off for it.
"""

from __future__ import annotations

import os

from kiln.ir import ops as ir_ops
from kiln.runtime.device import cupy_module

ENV = "KILN_CUDA_GRAPHS"
WARMUP_CALLS = 1        # plain runs before the capture: kernels built and loaded, pointers seen
MAX_CAPTURES = 3        # captures before a program whose stable inputs keep moving runs plainly
MAX_UNSETTLED_CALLS = 20    # plain runs waiting for kernels' launch configurations, at most


def graphs_enabled() -> bool:
    """Whether programs compiled now may run as CUDA graphs (`KILN_CUDA_GRAPHS`, default on)."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


class CaptureImpossible(Exception):
    """Why a program cannot run as a CUDA graph (the message says, for the user)."""


class CudaGraphRunner:
    """Runs an executor's program as a CUDA graph once it has been warmed up (see the module
    docstring); `executor.run_steps(inputs, into)` is the plain run."""

    def __init__(self, executor):
        self.executor = executor
        self.calls = 0
        self.captures = 0
        self.reason = None if graphs_enabled() else f"turned off ({ENV}=0)"
        self.graph = None
        self.kernels = 0            # work items captured (see `_count_kernels`)
        self.nbytes = 0             # memory the graph's own pool holds
        self.replays = 0
        self._previous = None       # input addresses at the last plain run
        self._mutated = _mutated_inputs(executor)   # input index per mutation
        self._waited = False        # a plain run waited for the kernels' builds (`_settled`)
        self._reset()

    def _reset(self) -> None:
        self.graph = None
        self._pool = self._stream = None
        self._inputs = self._stable = self._statics = None
        self._outputs = self._mutations = self._in_graph = None
        self._checks = None

    # ------------------------------------------------------------------ status
    def describe(self) -> str:
        """`cuda graph: captured (N kernels, X MB)`, or why it is not (yet) captured."""
        if self.graph is not None:
            return (f"cuda graph: captured ({self.kernels} kernels, "
                    f"{self.nbytes / 1e6:.1f} MB; {self.replays} replays)")
        if self.reason is not None:
            return f"cuda graph: not captured: {self.reason}"
        return (f"cuda graph: not captured yet (captured on call {WARMUP_CALLS + 1} of the "
                "compiled program, after a warm-up call)")

    # ------------------------------------------------------------------ running
    def run(self, inputs: list, into: dict | None = None) -> tuple[list, list]:
        self.calls += 1
        if self.reason is not None:
            return self.executor.run_steps(inputs, into)
        addresses = [_address(a) for a in inputs]
        if self.graph is not None:
            if all(not s or a == k for a, k, s in zip(addresses, self._inputs, self._stable)):
                return self._replay(inputs)
            # a parameter was replaced (`p.data = ...`): this graph reads its old memory
            self._reset()
            if self.captures >= MAX_CAPTURES:
                self.reason = (f"inputs the program reads in place moved {self.captures} "
                               "times (captured again each time, then gave up)")
        if self.graph is None and self.reason is None and self._previous is not None and \
                self.calls > WARMUP_CALLS and self._settled():
            try:
                return self._capture(inputs, addresses)
            except CaptureImpossible as e:
                self._reset()
                self.reason = str(e)
        self._previous = addresses
        return self.executor.run_steps(inputs, into)

    def _settled(self) -> bool:
        """Whether every kernel's launch configuration is settled (`CudaKernelLauncher`: tuned
        kernels wait in plain runs for their candidates' builds; a graph keeps what it
        captured). After `MAX_UNSETTLED_CALLS` plain runs, the next one waits for the builds
        and the one after captures, settled or not."""
        steps = getattr(self.executor, "triton_steps", {})
        waiting = [s.launcher for s in steps.values() if not getattr(s.launcher, "settled", True)]
        if not waiting or self._waited:
            return True
        if self.calls > WARMUP_CALLS + MAX_UNSETTLED_CALLS:
            for launcher in waiting:
                launcher.wait_for_builds = True
            self._waited = True
        return False

    def _capture(self, inputs: list, addresses: list) -> tuple[list, list]:
        cp = cupy_module()
        executor = self.executor
        if any(a is None for a in addresses):
            raise CaptureImpossible("an input is not a device array")
        stable = [a == p for a, p in zip(addresses, self._previous)]
        self._pool = pool = cp.cuda.MemoryPool()
        self._stream = stream = cp.cuda.Stream(non_blocking=True)
        executor.release_buffers()          # the graph's buffers come from its own pool
        try:
            # the static buffers are filled on the caller's stream, where the inputs were made
            # (the capture does not run anything; the graph is launched on that stream too)
            with cp.cuda.using_allocator(pool.malloc):
                statics = [None if s else cp.empty(a.shape, a.dtype)
                           for a, s in zip(inputs, stable)]
                for a, st in zip(inputs, statics):
                    if st is not None:
                        st[...] = a
            run_inputs = [a if s else st for a, s, st in zip(inputs, stable, statics)]
            with stream, cp.cuda.using_allocator(pool.malloc):
                checks = []
                stream.begin_capture()
                try:
                    before = ir_ops.defer_index_checks(checks)
                    try:
                        outputs, mutations = executor.run_steps(run_inputs, None)
                    finally:
                        ir_ops.defer_index_checks(before)
                    bad = None
                    for flag, _, _ in checks:
                        bad = flag if bad is None else bad | flag
                    in_graph = self._write_back(cp, run_inputs, stable, mutations,
                                                None if bad is None else ~bad)
                except BaseException:
                    try:
                        stream.end_capture()    # invalidated: CUDA says so, which we know
                    except Exception:
                        pass
                    raise
                graph = stream.end_capture()
        except CaptureImpossible:
            executor.release_buffers()
            raise
        except Exception as e:          # a host read, a synchronization, CUDA's refusal
            executor.release_buffers()
            raise CaptureImpossible(f"capturing failed: {type(e).__name__}: "
                                    f"{str(e).splitlines()[0] if str(e) else ''}") from e
        self.graph, self.captures = graph, self.captures + 1
        self._inputs, self._stable, self._statics = addresses, stable, statics
        self._outputs, self._mutations, self._in_graph = outputs, mutations, in_graph
        self._checks = (bad, checks) if checks else None
        self.kernels = _count_kernels(executor) + sum(in_graph)
        self.nbytes = pool.total_bytes()
        return self._replay(inputs, filled=True)

    def _write_back(self, cp, inputs: list, stable: list, mutations: list, ok) -> list:
        """Copy, inside the graph, each new value of a stable input into that input; per
        mutation, whether it was (a replay then returns the input itself: nothing to copy).
        `ok`: None, or a 0-d device bool that is false when a bounds check failed: then nothing
        is written, and the error raised after the replay finds the state as it was, as in
        eager mode."""
        in_graph = []
        for new, i in zip(mutations, self._mutated):
            target = inputs[i]
            done = stable[i] and new is not target and \
                getattr(new, "shape", None) == target.shape and new.dtype == target.dtype
            if done and ok is None:
                cp.copyto(target, new)
            elif done:
                cp.copyto(target, new, where=ok)
            in_graph.append(done)
        return in_graph

    def _replay(self, inputs: list, filled: bool = False) -> tuple[list, list]:
        for a, static in zip(inputs, self._statics):
            if static is not None and not filled and _address(a) != _address(static):
                static[...] = a
        self.graph.launch(self.executor.xp.cuda.get_current_stream())
        self.replays += 1
        if self._checks is not None:
            bad, checks = self._checks
            if bool(bad.get()):         # the one host read: raise as eager does
                for _, check, args in checks:
                    check(*args)
        outputs = [o.copy() for o in self._outputs]
        mutations = [inputs[i] if done else new for new, i, done in zip(
            self._mutations, self._mutated, self._in_graph)]
        return outputs, mutations


def _address(a):
    """Where an array's data is on the device, and how it is laid out (None: not an array)."""
    data = getattr(a, "data", None)
    ptr = getattr(data, "ptr", None)
    return None if ptr is None else (ptr, a.strides, a.shape)


def _mutated_inputs(executor) -> list:
    """The executor input index each of its mutations writes."""
    index = {v: i for i, v in enumerate(executor.graph.inputs)}
    return [index[src] for src, _ in executor.graph.mutations]


def _count_kernels(executor) -> int:
    """Device work the program issues per run: each Triton kernel and matmul, and each op the
    array executor runs (movement ops among them may be views, which launch nothing)."""
    count = 0
    for kind, runner, *_ in executor.steps:
        if kind in ("triton", "matmul"):
            count += 1
        elif kind in ("array", "numpy"):
            graph = getattr(getattr(runner, "executor", runner), "graph", None)
            count += len(graph.nodes) if graph is not None else 1
    return count
