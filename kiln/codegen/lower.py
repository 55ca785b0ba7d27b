"""Lowering: a fused Schedule -> the LoweredProgram an executor runs, all decided at compile time.

`lower_schedule(schedule, target)` is the last step of the compiler's pipeline (see
`kiln.passes.pipeline.STEPS`). It decides, per step of the schedule, how it runs: a generated
kernel (C or Triton, rendered here with its build options: the parallel threshold, which
outputs may overwrite an input), a BLAS matmul, a strided view that needs no copy (a kernel made
of views only is never launched), or the array executor (externs, and a kernel the renderers
cannot spell, with the reason). It numbers the slots every value lives in. The runtime only
allocates, launches and frees what this describes; `kiln dump` and `explain` print it.

Its inputs come from the passes, so that codegen imports only `ir`: the schedule (`kiln.ir.
schedule` types) already split around its gathers (`kiln.passes.fusion.split_gathers`), the
in-place write-backs and the graph inputs each step reads (`kiln.passes.memory`). Its memory,
what to free after each step and which kept buffer each output goes into, is planned afterwards
by `kiln.passes.memory.plan_buffers` and recorded with `LoweredProgram.with_memory`.
"""

from __future__ import annotations

import collections
import dataclasses
from dataclasses import dataclass, field

import numpy as np

from kiln.codegen import c as c_codegen
from kiln.codegen.kernel import Kernel, LoweringError, lower, shared_form
from kiln.ir.schedule import STRIDED_VIEWS, FusedKernel, Schedule

VIEWS_ONLY = "views only: no copy needed"
EMPTY = "a tensor with no elements: nothing to compute"


@dataclass(frozen=True)
class LoweredStep:
    """One step in launch order. `kind`: "c" or "triton" (a generated kernel: `kernel` holds its
    exact source), "matmul" (BLAS), "view" (a one-node strided view, no copy) or "array" (the
    array executor runs `graph`: an extern call, views only, or a kernel not generated, `why`).
    `ins`/`outs` are slots of the program."""

    kind: str
    ins: tuple
    outs: tuple
    name: str = ""              # the kernel's, the extern op's, or the subgraph's name
    number: str = ""            # a fused kernel's number (k0, k6a), else ""
    kernel: object = None       # CKernel or TritonKernel: the rendered source it launches
    graph: object = None        # the subgraph: what "array" runs; a kernel's NumPy alternative
    view: tuple | None = None   # "view": (op, attrs); "matmul": per input, the (op, attrs)
                                # of a view taken of it before the product, or None
    why: str = ""               # why a fused kernel is not generated
    in_dtypes: tuple = ()       # "c": the dtype each input is converted to
    in_place: tuple = ()        # "c": per output None, or (source slot, argument position or
                                # None, slots it must not share memory with): an update the
                                # kernel may compute into its source's memory
    kept: tuple = ()            # per output: whether the executor writes it into a kept
                                # buffer (planned memory), not memory allocated per call
    buffers: tuple = ()         # per output: its kept buffer's index (memory plan), or None
    node_plan: tuple = ()       # "array", "c": the memory of running `graph` on the array
                                # executor (`kiln.passes.memory.plan_nodes`)

    @property
    def may_alias_inputs(self) -> bool:
        """Whether an output may be a view of an input's memory (NumPy views, array steps)."""
        return self.kind in ("view", "array")


