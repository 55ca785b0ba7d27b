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
