"""`kiln dump --passes script.py` prints, per compiled program, what each named step of the
pipeline made (partition, decompose, cleanup, ..., fuse, split gathers, lower, plan memory), and
those are the very graphs, schedules and plans the compiled program runs."""

import re

import numpy as np

import kiln
from kiln import cli, program_cache
from kiln.passes.pipeline import STEPS

SCRIPT = """\
import kiln
import kiln.nn.functional as F

kiln.manual_seed(0)
w = kiln.randn(6, 4).requires_grad_()


@kiln.compile
def f(x, y):
    return F.cross_entropy((x @ w).tanh(), y)


x, y = kiln.randn(5, 6), kiln.tensor([0, 1, 2, 3, 0])
loss = f(x, y)
loss.backward()
print("loss", float(loss), "grad", w.grad.numpy().ravel().tolist())
"""


def _sections(text: str) -> dict:
    found = re.split(r"^== (.*) ==$", text, flags=re.M)
    return {title: body.strip("\n") for title, body in zip(found[1::2], found[2::2])}


def _run(tmp_path, capsys) -> tuple[dict, dict, str]:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    assert cli.main(["dump", "--passes", "--format", "text", "--out", str(tmp_path / "out"),
                     str(script)]) == 0
    printed = "\n".join(ln for ln in capsys.readouterr().out.splitlines()
                        if not ln.startswith("kiln dump: wrote "))
    report = (tmp_path / "out" / "f.txt").read_text()
    return _sections(printed), _sections(report), printed


def test_dump_passes_prints_each_named_step_of_both_parts(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    printed, report, out = _run(tmp_path, capsys)
    for part in ("forward", "backward"):
        titles = [t for t in printed if t.startswith(f"f: {part}: step ")]
        assert titles == [f"f: {part}: step {i} {name}" for i, name in enumerate(STEPS)]
        body = {t.split(" ", 4)[-1]: printed[t] for t in titles}
        assert body["partition"].startswith(f"graph f_{part}(")
        # nothing here to decompose: the step says so rather than printing the graph again
        assert body["decompose"] == "(unchanged: nothing to do)"
        # the cleanup's graph is the optimized graph the report shows; the fusion step's schedule
        # its fusion groups; the memory plan the executor's
        assert body["cleanup"] == report[f"{part}: optimized graph"]
        assert body["fuse"] == report[f"{part}: fusion groups"]
        assert body["plan memory"] == report[f"{part}: memory plan"]
        # the lowered program lists every launched step, numbered as the launch order does
        lowered = re.findall(r"^  step (\d+): (k\d+\w*)?", body["lower"], re.M)
        launched = re.findall(r"^step (\d+): (k\d+\w*)?", report[f"{part}: launch order (c)"],
                              re.M)
        assert lowered == launched and lowered
        assert report[f"{part}: step {len(STEPS) - 1} plan memory"] == body["plan memory"]
    # cross-entropy's gather: the forward's kernel k1 is split around a take call
    split = printed[f"f: forward: step {STEPS.index('split gathers')} split gathers"]
    assert re.search(r"^  k1a .*\n  extern take\(.*\n  k1b ", split, re.M)
    assert "k1 " in printed[f"f: forward: step {STEPS.index('fuse')} fuse"]
    # and the script's result is eager's
    loss, grad = re.search(r"loss (\S+) grad (\[.*\])", out).groups()
    kiln.manual_seed(0)
    w = kiln.randn(6, 4).requires_grad_()
    x, y = kiln.randn(5, 6), kiln.tensor([0, 1, 2, 3, 0])
    want = kiln.nn.functional.cross_entropy((x @ w).tanh(), y)
    want.backward()
    np.testing.assert_allclose(float(loss), want.item(), rtol=1e-5)
    np.testing.assert_allclose(eval(grad), w.grad.numpy().ravel(), rtol=1e-5, atol=1e-6)


def test_dump_passes_runs_the_pipeline_even_when_the_program_cache_has_it(tmp_path, capsys,
                                                                           monkeypatch):
    monkeypatch.setenv("KILN_CACHE_DIR", str(tmp_path / "cache"))
    first, _, _ = _run(tmp_path, capsys)
    second, _, _ = _run(tmp_path, capsys)          # the entry is in the cache now
    assert first == second
    assert program_cache.READ                       # and the cache is read again afterwards