@dataclass(frozen=True)
class LoweredProgram:
    """What an executor runs for one fused program: steps in launch order over numbered slots,
    and its memory (frees and kept buffers, from `kiln.passes.memory.plan_buffers`)."""

    name: str
    target: str                 # "c" or "triton"
    steps: tuple                # LoweredStep
    refs: tuple                 # per slot: the value's ref (`%5`) in the scheduled graph
    shapes: tuple               # per slot
    dtypes: tuple               # per slot: a NumPy dtype
    input_slots: tuple
    constant_slots: tuple       # per graph constant, in order
    output_slots: tuple
    mutation_slots: tuple
    into: dict                  # output index -> (slot, shape, dtype, slots it must not share):
                                # outputs that may be computed into a caller's array
    module_source: str | None = None    # "c": the translation unit built
    free: tuple = ()            # per step: the slots dropped after it
    buffer_bytes: tuple = ()    # per kept buffer: its size
    graph: object = field(default=None, compare=False)  # the scheduled graph (its constants)

    @property
    def num_slots(self) -> int:
        return len(self.refs)

    def with_memory(self, plan) -> "LoweredProgram":
        """This program with `plan`'s frees and buffers (a `kiln.passes.memory.MemoryPlan` of
        it: `free` per step, `buffer_of` slot -> buffer, `buffer_bytes`, `node_plans`)."""
        steps = tuple(dataclasses.replace(s, buffers=tuple(
            plan.buffer_of.get(o) if kept else None
            for o, kept in zip(s.outs, s.kept or (False,) * len(s.outs))),
            node_plan=plan.node_plans.get(i, ())) for i, s in enumerate(self.steps))
        return dataclasses.replace(self, steps=steps, free=tuple(plan.free),
                                   buffer_bytes=tuple(plan.buffer_bytes))

    def memory_text(self) -> str:
        """The kept buffers: which values each holds, by step."""
        holds: dict = {}
        for i, s in enumerate(self.steps):
            for o, b in zip(s.outs, s.buffers):
                if b is not None:
                    holds.setdefault(b, []).append(f"{self.refs[o]} (step {i})")
        lines = [f"memory plan: {len(self.buffer_bytes)} kept buffers, "
                 f"{sum(self.buffer_bytes)} bytes"]
        lines += [f"  buffer {b}: {n} bytes, holds {', '.join(holds.get(b, []))}"
                  for b, n in enumerate(self.buffer_bytes)]
        lines += [f"  after step {i}: drop {', '.join(self.refs[x] for x in free)}"
                  for i, free in enumerate(self.free) if free]
        return "\n".join(lines)

    def __str__(self) -> str:
        lines = [f"lowered {self.name} ({self.target}): {len(self.steps)} steps"]
        for i, s in enumerate(self.steps):
            ins = [self.refs[x] for x in s.ins]
            if s.kind == "matmul" and s.view is not None:     # operands it takes views of
                ins = [ref if v is None else f"{v[0]}({ref})" for ref, v in zip(ins, s.view)]
            args = f"({', '.join(ins)}) -> " \
                   f"{', '.join(self.refs[x] for x in s.outs)}"
            what = " ".join(t for t in (s.number, s.kind, s.name if s.name != s.kind else "")
                            if t)
            why = f"    [{s.why}]" if s.why else ""
            lines.append(f"  step {i}: {what} {args}{why}")
        return "\n".join(lines)


