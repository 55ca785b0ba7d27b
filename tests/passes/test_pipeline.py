"""The pass pipeline's report, as `kiln dump` and `explain` show it."""

import kiln
import kiln.nn.functional as F
from kiln.dump import program_sections, write_programs
from kiln.passes.pipeline import run_passes
from tests.passes.helpers import traced


def test_run_passes_report_sections():
    graph, _ = traced("backward_gelu_layernorm")
    report = run_passes(graph)
    titles = [t for t, _ in report.sections()]
    assert titles == ["optimized graph", "pass statistics", "fusion groups", "memory plan"]
    stats = report.stats_text()
    assert stats.splitlines()[-1].split() == ["total", str(len(graph.nodes)), "->",
                                              str(len(report.optimized.nodes))]
    assert "simplify" in stats and "cse" in stats
    assert str(report.schedule).startswith(f"schedule fn: {len(report.optimized.nodes)} nodes")
    dot = report.dot()
    assert dot.startswith('digraph "fn"') and 'fillcolor="#8dd3c7"' in dot
    assert report.plan.planned_bytes <= report.plan.naive_bytes


def _step_program():
    w = kiln.randn(16, 8).requires_grad_()

    def step(x):
        loss = F.gelu(x @ w, approximate="tanh").sum()
        loss.backward()
        return loss.detach()
    return step, kiln.randn(4, 16)


def test_dump_sections_and_fused_dot_file(tmp_path):
    step, x = _step_program()
    (program,) = kiln.compiler.trace(step, x).programs
    titles = [t for t, _ in program_sections(program)]
    assert titles[0] == "traced graph"
    assert {"optimized graph", "pass statistics", "fusion groups", "launch order (c)",
            "executor buffers", "generated kernels (C)", "generated kernels (Triton)",
            "fusion groups (DOT)"} <= set(titles)
    # the memory plan printed is the executor's: its kept buffers (a matmul's, the kernels')
    plan = dict(program_sections(program))["memory plan"]
    assert plan.startswith("memory plan: ") and "buffer 0: " in plan
    written = write_programs(tmp_path, "step", [program], formats=("text", "dot"))
    names = sorted(p.name for p in written)
    assert names == ["step.dot", "step.fused.dot", "step.txt"]
    text = (tmp_path / "step.txt").read_text()
    assert "== fusion groups ==" in text and "extern matmul(%x, %w)" in text
    assert "fused_mul_add_tanh" in text


def test_explain_prints_the_optimized_graph_and_fusion_groups(capsys):
    step, x = _step_program()
    out = kiln.compiler.explain(step, x)
    printed = capsys.readouterr().out
    assert "-- optimized graph --" in printed and "-- fusion groups --" in printed
    (artifact,) = out.artifacts
    schedule = artifact.parts[0].schedule
    assert len(schedule.kernels) == 2 and len(schedule.externs) == 2
