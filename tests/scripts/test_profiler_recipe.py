"""The profiler recipe under `import kiln as torch`: record_function labels, key_averages
tables (by CPU time, by input shape, by memory, by stack), export_chrome_trace, and a training
loop profiled on a schedule. kiln's op rows are its own primitives (`kiln::matmul`), not
ATen's, so the script compares the labels, the tables' columns, when on_trace_ready fires and
the losses (rtol 1e-5 from torch's initial weights); the compiled step repeats eager's."""

from tests.scripts.test_recipes import compiled_matches, same_run


def test_profiler_recipe_matches_torch():
    t, k = same_run("profiler_recipe")
    v = k["values"]
    assert v["label_calls"] == 1 and v["ready_at"] == "4" and v["trace_events"]
    assert v["table_has_columns"] and v["memory_columns"] and v["some_memory"]
    compiled_matches("profiler_recipe", k, t)
