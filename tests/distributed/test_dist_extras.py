"""The rest of torch.distributed's user API on kiln: all_to_all, batch_isend_irecv, the object
collectives, the coalesced collectives, monitored_barrier, the DTensor factories, Partial and
distribute_module, checked on 2 and 3 ranks against torch's own gloo run of the same script
(tests/distributed/extras_ranks.py; exact: every value is float64, float32 or int64 copied or
summed in the same order); the stores, errors and debug level against torch in this process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta

import numpy as np
import pytest
import torch
import torch.distributed as tdist

import kiln.distributed as dist
from tests.distributed import launch

SCRIPT = os.path.join(launch.HERE, "extras_ranks.py")


def _torch_ranks(n: int, out) -> list[dict]:
    """torch's run of extras_ranks.py on n gloo processes (once more if gloo dies of a signal
    while tearing down, as launch.torch_reference does)."""
    for _ in range(2):
        proc = subprocess.run([sys.executable, SCRIPT, str(out), "torch", str(n)],
                              env=launch.env(), capture_output=True, text=True, timeout=180,
                              cwd=launch.ROOT, stdin=subprocess.DEVNULL)
        files = [os.path.join(str(out), f"torch_rank{r}_of{n}.npz") for r in range(n)]
        if all(os.path.exists(f) for f in files):
            return [dict(np.load(f)) for f in files]
    raise AssertionError(proc.stdout + proc.stderr)


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def runs(request, tmp_path_factory) -> tuple[list[dict], list[dict]]:
    n = request.param
    out = tmp_path_factory.mktemp(f"extras{n}")
    mine = launch.rank_outputs("extras_ranks.py", n, out, timeout=120,
                               name=f"kiln_rank{{r}}_of{n}.npz")
    return mine, _torch_ranks(n, out)


def _same_as_torch(runs, check: str) -> None:
    mine, theirs = runs
    for r, (got, want) in enumerate(zip(launch.section(mine, check),
                                        launch.section(theirs, check))):
        got, want = launch.prefixed(got, check), launch.prefixed(want, check)
        assert got and set(got) == set(want), f"rank {r}: {sorted(got)} vs {sorted(want)}"
        for key, value in want.items():
            assert got[key].dtype == value.dtype, f"rank {r} {check}/{key}"
            np.testing.assert_array_equal(got[key], value, err_msg=f"rank {r} {check}/{key}")


@pytest.mark.parametrize("check", ["all_to_all", "all_to_all_uneven", "all_to_all_single_splits",
                                   "batch_p2p", "objects", "coalesced", "subgroups"])
def test_collectives_match_torch(runs, check):
    _same_as_torch(runs, check)


@pytest.mark.parametrize("check", ["dtensor_factories", "partial", "distribute_module"])
def test_dtensor_extras_match_torch(runs, check):
    _same_as_torch(runs, check)


def test_file_store_shared_by_ranks_matches_torch(runs):
    _same_as_torch(runs, "file_store")


def test_async_save_metadata_and_load_match_torch(runs):
    """dcp.async_save's Future, read_metadata's keys, sizes, dtypes and per-rank chunks, and
    a load back, as torch's."""
    _same_as_torch(runs, "checkpoint")


def test_checkpoint_names_refuse_what_kiln_would_ignore(tmp_path):
    import kiln
    import kiln.distributed.checkpoint as dcp

    class MyPlanner(dcp.DefaultSavePlanner):
        pass
    state = {"w": kiln.ones(2)}
    with pytest.raises(ValueError, match="custom planners are not supported"):
        dcp.save(state, checkpoint_id=tmp_path / "a", planner=MyPlanner(), no_dist=True)
    assert isinstance(dcp.DefaultSavePlanner(), dcp.SavePlanner)
    assert isinstance(dcp.FileSystemReader(tmp_path), dcp.StorageReader)
    future = dcp.async_save(state, checkpoint_id=tmp_path / "b", planner=MyPlanner(),
                            no_dist=True)
    assert future.done() and isinstance(future.exception(), ValueError)
    with pytest.raises(dcp.CheckpointException, match="is missing"):
        dcp.load(state, checkpoint_id=tmp_path / "nothing", no_dist=True)


def test_monitored_barrier_names_the_late_rank_as_torch(runs):
    """On time it passes; with the last rank 2 s late and a 0.5 s timeout every rank raises a
    RuntimeError, rank 0's naming the late rank."""
    _same_as_torch(runs, "monitored_barrier")
    assert all(str(r["monitored_barrier/late"]) == "RuntimeError" for r in runs[0])


