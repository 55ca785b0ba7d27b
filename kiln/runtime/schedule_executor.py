"""Runs a LoweredProgram: allocates its planned buffers, launches its kernels, calls its externs.

What runs is decided at compile time (`kiln.codegen.lower.lower_schedule`: which kernels are
generated, which are views, the gathers split out; `kiln.passes.memory.plan_buffers`: the kept
buffers and what to free after each step); this module only carries it out. Two kinds of
generated kernel: Triton (on NumPy memory they run in Triton's interpreter, slow, for tests and
for reading the kernels; on CuPy memory they are compiled and launched on CuPy's current
stream) and C (one shared object per program, built in the background when the executor is
created, OpenMP on the CPU). All the C kernels of a program whose build fails run on the array
executor instead (with a warning), so every program runs.

A generated C kernel is kept only where NumPy is not clearly faster: on its first replays
(`TRIAL_RUNS`) a C executor also runs each C kernel's subgraph on the array executor and times
both on the same inputs (the C result is the one used); from then on a group runs on NumPy when
that measured faster by more than `SWITCH_MARGIN`. NumPy runs on the even replays only, so that
on the odd ones the C kernel is also timed running first on the step's inputs, as it will once
chosen. A new `kiln.set_num_threads` count starts the
trials again: what wins depends on it. `ScheduleExecutor.choices` records each decision and its
times (`kiln.compiler.explain` and `kiln dump` print them); KILN_KERNEL_CHOICE=c keeps every
generated kernel (no trials).
"""

from __future__ import annotations

import math
import os
import time
import warnings
from dataclasses import dataclass
from sys import getrefcount

import numpy as np

from kiln.codegen.lower import LoweredProgram
from kiln.ir.ops import PRIMITIVES
from kiln.runtime import c_build, gemm_cpu
from kiln.runtime.c_build import data_pointer
from kiln.runtime.c_build import threads_setting as _threads_setting
from kiln.runtime.refcounts import held_refs
from kiln.runtime.cuda_graph import CudaGraphRunner
from kiln.runtime.executor import ArrayExecutor
from kiln.runtime.triton_launch import TritonStep, prebuild


# Replays on which a C executor times its kernels against the array executor (which runs on
# half of them), and how much faster (as a fraction of the C time) NumPy must be before a group
# switches to it: a group that is about as fast either way keeps its generated kernel.
TRIAL_RUNS = 4
SWITCH_MARGIN = 0.9


@dataclass(frozen=True)
class KernelChoice:
    """How one fused group runs after the trials, and why: `runs` is "c" or "numpy"; the times
    are the fastest of the trial replays, in milliseconds (the C time includes converting its
    inputs to contiguous arrays, which the array executor does not need)."""

    kernel: str             # the kernel's name, as `kiln dump` lists it
    runs: str
    c_ms: float
    numpy_ms: float

    def describe(self) -> str:
        way = "generated C" if self.runs == "c" else "NumPy (array executor)"
        return (f"{self.kernel}: runs as {way}; trial replays: C {self.c_ms:.3f} ms, "
                f"NumPy {self.numpy_ms:.3f} ms")


def choose_kernel(c_times: list, numpy_times: list, margin: float = SWITCH_MARGIN) -> str:
    """"numpy" when the array executor's fastest trial beats the C kernel's fastest by the
    margin, else "c". Fastest, not median: a busy machine only ever adds time."""
    return "numpy" if min(numpy_times) < margin * min(c_times) else "c"


class _KernelTrials:
    """Times each C step and its subgraph on the array executor during the trial replays.

    NumPy runs on the even replays, before the C kernel (whose results are the ones used); on
    the odd ones the C kernel runs alone, first on the step's inputs as it will once chosen.
    Run second, it finds the caches holding what NumPy read and wrote (5 MB arrays at the
    batch-64 CNN's conv layers), which made it up to 1.4x slower there than in the step, or
    faster (inputs NumPy already brought in); its fastest time over both kinds of replay is
    the one compared."""

    def __init__(self, alternatives: dict):
        self.alternatives = alternatives            # step index -> ArrayExecutor
        self.c_times = {i: [] for i in alternatives}
        self.numpy_times = {i: [] for i in alternatives}
        self.replay = 0                             # trial replays finished
        self._held: list = []                       # the alternatives' results this replay
        self._start = 0.0

    def next_replay(self) -> None:
        self.replay += 1
        self._held = []

    def before_c(self, i: int, env: list, ins: list) -> None:
        """On NumPy's replays, run step i's alternative on the step's inputs (the array
        executor writes none of its inputs); then start the C kernel's clock."""
        alt = self.alternatives.get(i)
        if alt is not None and self.replay % 2 == 0:
            t0 = time.perf_counter()
            try:
                # held to the end of the replay, as its results would be once chosen: memory
                # freed at once would be handed straight back to the next trial's outputs
                self._held.append(alt.run([env[s] for s in ins]))
            except Exception:        # e.g. a bounds check: the C kernel decides what happens
                del self.alternatives[i], self.c_times[i], self.numpy_times[i]
            else:
                self.numpy_times[i].append(time.perf_counter() - t0)
        self._start = time.perf_counter()

    def after_c(self, i: int) -> None:
        if i in self.c_times:
            self.c_times[i].append(time.perf_counter() - self._start)


