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
