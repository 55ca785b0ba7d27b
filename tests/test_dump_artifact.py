"""What `kiln dump` prints for a compiled function is what runs: the kernels it prints are, byte
for byte and in launch order, the sources built and launched, and the buffers it prints are the
ones the executor writes (issue 15)."""

import re

import numpy as np
import pytest

import kiln
from kiln import dump
from kiln.runtime import c_build, triton_launch
from kiln.runtime.schedule_executor import ScheduleExecutor
from kiln.tracer.trace import flatten
from tests.test_compile_corpus import _compare
from tests.tracer.test_trace_corpus import CASES

HEADER = re.compile(r"^(//|#) ---- step (\d+): .*$", re.M)
# forward-only and with a compiled backward (closed_over_parameters, softmax_logsoftmax on
# arguments that require grad); views, gathers split around a take, in-place write-backs
C_CASES = ["closed_over_parameters", "views_and_movement", "indexing_tensor",
           "adam_training_step", "backward_softmax_cross_entropy", "reductions"]
TRITON_CASES = ["closed_over_parameters", "indexing_tensor", "softmax_logsoftmax"]


class Launches:
    """Records every C module built and every generated kernel launched."""

    def __init__(self, monkeypatch):
        self.modules, self.launched = [], []
        build, function, launch = c_build.start_build, c_build.kernel_function, \
            triton_launch.launch

        def start_build(source, *a, **k):
            self.modules.append(source)
            return build(source, *a, **k)

        def kernel_function(lib, name, nargs):
            fn = function(lib, name, nargs)

            def run(*pointers):
                self.launched.append(("c", name, None))
                return fn(*pointers)
            return run

        def triton(tk, *a, **k):
            self.launched.append(("triton", tk.name, tk.source))
            return launch(tk, *a, **k)
        monkeypatch.setattr(c_build, "start_build", start_build)
        monkeypatch.setattr(c_build, "kernel_function", kernel_function)
        monkeypatch.setattr(triton_launch, "launch", triton)
        self.inputs = {}            # executor -> the inputs of its last run
        run = ScheduleExecutor.run

        def recorded(executor, inputs, *a, **k):
            self.inputs[executor] = list(inputs)
            return run(executor, inputs, *a, **k)
        monkeypatch.setattr(ScheduleExecutor, "run", recorded)


def _printed_kernels(body: str) -> tuple[str, list]:
    """(text before the first kernel, [(step, source)]) of a printed kernels section."""
    heads = list(HEADER.finditer(body))
    if not heads:
        return body, []
    kernels = []
    for h, nxt in zip(heads, heads[1:] + [None]):
        end = len(body) if nxt is None else nxt.start() - 1     # the "\n" joining two kernels
        kernels.append((int(h.group(2)), body[h.end() + 1:end]))
    return body[:heads[0].start()], kernels


@pytest.mark.parametrize("backend,name", [("c", n) for n in C_CASES] +
                         [("triton", n) for n in TRITON_CASES])
def test_dump_prints_exactly_the_kernels_launched(backend, name, monkeypatch, tmp_path):
    record = Launches(monkeypatch)
    kiln.manual_seed(0)
    fn_e, args_e = CASES[name]()
    kiln.manual_seed(0)
    fn, args = CASES[name]()
    if name == "softmax_logsoftmax":        # outputs that need grad: a compiled backward
        args = tuple(a.requires_grad_() for a in args)
        args_e = tuple(a.requires_grad_() for a in args_e)
    compiled = kiln.compile(fn, backend=backend)
    for call in range(3):                   # the trace, then replays; record the last one
        record.launched.clear()
        kiln.manual_seed(100 + call)
        want = fn_e(*args_e)
        kiln.manual_seed(100 + call)
        got = compiled(*args)
        _compare(got, want)                 # what runs computes what eager computes
    diff = [o for o in flatten(got)[0] if o.requires_grad]
    if diff:                                # the compiled backward launches its own kernels
        diff[0].sum().backward()
    # the entry the last call replayed (a .grad made by the first call is a second entry)
    entry = [e for e in compiled.entries.values() if e.program is not None][-1]
    assert entry.calls >= 1
    artifact = entry.artifact
    assert artifact.target == backend
    assert (len(artifact.parts) == 2) == (entry.backward is not None)
    if diff:
        assert [p.name for p in artifact.parts] == ["forward", "backward"]

    (path,) = dump.write_programs(tmp_path, name, [entry.traced], formats=("text",),
                                  compiled=compiled)
    text = path.read_text()
    sections = dump.program_sections(entry.traced, artifact)
    printed, modules = [], []
    for part in artifact.parts:
        pre = "" if part.name == "program" else f"{part.name}: "
        title = f"{pre}generated kernels ({'C' if backend == 'c' else 'Triton'})"
        (body,) = [b for t, b in sections if t == title]
        assert f"== {title} ==\n{body}" in text
        before, kernels = _printed_kernels(body)
        steps = [s for s in part.steps if s.source is not None]
        assert [k for k, _ in kernels] == [part.steps.index(s) for s in steps]
        printed += [(backend, s.name, src) for s, (_, src) in zip(steps, kernels)]
        if backend == "c" and kernels:
            # the printed text, headers dropped, is the translation unit that was built
            modules.append(before + "\n".join(src for _, src in kernels))
    if backend == "c":
        assert all(m in record.modules for m in modules)
        for _, fname, src in printed:
            assert f"void {fname}(" in src
        printed = [(k, n, None) for k, n, _ in printed]
    assert record.launched == printed
    assert printed or all(s.kind == "view" for s in artifact.parts[0].steps)

    # every memory-plan buffer printed is one the executor allocates, of the printed size, and
    # the outputs printed in a buffer are computed in its memory
    for part, executor in zip(artifact.parts, (entry.executor, entry.backward)):
        _check_memory_plan(part, executor, record.inputs.get(executor))


