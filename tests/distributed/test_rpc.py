"""torch.distributed.rpc, torch.futures and distributed autograd in kiln.

Three ranks under mpiexec run tests/distributed/rpc_ranks.py once (master drives worker1 and
worker2); the tests compare what the master saw with values computed in this process: RPC
round trips, remote errors, RRefs and their method proxies, an async_execution batching
parameter server (exactly equal to the same updates in one process), and a model split over two
workers trained with dist_autograd + DistributedOptimizer (equal to one process's training, and
to torch's own RPC framework running the same model, rtol 1e-10 in float64)."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import kiln
import kiln.distributed.autograd as dist_autograd
import kiln.distributed.rpc as rpc
from kiln.futures import Future, collect_all, wait_all
from tests.distributed import launch
from tests.distributed import rpc_workloads as W

RTOL = 1e-10


@pytest.fixture(scope="module")
def master(tmp_path_factory):
    out = tmp_path_factory.mktemp("rpc_ranks")
    env = launch.env()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        env.pop(key, None)      # an earlier test's world-of-one group leaves these set
    proc = subprocess.run([launch.mpi_or_skip(), "-n", "3", sys.executable,
                           os.path.join(launch.HERE, "rpc_ranks.py"), str(out)], env=env,
                          capture_output=True, text=True, timeout=120, cwd=launch.ROOT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "results.pkl", "rb") as f:
        return pickle.load(f)


def _section(master: dict, name: str) -> dict:
    assert f"error:{name}" not in master, master[f"error:{name}"]
    return master


# ----------------------------------------------------------------------------- futures

def test_future_then_chains_values_and_errors():
    fut = Future()
    doubled = fut.then(lambda f: f.value() * 2)
    failed = doubled.then(lambda f: 1 / 0)
    seen = []
    fut.add_done_callback(lambda f: seen.append(f.value()))
    assert not fut.done() and not doubled.done()
    with pytest.raises(RuntimeError, match="not completed"):
        fut.value()
    fut.set_result(21)
    assert (fut.wait(), doubled.wait(), seen) == (21, 42, [21])
    with pytest.raises(ZeroDivisionError):
        failed.wait()
    with pytest.raises(RuntimeError, match="only be marked completed once"):
        fut.set_result(1)
    late = []
    fut.add_done_callback(lambda f: late.append(f.value() + 1))     # already done: runs now
    assert late == [22]


def test_future_set_exception_and_wait_all_collect_all():
    a, b, c = Future(), Future(), Future()
    both = collect_all([a, b])
    a.set_result("x")
    assert not both.done()
    b.set_exception(ValueError("nope"))
    assert both.wait() == [a, b] and a.value() == "x"
    with pytest.raises(ValueError, match="nope"):
        wait_all([a, b])
    c.set_result(3)
    assert wait_all([a, c]) == ["x", 3]
    assert wait_all([]) == []
    with pytest.raises(TypeError, match="expected an exception"):
        Future().set_exception("text")


def test_wait_all_raises_the_first_error_without_waiting_for_the_rest():
    slow, failing = Future(), Future()
    threading.Timer(0.05, lambda: failing.set_exception(KeyError("early"))).start()
    with pytest.raises(KeyError, match="early"):
        wait_all([slow, failing])           # `slow` never completes
    assert not slow.done()


def test_future_completed_from_other_threads():
    """Many waiters and a chained callback, completed by another thread."""
    fut = Future()
    total = fut.then(lambda f: sum(f.value()))
    got = []
    waiters = [threading.Thread(target=lambda: got.append(fut.wait())) for _ in range(8)]
    for t in waiters:
        t.start()
    setter = threading.Thread(target=lambda: (time.sleep(0.02), fut.set_result([1, 2, 3])))
    setter.start()
    for t in waiters + [setter]:
        t.join(timeout=10)
    assert got == [[1, 2, 3]] * 8 and total.wait() == 6
    assert kiln.futures.Future is Future


def test_rpc_packages_reached_from_kiln_distributed():
    """`torch.distributed.rpc.init_rpc` after `import torch` alone, as in torch."""
    code = ("import kiln\n"
            "d = kiln.distributed\n"
            "print(d.rpc.init_rpc.__module__, d.autograd.backward.__module__,\n"
            "      d.optim.DistributedOptimizer.__name__, d.nn.RemoteModule.__name__)\n")
    proc = subprocess.run([sys.executable, "-c", code], env=launch.env(), capture_output=True,
                          text=True, timeout=60, cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["kiln.distributed.rpc.api", "kiln.distributed.autograd",
                                   "DistributedOptimizer", "RemoteModule"]


def test_calls_before_init_rpc_say_so():
    with pytest.raises(RuntimeError, match="init_rpc"):
        rpc.rpc_sync("worker1", W.add, args=(1, 2))
    with pytest.raises(RuntimeError, match="Could not find autograd context"):
        dist_autograd.get_gradients(12345)


_ONE_PROCESS = """
import mpi4py, sys
mpi4py.rc.thread_level = sys.argv[1]
import kiln.distributed.rpc as rpc
try:
    rpc.init_rpc("a", world_size=int(sys.argv[2]))
