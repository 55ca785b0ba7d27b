"""kiln.multiprocessing.spawn starts its processes as one MPI job, so PyTorch's way of starting
DDP (mp.spawn + init_process_group(rank=rank, world_size=n)) works: DDP trained that way equals
a single-process run on the whole batches and torch's own mp.spawn + gloo run; failures reach
the parent as torch's exceptions without hanging it; a group of the first ranks of a bigger
spawn (DDP + RPC pattern) all-reduces over its members only. Each script runs in a subprocess
with a timeout, as the other distributed tests do."""

from __future__ import annotations

import json
import multiprocessing
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

import kiln
import kiln.nn as nn
from tests.distributed import launch, spawn_ddp


def _run(script: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    launch.mpi_or_skip()
    proc = subprocess.run([sys.executable, os.path.join(launch.HERE, script), *args],
                          env=launch.env(), capture_output=True, text=True, timeout=timeout,
                          cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _free_port() -> str:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return str(s.getsockname()[1])


def test_ddp_started_by_spawn_matches_one_process_and_torch(tmp_path):
    _run("spawn_ddp.py", "kiln", str(tmp_path), _free_port())
    got = dict(np.load(tmp_path / "kiln.npz"))
    assert got.pop("_library") == "kiln"
    model = spawn_ddp.make_model(kiln)
    spawn_ddp.train(kiln, model, spawn_ddp.batches())        # the whole batches, one process
    want = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    assert sorted(got) == sorted(want)
    for name in want:
        np.testing.assert_allclose(got[name], want[name], rtol=1e-6, atol=1e-12, err_msg=name)
    # training moved the weights: a spawn that skipped the steps could not pass
    assert not np.allclose(want["0.weight"], spawn_ddp.make_model(kiln)[0].weight.detach().numpy())
    pytest.importorskip("torch")
    for attempt in range(2):    # torch's gloo can die of a signal in teardown (launch.py)
        proc = subprocess.run([sys.executable, os.path.join(launch.HERE, "spawn_ddp.py"),
                               "torch", str(tmp_path), _free_port()], env=launch.env(),
                              capture_output=True, text=True, timeout=180, cwd=launch.ROOT,
                              stdin=subprocess.DEVNULL)
        if "terminated with signal" not in proc.stderr:
            break
    assert proc.returncode == 0, proc.stderr[-4000:]
    torch_result = np.load(tmp_path / "torch.npz")
    assert torch_result["_library"] == "torch"
    for name in want:
        np.testing.assert_allclose(got[name], torch_result[name], rtol=1e-6, atol=1e-12,
                                   err_msg=name)


def test_failures_reach_the_parent_as_torch_exceptions(tmp_path):
    _run("spawn_cases.py", "faults", str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    lam = result["lambda"]
    assert lam["type"] == "TypeError"
    assert "cannot send fn=<function" in lam["message"] and "lambda" in lam["message"]
    assert "top level of a module" in lam["message"]
    raised = result["raise"]        # the other process was waiting in a barrier
    assert raised["type"] == "ProcessRaisedException" and raised["error_index"] == 1
    assert raised["message"].startswith("\n\n-- Process 1 terminated with the following error:")
    assert "Traceback (most recent call last)" in raised["message"]
    assert "in fails" in raised["message"] and "ValueError: rank 1 gives up" in raised["message"]
    assert raised["error_pid"] > 0
    exited = result["exit"]         # os._exit(3): the process's watcher saw the status
    assert exited["type"] == "ProcessExitedException"
    assert (exited["error_index"], exited["exit_code"]) == (1, 3)
    assert exited["message"] == "process 1 terminated with exit code 3"
    assert exited["signal_name"] is None
    killed = result["kill"]
    assert killed["type"] == "ProcessExitedException"
    assert (killed["error_index"], killed["exit_code"], killed["signal_name"]) == (1, -9, "SIGKILL")
    assert killed["message"] == "process 1 terminated with signal SIGKILL"
    # a Tensor and a queue: multiprocessing processes (no PMI_RANK) writing into the parent's
    # shared memory and sending through the queue
    shared = result["shared"]
    assert shared["type"] is None and shared["tensor"] == [1.0, 2.0]
    assert shared["queue"] == [[0, False], [1, False]]
    separate = result["separate"]
    assert separate["type"] == "ProcessRaisedException"
    assert "world size 2 was asked for" in separate["message"]
    assert "kiln.multiprocessing.spawn(fn, args, nprocs=2)" in separate["message"]


def _top_level(rank: int) -> None:
    pass


def test_only_arguments_mpiexec_can_carry_make_an_mpi_job():
    from kiln.multiprocessing.spawn import _pickle_job as job
    ctx = multiprocessing.get_context("spawn")
    reader, writer = ctx.Pipe()
    queue = ctx.Queue()
    try:
        assert isinstance(job(_top_level, (3, "x", {"a": [1.5]})), bytes)
        for shared in (kiln.ones(2), [nn.Linear(2, 1)], queue, ctx.Lock(), writer,
                       ctx.Value("d", 1.0), ctx.RawArray("d", 2)):
            assert job(_top_level, (1, shared)) is None, shared
    finally:
        reader.close()
        writer.close()
        queue.close()
    with pytest.raises(TypeError, match="cannot send fn=.*top level of a module"):
        job(lambda rank: None, ())
    with pytest.raises(TypeError, match="cannot send args="):
        job(_top_level, (lambda: 0,))


def test_group_of_the_first_ranks_of_a_spawn_and_join_false(tmp_path):
    _run("spawn_cases.py", "group", str(tmp_path))
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["context"] == "MPIProcessContext" and result["joined_again"] is True
    assert len(set(result["pids"])) == 4
    ranks = [json.loads((tmp_path / f"rank{i}.json").read_text()) for i in range(4)]
    for i, seen in enumerate(ranks):
        # fn lives in the script's __main__, re-imported as __mp_main__, as Python's spawn does;
        # as torch's spawn, no RANK/WORLD_SIZE in the environment
        assert seen["module"] == "__mp_main__" and seen["rank_env"] is False, (i, seen)
        assert seen["initialized"] is False, (i, seen)
    for i in (0, 1):
        assert ranks[i]["sum"] == [3.0, 30.0]       # 1 + 2 and 10 + 20: ranks 2, 3 not in it
        assert (ranks[i]["rank"], ranks[i]["world"]) == (i, 2)
    assert "sum" not in ranks[2] and "refused" not in ranks[2]
    assert "world_size=2 was asked for by the process of rank 3" in ranks[3]["refused"]


def test_spawn_under_kiln_run_imports_torch_as_kiln_in_the_processes(tmp_path):
    # the same script as a PyTorch script (`import torch`) under `kiln run`: the processes
    # re-import it with torch resolved to kiln, as the parent has it
    launch.mpi_or_skip()
    proc = subprocess.run([sys.executable, "-m", "kiln", "run",
                           os.path.join(launch.HERE, "spawn_ddp.py"), "torch", str(tmp_path),
                           _free_port()], env=launch.env(), capture_output=True, text=True,
                          timeout=120, cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = dict(np.load(tmp_path / "torch.npz"))
    assert got.pop("_library") == "kiln"
    model = spawn_ddp.make_model(kiln)
    spawn_ddp.train(kiln, model, spawn_ddp.batches())
    for name, value in model.state_dict().items():
        np.testing.assert_allclose(got[name], value.detach().numpy(), rtol=1e-6, atol=1e-12,
                                   err_msg=name)
