"""kiln.utils.benchmark against torch.utils.benchmark: the Measurement statistics agree on the
same raw times, and a Timer runs the statement it was given with the given globals."""

import pytest
import torch.utils.benchmark as tb

from kiln.utils import benchmark as kb


@pytest.mark.parametrize("raw", [[0.5], [0.3, 0.1, 0.2], [4.0, 1.0, 3.0, 2.0, 10.0],
                                 [1e-6, 1.1e-6, 1.05e-6], [2e-4]])
def test_measurement_statistics_match_torch(raw):
    k = kb.Measurement(10, raw, "f(x)")
    t = tb.Measurement(10, raw, tb.TaskSpec("f(x)", "pass"))
    for name in ("times", "mean", "median", "iqr", "number_per_run", "raw_times", "title"):
        assert getattr(k, name) == pytest.approx(getattr(t, name)), name
    # the title and the median line print as torch prints them
    assert repr(k).splitlines()[1:3] == repr(t).splitlines()[1:3]


def test_timer_runs_the_statement_with_its_globals_and_labels():
    calls = []
    timer = kb.Timer(stmt="f(3)", setup="calls.clear()", globals={"f": calls.append,
                                                                  "calls": calls},
                     label="append", sub_label="small", description="one int")
    m = timer.timeit(25)
    assert calls == [3] * 25 and m.number_per_run == 25 and len(m.times) == 1
    assert m.times[0] == m.raw_times[0] / 25 > 0
    assert m.title == "append: small" and "one int" in repr(m)
    m = timer.blocked_autorange(min_run_time=0.005)
    assert len(m.raw_times) >= 3 and m.median > 0
    with pytest.raises(ValueError, match="Python statements only"):
        kb.Timer("x", language="c++")


def test_compare_lays_out_the_table_like_torch():
    """torch.utils.benchmark.Compare over the same measurements: the same rows (threads, then
    sub_label), columns (description), cell values in the same unit after
    trim_significant_figures, and the same colors (by ratio to the row's best)."""
    import re
    specs = [(1, "[2]", "sum", 2.1e-6), (1, "[2]", "mean", 3.52e-6), (1, "[40]", "sum", 1.5e-6),
             (1, "[40]", "mean", 13.4e-6), (2, "[2]", "sum", 1.6e-6), (2, "[2]", "mean", 3.6e-6)]
    measured = {
        "kiln": [kb.Measurement(10, [median * 10], "x", label="reduce", sub_label=sub,
                                description=desc, num_threads=n)
                 for n, sub, desc, median in specs],
        # torch's Measurement takes its metadata as a TaskSpec
        "torch": [tb.Measurement(10, [median * 10], tb.TaskSpec(
            "x", "pass", label="reduce", sub_label=sub, description=desc, num_threads=n))
            for n, sub, desc, median in specs]}
    tables = {}
    for name, B in (("torch", tb), ("kiln", kb)):
        compare = B.Compare(measured[name])
        compare.trim_significant_figures()
        compare.colorize(rowwise=True)
        tables[name] = str(compare)

    def cells(text):
        rows = []
        for line in text.splitlines():
            if "|" in line:
                rows.append([re.sub(r"\x1b\[[0-9;]*m", "", c).strip() for c in line.split("|")])
            elif "threads:" in line:
                rows.append([line.split(":")[0]])
        return rows

    def colors(text):
        return re.findall(r"((?:\x1b\[[0-9;]*m)+)\s*([0-9.]+)", text)
    assert cells(tables["kiln"]) == cells(tables["torch"])
    assert colors(tables["kiln"]) == colors(tables["torch"])
    assert "Times are in microseconds (us)." in tables["kiln"]


@pytest.mark.parametrize("raw", [[0.5], [3e-4, 1e-4], [4.0, 1.0, 3.0, 2.0, 10.0],
                                 [1e-6, 1.1e-6, 1.05e-6, 0.9e-6, 2e-6]])
@pytest.mark.parametrize("setup,description", [
    ("pass", None), ("from __main__ import f", "one line"),
    ("from __main__ import f\nx = torch.randn(2, 2)", None)])
def test_measurement_prints_as_torchs(raw, setup, description):
    """The whole repr below the object line: title, description, setup (one line or a
    block), Median and IQR with its quartiles (from 4 measurements) in torch's units."""
    k = kb.Measurement(10, raw, "f(x)", description=description, setup=setup)
    t = tb.Measurement(10, raw, tb.TaskSpec("f(x)", setup, description=description))
    assert repr(k).splitlines()[1:] == repr(t).splitlines()[1:]


def test_compare_shows_envs_as_torchs_ab_table():
    """The recipe's A/B table: two envs, three columns; rows start with "(env)" once per env
    and the names line up after the longest env, as torch prints them."""
    specs = [("environment A: mul/sum", "[1, 1]", 7e-6), ("environment A: mul/sum",
                                                          "[1024, 10000]", 36e-3),
             ("environment B: bmm", "[1, 1]", 14e-6), ("environment B: bmm", "[1024, 10000]",
                                                       40e-3)]
    kiln_results = [kb.Measurement(100, [m * 100], "batched_dot(x, x)", label="Batched dot",
                                   description=d, env=env) for env, d, m in specs]
    torch_results = [tb.Measurement(100, [m * 100], tb.TaskSpec(
        "batched_dot(x, x)", "pass", label="Batched dot", description=d, env=env))
        for env, d, m in specs]
    k, t = str(kb.Compare(kiln_results)), str(tb.Compare(torch_results))

    def rows(text):
        return [line.split("|")[0].rstrip() for line in text.splitlines()
                if "|" in line and "(" in line.split("|")[0] or "batched_dot" in line]
    assert rows(k) == rows(t) and len(rows(k)) == 2
    assert rows(k)[0].startswith("  (environment A: mul/sum)  batched_dot(x, x)")
    one_env = str(kb.Compare(kiln_results[:2]))
    assert "(environment" not in one_env and "      batched_dot(x, x)" in one_env