except RuntimeError as exc:
    print("ERROR", exc)
else:
    print(rpc.rpc_sync("a", max, args=(3, 4)), rpc.remote(0, sorted, args=([3, 1, 2],)).to_here())
    rpc.shutdown()
"""


@pytest.mark.parametrize("level", ["single", "multiple"])
def test_init_rpc_refuses_what_mpi_cannot_do(level):
    """Without MPI_THREAD_MULTIPLE init_rpc refuses; with it, a world size MPI did not start is
    refused, naming the mpiexec line; a world of one calls itself."""
    launch.mpi_or_skip()

    def one_process(world_size: int) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", _ONE_PROCESS, level, str(world_size)],
                              env=launch.env(), capture_output=True, text=True, timeout=60,
                              cwd=launch.ROOT, stdin=subprocess.DEVNULL)
    proc = one_process(2)
    assert proc.returncode == 0, proc.stderr
    if level == "single":
        assert "initialized without MPI_THREAD_MULTIPLE" in proc.stdout
        return
    assert "world_size=2, but MPI started 1 process(es)" in proc.stdout
    assert "mpiexec -n 2" in proc.stdout
    proc = one_process(1)
    assert proc.returncode == 0 and proc.stdout.strip() == "4 [1, 2, 3]", proc.stderr


# ----------------------------------------------------------------------------- rpc and RRef

def test_rpc_sync_and_async_round_trips(master):
    got = _section(master, "basics")
    assert got["sum"] == 5 and got["then"] == 42 and got["then_rpc"] == 13
    t = np.arange(6, dtype=np.float64).reshape(2, 3)
    np.testing.assert_array_equal(got["tensor"], t * 3.0 - 1.5)
    assert got["tensor"].dtype == np.float64
    for i, value in enumerate(got["async"]):
        np.testing.assert_array_equal(value, np.full(2, 2.0 * i, np.float32))
    assert got["me"] == "WorkerInfo(id=0, name=master)"
    # a 0-d tensor, a transposed view, a strided slice, an int32 tensor: shapes and dtypes kept
    want = [np.array(2.5, np.float32), t.T, t[:, 1], np.array([1, 2], np.int32)]
    assert [e[:2] for e in got["echoed"]] == [((), "kiln.float32"), ((3, 2), "kiln.float64"),
                                              ((2,), "kiln.float64"), ((2,), "kiln.int32")]
    for (_, _, value), w in zip(got["echoed"], want):
        np.testing.assert_array_equal(value, w)


def test_remote_exception_reraises_with_remote_traceback(master):
    kind, message = _section(master, "basics")["remote_error"]
    assert kind == "ValueError"
    assert message.startswith("On WorkerInfo(id=2, name=worker2):\nValueError('bad value 7')")
    assert "rpc_workloads.py" in message and "in fail" in message     # the remote traceback
    method_error = master["method_error"]
    assert "On WorkerInfo(id=1, name=worker1)" in method_error and "no such entry" in method_error
    assert "in boom" in method_error


def test_timeout_and_unknown_worker(master):
    got = _section(master, "basics")
    assert "ran for more than the set timeout" in got["timeout_error"]
    assert got["after_timeout"] == "next"       # the late reply is dropped, the next call works
    assert "unknown worker name 'worker9'" in got["unknown_worker"]
    assert "['master', 'worker1', 'worker2']" in got["unknown_worker"]


def test_rref_remote_and_method_proxies(master):
    got = _section(master, "basics")
    assert got["push"] == [2, 3]                  # rpc_sync() then rpc_async() proxies
    assert got["remote_method"] == 17             # remote() proxy: an RRef to 10 + 5 + 2
    assert got["to_here"] == [10, 5, 2]
    assert got["owner"] == ("WorkerInfo(id=1, name=worker1)", "worker1", False)
    assert "owned by worker1, not by master" in got["local_value_error"]


def test_rref_backward_and_failed_remote(master):
    got = _section(master, "basics")
    w = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(got["rref_backward"], 18 * w, rtol=RTOL)   # d/dw sum((3w)^2)
    assert got["rref_backward_dot_grad"]
    message = got["remote_create_error"]     # the error of remote()'s function, at to_here()
    assert "On WorkerInfo(id=1, name=worker1)" in message and "bad value 3" in message


def test_rref_passed_to_third_worker_and_back(master):
    got = _section(master, "basics")
    assert got["nested"] == ([20, 10, 4], 17, "worker1")   # worker2 used worker1's RRef
    assert got["loopback"] == ([3], 1, "master")           # worker1 used the master's RRef


def test_process_group_beside_rpc(master):
    assert master["all_reduce"] == 6.0                      # 1 + 2 + 3 over the three ranks


# ----------------------------------------------------------------------------- async_execution

def test_async_execution_functions_and_methods(master):
    got = _section(master, "basics")
    assert got["async_chained"] == 6                 # worker1 replied after worker2's 1 + 2
    assert got["async_method"] == [117, 217, 317]    # through each proxy: 10 + 5 + 2 + extra


def test_async_execution_batching_server_equals_one_process(master):
    got = _section(master, "batch_server")
    want = W.batch_reference()
    for seen in got["batch_seen"]:              # every trainer got each round's parameters
        np.testing.assert_array_equal(seen, want)
    np.testing.assert_array_equal(got["batch_final"], want[-1])


# ----------------------------------------------------------------------------- dist autograd

def test_split_model_dist_autograd_equals_one_process(master):
    got = _section(master, "split_model")
    losses, first_grads, final = W.split_reference()
    np.testing.assert_allclose(got["split_losses"], losses, rtol=RTOL)
    assert set(got["split_grads_here"]) == {"first.weight", "first.bias", "last.weight",
                                            "last.bias"}
    for key, value in got["split_grads_here"].items():
        np.testing.assert_allclose(value, first_grads[key], rtol=RTOL, err_msg=key)
    assert got["split_dot_grad"] == [True, True]    # the context's gradients, not .grad
    assert set(got["split_final"]) == set(final)
    for key, value in final.items():
        np.testing.assert_allclose(got["split_final"][key], value, rtol=RTOL, err_msg=key)


def test_skip_connection_around_a_remote_call(master):
    """h = first(x) goes to the worker and around it; the graph behind h gets the gradient of
    both paths (the remote one after the local backward), and the worker's middle linear its
    own, read from the worker's context."""
    loss, grads = _section(master, "skip_connection")["skip"]
    want_loss, want = W.skip_reference()
    np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
    assert set(grads) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(grads[key], value, rtol=RTOL, err_msg=key)