def test_random_factories_are_pieces_of_one_torch_draw(runs):
    """torch's DTensor rand has no RNG for CPU meshes; kiln's global tensor is torch.rand of
    the whole size after the same seed, laid out as the placements say (rand exactly; randn to
    one ulp, as kiln.randn itself matches torch.randn)."""
    mine = launch.section(runs[0], "random_factories")
    n = len(mine)
    torch.manual_seed(1234)
    rows, same = torch.rand(7, 3), torch.randn(4, 5, dtype=torch.float64)
    cols = torch.randn(2, 5)
    for r, got in enumerate(mine):
        np.testing.assert_array_equal(got["random_factories/rows"],
                                      torch.chunk(rows, n, 0)[r].numpy())
        np.testing.assert_allclose(got["random_factories/same"], same.numpy(), rtol=1e-15,
                                   atol=1e-16)
        np.testing.assert_allclose(got["random_factories/cols"],
                                   torch.chunk(cols, n, 1)[r].numpy(), rtol=1e-6, atol=1e-7)
        assert got["random_factories/cols_grad"]
        assert got["random_factories/rows_global"].tolist() == [7, 3]


def test_nccl_backend_exchanges_as_torch_over_a_stand_in(runs):
    """all_to_all (uneven) and batch_isend_irecv on cuda tensors through kiln's NCCL backend,
    over fake_nccl.py's stand-in: the values torch's gloo run gave on the CPU."""
    mine, theirs = runs
    for got, want in zip(launch.section(mine, "nccl_fake"), theirs):
        assert got["nccl_fake/devices"].tolist() == ["cuda:0"]
        np.testing.assert_array_equal(got["nccl_fake/all_to_all_uneven"],
                                      want["all_to_all_uneven/values"])
        for key in ("from_left", "from_right"):
            np.testing.assert_array_equal(got[f"nccl_fake/{key}"], want[f"batch_p2p/{key}"])


def test_wrong_calls_raise_clear_errors_on_every_rank(runs):
    expected = {"all_to_all_count": ("ValueError", "needs one per rank"),
                "all_to_all_sizes": ("RuntimeError", "sends 2 elements to rank 0"),
                "all_to_all_dtypes": ("ValueError", "one dtype"),
                "splits_sum": ("ValueError", "summing to the input tensor's"),
                "splits_mismatch": ("RuntimeError", "each sent piece must match"),
                "p2pop_op": ("ValueError", "isend or"),
                "p2pop_peer": ("ValueError", "is not a rank of this group"),
                "batch_empty": ("ValueError", "non-empty list of P2POp"),
                "gather_object_dst": ("ValueError", "is not a rank of this group"),
                "scatter_object_src": ("ValueError", "is not a rank of this group"),
                "send_object_dst": ("ValueError", "is not a rank of this group"),
                "mixed_collectives": ("RuntimeError", "ranks disagree on the collective"),
                "gather_object_list": ("ValueError", "one entry per rank"),
                "scatter_object_output": ("ValueError", "non-empty list"),
                "coalesced_dtypes": ("ValueError", "one dtype"),
                "partial_product": ("NotImplementedError", "'sum', 'avg', 'max' and 'min'"),
                "factory_partial": ("NotImplementedError", "DTensor.from_local"),
                "save_partial": ("NotImplementedError", "redistribute it to Replicate()"),
                "sharded_forward": ("NotImplementedError", "sharding propagation")}
    for r, got in enumerate(launch.section(runs[0], "errors")):
        for key, (kind, words) in expected.items():
            message = str(got[f"errors/{key}"])
            assert message.startswith(kind) and words in message, f"rank {r} {key}: {message}"


# ----------------------------------------------------------------------------- stores

def _store_calls(store, error_type) -> list:
    """One sequence of Store calls; the results (exceptions by kind) as a list."""
    got = []

    def call(fn, *args):
        try:
            got.append(fn(*args))
        except error_type as exc:
            got.append(("raised", "timeout" if time.monotonic() - start >= 0.19 else
                        type(exc).__name__))
        except ValueError:
            got.append(("raised", "ValueError"))
    store.set_timeout(timedelta(seconds=0.2))
    call(store.set, "a", "x")
    call(store.get, "a")
    call(store.set, "raw", b"\x00\x01\xff")
    call(store.get, "raw")
    call(store.add, "count", 3)
    call(store.add, "count", -1)
    call(store.get, "count")
    call(store.compare_set, "a", "x", "y")
    call(store.compare_set, "a", "nope", "z")
    call(store.compare_set, "fresh", "", "made")
    call(store.compare_set, "absent", "expected", "never")
    call(store.check, ["a", "count"])
    call(store.check, ["a", "absent"])
    call(store.num_keys)
    call(store.delete_key, "a")
    call(store.delete_key, "a")
    call(store.num_keys)
    call(store.append, "log", "12")
    call(store.append, "log", "34")
    call(store.get, "log")
    call(store.multi_set, ["m1", "m2"], ["one", b"two"])
    call(store.multi_get, ["m2", "m1"])
    call(store.add, "raw", 1)
    call(store.has_extended_api)
    start = time.monotonic()
    call(store.get, "missing")
    start = time.monotonic()
    call(store.wait, ["log", "missing"])
    start = time.monotonic()
    call(store.wait, ["missing"], timedelta(seconds=0.2))
    return got