class _Unaliased:
    """An array executor whose results never share memory with its inputs: a C kernel's outputs
    are fresh arrays, and a later C kernel may write over one of these inputs in place."""

    def __init__(self, executor: ArrayExecutor):
        self.executor = executor

    def run(self, inputs: list) -> tuple:
        results, mutations = self.executor.run(inputs)
        roots = {id(a if a.base is None else a.base) for a in inputs
                 if isinstance(a, np.ndarray)}
        results = [r.copy() if isinstance(r, np.ndarray) and
                   (id(r) in roots or id(r if r.base is None else r.base) in roots) else r
                   for r in results]
        return results, mutations


class ScheduleExecutor:
    """Runs a LoweredProgram (`kiln.codegen.lower`) on `xp` memory: allocates what its memory
    plan says, launches its kernels, calls its externs and frees each slot after its last use.
    It decides nothing the program does not say, except which way each C kernel runs after the
    trial replays; `kernels` lists (name, kernel source or None[, why]) per fused kernel.

    Args:
        program: the lowered program (`lower_schedule`, then `kiln.passes.memory.plan_buffers`).
        xp: numpy, or cupy for Triton kernels on a GPU.
    """

    def __init__(self, program: LoweredProgram, xp=np):
        self.program, self.xp, self.target = program, xp, program.target
        self.graph = program.graph    # the scheduled graph: inputs, mutations, constants
        self.backend = "interpreter" if xp is np else "cuda"
        self.num_slots = program.num_slots
        self.input_slots = list(program.input_slots)
        self.constants = [(s, a if xp is np else xp.asarray(a))
                          for s, a in zip(program.constant_slots,
                                          program.graph.constants.values())]
        shapes, dtypes = program.shapes, program.dtypes
        self.c_kernels = []         # CKernel per C step, in order
        self._c_names = {}          # step index -> its C kernel's name
        steps = []
        for st in program.steps:
            ins, outs = list(st.ins), list(st.outs)
            if st.kind == "c":
                self.c_kernels.append(st.kernel)
                self._c_names[len(steps)] = st.kernel.name
                specs = tuple((b, shapes[o], dtypes[o], o, over) for b, o, over in
                              zip(st.buffers, st.outs, st.in_place))
                steps.append(("c", st.kernel, ins, outs, None, (st.in_dtypes, specs)))
            elif st.kind == "matmul":
                (o,) = st.outs
                views = None if st.view is None else tuple(
                    None if v is None else (PRIMITIVES[v[0]].impl, dict(v[1])) for v in st.view)
                # a thin float32 product on NumPy memory: gemm_cpu's kernel (it declines what
                # it does not take), its right operand's contiguous copy kept for the run
                # under this key (a slot holds one value per run)
                thin = None
                if xp is np and len(shapes[o]) == 2 and shapes[o][0] <= gemm_cpu.MAX_ROWS and \
                        shapes[o][1] % 64 == 0 and \
                        all(dtypes[s] == np.float32 for s in (o,) + tuple(ins)):
                    thin = (ins[1], None if st.view is None else st.view[1])
                # float16 and bfloat16 through float32's BLAS, rounded once, as eager
                # computes them
                half = dtypes[o] == np.float16 or dtypes[o].name == "bfloat16"
                matmul = _matmul_in_float32 if xp is np and half else xp.matmul
                steps.append(("matmul", matmul, ins, outs, views,
                              (st.buffers[0], shapes[o], dtypes[o], thin)))
            elif st.kind == "view":
                op, attrs = st.view
                steps.append(("view", PRIMITIVES[op].impl, ins, outs, None, dict(attrs)))
            elif st.kind == "array":
                steps.append(("array", ArrayExecutor(st.graph, xp, st.node_plan), ins, outs,
                              None, None))
            else:
                steps.append(("triton", st.kernel, ins, outs, st.graph, None))
        self.steps = steps
        # (kernel name, source or None when it was not generated[, why]) per fused kernel
        self.kernels = [(st.name, st.kernel.source) if st.kernel is not None else
                        (st.name, None, st.why) for st in program.steps if st.number]
        self.module_source = program.module_source  # the C translation unit, for target "c"
        self._build = c_build.start_build(self.module_source) if self.c_kernels else None
        self.free = list(program.free)
        self.output_slots = list(program.output_slots)
        self.mutation_slots = list(program.mutation_slots)
        self._into_all = program.into
        self._write_callers_arrays_last()
        self._ready = self._build is None
        self._build_failed = ""     # why the C kernels run on the array executor, if they do
        # the kept buffers of the memory plan; one is replaced by a fresh one when something
        # outside still holds it (an output the caller kept from the last call)
        self._buffers = [None] * len(program.buffer_bytes)
        # per kept buffer, its data pointer (NumPy memory; 0 until made): a C kernel's output
        # or a matmul's written there needs no address lookup per call
        self._pointers = [0] * len(program.buffer_bytes)
        self._forget_typed()
        self.choices: list = []     # KernelChoice per C kernel, once the trials are over
        self._trials = None         # _KernelTrials while they run
        self._trials_left = TRIAL_RUNS if self.c_kernels and \
            os.environ.get("KILN_KERNEL_CHOICE", "measure") != "c" else 0
        self._linked_steps = None   # the steps with every C kernel, kept for new trials
        self._plan = None           # `self.steps` as run_steps walks them (_prepare_plan)
        self._plan_of = None        # the `self.steps` list the plan was made from
        self._stack_bytes = []      # per stack (`_stacks`): its size in bytes
        self._stack_memory = []     # per stack: its memory (uint8), made on the first call
        self._stack_pointers = []   # per stack: the address of its memory
        self._trial_threads = None  # the thread setting the choices were measured with
        self.triton_steps: dict = {}   # step index -> TritonStep (kiln.runtime.triton_launch)
        self.cuda_graph = None         # CudaGraphRunner on a GPU (kiln.runtime.cuda_graph)
        if self.backend == "cuda":     # build the kernels for this GPU now, in the background
            prebuild([(st[1], st[4]) for st in self.steps if st[0] == "triton"])
            self.cuda_graph = CudaGraphRunner(self)

    @property
    def rendered(self):
        """What the program cache keeps of this executor: its lowered program (C kernels
        included) for target "c"; nothing for Triton kernels."""
        return self.program if self.target == "c" else None

    def launch_plan(self) -> list:
        """What this executor runs, per step in launch order (after its C build, so a failed
        build shows as array steps): dicts with `kind` ("c", "triton", "matmul", "view",
        "array", "numpy"), `name`, `source` (the generated source built and launched, else
        None), `why` (a fused kernel not generated), `number` (the fused kernel's, k0, k6a, or
        ""), `inputs`/`outputs` (value refs), `buffers` (per output: the kept buffer of the
        memory plan, or None: allocated per call) and `lowered` (the LoweredStep). A cat whose
        pieces are computed in place (`_stacks`) shows as a "view". Read by the compiler's
        CompiledArtifact, which `kiln dump` and `explain` print."""
        self.wait()
        if self._plan_of is not self.steps:
            self._prepare_plan()
        refs = self.program.refs
        plan = []
        for (kind, _, ins, outs, _, _), st, ran in zip(self.steps, self.program.steps,
                                                       self._plan):
            source = st.kernel.source if kind in ("c", "triton") else None
            why = st.why if kind == st.kind else self._build_failed
            if ran[0] == "stacked":
                kind, why = "view", "a view of the stack its pieces were computed into"
            plan.append(dict(kind=kind, name=st.name, source=source, why=why, number=st.number,
                             inputs=tuple(refs[x] for x in st.ins),
                             outputs=tuple(refs[x] for x in st.outs),
                             buffers=st.buffers if kind == st.kind else (None,) * len(outs),
                             lowered=st))
        return plan

    # -------------------------------------------------------------- C kernels
    def _write_callers_arrays_last(self) -> None:
        """Let steps write the caller's arrays (write-backs in place, `into`) only after the last
        step that may raise (on the array executor, a bad index; a Triton launch): the compiler
        then runs the call eagerly instead, which must find them as they were."""
        last = max((i for i, st in enumerate(self.steps) if st[0] in ("array", "triton")),
                   default=-1)
        steps = []
        for i, (kind, runner, ins, outs, sub, extra) in enumerate(self.steps):
            if kind == "c" and i < last:
                in_dtypes, out_specs = extra
                extra = (in_dtypes, tuple(spec[:4] + (None,) for spec in out_specs))
            steps.append((kind, runner, ins, outs, sub, extra))
        self.steps = steps
        producer = {s: i for i, st in enumerate(steps) for s in st[3]}
        self._into = {i: spec for i, spec in self._into_all.items() if producer[spec[0]] > last}

    def _link(self) -> None:
        """Wait for the C build and bind each C step to its function; on failure, fall back."""
        try:
            lib = c_build.load(self._build)
            steps = []
            for kind, runner, ins, outs, sub, extra in self.steps:
                if kind == "c":
                    runner = c_build.kernel_function(lib, runner.name, len(ins) + len(outs))
                steps.append((kind, runner, ins, outs, sub, extra))
        except c_build.BuildError as e:
            warnings.warn(f"kiln: building the C kernels of {self.program.name!r} failed, they "
                          f"run on the NumPy executor instead: {e}", stacklevel=4)
            steps = [("array", ArrayExecutor(lowered.graph, self.xp, lowered.node_plan), ins,
                      outs, None, None) if kind == "c" else (kind, runner, ins, outs, sub, extra)
                     for (kind, runner, ins, outs, sub, extra), lowered in
                     zip(self.steps, self.program.steps)]
            self._build_failed = f"C build failed: {e}"
            self.kernels = [(k[0], None, self._build_failed) if len(k) == 2 else k
                            for k in self.kernels]
        self.steps = steps
        self._write_callers_arrays_last()
        self._ready = True

    def _start_trials(self) -> None:
        if self._linked_steps is None:
            self._linked_steps = self.steps
        else:                       # measured again: from the C kernels
            self.steps, self.choices = self._linked_steps, []
            self._write_callers_arrays_last()
        self._trial_threads = _threads_setting()
        self._trials = _KernelTrials({i: ArrayExecutor(lowered.graph, self.xp,
                                                       lowered.node_plan)
                                      for i, (st, lowered) in enumerate(zip(self.steps,
                                                                            self.program.steps))
                                      if st[0] == "c"})

    def _finish_trials(self) -> None:
        """Run each C step from now on the way its trials measured faster; record why."""
        trials, self._trials, self._trials_left = self._trials, None, 0
        steps, choices = list(self.steps), []
        for i, (kind, runner, ins, outs, sub, extra) in enumerate(self.steps):
            if kind != "c" or not trials.c_times.get(i) or not trials.numpy_times.get(i):
                continue
            c_t, np_t = trials.c_times[i], trials.numpy_times[i]
            runs = choose_kernel(c_t, np_t)
            choices.append(KernelChoice(self._c_names[i], runs, min(c_t) * 1e3,
                                        min(np_t) * 1e3))
            if runs == "numpy":
                # the same subgraph on the array executor: outputs in fresh arrays, written
                # back by the caller as for any array step. Kind "numpy", not "array": it
                # cannot raise (a kernel's subgraph has no bounds checks, and its trials ran),
                # so earlier C kernels still write the caller's arrays in place
                steps[i] = ("numpy", _Unaliased(trials.alternatives[i]), ins, outs, None, None)
        self.steps = steps
        self.choices = choices
        self._write_callers_arrays_last()

    def wait(self) -> "ScheduleExecutor":
        """Finish building (and loading) the C kernels now rather than on the first run."""
        if not self._ready:
            self._link()
        return self

    # -------------------------------------------------------------- running
    def release_buffers(self) -> None:
        """Forget the arrays kept from call to call (a CUDA graph's capture makes its own)."""
        self._buffers = [None] * len(self._buffers)
        self._pointers = [0] * len(self._buffers)
        self._forget_typed()
        for step in self.triton_steps.values():
            step.release()

    def _forget_typed(self) -> None:
        """Drop the typed views of the kept buffers that C steps' outputs keep between calls."""
        # per step, per output: the array of its shape and dtype over its kept buffer, made
        # once (400 ns a call otherwise); `_views_of[b]`: how many of them refer to buffer b
        # and `_typed_keys[b]` which, so a buffer's reference count still says whether the
        # caller holds its memory
        self._typed = [None] * len(self.program.steps)
        self._views_of = [0] * len(self.program.buffer_bytes)
        self._typed_keys = [[] for _ in self.program.buffer_bytes]

    def _prepare_plan(self) -> None:
        """Per step, what `run_steps` reads: the step, the slots to free after it, and for a C
        kernel that can take the fast branch, (inputs as (slot, dtype, whether the slot's own
        dtype is that dtype), outputs as (kept buffer or None, shape, dtype, slot, stack
        position or None), whether an output may be computed into a caller's array (`into`));
        else None. A `cat` step whose pieces `_stacks` places gets (stack, shape, dtype) as its
        extra and kind "stacked"."""
        dtypes = self.program.dtypes
        into_slots = {spec[0] for spec in self._into.values()}
        fast_of = {}
        for i, (kind, runner, ins, outs, sub, extra) in enumerate(self.steps):
            if kind == "c" and self.xp is np:
                in_dtypes, out_specs = extra
                if all(over is None for *_, over in out_specs):
                    fast_of[i] = (tuple((s, d, np.dtype(dtypes[s]) == d)
                                        for s, d in zip(ins, in_dtypes)),
                                  out_specs, any(s in into_slots for s in outs))
        stacks, place = self._stacks(fast_of)
        plan = []
        for i, ((kind, runner, ins, outs, sub, extra), free) in enumerate(zip(self.steps,
                                                                                self.free)):
            fast = fast_of.get(i)
            if fast is not None:
                fast = (fast[0], tuple(spec[:4] + (place.get(spec[3]),) for spec in fast[1]),
                        fast[2])
            elif i in stacks:
                kind, extra = "stacked", stacks[i]
            plan.append((kind, runner, ins, outs, sub, extra, tuple(free), fast))
        self._plan, self._plan_of = plan, self.steps
        self._stack_memory = [None] * len(self._stack_bytes)      # made on the next call
        self._stack_pointers = [0] * len(self._stack_bytes)

    def _stacks(self, fast_of: dict) -> tuple[dict, dict]:
        """The concatenations whose pieces C kernels can write in place: a `cat` along the first
        axis of values of its dtype that fast-branch C kernels produce (an LSTM's hidden states
        stacked into its output sequence, its per-step gate gradients stacked for the weight
        gradient). Each such piece is computed straight into its block of memory of the
        executor's own (a "stack", never shared with another value), and the cat is a view of
        it. Not done where a kernel writes over one of these values in place (its pieces are
        then views of memory another reader still needs). Returns ({cat step: (stack, shape,
        dtype)}, {piece slot: (stack, byte offset)}); `_stack_bytes` gets each stack's size."""
        shapes, dtypes = self.program.shapes, self.program.dtypes
        producer = {}
        for i, st in enumerate(self.steps):
            for s in st[3]:
                producer[s] = i
        written_over = {over[0] for kind, _, _, _, _, extra in self.steps if kind == "c"
                        for *_, over in extra[1] if over is not None}
        # and what shares memory with them: a view step's result, or an array step's (which
        # may return a view of its input); a stack is not made where any of these is written
        shares = {}
        for kind, _, ins, outs, _, _ in self.steps:
            if kind in ("view", "array", "numpy"):
                for s in ins:
                    shares.setdefault(s, []).extend(outs)

        def written_over_through_views(slots) -> bool:
            seen, todo = set(), list(slots)
            while todo:
                s = todo.pop()
                if s in written_over:
                    return True
                if s not in seen:
                    seen.add(s)
                    todo.extend(shares.get(s, ()))
            return False

        stacks, place, sizes = {}, {}, []
        for i, (st, lowered) in enumerate(zip(self.steps, self.program.steps)):
            if st[0] != "array" or lowered.graph is None or len(lowered.graph.nodes) != 1:
                continue
            node = lowered.graph.nodes[0]
            pieces, (out,) = st[2], st[3]
            # each piece once, in the cat's order: a value concatenated twice (a bidirectional
            # LSTM's zero state in its gate gradients) is one input of the step, and a stack
            # of the step's inputs would be a block short
            if node.op != "cat" or node.attr_dict.get("axis") != 0 or \
                    tuple(node.inputs) != tuple(lowered.graph.inputs) or \
                    len(set(pieces)) != len(pieces):
                continue
            dtype = np.dtype(dtypes[out])
            if not all(producer.get(s) in fast_of and not fast_of[producer[s]][2] and
                       s not in place and np.dtype(dtypes[s]) == dtype for s in pieces) or \
                    written_over_through_views([out, *pieces]):
                continue
            offset, at = 0, {}
            for s in pieces:
                at[s] = (len(sizes), offset)
                offset += math.prod(shapes[s]) * dtype.itemsize
            place.update(at)
            stacks[i] = (len(sizes), shapes[out], dtype)
            sizes.append(offset)
        self._stack_bytes = sizes
        return stacks, place

    def _replace_buffer(self, b: int, xp=np) -> None:
        """Fresh memory for kept buffer b (the caller holds the old one); its typed views go."""
        self._buffers[b] = _new_buffer(b, self.program.buffer_bytes[b], xp)
        self._pointers[b] = data_pointer(self._buffers[b]) if xp is np else 0
        for i, j in self._typed_keys[b]:
            self._typed[i][j] = None
        self._typed_keys[b] = []
        self._views_of[b] = 0

    def run(self, inputs: list, into: dict | None = None) -> tuple[list, list]:
        """Arrays for graph.outputs and for the new values of graph.mutations; on a GPU, by
        replaying a CUDA graph once one is captured (`cuda_graph`)."""
        if self.cuda_graph is not None:
            return self.cuda_graph.run(inputs, into)
        return self.run_steps(inputs, into)

    def run_steps(self, inputs: list, into: dict | None = None) -> tuple[list, list]:
        """Arrays for graph.outputs and for the new values of graph.mutations, launching each
        step.

        Args:
            into: output index -> an array of the caller's (the `.grad` a compiled backward
                rewrites each step) to compute that output into, when the step producing it
                can and no input still to be read shares its memory; else it is not touched.
        """
        if not self._ready:
            self._link()
        trials = None
        if self._trials_left or (self._linked_steps is not None and
                                 self._trial_threads != _threads_setting()):
            if self._trials is None:
                self._trials_left = TRIAL_RUNS
                self._start_trials()
            trials = self._trials
        xp = self.xp
        buffers, addresses = self._buffers, self._pointers
        typed, views_of = self._typed, self._views_of
        env = [None] * self.num_slots
        # the data pointer of each slot a C kernel wrote in this call (a contiguous array of
        # the kernel's output dtype): a later kernel reading it needs no conversion or lookup
        pointer_of = [0] * self.num_slots
        for s, a in zip(self.input_slots, inputs):
            env[s] = a
        for s, a in self.constants:
            env[s] = a
        packed = {}                 # thin products' right operands made contiguous
        dests = {}                  # slot -> the caller's array it is computed into
        for i, a in (into or {}).items():
            spec = self._into.get(i)
            if spec is not None and getattr(a, "shape", None) == spec[1] and \
                    _free_to_write(a, spec[2], env, spec[3]):
                dests[spec[0]] = a
        if self._plan_of is not self.steps:
            self._prepare_plan()
        stack_memory, stack_pointers = self._stack_memory, self._stack_pointers
        # what a count reads for an array only a list holds, and also a local (refcounts.py)
        in_list, in_local = held_refs()
        for k in range(len(stack_memory)):
            # fresh memory when the caller still holds last call's (a piece or the whole):
            # the references are then more than the list's and the argument's
            if stack_memory[k] is None or getrefcount(stack_memory[k]) != in_list:
                stack_memory[k] = np.empty(self._stack_bytes[k], np.uint8)
                stack_pointers[k] = data_pointer(stack_memory[k])
        for i, (kind, runner, ins, outs, sub, extra, free, fast) in enumerate(self._plan):
            if fast is not None and (not dests or not fast[2]):
                # a C kernel none of whose outputs may go to the caller's arrays or over one of
                # its inputs (`_prepare_plan`): the general branch below, less what cannot
                # happen. `pointer_of` is also set here for an input that needed no conversion
                # (contiguous, of its slot's dtype), so its later readers skip the check.
                if trials is not None:
                    trials.before_c(i, env, ins)
                in_info, out_info, _ = fast
                pointers = []
                copies = None       # converted inputs, kept alive until the kernel has run
                for s, d, same in in_info:
                    p = pointer_of[s]
                    if not p or not same:
                        a = env[s]
                        if not p or a.dtype != d:
                            c = np.ascontiguousarray(a, d)
                            p = data_pointer(c)
                            if c is not a:
                                copies = (c, copies)
                            elif same:
                                pointer_of[s] = p
                    pointers.append(p)
                cache = typed[i]
                if cache is None:
                    cache = typed[i] = [None] * len(out_info)
                for j, (b, shape, d, s, stacked) in enumerate(out_info):
                    if stacked is not None:         # its block of a stack (`_stacks`)
                        k, offset = stacked
                        env[s] = np.ndarray(shape, d, stack_memory[k], offset)
                        p = pointer_of[s] = stack_pointers[k] + offset
                        pointers.append(p)
                        continue
                    if b is None:
                        out = env[s] = np.empty(shape, d)
                        p = pointer_of[s] = data_pointer(out)
                        pointers.append(p)
                        continue
                    # the kept buffer, when only this executor refers to it: see below
                    out = cache[j]
                    if getrefcount(buffers[b]) != in_list + views_of[b] or \
                            (out is not None and getrefcount(out) != in_local):
                        self._replace_buffer(b)
                        out = None
                    if out is None:
                        out = cache[j] = np.ndarray(shape, d, buffers[b])
                        views_of[b] += 1
                        self._typed_keys[b].append((i, j))
                    env[s] = out
                    p = pointer_of[s] = addresses[b]
                    pointers.append(p)
                runner(*pointers)
                out = a = c = copies = None     # no local holds a kept buffer past the step
                if trials is not None:
                    trials.after_c(i)
            elif kind == "stacked":     # a cat whose pieces were computed in place
                k, shape, d = extra
                env[outs[0]] = np.ndarray(shape, d, stack_memory[k])
                pointer_of[outs[0]] = stack_pointers[k]
            elif kind == "c":
                if trials is not None:
                    trials.before_c(i, env, ins)
                in_dtypes, out_specs = extra
                # `args` keeps converted copies alive until the kernel has read them
                args, pointers = [], []
                for s, d in zip(ins, in_dtypes):
                    a, p = env[s], pointer_of[s]
                    if not p or a.dtype != d:
                        a = np.ascontiguousarray(a, d)
                        p = data_pointer(a)
                    args.append(a)
                    pointers.append(p)
                for j, (b, shape, d, s, over) in enumerate(out_specs):
                    dest = dests.get(s)
                    if dest is None and over is not None:
                        src_slot, arg, others = over
                        dest = env[src_slot]
                        if (arg is not None and args[arg] is not dest) or \
                                not _free_to_write(dest, d, env, others):
                            dest = None
                    if dest is not None:    # the caller's array: nothing to copy afterwards
                        env[s] = dest
                        pointer_of[s] = data_pointer(dest)
                        pointers.append(pointer_of[s])
                        continue
                    if b is None:
                        out = np.empty(shape, d)
                    else:
                        # the kept buffer, when only this list still refers to it (the caller
                        # dropped what it held last call): fresh memory would cost a page fault
                        # per 4 KiB
                        # (references: the list, the call's argument, its typed views; a
                        # typed view's: its list, `out`, the argument; no local keeps a
                        # buffer, which would count at its next use)
                        cache = typed[i]
                        if cache is None:
                            cache = typed[i] = [None] * len(out_specs)
                        out = cache[j]
                        if getrefcount(buffers[b]) != in_list + views_of[b] or \
                                (out is not None and getrefcount(out) != in_local):
                            self._replace_buffer(b)
                            out = None
                        if out is None:
                            out = cache[j] = np.ndarray(shape, d, buffers[b])
                            views_of[b] += 1
                            self._typed_keys[b].append((i, j))
                        env[s] = out
                        pointer_of[s] = addresses[b]
                        pointers.append(addresses[b])
                        continue
                    env[s] = out
                    pointer_of[s] = data_pointer(out)
                    pointers.append(pointer_of[s])
                runner(*pointers)
                args = a = None     # a kept buffer they view is not held past the step
                if trials is not None:
                    trials.after_c(i)
            elif kind == "matmul":
                b, shape, d, thin = extra
                dest = dests.get(outs[0])
                if dest is None and b is not None:
                    if getrefcount(buffers[b]) != in_list + views_of[b]:
                        self._replace_buffer(b, xp)
                    dest = _typed(buffers[b], shape, d)
                    pointer_of[outs[0]] = addresses[b]    # contiguous, of the output's dtype
                held = packed.get(thin) if thin is not None else None
                if held is not None and dest is not None and pointer_of[outs[0]] and \
                        (sub is None or sub[0] is None) and pointer_of[ins[0]]:
                    # the weight seen earlier in this run, the operand and the result
                    # contiguous at known addresses: straight to gemm_cpu's kernel
                    fn, py, ldy, k, _ = held
                    fn(pointer_of[ins[0]], k, py, ldy, pointer_of[outs[0]], shape[0], k,
                       shape[1])
                    env[outs[0]] = dest
                elif thin is not None:
                    env[outs[0]] = _thin_product(
                        sub, env[ins[0]], env[ins[1]], dest, packed, thin, shape,
                        pointer_of[ins[0]] if sub is None or sub[0] is None else 0,
                        pointer_of[outs[0]] if dest is not None else 0)
                elif sub is None:
                    env[outs[0]] = runner(env[ins[0]], env[ins[1]], out=dest)
                else:                   # views of the operands (LoweredStep.view)
                    env[outs[0]] = _viewed_matmul(runner, xp, sub, env[ins[0]], env[ins[1]],
                                                  dest)
            elif kind == "view":
                env[outs[0]] = runner(xp, env[ins[0]], **extra)
            elif kind == "triton":
                step = self.triton_steps.get(i)
                if step is None:        # prepared on its first launch, then kept
                    step = self.triton_steps[i] = TritonStep(runner, sub, self.backend, xp)
                for s, r in zip(outs, step.run([env[s] for s in ins])):
                    env[s] = r
            else:
                results, _ = runner.run([env[s] for s in ins])
                for s, r in zip(outs, results):
                    env[s] = r
            for s in free:
                env[s] = None
        if trials is not None:
            trials.next_replay()
            self._trials_left -= 1
            if not self._trials_left:
                self._finish_trials()
        return [env[s] for s in self.output_slots], [env[s] for s in self.mutation_slots]