def test_concurrent_contexts_keep_their_own_gradients(master):
    """Two trainers (worker1, the master) backpropagate through one module on worker2 at the
    same time: each context holds exactly its own trainer's gradients."""
    got = _section(master, "concurrent_contexts")["concurrent"]
    for seed in (1, 2):
        want = W.grads_reference(seed)
        assert len(got[seed]) == len(want)
        for (loss, grads, xgrad), (want_loss, want_grads, want_xgrad) in zip(got[seed], want):
            np.testing.assert_allclose(loss, want_loss, rtol=RTOL)
            np.testing.assert_allclose(xgrad, want_xgrad, rtol=RTOL)
            assert set(grads) == {"middle.weight", "middle.bias"}
            for key, value in want_grads.items():
                np.testing.assert_allclose(grads["middle." + key], value, rtol=RTOL)


def test_distributed_optimizer_skips_parameters_without_gradient(master):
    """SGD(lr=0.25) on sum(a^2) + sum(b^2), then on sum(a^2) alone: each step halves what got a
    gradient, and b, with none in the second context, keeps its value."""
    (a1, b1), (a2, b2) = _section(master, "partial_grads")["partial"]
    np.testing.assert_array_equal(a1, [0.5, 1.0])
    np.testing.assert_array_equal(b1, [1.5])
    np.testing.assert_array_equal(a2, [0.25, 0.5])
    np.testing.assert_array_equal(b2, [1.5])


