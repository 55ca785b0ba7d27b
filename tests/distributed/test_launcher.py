"""kiln.distributed.run and plain mpiexec start ranks with torchrun's environment; a rank that
raises, exits non-zero or is killed ends the whole job with an error naming it, well within
30 s; processes started without mpiexec get an error that says how to start them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from kiln.distributed import run
from tests.distributed import launch

SCRIPT = os.path.join(launch.HERE, "fault_script.py")


def test_launcher_starts_ranks_with_torchrun_environment(tmp_path):
    proc = launch.launcher(["--nproc-per-node", "2", SCRIPT, "ok", "--lr", "3"], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for r in range(2):
        assert f"rank {r} env before init {r} 2 {r} 127.0.0.1 after {r} 2 {r} 127.0.0.1 " \
            "args ['--lr', '3']" in proc.stdout
        assert f"rank {r} sum 3" in proc.stdout


def test_launcher_hostfile_and_underscore_spelling(tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("localhost:2\n")
    proc = launch.launcher(["--nproc_per_node=2", "--hostfile", str(hosts), SCRIPT, "ok"],
                           timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 1 sum 3" in proc.stdout


def test_plain_mpiexec_works():
    proc = launch.mpiexec(2, [SCRIPT, "ok"], timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "rank 0 sum 3" in proc.stdout
    assert "rank 1 env before init None None None None after 1 2 1 None" in proc.stdout


@pytest.mark.parametrize("mode, says", [
    ("raise", "rank 1 failed: ValueError: rank one is broken"),
    ("exit", "rank 1 failed: exit status 4"),
    ("kill", "rank 1 failed: killed by signal 9 (SIGKILL)"),
])
def test_a_failing_rank_ends_the_job_quickly_and_is_named(mode, says):
    start = time.monotonic()
    proc = launch.launcher(["--nproc-per-node", "2", SCRIPT, mode], timeout=30)
    elapsed = time.monotonic() - start
    assert proc.returncode != 0
    assert elapsed < 30
    assert says in proc.stdout + proc.stderr, proc.stdout + proc.stderr
    assert "rank 0 sum" not in proc.stdout


def test_a_rank_dies_with_its_watcher(tmp_path):
    # the script runs under a watcher process (it reports the signal that kills the script);
    # when the watcher itself is killed, the script must go too, not train on as an orphan
    pid_file = tmp_path / "pid"
    start = time.monotonic()
    proc = launch.launcher(["--nproc-per-node", "2", SCRIPT, "orphan", str(pid_file)],
                           timeout=30)
    assert proc.returncode != 0
    assert time.monotonic() - start < 30
    # nobody was left to say which rank died: the launcher passes on mpiexec's report, which
    # may name rank 0 (killed in the clean-up) rather than rank 1
    assert re.search(r"the job failed .*; mpiexec reported rank [01] \(pid \d+\)", proc.stderr), \
        proc.stdout + proc.stderr
    pid = int(pid_file.read_text())
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}"), "the script outlived its watcher"


def test_plain_mpiexec_rank_raising_aborts_the_job():
    proc = launch.mpiexec(2, [SCRIPT, "raise"], timeout=30)
    assert proc.returncode != 0
    assert "rank 1 raised an uncaught exception" in proc.stderr
    assert "rank 0 sum" not in proc.stdout


def test_ranks_started_without_mpiexec_get_a_clear_error():
    launch.mpi_or_skip()
    env = launch.env()
    env.update(RANK="0", WORLD_SIZE="2", LOCAL_RANK="0")
    code = "import kiln.distributed as d; d.init_process_group()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode != 0
    assert "world size 2 was asked for" in proc.stderr
    assert "mpiexec -n 2" in proc.stderr


def test_launcher_without_mpiexec_says_how_to_install(monkeypatch):
    monkeypatch.setattr(run, "find_mpiexec", lambda: None)
    with pytest.raises(SystemExit, match="pip install 'kiln\\[distributed\\]'"):
        run.command(run.parse_args(["--nproc-per-node", "2", "train.py"]))
    args = run.parse_args(["--nproc_per_node", "3", "--nnodes", "2", "--hostfile", __file__,
                           "--mpiexec", "/x/mpiexec", "-m", "pkg.train", "--epochs", "1"])
    assert run.command(args) == ["/x/mpiexec", "-n", "6", "-f", __file__, "-ppn", "3",
                                 sys.executable, "-m", "kiln.distributed.rank", "-m",
                                 "pkg.train", "--epochs", "1"]


def _ddp_example(out, *flags) -> subprocess.CompletedProcess:
    example = os.path.join(launch.ROOT, "examples", "ddp_train.py")
    launch.mpi_or_skip()
    env = dict(launch.env(), KILN_EXAMPLE_QUICK="1")
    return subprocess.run([sys.executable, "-m", "kiln.distributed.run", "--nproc-per-node", "2",
                           example, "--out", str(out), *flags], env=env, capture_output=True,
                          text=True, timeout=120, cwd=launch.ROOT, stdin=subprocess.DEVNULL)


def _epoch_losses(stdout: str) -> list[float]:
    return [float(v) for v in re.findall(r"^epoch \d+ loss ([0-9.]+)$", stdout, re.M)]


def test_ddp_example_trains_and_only_rank0_writes_a_plain_checkpoint(tmp_path):
    proc = _ddp_example(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    losses = _epoch_losses(proc.stdout)
    assert len(losses) == 3 and losses[-1] < losses[0]
    # rank 0 loaded its checkpoint into a plain model (no `module.` prefixes) to evaluate
    assert float(re.search(r"^accuracy ([0-9.]+)$", proc.stdout, re.M).group(1)) >= 0.75
    assert os.listdir(tmp_path) == ["ddp_train.kiln"]


def test_ddp_example_compiled_step_trains_as_eager(tmp_path):
    """`--compile`: the DDP training step (forward, backward, the gradient all-reduce, Adam)
    replays compiled on both ranks, without kiln.compile's fallback warning, and its epoch
    losses are eager's."""
    (tmp_path / "eager").mkdir()
    (tmp_path / "compiled").mkdir()
    eager = _ddp_example(tmp_path / "eager")
    compiled = _ddp_example(tmp_path / "compiled", "--compile")
    assert compiled.returncode == 0, compiled.stdout + compiled.stderr
    assert "kiln.compile" not in compiled.stderr, compiled.stderr
    np.testing.assert_allclose(_epoch_losses(compiled.stdout), _epoch_losses(eager.stdout),
                               atol=2e-4)
    assert float(re.search(r"^accuracy ([0-9.]+)$", compiled.stdout, re.M).group(1)) >= 0.75


