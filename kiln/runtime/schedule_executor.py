"""Runs a fused Schedule: each FusedKernel as one generated kernel, externs as array calls.

Two kinds of generated kernel: Triton (`target="triton"`; on NumPy memory they run in Triton's
interpreter, slow, for tests and for reading the kernels; on CuPy memory they are compiled and
launched on CuPy's current stream) and C (`target="c"`; one shared object per schedule, built
in the background when the executor is created, OpenMP on the CPU). A kernel the code
generator cannot lower runs through the array executor instead, and so do all the C kernels of
a schedule whose build fails (with a warning), so every schedule runs.

A generated C kernel is kept only where NumPy is not clearly faster: on its first replays
(`TRIAL_RUNS`) a C executor also runs each C kernel's subgraph on the array executor and times
both on the same inputs (the C result is the one used); from then on a group runs on NumPy when
that measured faster by more than `SWITCH_MARGIN`. A new `kiln.set_num_threads` count starts the
trials again: what wins depends on it. `ScheduleExecutor.choices` records each decision and its
times (`kiln.compiler.explain` and `kiln dump` print them); KILN_KERNEL_CHOICE=c keeps every
generated kernel (no trials).
"""

from __future__ import annotations

import os
import time
import warnings
from dataclasses import dataclass
from sys import getrefcount

import numpy as np

from kiln.codegen.kernel import LoweringError, lower
from kiln.ir.ops import PRIMITIVES
from kiln.passes.fusion import STRIDED_VIEWS, FusedKernel, Schedule, gathers_as_externs
from kiln.passes.memory import in_place_updates, inputs_read
from kiln.runtime.c_build import data_pointer
from kiln.runtime.c_build import threads_setting as _threads_setting
from kiln.runtime.executor import ArrayExecutor


# Replays on which a C executor times its kernels against the array executor, and how much
# faster (as a fraction of the C time) NumPy must be before a group switches to it: a group
# that is about as fast either way keeps its generated kernel.
TRIAL_RUNS = 3
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
    """Times each C step and its subgraph on the array executor during the trial replays."""

    def __init__(self, alternatives: dict):
        self.alternatives = alternatives            # step index -> ArrayExecutor
        self.c_times = {i: [] for i in alternatives}
        self.numpy_times = {i: [] for i in alternatives}
        self._start = 0.0

    def before_c(self, i: int, env: list, ins: list) -> None:
        """Run step i's alternative on the step's inputs (the array executor writes none of its
        inputs), then start the C kernel's clock."""
        alt = self.alternatives.get(i)
        if alt is not None:
            t0 = time.perf_counter()
            try:
                alt.run([env[s] for s in ins])
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


@dataclass
class ExecutorLayout:
    """What a ScheduleExecutor derives from its schedule, as data: buffer slots, steps, what to
    free after each, the outputs it may compute into the caller's arrays, and the C kernels it
    rendered. The program cache keeps it, so an executor of the same schedule in a new process
    starts from it: no lowering, rendering, re-fusing of gathers or liveness analysis.

    `steps` holds `(kind, what, ins, outs, extra)` per step, `ins` and `outs` being slots:
    "c" (`what` its kernel number in `kernels`; `extra` the argument dtypes and output specs),
    "matmul" (`extra`: its spare array, shape and dtype), "view" (`what`: (op, attrs)), "array"
    (`what`: the Graph the array executor runs) and "triton" (`what` the kernel, `extra` its
    subgraph).
    """

    kernels: dict           # kernel number -> CKernel
    steps: list
    listing: list           # ScheduleExecutor.kernels, a C kernel by its number
    num_slots: int
    input_slots: list
    constant_slots: list    # per graph constant, in order
    free: list              # per step, the slots no later step reads
    output_slots: list
    mutation_slots: list
    into: dict              # output index -> (slot, shape, dtype, slots it must not share)
    num_spares: int         # arrays kept from call to call for C kernels and matmuls


