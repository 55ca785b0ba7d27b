"""Start a script on ranks for the tests: mpiexec (through kiln.distributed.run or directly)
in a subprocess with a timeout, so a hung job fails the test instead of hanging CI."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERE = os.path.dirname(os.path.abspath(__file__))


def mpi_or_skip() -> str:
    """The mpiexec to use; skips when mpi4py or mpiexec is missing (pip install kiln[test])."""
    pytest.importorskip("mpi4py")
    from kiln.distributed.run import find_mpiexec
    mpiexec = find_mpiexec()
    if mpiexec is None:
        pytest.skip("no mpiexec: pip install mpich")
    return mpiexec


def env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = ROOT + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["OMP_NUM_THREADS"] = "1"
    return e


def mpiexec(n: int, args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([mpi_or_skip(), "-n", str(n), sys.executable, *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)      # mpiexec forwards stdin to rank 0


def launcher(args: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    mpi_or_skip()
    return subprocess.run([sys.executable, "-m", "kiln.distributed.run", *args], env=env(),
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)


def torch_reference(script: str, out) -> subprocess.CompletedProcess:
    """Run one of the `*_torch_ranks.py` scripts (torch's own distributed code, two processes
    spawned over gloo) writing into `out`. torch's gloo can die of a signal while it tears
    down ("terminate called without an active exception", seen once in CI), so a run killed by
    a signal is run once more; the comparison the caller makes stays exact."""
    for _ in range(2):
        proc = subprocess.run([sys.executable, os.path.join(HERE, script), str(out)], env=env(),
                              capture_output=True, text=True, timeout=180, cwd=ROOT,
                              stdin=subprocess.DEVNULL)
        if "terminated with signal" not in proc.stderr:
            break
    return proc


def rank_outputs(script: str, n: int, out, timeout: float = 120,
                 name: str = "rank{r}.npz") -> list[dict]:
    """Run `script OUT` on `n` ranks under mpiexec and load what each rank saved (`name`
    formatted with its rank). RANK & co. that a world-size-1 group in this pytest process left
    set are not passed on: the ranks get theirs from MPI."""
    env_ = env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env_.pop(key, None)
    proc = subprocess.run([mpi_or_skip(), "-n", str(n), sys.executable,
                           os.path.join(HERE, script), str(out)], env=env_,
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    import numpy as np
    return [dict(np.load(os.path.join(str(out), name.format(r=r)))) for r in range(n)]


def section(ranks: list[dict], name: str) -> list[dict]:
    """The ranks' outputs, after checking no rank recorded an error in section `name`."""
    for r, got in enumerate(ranks):
        assert f"error:{name}" not in got, f"rank {r}: {got[f'error:{name}']}"
    return ranks


def prefixed(rank_out: dict, prefix: str) -> dict:
    """The entries saved under `prefix/`, with the prefix taken off their keys."""
    return {k[len(prefix) + 1:]: v for k, v in rank_out.items() if k.startswith(prefix + "/")}
