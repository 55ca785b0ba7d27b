"""torch._dynamo / torch.compiler calls scripts make, against torch where they answer the
same: config (recompile_limit drives kiln's limit; unknown names refused), graph_break,
mark_dynamic & co., optimize, list_backends, assume_constant_result,
cudagraph_mark_step_begin."""

import warnings

import pytest
import torch
import torch._dynamo

import kiln
import kiln._dynamo
from kiln import compiler


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_config_reads_writes_and_refuses_unknown_names(lib):
    config = lib._dynamo.config
    before = config.cache_size_limit
    assert before == config.recompile_limit == 8
    assert config.suppress_errors is False and config.accumulated_cache_size_limit == 256
    try:
        config.cache_size_limit = 3
        assert config.recompile_limit == 3
    finally:
        config.cache_size_limit = before
    with pytest.raises(AttributeError, match="does not exist"):
        config.no_such_setting = 1


def test_recompile_limit_from_config_is_kilns():
    before = kiln._dynamo.config.recompile_limit
    kiln._dynamo.config.recompile_limit = 2
    try:
        assert compiler.function.RECOMPILE_LIMIT == 2
        f = kiln.compile(lambda x: x * 2)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for n in range(1, 5):                 # a new shape each call: a new entry
                assert f(kiln.ones(n)).tolist() == [2.0] * n
        assert any("eagerly" in str(c.message) for c in caught)
        assert len(f.entries) == 2
    finally:
        kiln._dynamo.config.recompile_limit = before


def test_graph_break_runs_the_function_eagerly_with_the_same_result():
    def f(x):
        y = x.sin()
        kiln._dynamo.graph_break()
        return y * 2
    x = kiln.linspace(0, 1, 5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = kiln.compile(f)(x)
    assert kiln.equal(got, f(x))
    assert any("graph_break" in str(c.message) for c in caught)
    kiln._dynamo.graph_break()                    # outside a compile: nothing


@pytest.mark.parametrize("lib", [torch, kiln], ids=["torch", "kiln"])
def test_marks_optimize_and_helpers(lib):
    x = lib.ones(3, 4)
    lib._dynamo.mark_dynamic(x, 0)
    lib._dynamo.maybe_mark_dynamic(x, 1)
    lib._dynamo.mark_static(x, 0)
    f = lib._dynamo.optimize("eager")(lambda t: t + 1)
    assert f(x).tolist() == (x + 1).tolist()
    assert "inductor" in lib.compiler.list_backends()
    g = lib.compiler.assume_constant_result(lambda: 3)
    assert lib.compile(lambda t: t * g(), backend="eager")(x).tolist() == (x * 3).tolist()
    lib.compiler.cudagraph_mark_step_begin()
    assert lib.compiler.is_dynamo_compiling() is False
    lib._dynamo.reset()


def test_mark_dynamic_checks_the_dimension():
    with pytest.raises(IndexError, match="mark_dynamic"):
        kiln._dynamo.mark_dynamic(kiln.ones(2), 3)


def test_explain_returns_torchs_report_fields_silently(capsys):
    """torch._dynamo.explain(fn)(*args): the graph and break counts, one break reason with its
    text, the ops of each graph, the guards; it prints nothing (kiln's explain printed its
    report), and the deprecated explain(fn, *args) warns and answers at once, as torch's."""
    def bar(lib):
        def f(a, b):
            x = a / (lib.abs(a) + 1)
            if b.sum() < 0:
                b = b * -1
            return x * b
        return f

    a = [0.5, -1.0, 2.0]
    b = [1.0, -3.0, 0.5]
    ref = torch._dynamo.explain(bar(torch))(torch.tensor(a), torch.tensor(b))
    ours = kiln._dynamo.explain(bar(kiln))(kiln.tensor(a), kiln.tensor(b))
    assert capsys.readouterr().out == ""
    assert (ours.graph_count, ours.graph_break_count) == (ref.graph_count,
                                                          ref.graph_break_count) == (2, 1)
    assert len(ours.break_reasons) == len(ref.break_reasons) == 1
    assert "data-dependent" in ours.break_reasons[0].reason
    assert len(ours.ops_per_graph) == ours.graph_count and "abs" in ours.ops_per_graph[0]
    assert ours.out_guards == ours.guards
    with pytest.warns(FutureWarning, match=r"explain\(f\)\(\*args"):
        old = kiln._dynamo.explain(bar(kiln), kiln.tensor(a), kiln.tensor(b))
    assert (old.graph_count, old.graph_break_count) == (2, 1)
    assert capsys.readouterr().out == ""