@pytest.mark.parametrize("kind", ["HashStore", "FileStore", "PrefixStore"])
def test_stores_answer_as_torchs(kind, tmp_path):
    """The same calls on torch's store and kiln's give the same results; a missing key waits
    for the timeout, then raises (kiln's DistStoreError, a RuntimeError as torch's)."""
    def make(module, path):
        if kind == "FileStore":
            return module.FileStore(str(path), 1)
        if kind == "PrefixStore":
            return module.PrefixStore("job", module.HashStore())
        return module.HashStore()
    want = _store_calls(make(tdist, tmp_path / "torch_store"), RuntimeError)
    got = _store_calls(make(dist, tmp_path / "kiln_store"), dist.DistStoreError)
    assert got == want
    if kind != "FileStore":      # torch's FileStore lists its own bookkeeping key
        store, theirs = make(dist, None), make(tdist, None)
        for s in (store, theirs):
            s.set("k", "v")
            s.add("n", 1)
        assert sorted(store.list_keys()) == sorted(theirs.list_keys())


def _queue_calls(store) -> list:
    got = []
    store.set_timeout(timedelta(seconds=0.2))
    for call in (lambda: store.queue_push("q", "a"), lambda: store.queue_push("q", b"b"),
                 lambda: store.queue_len("q"), lambda: store.check(["q"]), store.num_keys,
                 lambda: store.queue_pop("q"), lambda: store.queue_pop("q", False),
                 lambda: store.queue_pop("q"), lambda: store.queue_pop("q", block=False),
                 lambda: store.queue_len("missing")):
        try:
            got.append(call())
        except Exception as exc:
            got.append([c.__name__ for c in type(exc).__mro__[:3]])
    return got


@pytest.mark.parametrize("kind", ["HashStore", "PrefixStore"])
def test_store_queues_answer_as_torchs(kind):
    """queue_push / queue_pop / queue_len: FIFO beside the keys; an empty queue waits for the
    timeout (DistStoreError), or raises QueueEmptyError at once with block=False."""
    def make(module):
        store = module.HashStore()
        return module.PrefixStore("job", store) if kind == "PrefixStore" else store
    assert _queue_calls(make(dist)) == _queue_calls(make(tdist))


def test_file_store_has_no_queues_as_torchs(tmp_path):
    for module, name in ((dist, "kiln"), (tdist, "torch")):
        with pytest.raises(NotImplementedError, match="queue support is not implemented"):
            module.FileStore(str(tmp_path / name), 1).queue_push("q", "a")


def test_prefix_store_keys_live_in_the_underlying_store():
    for module in (dist, tdist):
        base = module.HashStore()
        module.PrefixStore("job", base).set("k", "v")
        assert base.get("job/k") == b"v"
        assert module.PrefixStore("job", base).underlying_store is base
    with pytest.raises(TypeError, match="must be a kiln.distributed Store"):
        dist.PrefixStore("job", {})


_WRITER = """
import sys, time
sys.path.insert(0, {root!r})
import {module}.distributed as dist
store = dist.FileStore({path!r}, 2)
time.sleep(0.5)
store.set("ready", "from the other process")
store.add("count", 5)
store.wait(["done"])
"""


@pytest.mark.parametrize("framework", ["kiln", "torch"])
def test_file_store_is_shared_between_processes(framework, tmp_path):
    """A get waits for the key another process sets; the file is removed when the last of
    world_size processes lets go of the store, as torch's is."""
    module = dist if framework == "kiln" else tdist
    path = str(tmp_path / "store")
    writer = subprocess.Popen([sys.executable, "-c", _WRITER.format(
        root=launch.ROOT, module=framework, path=path)], env=launch.env())
    store = module.FileStore(path, 2)
    start = time.monotonic()
    assert store.get("ready") == b"from the other process"
    assert time.monotonic() - start > 0.2
    assert store.add("count", 1) in (1, 6)
    store.wait(["count"])
    store.set("done", "1")
    assert writer.wait(timeout=60) == 0
    assert os.path.exists(path)
    del store
    assert not os.path.exists(path)


def test_tcp_store_says_what_to_use_instead():
    with pytest.raises(NotImplementedError, match="FileStore"):
        dist.TCPStore("127.0.0.1", 29500, 2, True)
    assert issubclass(dist.TCPStore, dist.Store)


