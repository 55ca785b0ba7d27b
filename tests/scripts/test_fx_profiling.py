"""The FX profiling tutorial (an Interpreter timing every node) and pytorch/examples'
fx/profiling_tracer.py (a Tracer recording `record_function` ranges as torch.ops.profiler
calls) under `import kiln as torch`: the same graph, nodes, results and profiler ranges as
torch (results to rtol 1e-5)."""

from tests.scripts.test_recipes import same_run


def test_fx_profiling_interpreter_and_tracer_match_torch():
    t, k = same_run("fx_profiling", skip_values=("graph",))
    assert k["values"]["graph"].replace("kiln.", "torch.") == t["values"]["graph"]
    v = k["values"]
    assert v["same_as_model"] and v["runs"] == 2 and v["summary_header"]
    assert v["eager_has_range"] and v["custom_trace_has_range"]
    assert not v["plain_trace_has_range"]      # symbolic_trace alone drops the range
