"""Graph breaks: every read of a tensor's value into Python is reported with the right line."""

import inspect

import pytest

import kiln
from kiln.tracer.trace import GraphBreak


def _line_of(fn, marker: str) -> int:
    lines, start = inspect.getsourcelines(fn)
    for i, text in enumerate(lines):
        if marker in text:
            return start + i
    raise AssertionError(f"marker {marker!r} not in {fn.__name__}")


def read_bool(x):
    y = x * 2
    if y.sum() > 0:  # BREAK
        return y
    return -y


def read_item(x):
    return x * (x.sum().item())  # BREAK


def read_tolist(x):
    return kiln.tensor(x.tolist()) * 2  # BREAK


def read_numpy(x):
    return x.numpy().sum()  # BREAK


def read_int(x):
    return x * int(x[0])  # BREAK


def read_float(x):
    return x * float(x[1])  # BREAK


def read_index(x):
    n = kiln.tensor(2)
    return [1, 2, 3, 4][n]  # BREAK


def read_nonzero(x):
    return kiln.nonzero(x > 0)  # BREAK


def read_mask_index(x):
    return x[x > 0] * 2  # BREAK


READERS = [read_bool, read_item, read_tolist, read_numpy, read_int, read_float, read_index,
           read_nonzero, read_mask_index]


@pytest.mark.parametrize("fn", READERS, ids=lambda f: f.__name__)
def test_trace_reports_break_with_line(fn):
    x = kiln.tensor([1.0, -2.0, 3.0])
    captured = kiln.compiler.trace(fn, x)
    assert len(captured.breaks) == 1
    brk = captured.breaks[0]
    assert brk.location.endswith(f"test_graph_breaks.py:{_line_of(fn, '# BREAK')}")


@pytest.mark.parametrize("fn", READERS, ids=lambda f: f.__name__)
def test_fullgraph_raises_naming_the_line(fn):
    compiled = kiln.compile(fn, fullgraph=True)
    with pytest.raises(GraphBreak) as info:
        compiled(kiln.tensor([1.0, -2.0, 3.0]))
    assert f"test_graph_breaks.py:{_line_of(fn, '# BREAK')}" in str(info.value)


def test_explain_lists_graphs_and_breaks(capsys):
    def fn(x):
        y = x.exp()
        if y.sum() > 3:  # BREAK
            y = y * 2
        return y.relu()
    out = kiln.compiler.explain(fn, kiln.tensor([1.0, 2.0]))
    assert out.graph_count == 2 and out.graph_break_count == 1
    printed = capsys.readouterr().out
    assert "graph breaks: 1" in printed
    assert f"test_graph_breaks.py:{_line_of(fn, '# BREAK')}" in printed


def test_compile_with_data_dependent_branch_runs_both_branches_eagerly():
    calls = []

    @kiln.compile
    def fn(x):
        calls.append(1)
        if x.sum() > 0:
            return x * 2
        return x - 1

    with pytest.warns(UserWarning, match="graph break"):
        pos = fn(kiln.tensor([1.0, 2.0]))
    neg = fn(kiln.tensor([-1.0, -2.0]))
    assert pos.tolist() == [2.0, 4.0]
    assert neg.tolist() == [-2.0, -3.0]
    assert len(calls) == 2          # the break did not make the function run twice
