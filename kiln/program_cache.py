"""The compiled-program cache: what the passes made of a traced graph, kept on disk as JSON.

A new process that traces a graph compiled before reads the optimized graphs, their pass
statistics, the fusion schedules, the partition report and the rendered C kernels from here
instead of running the passes and the C renderer again (the kernels' shared objects come from
the kernel cache, as before). An entry is
keyed by everything the passes read: the traced graph (ops, attributes, literals, shapes,
dtypes, constants, names and source lines), the joint graph's bookkeeping, the kernel target,
and the compiler itself (kiln's and NumPy's versions, the size and mtime of every kiln source
file), so a change to any of them misses.

Entries are JSON, never pickle: reading one cannot run Python code (the C source in it is
compiled and run, as the shared objects beside it in the kernel cache are: the cache directory
is trusted as much as they are). They are written atomically with their sha256 beside the
payload (`KernelCache`), and one that is missing, corrupt, stale or does not decode into a
program for this graph is ignored and rebuilt.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from kiln.codegen.c import CKernel
from kiln.ir import dtypes as dt
from kiln.ir.graph import Graph
from kiln.passes.cleanup import PassStat
from kiln.passes.fusion import ExternStep, FusedKernel, Schedule
from kiln.passes.partition import PartitionReport
from kiln.passes.pipeline import CompiledPart, CompiledProgram

FORMAT = 3          # bump when the layout of an entry changes


# ----------------------------------------------------------------------------- keys

@functools.lru_cache(maxsize=None)
def compiler_fingerprint() -> str:
    """kiln's and NumPy's versions and the size and mtime of every kiln source file."""
    from kiln import __version__
    package = Path(__file__).parent
    parts = [str(FORMAT), __version__, np.__version__]
    for folder, dirs, files in os.walk(package):
        dirs.sort()
        for name in sorted(files):
            if name.endswith(".py"):
                st = os.stat(os.path.join(folder, name))
                parts.append(f"{folder[len(str(package)):]}/{name}:{st.st_size}:{st.st_mtime_ns}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def program_key(graph: Graph, joint, target: str) -> str:
    """The cache key of compiling traced `graph` (with `joint`, a JointInfo or None) for
    `target` ("c", "triton" or "numpy")."""
    joint_desc = None if joint is None else (
        joint.num_primals, joint.num_tangents, joint.num_forward_outputs,
        tuple(joint.grad_inputs), tuple(joint.differentiable_outputs))
    inputs, constants, nodes, outputs, mutations = graph.structure()
    # constants by their digest: a large one must not become a larger repr; value ids too:
    # generated code names values by them, and the partition report points into the graph by them
    constants = tuple((shape, dtype, hashlib.sha256(data).hexdigest())
                      for shape, dtype, data in constants)
    desc = (compiler_fingerprint(), target, joint_desc, graph.name, inputs, constants, nodes,
            outputs, mutations, [(v.id, v.name) for v in _values(graph)],
            [n.loc for n in graph.nodes])
    return hashlib.sha256(repr(desc).encode()).hexdigest()[:32]


# ----------------------------------------------------------------------------- disk

def _store() -> "KernelCache":
    from kiln.runtime.c_build import cache_root
    from kiln.runtime.triton_launch import KernelCache
    return KernelCache(cache_root())


def load(key: str, traced: Graph, num_primals: int | None = None) -> tuple | None:
    """The entry for `key`: (CompiledProgram, rendered C kernels), or None when there is none
    or it cannot be trusted or decoded.

    `traced` is the graph just traced (the partition report points into it); the forward
    program must take its first `num_primals` inputs (all of them when None). The kernels are
    {"forward": {kernel number: CKernel}, "backward": {...}}, for `ScheduleExecutor(rendered=)`.
    """
    payload = _store().get("programs", key)
    if payload is None:
        return None
    try:
        doc = json.loads(payload)
        if doc["format"] != FORMAT or doc["key"] != key:
            return None
        program = _decode(doc, traced)
        kernels = {part: {number: _decode_kernel(k) for number, k in found.items()}
                   for part, found in doc["kernels"].items()}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return None             # decodes to nothing sensible: compile afresh, rewrite it
    expected = [(v.shape, v.dtype) for v in traced.inputs[:num_primals]]
    if [(v.shape, v.dtype) for v in program.forward.graph.inputs] != expected:
        return None
    return program, kernels


def store(key: str, program: CompiledProgram, kernels: dict) -> None:
    """Write `program` and the C kernels rendered from it (as `load` returns them) under `key`;
    a program this module cannot describe is not stored."""
    try:
        doc = {"format": FORMAT, "key": key, **_encode(program),
               "kernels": {part: {number: _encode_kernel(k) for number, k in found.items()}
                           for part, found in kernels.items()}}
    except (_Unsupported, KeyError, TypeError, ValueError):
        return                  # e.g. an attribute JSON cannot hold: compile it every time
    try:
        _store().put("programs", key, json.dumps(doc).encode())
    except OSError:             # a read-only or full disk costs the next process time only
        pass


# ----------------------------------------------------------------------------- encoding

class _Unsupported(Exception):
    """A program this module does not write: a step class it does not know, huge constants."""


# the fields this module writes; a schedule class that grows one is not cached until it does
_FIELDS = {Schedule: ("graph", "steps"), FusedKernel: ("name", "subgraph", "inputs", "outputs",
                                                      "nodes"), ExternStep: ("node",),
           CKernel: ("name", "source", "helpers", "arg_dtypes", "in_place")}


def _values(graph: Graph) -> list:
    """Every Value a graph defines, in `Graph.to_doc`'s order (its indices index this)."""
    return list(graph.inputs) + list(graph.constants) + [n.out for n in graph.nodes]