def test_a_script_run_without_any_launcher_is_a_world_of_one():
    launch.mpi_or_skip()
    code = ("import kiln, kiln.distributed as d\n"
            "d.init_process_group()\n"
            "t = kiln.tensor([2.0, 4.0]); d.all_reduce(t, op=d.ReduceOp.AVG)\n"
            "print(d.get_rank(), d.get_world_size(), t.tolist())\n")
    env = {k: v for k, v in launch.env().items() if k not in ("RANK", "WORLD_SIZE")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "0 1 [2.0, 4.0]"


LOCAL_RANK_SCRIPT = """
import argparse, os
p = argparse.ArgumentParser()
p.add_argument("--local-rank", "--local_rank", type=int, default=-1)
p.add_argument("--epochs", type=int, default=1)
a = p.parse_args()
print(f"rank={os.environ['RANK']} arg={a.local_rank} env={os.environ['LOCAL_RANK']} "
      f"epochs={a.epochs}")
"""


@pytest.mark.parametrize("use_env", [False, True])
def test_old_launch_module_passes_local_rank_as_torchs(tmp_path, use_env):
    """python -m torch.distributed.launch: each rank's script gets --local-rank=N appended
    unless --use-env (torch 2's spelling of the argument), and a FutureWarning."""
    launch.mpi_or_skip()
    script = tmp_path / "train.py"
    script.write_text(LOCAL_RANK_SCRIPT)
    args = ["--nproc_per_node=2", "--node_rank=0"] + (["--use_env"] if use_env else []) + \
        [str(script), "--epochs", "3"]
    done = subprocess.run([sys.executable, "-m", "kiln.distributed.launch", *args],
                          env=launch.env(), capture_output=True, text=True, timeout=120,
                          cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = sorted(re.findall(r"rank=\d arg=-?\d env=\d epochs=\d", done.stdout))
    want = "-1" if use_env else None
    assert lines == [f"rank={r} arg={want or r} env={r} epochs=3" for r in (0, 1)], done.stdout
    assert "deprecated" in done.stderr