def _matmul_in_float32(x, y, out=None):
    """np.matmul of float16 or bfloat16 operands on float32 copies (NumPy's float16 matmul runs
    no BLAS, ml_dtypes' bfloat16 one none either), the product rounded to their dtype once, into
    `out` when given."""
    product = np.matmul(x.astype(np.float32), y.astype(np.float32))
    if out is None:
        return product.astype(x.dtype)
    np.copyto(out, product, casting="same_kind")
    return out


def _viewed_matmul(matmul, xp, views: tuple, x, y, out):
    """matmul(x, y) of views of x and y (per operand, (impl, attrs) or None), into `out`; a
    function of its own so that no local of the executor's loop keeps the views (and so their
    buffers) alive past the step."""
    vx, vy = views
    if vx is not None:
        x = vx[0](xp, x, **vx[1])
    if vy is not None:
        y = vy[0](xp, y, **vy[1])
    return matmul(x, y, out=out)


def _thin_product(views: tuple | None, x, y, out, packed: dict, key: tuple, shape: tuple,
                  px: int, po: int):
    """matmul(x, y) (float32; of views of them, as `_viewed_matmul`) into `out` by gemm_cpu's
    thin-product kernel, or by NumPy where that declines. The right operand (an RNN's weight,
    which every step reads) is looked at once per run: kept in `packed` as (kernel, address,
    row stride, rows, array), a contiguous copy when its rows are not contiguous (a transposed
    weight); `run_steps` calls the kernel itself for the run's later products. `px`, `po`: the
    addresses of x and out when the executor knows them, else 0 (`data_pointer` costs 0.7 us,
    `.ctypes.data` 2, the product 25)."""
    fn = gemm_cpu.kernel()
    held = packed.get(key)
    if held is None:
        if views is not None and views[1] is not None:
            y = views[1][0](np, y, **views[1][1])
        if fn is None or y.ndim != 2 or not gemm_cpu.takes(shape[0], y.shape[0], shape[1]):
            return _viewed_matmul(np.matmul, np, (views or (None,))[:1] + (None,), x, y, out)
        if y.strides[1] != 4 or y.strides[0] % 4:
            y = np.ascontiguousarray(y)
        packed[key] = (fn, data_pointer(y), y.strides[0] // 4, y.shape[0], y)
        held = packed[key]
    fn, py, ldy, k, y = held
    if views is not None and views[0] is not None:
        x = views[0][0](np, x, **views[0][1])
    if x.strides[1] != 4 or x.strides[0] % 4:
        x, px = np.ascontiguousarray(x), 0
    if out is None:
        out, po = np.empty(shape, np.float32), 0
    fn(px or data_pointer(x), x.strides[0] // 4, py, ldy, po or data_pointer(out), shape[0], k,
       shape[1])
    return out


def _typed(buffer, shape: tuple, dtype: np.dtype):
    """A kept buffer's bytes as an array of `shape` and `dtype` (NumPy or CuPy)."""
    if type(buffer) is np.ndarray:
        return np.ndarray(shape, dtype, buffer)
    n = np.dtype(dtype).itemsize * math.prod(shape)
    return buffer[:n].view(dtype).reshape(shape)


def _new_buffer(index: int, nbytes: int, xp=np):
    """Memory for kept buffer `index` of a program's memory plan (bytes; each value it holds
    is a typed view of it), from NumPy or CuPy."""
    return xp.empty(nbytes, np.uint8)


def _free_to_write(a, dtype, env: list, others: tuple) -> bool:
    """Whether a kernel may store values of `dtype` into the caller's array `a`: contiguous,
    writeable, of that dtype, and sharing memory with none of the input slots `others`."""
    if type(a) is not np.ndarray or a.dtype != dtype or not a.flags.c_contiguous or \
            not a.flags.writeable:
        return False
    owner = a if a.base is None else a.base
    for s in others:
        b = env[s]
        if b is a or (b if getattr(b, "base", None) is None else b.base) is owner:
            return False
    return True