def _check_memory_plan(part, executor, inputs) -> None:
    if part.target == "numpy":
        assert not part.memory
        return
    (head, *lines) = part.memory.splitlines()
    printed = {}
    drops = {}
    for line in lines:
        m = re.match(r"  buffer (\d+): (\d+) bytes, holds (.*)$", line)
        if m:
            printed[int(m.group(1))] = (int(m.group(2)),
                                        re.findall(r"(%\w+) \(step", m.group(3)))
        else:
            m = re.match(r"  after step (\d+): drop (.*)$", line)
            drops[int(m.group(1))] = m.group(2).split(", ")
    assert head.startswith(f"memory plan: {len(printed)} kept buffers")
    assert sorted(printed) == list(range(len(executor._buffers)))
    program = executor.program
    # the slots it drops after each step are the printed ones
    assert drops == {i: [program.refs[x] for x in free]
                     for i, free in enumerate(executor.free) if free}
    into = {program.refs[spec[0]] for spec in program.into.values()}
    for b, (nbytes, refs) in printed.items():
        buf = executor._buffers[b]
        if buf is None:     # never needed: each value it holds went into the caller's array
            assert set(refs) <= into, (b, refs)
            continue
        assert buf.dtype == np.uint8 and buf.nbytes == nbytes
    in_buffers = {ref: int(m.group(1)) for s in part.steps for ref, text in
                  zip(s.outputs, s.buffers) for m in [re.match(r"buffer (\d+) of", text)] if m}
    assert in_buffers == {ref: b for b, (_, refs) in printed.items() for ref in refs}
    # run once more and look at what the program returns: an output printed in a buffer (not
    # written into a caller's array) is a view of that very buffer
    got, _ = executor.run(inputs)
    for out, slot in zip(got, program.output_slots):
        b = in_buffers.get(program.refs[slot])
        if b is not None:
            assert out.base is executor._buffers[b]


def test_dump_of_a_partitioned_entry_shows_both_parts_and_the_partition(tmp_path):
    w = (kiln.randn(5, 4) * 0.5).requires_grad_()

    @kiln.compile
    def f(x):
        return (kiln.softmax(x @ w, -1) * 2).tanh().sum()
    x = kiln.randn(3, 5)
    f(x)
    (path, *_) = dump.write_programs(tmp_path, "f", f.programs(), formats=("text",),
                                     compiled=f)
    text = path.read_text()
    for title in ("partition", "forward: optimized graph", "backward: optimized graph",
                  "forward: launch order (c)", "backward: launch order (c)"):
        assert f"== {title} ==" in text
    artifact = next(iter(f.entries.values())).artifact
    # the backward's graph reads what the forward saved, not the joint graph's primals
    saved = [v.ref for v in artifact.partition.saved]
    assert [v.ref for v in artifact.part("backward").graph.inputs][:len(saved)] == saved
    out = f(x)
    out.backward()
    want = w.detach().clone().requires_grad_()
    (kiln.softmax(x @ want, -1) * 2).tanh().sum().backward()
    np.testing.assert_allclose(w.grad.numpy(), want.grad.numpy(), rtol=1e-5, atol=1e-6)