# constants are written element by element: beyond this many in all, an entry would be larger
# and slower to read than compiling again
MAX_CONSTANT_ELEMENTS = 1 << 16


def _encode(program: CompiledProgram) -> dict:
    parts = [program.forward] + ([program.backward] if program.backward is not None else [])
    if sum(a.size for part in parts for a in part.graph.constants.values()) > \
            MAX_CONSTANT_ELEMENTS:
        raise _Unsupported("constants too large to write as JSON")
    doc = {"forward": _encode_part(program.forward), "backward": None, "partition": None}
    if program.backward is not None:
        doc["backward"] = _encode_part(program.backward)
        report = program.partition
        doc["partition"] = {"saved": [v.id for v in report.saved],
                            "save_all": [v.id for v in report.save_all],
                            "recomputed": [n.out.id for n in report.recomputed]}
    return doc


def _encode_part(part: CompiledPart) -> dict:
    doc = {"graph": part.graph.to_doc(),
           "stats": [[s.name, s.nodes_before, s.nodes_after] for s in part.stats],
           "schedule": None}
    schedule = part.schedule
    if schedule is None:
        return doc
    for cls, names in _FIELDS.items():
        if tuple(f.name for f in dataclasses.fields(cls)) != names:
            raise _Unsupported(f"{cls.__name__} has fields this module does not write")
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
    doc["schedule"] = {"graph": None if graph is part.graph else graph.to_doc(),
                       "steps": steps}
    return doc


def _encode_kernel(k: CKernel) -> list:
    if tuple(f.name for f in dataclasses.fields(CKernel)) != _FIELDS[CKernel]:
        raise _Unsupported("CKernel has fields this module does not write")
    return [k.name, k.source, list(k.helpers), [d.name for d in k.arg_dtypes],
            [list(pair) for pair in k.in_place]]


def _decode_kernel(doc: list) -> CKernel:
    name, source, helpers, arg_dtypes, in_place = doc
    return CKernel(name, source, tuple(helpers), tuple(dt.from_name(d) for d in arg_dtypes),
                   tuple(tuple(pair) for pair in in_place))


def _decode(doc: dict, traced: Graph) -> CompiledProgram:
    program = CompiledProgram(_decode_part(doc["forward"]))
    if doc["backward"] is not None:
        program.backward = _decode_part(doc["backward"])
        by_id = {v.id: v for v in _values(traced)}
        producer = traced.producers()
        saved = [by_id[i] for i in doc["partition"]["saved"]]
        save_all = [by_id[i] for i in doc["partition"]["save_all"]]
        program.partition = PartitionReport(
            saved, sum(v.nbytes for v in saved), save_all, sum(v.nbytes for v in save_all),
            [producer[by_id[i]] for i in doc["partition"]["recomputed"]])
    return program


def _decode_part(doc: dict) -> CompiledPart:
    graph = Graph.from_doc(doc["graph"])
    stats = [PassStat(name, before, after) for name, before, after in doc["stats"]]
    part = CompiledPart(graph, stats)
    if doc["schedule"] is None:
        return part
    outer_doc = doc["schedule"]["graph"]
    outer = graph if outer_doc is None else Graph.from_doc(outer_doc)
    values = _values(outer)
    steps = []
    for step in doc["schedule"]["steps"]:
        if "extern" in step:
            steps.append(ExternStep(outer.nodes[step["extern"]]))
        else:
            steps.append(FusedKernel(step["kernel"], Graph.from_doc(step["subgraph"]),
                                     [values[i] for i in step["inputs"]],
                                     [values[i] for i in step["outputs"]],
                                     [outer.nodes[i] for i in step["nodes"]]))
    part.schedule = Schedule(outer, steps)
    return part
