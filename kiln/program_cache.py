"""The compiled-program cache: what the passes made of a traced graph, kept on disk as JSON.

A new process that traces a graph compiled before reads the optimized graphs, their pass
statistics, the fusion schedules, the partition report, and its executors' layouts with the
rendered C kernels from here instead of running the passes, the C renderer and the executor's
planning again (the kernels' shared objects come from the kernel cache, as before). An entry is
keyed by everything the passes read: the traced graph (ops, attributes, literals, shapes,
dtypes, constants, names and source lines), the joint graph's bookkeeping, the kernel target,
and the compiler itself (kiln's and NumPy's versions, the size and mtime of every kiln source
file), so a change to any of them misses.

An entry is two JSON documents, one per line: the head holds what a warm process needs to run
the program (the graphs without their nodes, statistics, partition, executor layouts); the rest
holds the graphs' nodes and the schedules' steps, parsed and decoded only when something first
reads them (`kiln dump`, `explain`, a failed C build).

Entries are JSON, never pickle: reading one cannot run Python code (the C source in it is
compiled and run, as the shared objects beside it in the kernel cache are: the cache directory
is trusted as much as they are). They are written atomically with their sha256 beside the
payload (`KernelCache`), and one that is missing, corrupt, stale or whose head does not decode
into a program for this graph is ignored and rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import marshal
import os
from pathlib import Path

import numpy as np

from kiln.codegen.c import CKernel
from kiln.codegen.lower import LoweredProgram, LoweredStep
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph, from_json_value, to_json_value
from kiln.ir.ops import PRIMITIVES
from kiln.passes.cleanup import PassStat
from kiln.passes.fusion import ExternStep, FusedKernel, Schedule
from kiln.passes.partition import PartitionReport
from kiln.passes.pipeline import CompiledPart, CompiledProgram
from kiln.runtime.c_build import cache_root
from kiln.runtime.triton_launch import KernelCache

FORMAT = 6          # bump when the layout of an entry changes
# False: every compile runs the pipeline (`kiln dump --passes`, which prints each step's result)
READ = True
# the keys of the entries this process wrote or read: what `save_cache_artifacts` packs
USED: dict = {}


# ----------------------------------------------------------------------------- keys

@functools.lru_cache(maxsize=None)
def compiler_fingerprint() -> str:
    """kiln's and NumPy's versions and the size and mtime of every kiln source file (read once
    per process)."""
    from kiln import __version__
    return sources_fingerprint(str(Path(__file__).parent), [str(FORMAT), __version__,
                                                            np.__version__])


def sources_fingerprint(package: str, parts: list) -> str:
    """A digest of `parts` and of the path, size and mtime of every .py file under `package`."""
    parts = list(parts)
    folders = [package]
    while folders:          # os.scandir: less than half the cost of os.walk and os.stat
        folder = folders.pop()
        with os.scandir(folder) as found:
            entries = sorted(found, key=lambda e: e.name)
        for e in entries:
            if e.name.endswith(".py"):
                st = e.stat()
                parts.append(f"{folder[len(package):]}/{e.name}:{st.st_size}:{st.st_mtime_ns}")
            elif e.is_dir() and e.name != "__pycache__":
                folders.append(e.path)
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def program_key(graph: Graph, joint, target: str) -> str:
    """The cache key of compiling traced `graph` (with `joint`, a JointInfo or None) for
    `target` ("c", "triton" or "numpy").

    It describes everything the passes read: ops, attributes, literals, shapes, dtypes,
    constants (by digest: a large one must not become a larger text), value ids and names
    (generated code names values by them, and the partition report points into the graph by
    them) and source lines and provenance scopes (kernel comments print both).
    """
    joint_desc = None if joint is None else (
        joint.num_primals, joint.num_tangents, joint.num_forward_outputs,
        tuple(joint.grad_inputs), tuple(joint.differentiable_outputs))
    # a Value stands for its position; a literal (bool, int or float, never a str) for itself
    ref = {v: f"%{i}" for i, v in enumerate(_values(graph))}.get
    desc = (compiler_fingerprint(), target, joint_desc, graph.name,
            [(v.id, v.name, v.shape, v.dtype.name, kind)
             for v, kind in zip(graph.inputs, graph.input_kinds)],
            [(v.id, v.name, v.shape, v.dtype.name, a.dtype.str,
              hashlib.sha256(np.ascontiguousarray(a)).hexdigest())
             for v, a in graph.constants.items()],
            [(n.op, tuple(map(ref, n.inputs, n.inputs)), repr(n.attrs), n.out.id, n.out.name,
              n.out.shape, n.out.dtype.name, n.loc, n.scope) for n in graph.nodes],
            [ref(v) for v in graph.outputs], [(ref(a), ref(b)) for a, b in graph.mutations])
    try:
        # marshal's version 0 writes no sharing or interning marks, so equal descriptions give
        # equal bytes; a quarter of repr's cost
        text = marshal.dumps(desc, 0)
    except ValueError:          # a value marshal does not write (a NumPy scalar as a literal)
        text = repr(desc).encode()
    return hashlib.sha256(text).hexdigest()[:32]


# ----------------------------------------------------------------------------- disk

def _store() -> "KernelCache":
    return KernelCache(cache_root())


def load(key: str, traced: Graph, num_primals: int | None = None) -> tuple | None:
    """The entry for `key`: (CompiledProgram, executor layouts), or None when there is none or
    it cannot be trusted or decoded.

    `traced` is the graph just traced (the partition report points into it); the forward
    program must take its first `num_primals` inputs (all of them when None). The lowered
    programs are {"forward": LoweredProgram or None, "backward": ...} (C kernels only).
    What a warm process does not need (the programs' nodes and schedule steps) is decoded when
    first read, from the checked payload.
    """
    payload = _store().get("programs", key) if READ else None
    if payload is None:
        return None
    head, newline, rest = payload.partition(b"\n")
    if not newline:
        return None
    try:
        doc = json.loads(head)
        if doc["format"] != FORMAT or doc["key"] != key:
            return None
        later = _Later(rest)
        program = _decode(doc, later, traced)
        layouts = {}
        for name, found in doc["layouts"].items():
            part = getattr(program, name)
            layouts[name] = None if found is None or part is None or part.schedule is None \
                else _decode_lowered(found, later, name, part.schedule.graph)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None             # decodes to nothing sensible: compile afresh, rewrite it
    expected = [(v.shape, v.dtype) for v in traced.inputs[:num_primals]]
    if [(v.shape, v.dtype) for v in program.forward.graph.inputs] != expected:
        return None
    for name, layout in layouts.items():
        part = getattr(program, name)
        if layout is not None and (part is None or part.schedule is None or
                                   not _fits(layout, part.schedule.graph)):
            return None
    USED[key] = None
    return program, layouts


def _fits(layout: LoweredProgram, graph: Graph) -> bool:
    """Whether `layout` can run `graph`: a slot per input, constant, output and write-back, every
    slot a step names in range, a free list per step and every buffer it names planned."""
    if (len(layout.input_slots), len(layout.constant_slots), len(layout.output_slots),
            len(layout.mutation_slots)) != (len(graph.inputs), len(graph.constants),
                                            len(graph.outputs), len(graph.mutations)):
        return False
    n, nb = layout.num_slots, len(layout.buffer_bytes)
    return len(layout.free) == len(layout.steps) and \
        all(0 <= s < n for st in layout.steps for s in (*st.ins, *st.outs)) and \
        all(b is None or 0 <= b < nb for st in layout.steps for b in st.buffers)


def store(key: str, program: CompiledProgram, layouts: dict) -> None:
    """Write `program` and its lowered programs (`layouts`: part -> a LoweredProgram, or None
    when there is nothing to keep), as `load` returns them, under `key`; a program this module
    cannot describe is not stored."""
    try:
        head, rest = _encode(program)
        lowered = {}
        for part, found in layouts.items():
            lowered[part] = None
            if isinstance(found, LoweredProgram):
                lowered[part], rest[part]["lowered"] = _encode_lowered(found)
        head = {"format": FORMAT, "key": key, **head, "layouts": lowered}
        # the head first, on one line: a warm process parses only that much
        payload = json.dumps(head).encode() + b"\n" + json.dumps(rest).encode()
    except (_Unsupported, KeyError, TypeError, ValueError):
        return                  # e.g. an attribute JSON cannot hold: compile it every time
    try:
        _store().put("programs", key, payload)
        USED[key] = None
    except OSError:             # a read-only or full disk costs the next process time only
        pass


def read_entry(key: str) -> bytes | None:
    """The checked payload stored under `key`, or None."""
    return _store().get("programs", key)


def write_entry(key: str, payload: bytes) -> bool:
    """Store a payload another process wrote (`load_cache_artifacts`); False when its head
    is not an entry of this format for `key`, or the disk refuses it."""
    head = payload.partition(b"\n")[0]
    try:
        doc = json.loads(head)
        if doc.get("format") != FORMAT or doc.get("key") != key:
            return False
        _store().put("programs", key, payload)
    except (ValueError, AttributeError, OSError):
        return False
    return True


# ----------------------------------------------------------------------------- encoding

class _Unsupported(Exception):
    """A program this module does not write: a step class it does not know, huge constants."""


# the fields this module writes; a class that grows one is not cached until it does
_FIELDS = {Schedule: ("graph", "steps"), FusedKernel: ("name", "subgraph", "inputs", "outputs",
                                                      "nodes"), ExternStep: ("node",),
           CKernel: ("name", "source", "helpers", "arg_dtypes", "in_place"),
           LoweredProgram: ("name", "target", "steps", "refs", "shapes", "dtypes", "input_slots",
                            "constant_slots", "output_slots", "mutation_slots", "into",
                            "module_source", "free", "buffer_bytes", "graph"),
           LoweredStep: ("kind", "ins", "outs", "name", "number", "kernel", "graph", "view",
                         "why", "in_dtypes", "in_place", "kept", "buffers", "node_plan")}


def _values(graph: Graph) -> list:
    """Every Value a graph defines, in `Graph.to_doc`'s order (its indices index this)."""
    return list(graph.inputs) + list(graph.constants) + [n.out for n in graph.nodes]


# constants are written element by element: beyond this many in all, an entry would be larger
# and slower to read than compiling again
MAX_CONSTANT_ELEMENTS = 1 << 16


def _encode(program: CompiledProgram) -> tuple:
    """(head, rest): what a warm process reads at once, and the nodes and steps it may not."""
    for cls, names in _FIELDS.items():
        if tuple(f.name for f in dataclasses.fields(cls)) != names:
            raise _Unsupported(f"{cls.__name__} has fields this module does not write")
    parts = [program.forward] + ([program.backward] if program.backward is not None else [])
    if sum(a.size for part in parts for a in part.graph.constants.values()) > \
            MAX_CONSTANT_ELEMENTS:
        raise _Unsupported("constants too large to write as JSON")
    head = {"forward": None, "backward": None, "partition": None}
    rest = {"forward": None, "backward": None}
    head["forward"], rest["forward"] = _encode_part(program.forward)
    if program.backward is not None:
        head["backward"], rest["backward"] = _encode_part(program.backward)
        report = program.partition
        head["partition"] = {"saved": [v.id for v in report.saved],
                             "save_all": [v.id for v in report.save_all],
                             "recomputed": [n.out.id for n in report.recomputed]}
    return head, rest


def _graph_halves(graph: Graph) -> tuple:
    doc = graph.to_doc()
    return Graph.doc_without_nodes(doc), doc["nodes"]


def _encode_part(part: CompiledPart) -> tuple:
    head = {"stats": [[s.name, s.nodes_before, s.nodes_after] for s in part.stats],
            "schedule": None, "output_roots": part.output_roots}
    rest = {"schedule": None}
    head["graph"], rest["graph"] = _graph_halves(part.graph)
    schedule = part.schedule
    if schedule is None:
        return head, rest
    graph = schedule.graph
    index = {v: i for i, v in enumerate(_values(graph))}
    node_index = {n: i for i, n in enumerate(graph.nodes)}
    steps = []
    for step in schedule.steps:
        if type(step) is FusedKernel:
            steps.append({"kernel": step.name, "subgraph": step.subgraph.to_doc(),
                          "inputs": [index[v] for v in step.inputs],
                          "outputs": [index[v] for v in step.outputs],
                          "nodes": [node_index[n] for n in step.nodes]})
        elif type(step) is ExternStep:
            steps.append({"extern": node_index[step.node]})
        else:
            raise _Unsupported(f"a schedule step of type {type(step).__name__}")
    # fusion may rewrite the graph it schedules; else the schedule runs the optimized graph
    head["schedule"], rest["schedule"] = {"graph": None}, {"graph": None, "steps": steps}
    if graph is not part.graph:
        head["schedule"]["graph"], rest["schedule"]["graph"] = _graph_halves(graph)
    return head, rest


def _dtype_name(d: np.dtype) -> str:
    """How a schedule's NumPy dtype is stored: by name, which `np.dtype` reads back (the
    array-protocol string of ml_dtypes' bfloat16 is '<V2', read back as 2 bytes of no type)."""
    return d.name


def _encode_kernel(k: CKernel) -> list:
    return [k.name, k.source, list(k.helpers), [d.name for d in k.arg_dtypes],
            [list(pair) for pair in k.in_place]]


def _decode_kernel(doc: list) -> CKernel:
    name, source, helpers, arg_dtypes, in_place = doc
    return CKernel(name, source, tuple(helpers), tuple(dt.from_name(d) for d in arg_dtypes),
                   tuple(tuple(pair) for pair in in_place))


def _encode_lowered(program: LoweredProgram) -> tuple:
    """(head, rest) of a lowered C program: the C kernels' subgraphs' nodes (read only for the
    kernel trials or a failed build) go in the rest."""
    steps, nodes = [], []
    for st in program.steps:
        doc = {"kind": st.kind, "ins": list(st.ins), "outs": list(st.outs), "name": st.name,
               "number": st.number, "why": st.why, "kept": list(st.kept),
               "buffers": list(st.buffers),
               "node_plan": [[list(free), reuse] for free, reuse in st.node_plan]}
        if st.kind == "c":
            doc["kernel"] = _encode_kernel(st.kernel)
            doc["in_dtypes"] = [_dtype_name(d) for d in st.in_dtypes]
            doc["in_place"] = [None if over is None else [over[0], over[1], list(over[2])]
                               for over in st.in_place]
            doc["graph"], sub_nodes = _graph_halves(st.graph)
            doc["nodes_at"] = len(nodes)
            nodes.append(sub_nodes)
        elif st.kind == "view":
            op, attrs = st.view
            doc["view"] = [op, [[name, to_json_value(a)] for name, a in attrs]]
        elif st.kind == "array":
            doc["graph"] = st.graph.to_doc()
        elif st.kind == "matmul":
            if st.view is not None:     # views of its operands
                doc["view"] = [None if v is None else
                               [v[0], [[name, to_json_value(a)] for name, a in v[1]]]
                               for v in st.view]
        else:
            raise _Unsupported(f"a lowered step of kind {st.kind!r}")
        steps.append(doc)
    head = {"name": program.name, "target": program.target, "steps": steps,
            "refs": list(program.refs), "shapes": [list(x) for x in program.shapes],
            "dtypes": [_dtype_name(d) for d in program.dtypes],
            "input_slots": list(program.input_slots),
            "constant_slots": list(program.constant_slots),
            "output_slots": list(program.output_slots),
            "mutation_slots": list(program.mutation_slots),
            "into": [[i, s, list(shape), _dtype_name(d), list(others)]
                     for i, (s, shape, d, others) in program.into.items()],
            "module_source": program.module_source, "free": [list(f) for f in program.free],
            "buffer_bytes": list(program.buffer_bytes)}
    return head, nodes


def _decode_lowered(doc: dict, later: "_Later", part: str, graph: Graph) -> LoweredProgram:
    steps = []
    for st in doc["steps"]:
        kind, extra = st["kind"], {}
        if kind == "c":
            extra["kernel"] = _decode_kernel(st["kernel"])
            extra["in_dtypes"] = tuple(np.dtype(d) for d in st["in_dtypes"])
            extra["in_place"] = tuple(None if o is None else (o[0], o[1], tuple(o[2]))
                                      for o in st["in_place"])
            extra["graph"] = Graph.from_doc(st["graph"], nodes=functools.partial(
                later.get, part, "lowered", st["nodes_at"]))
        elif kind == "view":
            op, attrs = st["view"]
            PRIMITIVES[op]                              # an op this kiln has
            extra["view"] = (op, tuple((name, from_json_value(a)) for name, a in attrs))
        elif kind == "array":
            extra["graph"] = Graph.from_doc(st["graph"])
        elif kind == "matmul":
            if st.get("view") is not None:
                extra["view"] = tuple(
                    None if v is None else
                    (PRIMITIVES[v[0]].name, tuple((name, from_json_value(a)) for name, a in v[1]))
                    for v in st["view"])
        else:
            raise ValueError(f"a lowered step of kind {kind!r}")
        steps.append(LoweredStep(kind, tuple(st["ins"]), tuple(st["outs"]), st["name"],
                                 st["number"], why=st["why"], kept=tuple(st["kept"]),
                                 buffers=tuple(st["buffers"]), node_plan=tuple(
                                     (tuple(free), reuse) for free, reuse in st["node_plan"]),
                                 **extra))
    return LoweredProgram(
        doc["name"], doc["target"], tuple(steps), tuple(doc["refs"]),
        tuple(tuple(x) for x in doc["shapes"]), tuple(np.dtype(d) for d in doc["dtypes"]),
        tuple(doc["input_slots"]), tuple(doc["constant_slots"]), tuple(doc["output_slots"]),
        tuple(doc["mutation_slots"]),
        {i: (s, tuple(shape), np.dtype(d), tuple(others))
         for i, s, shape, d, others in doc["into"]},
        doc["module_source"], tuple(tuple(f) for f in doc["free"]),
        tuple(doc["buffer_bytes"]), graph=graph)


class _Later:
    """An entry's second half (the programs' nodes and schedule steps), parsed when something
    first reads it (`kiln dump`, `explain`); a warm process that only runs the program never
    does."""

    def __init__(self, text: bytes):
        self.text, self.doc = text, None

    def get(self, *path):
        if self.doc is None:
            self.doc, self.text = json.loads(self.text), None
        found = self.doc
        for name in path:
            found = found[name]
        return found


def _decode(doc: dict, later: _Later, traced: Graph) -> CompiledProgram:
    program = CompiledProgram(_decode_part(doc["forward"], later, "forward"))
    if doc["backward"] is not None:
        program.backward = _decode_part(doc["backward"], later, "backward")
        by_id = {v.id: v for v in _values(traced)}
        producer = traced.producers()
        saved = [by_id[i] for i in doc["partition"]["saved"]]
        save_all = [by_id[i] for i in doc["partition"]["save_all"]]
        program.partition = PartitionReport(
            saved, sum(v.nbytes for v in saved), save_all, sum(v.nbytes for v in save_all),
            [producer[by_id[i]] for i in doc["partition"]["recomputed"]])
    return program


def _decode_part(doc: dict, later: _Later, name: str) -> CompiledPart:
    graph = Graph.from_doc(doc["graph"], nodes=lambda: later.get(name, "graph"))
    stats = [PassStat(*stat) for stat in doc["stats"]]
    part = CompiledPart(graph, stats)
    if doc["output_roots"] is not None:
        part.output_roots = tuple(tuple(root) for root in doc["output_roots"])
    if doc["schedule"] is None:
        return part
    outer_doc = doc["schedule"]["graph"]
    outer = graph if outer_doc is None else Graph.from_doc(
        outer_doc, nodes=lambda: later.get(name, "schedule", "graph"))
    part.schedule = Schedule(outer)
    part.schedule.defer("steps", _once(lambda: _decode_steps(
        later.get(name, "schedule", "steps"), outer)))
    return part


def _decode_steps(docs: list, outer: Graph) -> list:
    values = _values(outer)
    steps = []
    for step in docs:
        if "extern" in step:
            steps.append(ExternStep(outer.nodes[step["extern"]]))
        else:
            steps.append(FusedKernel(step["kernel"], Graph.from_doc(step["subgraph"]),
                                     [values[i] for i in step["inputs"]],
                                     [values[i] for i in step["outputs"]],
                                     [outer.nodes[i] for i in step["nodes"]]))
    return steps


def _once(make):
    """`make`, called at most once: later calls return its first result."""
    done: list = []

    def once():
        if not done:
            done.append(make())
        return done[0]
    return once