def lower_schedule(schedule: Schedule, target: str, numbers: list | None = None,
                   in_place: dict | None = None, reads: list | None = None) -> LoweredProgram:
    """Decide how each step of `schedule` runs with `target` ("c" or "triton") kernels.

    Args:
        schedule: a fused program whose kernels do not gather (`passes.fusion.split_gathers`).
        numbers: per step, its fused kernel's number (k0, k6a) or None; counted when omitted.
        in_place: `new -> src` write-backs a C kernel may compute into src's memory
            (`passes.memory.in_place_updates`); none when omitted.
        reads: per step, the graph inputs read from it on (`passes.memory.inputs_read`); every
            input when omitted.
    """
    if target not in ("triton", "c"):
        raise ValueError(f"unknown kernel target {target!r}; expected 'triton' or 'c'")
    graph = schedule.graph
    steps_in = schedule.steps
    if numbers is None:
        count = iter(range(len(steps_in)))
        numbers = [f"k{next(count)}" if isinstance(s, FusedKernel) else None for s in steps_in]
    reads = reads if reads is not None else [set(graph.inputs)] * len(steps_in)
    slot: dict = {}
    for v in list(graph.inputs) + list(graph.constants):
        slot.setdefault(v, len(slot))
    for step in steps_in:
        for v in step.outputs:
            slot.setdefault(v, len(slot))
    step_of = {v: i for i, st in enumerate(steps_in) for v in st.outputs}
    over: dict = {}
    if target == "c":
        for new, src in (in_place or {}).items():
            others = tuple(slot[v] for v in reads[step_of[new]] if v is not src)
            over[new] = (src, slot[src], others)
    calls_blas = any(getattr(st, "node", None) is not None and st.node.op == "matmul"
                     for st in steps_in)
    steps = []
    for step, number in zip(steps_in, numbers):
        ins = tuple(slot[v] for v in step.inputs)
        outs = tuple(slot[v] for v in step.outputs)
        if not isinstance(step, FusedKernel):           # an extern node
            node = step.node
            if node.op == "matmul":
                # into a kept buffer, as C kernels do: on the CPU a fresh megabyte costs a page
                # fault per 4 KiB on every call; on a GPU the kernels reading it keep their
                # prepared launch arguments (and a CUDA graph its addresses)
                steps.append(LoweredStep("matmul", tuple(slot[v] for v in node.inputs), outs,
                                         name="matmul", kept=(True,)))
            else:
                steps.append(LoweredStep("array", ins, outs, name=node.op,
                                         graph=step.subgraph))
            continue
        sub = step.subgraph
        if all(n.op in STRIDED_VIEWS for n in sub.nodes):
            # only views (a transposed weight or activation before a matmul): NumPy and CuPy
            # make them without copying, and the matmul reads them as they are
            steps.extend(_view_steps(step, sub, number, slot))
            continue
        if any(0 in v.shape for v in [*sub.inputs, *(n.out for n in sub.nodes)]):
            steps.append(LoweredStep("array", ins, outs, step.name, number, graph=sub,
                                     why=EMPTY))
            continue
        try:
            if target == "c":
                steps.append(_c_step(number, step, over, ins, outs))
            else:
                # imported here: ~15 ms a process lowering only C kernels never spends
                from kiln.codegen.triton import render_triton
                tk = render_triton(lower(sub))
                steps.append(LoweredStep("triton", ins, outs, tk.name, number, tk, sub))
        except LoweringError as e:
            steps.append(LoweredStep("array", ins, outs, step.name, number, graph=sub,
                                     why=str(e)))
    if target == "c":
        steps = _render_c(steps, c_codegen.PARALLEL_MIN_NEAR_BLAS if calls_blas
                          else c_codegen.PARALLEL_MIN)
    input_slots = tuple(slot[v] for v in graph.inputs)
    mutation_slots = tuple(slot[new] for _, new in graph.mutations)
    if target == "triton":      # convolutions as implicit-GEMM kernels, where that is their route
        # imported here, as render_triton above: it loads the Triton renderer
        from kiln.codegen.conv import rewrite_convolutions
        steps = rewrite_convolutions(steps, graph, slot,
                                     {slot[v] for v in graph.outputs} | set(mutation_slots))
    steps = _fold_views(steps, {slot[v] for v in graph.outputs} | set(mutation_slots))
    # outputs `run(..., into=...)` may compute straight into a caller's array: those a C kernel
    # or a matmul writes, returned once and not written back; with the inputs that must not
    # share that array's memory
    written = {o for s in steps if s.kind in ("c", "matmul") for o in s.outs}
    into = {}
    for i, v in enumerate(graph.outputs):
        if slot[v] in written and graph.outputs.count(v) == 1 and \
                slot[v] not in mutation_slots:
            into[i] = (slot[v], v.shape, np.dtype(v.dtype.np),
                       tuple(slot[x] for x in reads[step_of[v]]))
    c_kernels = [s.kernel for s in steps if s.kind == "c"]
    module = c_codegen.c_module(c_kernels, f"kernels of graph {graph.name!r}") \
        if c_kernels else None
    values = list(slot)         # with the values between views (`_view_steps`)
    return LoweredProgram(
        graph.name, target, tuple(steps), tuple(v.ref for v in values),
        tuple(v.shape for v in values), tuple(np.dtype(v.dtype.np) for v in values),
        input_slots, tuple(slot[v] for v in graph.constants),
        tuple(slot[v] for v in graph.outputs), mutation_slots, into, module, graph=graph)


def _view_steps(step: FusedKernel, sub, number: str, slot: dict) -> list:
    """A kernel of views only as one "view" step per node (a value between two of them gets
    a slot of its own): the executor makes each with one call, where the array executor costs
    ~10 us a group, and `_fold_views` hands those read only by matmuls to the matmuls."""
    outer = dict(zip(sub.inputs, step.inputs)) | dict(zip(sub.outputs, step.outputs))
    steps = []
    for n in sub.nodes:
        out = outer.get(n.out, n.out)
        slot.setdefault(out, len(slot))
        steps.append(LoweredStep("view", (slot[outer[n.inputs[0]]],), (slot[out],), step.name,
                                 number, graph=sub, view=(n.op, n.attrs), why=VIEWS_ONLY))
        outer[n.out] = out
    return steps