class ScheduleExecutor:
    """Executes `schedule` on `xp` memory; `kernels` lists (name, kernel source or None[, why]).

    Args:
        schedule: the fused program (`kiln.passes.fusion.fuse`).
        xp: numpy, or cupy for Triton kernels on a GPU.
        target: "triton" or "c": what the fused kernels are rendered to.
        rendered: what an earlier executor of this very schedule prepared (its `rendered`: an
            ExecutorLayout, kept by the program cache), used instead of deriving it again; or
            C kernels rendered for it before, by kernel number.
    """

    def __init__(self, schedule, xp=np, target: str = "triton", rendered=None):
        if target not in ("triton", "c"):
            raise ValueError(f"unknown kernel target {target!r}; expected 'triton' or 'c'")
        self.schedule, self.xp, self.target = schedule, xp, target
        self.backend = "interpreter" if xp is np else "cuda"
        graph = self.graph = schedule.graph
        if isinstance(rendered, ExecutorLayout) and target == "c":
            layout, self._subgraphs = rendered, None        # found when a build fails
        else:
            layout, self._subgraphs = _plan(schedule, target, rendered or {})
        self._layout = layout
        self.num_slots = layout.num_slots
        self.input_slots = layout.input_slots
        self.constants = [(s, a if xp is np else xp.asarray(a))
                          for s, a in zip(layout.constant_slots, graph.constants.values())]
        self.c_kernels = []         # CKernel per C step, in order
        self._c_names = {}          # step index -> its C kernel's name
        steps = []
        for kind, what, ins, outs, extra in layout.steps:
            if kind == "c":
                ck = layout.kernels[what]
                self.c_kernels.append(ck)
                self._c_names[len(steps)] = ck.name
                steps.append((kind, ck, ins, outs, None, extra))
            elif kind == "matmul":
                steps.append((kind, xp.matmul, ins, outs, None, extra))
            elif kind == "view":
                op, attrs = what
                steps.append((kind, PRIMITIVES[op].impl, ins, outs, None, dict(attrs)))
            elif kind == "array":
                steps.append((kind, ArrayExecutor(what, xp), ins, outs, None, None))
            else:
                steps.append((kind, what, ins, outs, extra, None))
        self.steps = steps
        # (kernel name, source or None when it was not lowered[, why])
        self.kernels = [(layout.kernels[k].name, layout.kernels[k].source)
                        if isinstance(k, str) else k for k in layout.listing]
        self.module_source = None   # the C translation unit, for target "c"
        self._build = None
        if self.c_kernels:
            from kiln.codegen.c import c_module
            from kiln.runtime import c_build
            self.module_source = c_module(self.c_kernels, f"kernels of graph {graph.name!r}")
            self._build = c_build.start_build(self.module_source)
        self.free = layout.free
        self.output_slots = layout.output_slots
        self.mutation_slots = layout.mutation_slots
        self._into_all = layout.into
        self._write_callers_arrays_last()
        self._ready = self._build is None
        # the arrays C kernels wrote last time, reused once nothing else holds them
        self._spares = [None] * layout.num_spares
        self._spare_pointers = [0] * layout.num_spares     # each C spare's data pointer
        self.choices: list = []     # KernelChoice per C kernel, once the trials are over
        self._trials = None         # _KernelTrials while they run
        self._trials_left = TRIAL_RUNS if self.c_kernels and \
            os.environ.get("KILN_KERNEL_CHOICE", "measure") != "c" else 0
        self._linked_steps = None   # the steps with every C kernel, kept for new trials
        self._trial_threads = None  # the thread setting the choices were measured with

    @property
    def rendered(self):
        """What an executor of this very schedule in a new process may start from (`rendered=`):
        this one's layout and C kernels; nothing for Triton kernels."""
        return self._layout if self.target == "c" else {}

    def launch_plan(self) -> list:
        """What this executor runs, per step in launch order (after its C build, so a failed
        build shows as array steps): dicts with `kind` ("c", "triton", "matmul", "view",
        "array"), `name`, `source` (the generated source built and launched, else None),
        `why` (a kernel not lowered), `step` (the schedule's step), `ins`/`outs` (slots) and
        `spares` (kept array per output, or None: allocated per call) and `number` (the fused
        kernel's, k0, k6a, ...). Read by the compiler's CompiledArtifact, which `kiln dump` and
        `explain` print."""
        self.wait()
        runnable, numbers = _runnable(self.schedule)
        why = iter([k[2] for k in self.kernels if len(k) == 3])
        plan = []
        for (kind, _, ins, outs, _, _), planned, step, number in zip(
                self.steps, self._layout.steps, runnable.steps, numbers):
            name, source, reason, spares = getattr(step, "name", None), None, None, None
            if kind == "c":
                ck = self._layout.kernels[planned[1]]
                name, source = ck.name, ck.source
                spares = tuple(spec[0] for spec in planned[4][1])
            elif kind == "triton":
                name, source = planned[1].name, planned[1].source
            elif kind == "matmul":
                spares = (planned[4][0],)
            elif isinstance(step, FusedKernel):
                reason = next(why, None)
            plan.append(dict(kind=kind, name=name, source=source, why=reason, step=step,
                             ins=tuple(ins), outs=tuple(outs), spares=spares, number=number))
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
        from kiln.runtime import c_build
        try:
            lib = c_build.load(self._build)
            steps = []
            for kind, runner, ins, outs, sub, extra in self.steps:
                if kind == "c":
                    runner = c_build.kernel_function(lib, runner.name, len(ins) + len(outs))
                steps.append((kind, runner, ins, outs, sub, extra))
        except c_build.BuildError as e:
            warnings.warn(f"kiln: building the C kernels of {self.graph.name!r} failed, they run "
                          f"on the NumPy executor instead: {e}", stacklevel=4)
            if self._subgraphs is None:      # the layout came from the program cache
                self._subgraphs = [st.subgraph if isinstance(st, FusedKernel) else None
                                   for st in _runnable(self.schedule)[0].steps]
            steps = [("array", ArrayExecutor(self._subgraphs[i], self.xp), ins, outs, None,
                      None) if kind == "c" else (kind, runner, ins, outs, sub, extra)
                     for i, (kind, runner, ins, outs, sub, extra) in enumerate(self.steps)]
            self.kernels = [(k[0], None, f"C build failed: {e}") if len(k) == 2 else k
                            for k in self.kernels]
        self.steps = steps
        self._write_callers_arrays_last()
        self._ready = True

    def _step_subgraphs(self) -> list:
        """The subgraph per step (None for externs), derived again when the layout came from
        the program cache."""
        if self._subgraphs is None:
            self._subgraphs = [st.subgraph if isinstance(st, FusedKernel) else None
                               for st in _runnable(self.schedule)[0].steps]
        return self._subgraphs

    def _start_trials(self) -> None:
        if self._linked_steps is None:
            self._linked_steps = self.steps
        else:                       # measured again: from the C kernels
            self.steps, self.choices = self._linked_steps, []
            self._write_callers_arrays_last()
        self._trial_threads = _threads_setting()
        subgraphs = self._step_subgraphs()
        self._trials = _KernelTrials({i: ArrayExecutor(subgraphs[i], self.xp)
                                      for i, st in enumerate(self.steps) if st[0] == "c"})

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
    def run(self, inputs: list, into: dict | None = None) -> tuple[list, list]:
        """Arrays for graph.outputs and for the new values of graph.mutations.

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
        spares, spare_pointers = self._spares, self._spare_pointers
        env = [None] * self.num_slots
        # the data pointer of each slot a C kernel wrote in this call (a contiguous array of
        # the kernel's output dtype): a later kernel reading it needs no conversion or lookup
        pointer_of = [0] * self.num_slots
        for s, a in zip(self.input_slots, inputs):
            env[s] = a
        for s, a in self.constants:
            env[s] = a
        dests = {}                  # slot -> the caller's array it is computed into
        for i, a in (into or {}).items():
            spec = self._into.get(i)
            if spec is not None and getattr(a, "shape", None) == spec[1] and \
                    _free_to_write(a, spec[2], env, spec[3]):
                dests[spec[0]] = a
        for i, ((kind, runner, ins, outs, sub, extra), free) in enumerate(zip(self.steps,
                                                                              self.free)):
            if kind == "c":
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
                for k, shape, d, s, over in out_specs:
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
                    # the last call's array, when only this list still refers to it: the
                    # caller dropped it, and fresh memory would cost a page fault per 4 KiB
                    if getrefcount(spares[k]) != 2:
                        spares[k] = np.empty(shape, d)
                        spare_pointers[k] = data_pointer(spares[k])
                    env[s] = spares[k]
                    pointer_of[s] = spare_pointers[k]
                    pointers.append(pointer_of[s])
                runner(*pointers)
                if trials is not None:
                    trials.after_c(i)
            elif kind == "matmul":
                k, shape, d = extra
                dest = dests.get(outs[0])
                if dest is None:
                    if getrefcount(spares[k]) != 2:
                        spares[k] = xp.empty(shape, d)
                    dest = spares[k]
                env[outs[0]] = runner(env[ins[0]], env[ins[1]], out=dest)
            elif kind == "view":
                env[outs[0]] = runner(xp, env[ins[0]], **extra)
            elif kind == "triton":
                from kiln.runtime.triton_launch import launch
                args = [xp.ascontiguousarray(env[s], dtype=v.dtype.np)
                        for s, v in zip(ins, sub.inputs)]
                results = [xp.empty(v.shape, dtype=v.dtype.np) for v in sub.outputs]
                launch(runner, args, results, self.backend)
                for s, r in zip(outs, results):
                    env[s] = r
            else:
                results, _ = runner.run([env[s] for s in ins])
                for s, r in zip(outs, results):
                    env[s] = r
            for s in free:
                env[s] = None
        if trials is not None:
            self._trials_left -= 1
            if not self._trials_left:
                self._finish_trials()
        return [env[s] for s in self.output_slots], [env[s] for s in self.mutation_slots]



# ----------------------------------------------------------------------------- planning

def _runnable(schedule) -> tuple:
    """(the schedule as the executor runs it, kernel number or None per step).

    No code generator gathers yet: a kernel with a `take` runs as kernels around a `take` call,
    not all on the array executor; its parts keep its number (k6a, k6b). Kernels are numbered
    k0, k1, ... as `kiln dump` lists them.
    """
    flat, numbers, index = [], [], 0
    for step in schedule.steps:
        parts = [step]
        if isinstance(step, FusedKernel) and any(n.op == "take" for n in step.subgraph.nodes):
            parts = gathers_as_externs(step)
        kernels = [p for p in parts if isinstance(p, FusedKernel)]
        for p in parts:
            number = None
            if isinstance(p, FusedKernel):
                number = f"k{index}" if len(kernels) == 1 else \
                    f"k{index}{chr(ord('a') + kernels.index(p))}"
            flat.append(p)
            numbers.append(number)
        index += isinstance(step, FusedKernel)
    graph = schedule.graph
    return (Schedule(graph, flat) if len(flat) != len(schedule.steps) else schedule), numbers


def _plan(schedule, target: str, known: dict) -> tuple:
    """(ExecutorLayout, subgraph per step or None) of running `schedule` with `target` kernels;
    `known`: C kernels rendered for it before, by number."""
    graph = schedule.graph
    runnable, numbers = _runnable(schedule)
    slot: dict = {}
    for v in list(graph.inputs) + list(graph.constants):
        slot.setdefault(v, len(slot))
    for step in runnable.steps:
        for v in step.outputs:
            slot.setdefault(v, len(slot))
    calls_blas = any(getattr(st, "node", None) is not None and st.node.op == "matmul"
                     for st in schedule.steps)
    # write-backs C kernels may compute over their source (see in_place_updates), and the
    # graph inputs that must not share its memory then: those read from that step on
    over: dict = {}
    read = inputs_read(runnable)
    step_of = {v: i for i, st in enumerate(runnable.steps) for v in st.outputs}
    if target == "c":
        for new, src in in_place_updates(runnable).items():
            others = tuple(slot[v] for v in read[step_of[new]] if v is not src)
            over[new] = (src, slot[src], others)
    steps, subgraphs, listing, kernels = [], [], [], {}
    num_spares = 0
    for step, number in zip(runnable.steps, numbers):
        ins = [slot[v] for v in step.inputs]
        outs = [slot[v] for v in step.outputs]
        if isinstance(step, FusedKernel):      # the rest are extern nodes
            sub = step.subgraph
            subgraphs.append(sub)
            if all(n.op in STRIDED_VIEWS for n in sub.nodes):
                # only views (a transposed weight or activation before a matmul): NumPy and
                # CuPy make them without copying, and the matmul reads them as they are
                listing.append((step.name, None, "views only: no copy needed"))
                if len(sub.nodes) == 1 and sub.outputs == [sub.nodes[0].out]:
                    (n,) = sub.nodes
                    steps.append(("view", (n.op, n.attrs), ins, outs, None))
                else:
                    steps.append(("array", sub, ins, outs, None))
                continue
            try:
                if target == "c":
                    ck, extra = _c_step(number, step, known, over, outs, calls_blas,
                                        num_spares)
                    kernels[number] = ck
                    listing.append(number)
                    steps.append(("c", number, ins, outs, extra))
                    num_spares += len(sub.outputs)
                else:
                    from kiln.codegen.triton import render_triton
                    tk = render_triton(lower(sub))
                    listing.append((tk.name, tk.source))
                    steps.append(("triton", tk, ins, outs, sub))
                continue
            except LoweringError as e:
                listing.append((step.name, None, str(e)))
        elif step.node.op == "matmul":
            # into the last call's result when nothing else holds it (as C kernels do): a
            # fresh megabyte costs a page fault per 4 KiB on every call
            out = step.node.out
            steps.append(("matmul", None, [slot[v] for v in step.node.inputs], outs,
                          (num_spares, out.shape, np.dtype(out.dtype.np))))
            subgraphs.append(None)
            num_spares += 1
            continue
        else:
            sub = step.subgraph
            subgraphs.append(sub)
        steps.append(("array", sub, ins, outs, None))
    # buffers no later step reads are dropped after the step that last reads them
    input_slots = [slot[v] for v in graph.inputs]
    constant_slots = [slot[v] for v in graph.constants]
    mutation_slots = [slot[new] for _, new in graph.mutations]
    pinned = set(input_slots) | set(constant_slots) | {slot[v] for v in graph.outputs} | \
        set(mutation_slots)
    last: dict = {}
    for i, step in enumerate(steps):
        for s in step[2]:
            last[s] = i
    free = [tuple(s for s in dict.fromkeys(step[2]) if last[s] == i and s not in pinned)
            for i, step in enumerate(steps)]
    # outputs that `run(..., into=...)` may compute straight into a caller's array: those a C
    # kernel or a matmul writes, returned once and not written back; with the inputs that
    # must not share that array's memory
    written = {s for kind, _, _, outs, _ in steps if kind in ("c", "matmul") for s in outs}
    into = {}
    for i, v in enumerate(graph.outputs):
        if slot[v] in written and graph.outputs.count(v) == 1 and \
                slot[v] not in mutation_slots:
            into[i] = (slot[v], v.shape, np.dtype(v.dtype.np),
                       tuple(slot[x] for x in read[step_of[v]]))
    layout = ExecutorLayout(kernels, steps, listing, len(slot), input_slots, constant_slots,
                            free, [slot[v] for v in graph.outputs], mutation_slots, into,
                            num_spares)
    return layout, subgraphs


def _c_step(number: str, step: FusedKernel, known: dict, over: dict, outs: list,
            calls_blas: bool, first_spare: int) -> tuple:
    """(CKernel, the step's argument dtypes and output specs) of one generated C kernel."""
    from kiln.codegen.c import PARALLEL_MIN, PARALLEL_MIN_NEAR_BLAS, render_c
    sub = step.subgraph
    over = {j: over[v] for j, v in enumerate(step.outputs) if v in over}
    ck = known.get(number)
    if ck is None:
        kernel = lower(sub)
        ck = render_c(kernel, name=f"{number}_{kernel.name}", parallel_min=(
            PARALLEL_MIN_NEAR_BLAS if calls_blas else PARALLEL_MIN), in_place={
                j: step.inputs.index(src) for j, (src, _, _) in over.items()
                if src in step.inputs})
    paired = dict(ck.in_place)
    out_specs = []
    for j, (v, s) in enumerate(zip(sub.outputs, outs)):
        # (source slot, its argument position or None, inputs it must not share with)
        target = None
        if j in over and (paired.get(j) is not None or over[j][0] not in step.inputs):
            target = (over[j][1], paired.get(j), over[j][2])
        out_specs.append((first_spare + j, v.shape, np.dtype(v.dtype.np), s, target))
    return ck, (tuple(np.dtype(v.dtype.np) for v in sub.inputs), tuple(out_specs))


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