@pytest.fixture(scope="module")
def torch_run(tmp_path_factory):
    """torch's RPC framework (TensorPipe, two spawned processes) on the same workloads."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("rpc_torch")
    proc = launch.torch_reference("rpc_torch_ranks.py", out)    # run again if killed by a signal
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(out / "torch_arrivals.txt") as f:
        arrivals = ast.literal_eval(f.read())
    return dict(np.load(out / "torch_split.npz")), arrivals


def test_split_model_equals_torch_rpc(master, torch_run):
    torch_split = dict(torch_run[0])
    got = _section(master, "split_model")
    np.testing.assert_allclose(got["split_losses"], torch_split.pop("losses"), rtol=RTOL)
    assert set(torch_split) == set(got["split_final"])
    for key, value in torch_split.items():
        np.testing.assert_allclose(got["split_final"][key], value, rtol=RTOL, err_msg=key)


def test_tensors_arrive_as_in_torch_rpc(master, torch_run):
    """requires_grad, leaf-ness, Parameter and grad_fn name of tensors sent with and without a
    context (in one: RecvRpcBackward, as torch's)."""
    assert _section(master, "basics")["arrivals"] == torch_run[1]


def test_remote_module_trains_through_dist_autograd(master):
    got = _section(master, "remote_module")
    init = got["rm_initial"]
    losses, final = W.remote_module_reference(init["weight"], init["bias"])
    np.testing.assert_allclose(got["rm_losses"], losses, rtol=RTOL)
    for key, value in final.items():
        np.testing.assert_allclose(got["rm_final"][key], value, rtol=RTOL, err_msg=key)
    x = W.remote_module_batches()[0][0]
    want = x @ final["weight"].T + final["bias"]
    np.testing.assert_allclose(got["rm_here"], want, rtol=RTOL)
    here, owner = got["rm_elsewhere"]           # pickled to worker1, still run on worker2
    np.testing.assert_allclose(here, want, rtol=RTOL)
    assert owner == "worker2" and got["rm_repr"] == "RemoteModule(on=worker2, device=cpu)"


def test_a_worker_that_dies_ends_the_job(tmp_path):
    """An uncaught exception on one worker aborts every rank: the master, waiting on a 300 s
    call to it, would otherwise outlive the 60 s the test allows (TimeoutExpired)."""
    env = launch.env()
    proc = subprocess.run([launch.mpi_or_skip(), "-n", "3", sys.executable,
                           os.path.join(launch.HERE, "rpc_ranks.py"), str(tmp_path), "fault"],
                          env=env, capture_output=True, text=True, timeout=60, cwd=launch.ROOT,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode != 0
    assert "rank 1 raised an uncaught exception" in proc.stdout + proc.stderr
    assert "worker1 failed on purpose" in proc.stdout + proc.stderr