def test_file_store_opened_twice_in_a_process_counts_as_torchs(tmp_path):
    """Two FileStores on one file see each other's keys, `num_keys` counts as torch's, and
    the file goes when world_size of them are gone."""
    results = []
    for module, name in ((dist, "kiln"), (tdist, "torch")):
        path = str(tmp_path / name)
        first, second = module.FileStore(path, 2), module.FileStore(path, 2)
        first.set("k", "v")
        got = [second.get("k"), second.num_keys(), first.num_keys()]
        del first
        got.append(os.path.exists(path))
        del second
        results.append(got + [os.path.exists(path)])
    assert results[0] == results[1]


# ----------------------------------------------------------------------------- the rest

def test_errors_and_debug_level_are_torchs(monkeypatch):
    for name in ("DistError", "DistBackendError", "DistNetworkError", "DistStoreError"):
        mine, theirs = getattr(dist, name), getattr(tdist, name)
        assert [c.__name__ for c in mine.__mro__] == [c.__name__ for c in theirs.__mro__]
    assert list(dist.DebugLevel.__members__) == list(tdist.DebugLevel.__members__)
    before = dist.get_debug_level()
    try:
        for value in ("detail", "INFO", "OFF"):
            monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", value)
            dist.set_debug_level_from_env()
            tdist.set_debug_level_from_env()
            assert dist.get_debug_level().name == tdist.get_debug_level().name
        monkeypatch.setenv("TORCH_DISTRIBUTED_DEBUG", "bogus")
        for module in (dist, tdist):
            with pytest.raises(ValueError):
                module.set_debug_level_from_env()
            with pytest.raises(TypeError):
                module.set_debug_level(1)
        dist.set_debug_level(dist.DebugLevel.DETAIL)
        assert dist.get_debug_level() is dist.DebugLevel.DETAIL
    finally:
        dist.set_debug_level(before)


def test_timeouts_and_backend_availability_are_torchs():
    assert dist.default_pg_timeout == tdist.default_pg_timeout
    assert dist.HashStore().timeout == tdist.HashStore().timeout
    for name in ("gloo", "bogus"):
        assert dist.is_backend_available(name) == tdist.is_backend_available(name)
    assert dist.is_backend_available("mpi") == dist.is_available()
    assert dist.is_backend_available("nccl") == dist.is_nccl_available()


def test_torchs_module_paths_and_availability_answers():
    import importlib
    import kiln.distributed.tensor as dt
    for name in ("rpc", "checkpoint", "fsdp", "device_mesh", "algorithms"):
        assert getattr(dist, name) is importlib.import_module(f"kiln.distributed.{name}")
    for name in ("parallel", "placement_types"):
        assert getattr(dt, name) is importlib.import_module(f"kiln.distributed.tensor.{name}")
    from kiln.distributed.tensor.placement_types import Partial, Replicate, Shard
    assert (Partial, Replicate, Shard) == (dt.Partial, dt.Replicate, dt.Shard)
    assert not dist.is_ucc_available() and not dist.is_xccl_available()
    with pytest.raises(AttributeError, match="no attribute 'bogus'"):
        dt.bogus


def test_breakpoint_stops_the_named_rank_in_pdb(monkeypatch):
    """dist.breakpoint() opens pdb at the caller's line on the named rank (here the only one),
    then every rank passes a barrier; `skip` lets the first calls pass."""
    import pdb
    launch.mpi_or_skip()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    stops = []
    monkeypatch.setattr(pdb.Pdb, "set_trace", lambda self, frame=None: stops.append(
        frame.f_code.co_name))
    dist.init_process_group("gloo")
    try:
        dist.breakpoint(rank=0)
        dist.breakpoint(rank=0, skip=1)     # skipped: the first call with skip
        dist.breakpoint(rank=0, skip=1)
    finally:
        dist.destroy_process_group()
    assert stops == ["test_breakpoint_stops_the_named_rank_in_pdb"] * 2


def test_init_with_a_store_counts_groups_as_torch(tmp_path, monkeypatch):
    """init_process_group(store=...) with rank and world_size (MPI still does the
    rendezvous); get_pg_count counts the default group and each new_group, as torch's."""
    launch.mpi_or_skip()
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(TypeError, match="must be a kiln.distributed Store"):
        dist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    with pytest.raises(ValueError, match="give rank= and world_size="):
        dist.init_process_group("gloo", store=dist.HashStore())
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        counts = [dist.get_pg_count()]
        dist.new_group([0])
        counts.append(dist.get_pg_count())
        config = dist.get_backend_config()
    finally:
        dist.destroy_process_group()
    tdist.init_process_group("gloo", store=tdist.HashStore(), rank=0, world_size=1)
    try:
        theirs = [tdist.get_pg_count()]
        tdist.new_group([0])
        theirs.append(tdist.get_pg_count())
    finally:
        tdist.destroy_process_group()
    assert counts == theirs
    assert config.split(",")[0] == "cpu:mpi"
    assert ("cuda:nccl" in config) == dist.is_nccl_available()