def _fold_views(steps: list, leaving: set) -> list:
    """Steps with each one-node view read only by matmuls taken by those matmuls themselves
    (`LoweredStep.view`: a transposed operand, as the layout pass makes an RNN step's thin
    products read `h.T`): one executor step less per view, the same NumPy view made."""
    readers: dict = {}
    for i, st in enumerate(steps):
        for x in st.ins:
            readers.setdefault(x, []).append(i)
    folded = {}                 # a view's output slot -> (its input slot, (op, attrs))
    for st in steps:
        if st.kind == "view" and st.outs[0] not in leaving and \
                all(steps[i].kind == "matmul" for i in readers.get(st.outs[0], [None])
                    if i is not None) and st.outs[0] in readers:
            folded[st.outs[0]] = (st.ins[0], st.view)
    if not folded:
        return steps
    out = []
    for st in steps:
        if st.kind == "view" and st.outs[0] in folded:
            continue
        if st.kind == "matmul" and any(x in folded for x in st.ins):
            views = tuple(folded[x][1] if x in folded else None for x in st.ins)
            st = dataclasses.replace(st, ins=tuple(folded[x][0] if x in folded else x
                                                   for x in st.ins), view=views)
        out.append(st)
    return out


@dataclass(frozen=True)
class _CKernelToRender:
    """A C step lowered but not rendered yet: kernels that compute alike on moved pointers
    share one C function (`_render_c`)."""

    number: str
    step: FusedKernel
    ins: tuple
    outs: tuple
    kernel: Kernel
    in_place: dict              # output index -> the input it may be computed over
    over: dict                  # output index -> (source value, its slot, slots it must not
                                # share memory with): `lower_schedule`'s `over`, per output
    shared: tuple               # kernel.shared_form's (kernel, shifts, key)


def _c_step(number: str, step: FusedKernel, over: dict, ins: tuple,
            outs: tuple) -> _CKernelToRender:
    """A generated C kernel's step, lowered, with the outputs it may compute in place."""
    over = {j: over[v] for j, v in enumerate(step.outputs) if v in over}
    kernel = lower(step.subgraph)
    in_place = {j: step.inputs.index(src) for j, (src, _, _) in over.items()
                if src in step.inputs}
    return _CKernelToRender(number, step, ins, outs, kernel, in_place, over,
                            shared_form(kernel, frozenset(in_place.values())))


def _render_c(steps: list, parallel_min: int) -> list:
    """The C steps rendered. Kernels alike but for where their inputs start (an RNN's cell at
    each time step, reading its rows of one input projection; a layer repeated) run one shared
    function, each through a call of its own that moves the pointers: a 2-layer LSTM over 35
    steps built 152 functions (690 KB of C, ~10 s of GCC), now 16. A kernel alone is rendered
    as it is."""
    def key(p):
        return p.shared[2], tuple(sorted(p.in_place.items()))
    count = collections.Counter(key(p) for p in steps if isinstance(p, _CKernelToRender))
    code: dict = {}             # key -> the shared function's CKernel, or its LoweringError
    out = []
    for p in steps:
        if not isinstance(p, _CKernelToRender):
            out.append(p)
            continue
        name = f"{p.number}_{p.kernel.name}"
        try:
            if count[key(p)] == 1:
                ck = c_codegen.render_c(p.kernel, name=name, parallel_min=parallel_min,
                                        in_place=p.in_place)
            else:
                first = key(p) not in code
                if first:
                    try:
                        code[key(p)] = c_codegen.render_c(
                            p.shared[0], name=f"{name}_code", parallel_min=parallel_min,
                            in_place=p.in_place, linkage=c_codegen.SHARED_LINKAGE)
                    except LoweringError as e:
                        code[key(p)] = e
                if isinstance(code[key(p)], LoweringError):
                    raise code[key(p)]
                ck = c_codegen.render_shared_call(code[key(p)], name, p.shared[1],
                                                  f"one of {count[key(p)]} kernels sharing")
                if first:           # the module defines the shared function before its calls
                    ck = dataclasses.replace(ck, source=code[key(p)].source + "\n" + ck.source)
        except LoweringError as e:
            out.append(LoweredStep("array", p.ins, p.outs, p.step.name, p.number,
                                   graph=p.step.subgraph, why=str(e)))
            continue
        paired = dict(ck.in_place)
        specs = []
        for j in range(len(p.outs)):
            # (source slot, its argument position or None, inputs it must not share with)
            target = None
            if j in p.over and (paired.get(j) is not None or
                                p.over[j][0] not in p.step.inputs):
                target = (p.over[j][1], paired.get(j), p.over[j][2])
            specs.append(target)
        sub = p.step.subgraph
        out.append(LoweredStep("c", p.ins, p.outs, ck.name, p.number, ck, sub,
                               in_dtypes=tuple(np.dtype(v.dtype.np) for v in sub.inputs),
                               in_place=tuple(specs),
                               kept=tuple(spec is None for spec in specs)))
    return out


__all__ = ["LoweredProgram", "LoweredStep", "VIEWS_ONLY", "lower_schedule"]