def test_compare_highlights_noisy_cells_as_torch():
    raws = {"quiet": [1e-3, 1.01e-3, 0.99e-3, 1e-3], "noisy": [1e-3, 2e-3, 1e-3, 3e-3, 1e-3]}
    kiln_results = [kb.Measurement(1, raw, "f()", label="L", sub_label=name, description="d")
                    for name, raw in raws.items()]
    torch_results = [tb.Measurement(1, raw, tb.TaskSpec("f()", "pass", label="L",
                                                        sub_label=name, description="d"))
                     for name, raw in raws.items()]
    tables = []
    for B, results in ((kb, kiln_results), (tb, torch_results)):
        compare = B.Compare(results)
        compare.highlight_warnings()
        tables.append(str(compare))
    cells = [[line.split("|")[1].strip() for line in t.splitlines() if "|" in line][1:]
             for t in tables]
    assert cells[0] == cells[1] and cells[0][1].endswith("(! 100%)")
    assert tables[0].rstrip().endswith("where XX is the IQR / median * 100.")
    assert kiln_results[1].has_warnings and not kiln_results[0].has_warnings


@pytest.mark.parametrize("trim,colorize,highlight", [
    (False, None, False), (True, "columnwise", False), (True, "rowwise", True)])
def test_compare_prints_torchs_table_exactly(trim, colorize, highlight):
    """Two labels, two thread counts, a missing cell, replicates of one task (merged), a
    noisy measurement and a multi-character unit: str(Compare) is torch's, byte for byte."""
    specs = [("sum", 1, "[2]", "small", [2.1e-6] * 3), ("sum", 1, "[2]", "large", [35e-6] * 3),
             ("sum", 1, "[4096, 4096]", "small", [1.5e-6, 1.6e-6, 1.4e-6, 3e-6]),
             ("sum", 4, "[2]", "small", [1.6e-6] * 2), ("sum", 4, "[2]", "small", [1.7e-6]),
             ("sum", 4, "[2]", "large", [13.4e-6, 13.5e-6]),
             ("mean", 1, "x", "a", [2.5e-3]), ("mean", 1, "y", "a", [26e-3])]
    results = {}
    for B in (kb, tb):
        made = []
        for label, n, sub, desc, times in specs:
            info = dict(label=label, sub_label=sub, description=desc, num_threads=n)
            made.append(kb.Measurement(1, times, "f(x)", **info) if B is kb else
                        tb.Measurement(1, times, tb.TaskSpec("f(x)", "pass", **info)))
        compare = B.Compare(made)
        if trim:
            compare.trim_significant_figures()
        if colorize:
            compare.colorize(rowwise=colorize == "rowwise")
        if highlight:
            compare.highlight_warnings()
        results[B] = str(compare)
    assert results[kb] == results[tb]


def test_measurement_from_a_task_spec_and_merge_as_torch():
    """torch's constructor form (a TaskSpec and metadata) and Measurement.merge: replicates of
    one task pooled into single-run times, in torch's order."""
    def build(B):
        spec = B.TaskSpec("f(x)", "x = 1", label="L", sub_label="s", description="d",
                          env="A", num_threads=2)
        other = B.TaskSpec("g(x)", "pass")
        return [B.Measurement(10, [1e-5, 2e-5], spec, {"run": 1}),
                B.Measurement(5, [3e-5], other), B.Measurement(20, [8e-5], spec)]
    k, t = build(kb), build(tb)
    assert k[0].metadata == {"run": 1} and k[0].env == "A" and k[0].num_threads == 2
    assert k[0].task_spec == kb.TaskSpec("f(x)", "x = 1", "", "L", "s", "d", "A", 2)
    km, tm = kb.Measurement.merge(k), tb.Measurement.merge(t)
    assert [len(m.times) for m in km] == [len(m.times) for m in tm] == [3, 1]
    assert [t for m in km for t in m.times] == pytest.approx(
        [t for m in tm for t in m.times])
    assert [(m.stmt, m.number_per_run, m.metadata) for m in km] == \
        [(m.stmt, m.number_per_run, m.metadata) for m in tm]
    assert repr(km[0]).splitlines()[1:] == repr(tm[0]).splitlines()[1:]


def test_timer_runs_on_num_threads_then_restores():
    """As torch's Timer sets torch's thread count while it times, kiln's sets kiln's."""
    import kiln
    before = kiln.get_num_threads()
    seen = []
    m = kb.Timer("seen.append(kiln.get_num_threads())", globals={"seen": seen, "kiln": kiln},
                 num_threads=before + 1).timeit(3)
    assert set(seen) == {before + 1} and m.num_threads == before + 1
    assert kiln.get_num_threads() == before
