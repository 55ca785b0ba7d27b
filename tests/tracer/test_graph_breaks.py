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
    n = x.argmax()
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


def read_where_positions(x):
    return x[kiln.where(x > 0)] * 2  # BREAK


def read_masked_select(x):
    return x.masked_select(x > 0)  # BREAK


@pytest.mark.parametrize("fn, op", [(read_nonzero, "Tensor.nonzero() reads"),
                                    (read_where_positions, "nonzero() in torch.where(condition)"),
                                    (read_mask_index, "nonzero() in indexing by a boolean mask"),
                                    (read_masked_select, "indexing by a boolean mask")],
                         ids=["nonzero", "where", "mask_index", "masked_select"])
def test_a_break_for_values_that_decide_a_shape_names_the_op_the_user_called(fn, op):
    # torch.where(condition) and x[mask] find positions by nonzero inside: the message says
    # which of them the user's line called, not just the nonzero they share
    with pytest.raises(GraphBreak) as info:
        kiln.compile(fn, fullgraph=True)(kiln.tensor([1.0, -2.0, 3.0]))
    assert op in str(info.value)
    assert f"test_graph_breaks.py:{_line_of(fn, '# BREAK')}" in str(info.value)


def _reads_of_constants(x):
    sizes = kiln.tensor([3, 2, 2])              # made from Python data inside the trace
    steps = sizes.tolist()
    first = int(sizes[0])                       # a view of it: a constant too, no break
    return [x[:n].sum() for n in steps], first


def _read_after_write(x, through_view):
    sizes = kiln.tensor([3, 2, 2])
    if through_view:
        sizes[1:].add_((x[:2] > 0).long())       # written through a view, from the data
    else:
        sizes.add_((x[:3] > 0).long())
    return x[:sizes.tolist()[1]].sum()


def test_reading_a_tensor_made_from_python_data_in_the_trace_is_no_break():
    # (pack_padded_sequence inside a compiled step builds its batch sizes so, and the RNN
    # reads them back)
    x = kiln.tensor([1.0, -2.0, 3.0, 4.0])
    captured = kiln.compiler.trace(_reads_of_constants, x)
    assert not captured.breaks, captured.breaks
    compiled = kiln.compile(_reads_of_constants)
    for values in ([1.0, -2.0, 3.0, 4.0], [0.5, 0.25, -1.0, 2.0]):
        x = kiln.tensor(values)
        sums, first = compiled(x)
        eager_sums, eager_first = _reads_of_constants(x)
        assert first == eager_first == 3
        assert [s.item() for s in sums] == [s.item() for s in eager_sums]


@pytest.mark.parametrize("through_view", [False, True])
def test_a_constant_written_from_the_data_is_read_as_data(through_view):
    compiled = kiln.compile(_read_after_write)
    for values in ([1.0, -2.0, 3.0, 4.0], [-1.0, 2.0, 3.0, 4.0], [1.0, 2.0, -3.0, 4.0]):
        x = kiln.tensor(values)
        assert compiled(x, through_view).item() == _read_after_write(x, through_view).item()
    captured = kiln.compiler.trace(_read_after_write, kiln.tensor([1.0, 2.0, 3.0, 4.0]),
                                   through_view)
    assert len(captured.breaks) == 1


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


@pytest.mark.parametrize("spelling", ["number", "scalar_tensor", "row"])
def test_a_masked_write_over_leading_dims_compiles_as_where(spelling):
    """`labels[mask == 0] = 0` (DPO's and TRL's loss masks), `x[mask] = v` with a 0-d v that
    requires grad, `x[row_mask] = row`: the selected count is data, the result is not; it
    compiled as a graph break (the write went through nonzero's positions). Compiled (no
    fallback) it equals eager, and eager's values and gradients equal torch's."""
    import warnings

    import numpy as np
    import torch

    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 3)).astype(np.float32)
    m = rng.standard_normal(4 if spelling == "row" else (4, 3)) > 0

    def step(lib, x, mask, v):
        y = x * 2
        if spelling == "number":
            y[mask] = 0.5
        elif spelling == "scalar_tensor":
            y[mask] = v.sum()
        else:
            y[mask] = v
        return (y * y).sum()

    def inputs(lib):
        x = lib.tensor(a, requires_grad=True)
        v = lib.tensor([1.5, -2.0, 0.25], requires_grad=True)
        return x, lib.tensor(m), v

    tx, tm, tv = inputs(torch)
    step(torch, tx, tm, tv).backward()
    compiled = kiln.compile(step, fullgraph=True)
    for fn in (lambda *args: step(*args), compiled, compiled):
        kx, km, kv = inputs(kiln)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            loss = fn(kiln, kx, km, kv)
        loss.backward()
        np.testing.assert_allclose(kx.grad.numpy(), tx.grad.numpy(), rtol=1e-6)
        if spelling != "number":     # (v unused there)
            np.testing.assert_allclose(kv.grad.numpy(), tv.grad.numpy(), rtol=1e-6)


def _host_reads_of_a_constant(x):
    c = kiln.tensor([0, 1, 1, 0])
    c.numpy()[0] = 1                            # behind the trace's back
    idx = kiln.nonzero(c)                       # computed on the host from the values
    idx.add_(1)
    return x[idx.flatten() - 1].sum() + c.sum()


def test_reads_of_a_constant_that_hand_out_memory_or_compute_on_the_host_still_break():
    compiled = kiln.compile(_host_reads_of_a_constant)
    for values in ([1.0, 2.0, 3.0, 4.0], [0.5, -1.0, 2.0, 8.0], [1.0, 1.0, 1.0, 1.0]):
        x = kiln.tensor(values)
        assert compiled(x).item() == _host_reads_of_a_constant(x).item()
    captured = kiln.compiler.trace(_host_reads_of_a_constant, kiln.tensor([1.0, 2.0, 3.0, 4.0]))
    assert captured.breaks
