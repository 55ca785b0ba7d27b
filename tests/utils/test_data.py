"""kiln.utils.data: datasets, samplers, collation and the DataLoader, with and without workers."""

import collections
import contextlib
import os
import select
import signal
import time

import numpy as np
import pytest
import torch

import kiln
import kiln.utils.data as kd
import torch.utils.data as td


def _xy(n=10):
    x = kiln.arange(n * 3, dtype=kiln.float32).reshape(n, 3)
    y = kiln.arange(n)
    return x, y


class Squares(kd.Dataset):
    """A map-style dataset of dicts with a nested tuple, numbers and strings."""

    def __len__(self):
        return 11

    def __getitem__(self, i):
        return {"x": kiln.full((2,), float(i)), "pair": (i, float(i) / 2), "name": f"s{i}",
                "arr": np.full((2, 2), i, dtype=np.int32), "flag": i % 2 == 0}


class Stream(kd.IterableDataset):
    """An iterable dataset that splits its range between workers."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __iter__(self):
        info = kd.get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(range(start, self.n, step))


def _as_lists(batches):
    def conv(x):
        if isinstance(x, kiln.Tensor):
            return (x.dtype.name, x.tolist())
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [conv(v) for v in x]
        return x
    return [conv(b) for b in batches]


def test_tensor_dataset_batches_and_len():
    x, y = _xy(10)
    ds = kd.TensorDataset(x, y)
    assert len(ds) == 10 and ds[3][1].item() == 3
    loader = kd.DataLoader(ds, batch_size=4)
    assert len(loader) == 3
    batches = list(loader)
    assert [tuple(b[0].shape) for b in batches] == [(4, 3), (4, 3), (2, 3)]
    assert batches[2][1].tolist() == [8, 9]
    assert isinstance(batches[0], list)          # a tuple sample collates to a list, like torch
    dropped = kd.DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and len(list(dropped)) == 2
    with pytest.raises(ValueError, match="Size mismatch"):
        kd.TensorDataset(x, kiln.arange(3))


def test_default_collate_matches_torch():
    samples = [Squares()[i] for i in range(3)]
    t_samples = [{"x": torch.full((2,), float(i)), "pair": (i, float(i) / 2), "name": f"s{i}",
                  "arr": np.full((2, 2), i, dtype=np.int32), "flag": i % 2 == 0}
                 for i in range(3)]
    k, t = kd.default_collate(samples), td.default_collate(t_samples)
    assert k.keys() == t.keys()
    for key in ("x", "arr", "flag"):
        assert k[key].dtype.name == str(t[key].dtype).replace("torch.", "")
        assert k[key].tolist() == t[key].tolist()
    assert [v.dtype.name for v in k["pair"]] == ["int64", "float64"]
    assert [v.tolist() for v in k["pair"]] == [v.tolist() for v in t["pair"]]
    assert k["name"] == t["name"]
    Point = collections.namedtuple("Point", "a b")
    p = kd.default_collate([Point(1, 2.0), Point(3, 4.0)])
    assert isinstance(p, Point) and p.a.tolist() == [1, 3] and p.b.dtype is kiln.float64
    od = kd.default_collate([collections.OrderedDict(a=1), collections.OrderedDict(a=2)])
    assert isinstance(od, collections.OrderedDict)
    with pytest.raises(RuntimeError, match="equal size"):
        kd.default_collate([[1, 2], [3]])
    with pytest.raises(TypeError, match="default_collate"):
        kd.default_collate([object()])


def test_shuffle_reproducible_with_generator_and_manual_seed():
    ds = kd.TensorDataset(*_xy(20))

    def order(**kwargs):
        return [i for _, y in kd.DataLoader(ds, batch_size=6, shuffle=True, **kwargs)
                for i in y.tolist()]
    a = order(generator=kiln.Generator().manual_seed(7))
    b = order(generator=kiln.Generator().manual_seed(7))
    c = order(generator=kiln.Generator().manual_seed(8))
    assert a == b and a != c and sorted(a) == list(range(20))
    kiln.manual_seed(3)
    d = order()
    e = order()                       # the next epoch reshuffles
    kiln.manual_seed(3)
    assert order() == d and d != e


def test_custom_collate_sampler_and_batch_sampler():
    ds = kd.TensorDataset(*_xy(10))
    sums = [b for b in kd.DataLoader(ds, batch_size=3, collate_fn=lambda s: sum(
        int(y) for _, y in s))]
    assert sums == [3, 12, 21, 9]
    loader = kd.DataLoader(ds, batch_size=2, sampler=[9, 0, 5, 5])
    assert [y.tolist() for _, y in loader] == [[9, 0], [5, 5]]
    loader = kd.DataLoader(ds, batch_sampler=[[1, 2, 3], [7]])
    assert [y.tolist() for _, y in loader] == [[1, 2, 3], [7]] and len(loader) == 2
    unbatched = list(kd.DataLoader(ds, batch_size=None))
    assert len(unbatched) == 10 and unbatched[4][1].item() == 4
    with pytest.raises(ValueError, match="mutually exclusive"):
        kd.DataLoader(ds, shuffle=True, sampler=[0])
    with pytest.raises(ValueError, match="mutually exclusive"):
        kd.DataLoader(ds, batch_size=2, batch_sampler=[[0]])


def test_random_split_lengths_fractions_and_generator():
    ds = kd.TensorDataset(*_xy(10))
    a, b = kd.random_split(ds, [7, 3], generator=kiln.Generator().manual_seed(0))
    assert len(a) == 7 and len(b) == 3
    idx = sorted(a.indices + b.indices)
    assert idx == list(range(10))
    a2, _ = kd.random_split(ds, [7, 3], generator=kiln.Generator().manual_seed(0))
    assert a2.indices == a.indices
    parts = kd.random_split(ds, [0.5, 0.3, 0.2], generator=kiln.Generator().manual_seed(1))
    t_parts = td.random_split(range(10), [0.5, 0.3, 0.2])
    assert [len(p) for p in parts] == [len(p) for p in t_parts]
    odd = kd.random_split(range(11), [0.34, 0.33, 0.33])
    assert [len(p) for p in odd] == [len(p) for p in td.random_split(range(11),
                                                                      [0.34, 0.33, 0.33])]
    with pytest.raises(ValueError, match="Sum of input lengths"):
        kd.random_split(ds, [5, 6])
    assert a[0][1].item() == a.indices[0]


def test_samplers():
    assert list(kd.SequentialSampler(range(4))) == [0, 1, 2, 3]
    g = kiln.Generator().manual_seed(0)
    drawn = list(kd.RandomSampler(range(5), replacement=True, num_samples=40, generator=g))
    assert len(drawn) == 40 and set(drawn) <= set(range(5))
    over = list(kd.RandomSampler(range(5), num_samples=12, generator=g))
    assert len(over) == 12 and sorted(over[:5]) == list(range(5))
    assert sorted(kd.SubsetRandomSampler([3, 5, 7], generator=g)) == [3, 5, 7]
    assert list(kd.BatchSampler(range(5), 2, drop_last=False)) == [[0, 1], [2, 3], [4]]
    assert len(kd.BatchSampler(range(5), 2, drop_last=True)) == 2


def test_pin_memory_is_accepted():
    loader = kd.DataLoader(kd.TensorDataset(*_xy(4)), batch_size=2, pin_memory=True)
    assert len(list(loader)) == 2


def test_workers_give_the_same_batches_as_the_main_process():
    ds = Squares()
    for kwargs in (dict(batch_size=3),
                   dict(batch_size=2, shuffle=True, drop_last=True),
                   dict(batch_size=None)):
        single = list(kd.DataLoader(ds, num_workers=0,
                                    generator=kiln.Generator().manual_seed(5), **kwargs))
        multi = list(kd.DataLoader(ds, num_workers=2,
                                   generator=kiln.Generator().manual_seed(5), **kwargs))
        assert _as_lists(multi) == _as_lists(single), kwargs


def test_workers_with_iterable_dataset_and_worker_info():
    single = [b.tolist() for b in kd.DataLoader(Stream(9), batch_size=2)]
    assert single == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]
    multi = [b.tolist() for b in kd.DataLoader(Stream(9), batch_size=2, num_workers=2)]
    # as in PyTorch: batches alternate between workers, each worker yielding its own share
    assert multi == [[0, 2], [1, 3], [4, 6], [5, 7], [8]]
    assert len(kd.DataLoader(Stream(9), batch_size=2)) == 5


def _init_worker(worker_id):
    info = kd.get_worker_info()
    assert info.id == worker_id and info.num_workers == 2


class Failing(kd.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 5:
            raise KeyError(f"no item {i}")
        return i


class Dying(kd.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        if i == 3:
            os._exit(1)
        return i


def test_worker_errors_are_reported():
    loader = kd.DataLoader(Failing(), batch_size=2, num_workers=2, worker_init_fn=_init_worker)
    it = iter(loader)
    assert next(it).tolist() == [0, 1]
    assert next(it).tolist() == [2, 3]
    with pytest.raises(KeyError, match="worker process"):
        next(it)
    start = time.time()
    with pytest.raises(RuntimeError, match="exited unexpectedly"):
        list(kd.DataLoader(Dying(), batch_size=2, num_workers=2))
    assert time.time() - start < 30


def test_worker_seeds_differ_and_are_reproducible():
    class Rand(kd.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return kiln.rand(1)

    def draw():
        loader = kd.DataLoader(Rand(), batch_size=1, num_workers=2,
                               generator=kiln.Generator().manual_seed(1))
        return [b.item() for b in loader]
    a, b = draw(), draw()
    assert a == b
    assert a[0] != a[1]      # worker 0 and 1 draw from different streams


# --- workers that die, send what cannot be pickled, or outlive the main process ---------------

def _gone(pid):
    """True once `pid` has exited (a zombie left to a non-reaping init counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@contextlib.contextmanager
def _within(seconds):
    """Fail a test that blocks longer than `seconds` (a hang must fail, not stall the run)."""
    def expire(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _assert_no_workers_left(pids):
    import multiprocessing
    assert multiprocessing.active_children() == []
    assert all(_gone(pid) for pid in pids), pids


class BigForWorker1(kd.Dataset):
    """Items for worker 1 are 16 MB, more than a pipe holds, so sending one takes many writes;
    worker 1 writes a byte to `signal_fd` when it has made one and starts to send it."""

    def __init__(self, signal_fd):
        self.signal_fd = signal_fd

    def __len__(self):
        return 4

    def __getitem__(self, i):
        if kd.get_worker_info().id == 0:
            return np.full(4, i)
        os.write(self.signal_fd, b"x")
        return np.full(2 * 1024 * 1024, i, dtype=np.float64)


def _check_killed_worker_error(error, worker, started):
    message = str(error)
    assert f"DataLoader worker 1 (pid {worker.pid}) exited unexpectedly with signal SIGKILL" \
        in message, message
    assert time.monotonic() - started < 30


@pytest.mark.parametrize("moment_ms,timeout", [(0, 0), (2, 5), (5, 0), (10, 5), (20, 0),
                                               (50, 5), (100, 0), (200, 5)])
def test_worker_killed_while_sending_a_batch_raises(moment_ms, timeout):
    # The main process reads nothing until the kill, so after its first 64 KB worker 1 waits on
    # a full pipe: from a few ms on, the kill cuts a frame short (the hang of issue 14). With
    # or without `timeout`, the error comes from noticing the death, not from a timer.
    r, w = os.pipe()
    try:
        it = iter(kd.DataLoader(BigForWorker1(w), batch_size=None, num_workers=2,
                                timeout=timeout))
        pids = [p.pid for p in it.workers]
        os.read(r, 1)                          # worker 1 is making its batch
        time.sleep(moment_ms / 1000)
        if moment_ms >= 100:                   # and surely sending it, however loaded the host
            assert select.select([it.pipes[1].fd], [], [], 30)[0]
        os.kill(pids[1], signal.SIGKILL)
        started = time.monotonic()
        with pytest.raises(RuntimeError) as caught, _within(30):
            list(it)
        _check_killed_worker_error(caught.value, it.workers[1], started)
        if moment_ms >= 100:
            assert "while sending a batch" in str(caught.value)
    finally:
        os.close(r)
        os.close(w)
    _assert_no_workers_left(pids)


class SmallSlow(kd.Dataset):
    def __len__(self):
        return 60

    def __getitem__(self, i):
        time.sleep(0.002)
        return i


def test_worker_killed_at_random_moments_raises_or_finishes():
    # small batches and a killer thread: the kill lands while the worker fetches, waits for a
    # job or sends, whichever the moment is; each run ends with the error or, if the kill came
    # after the last batch, with every batch
    import random
    import threading
    rng = random.Random(14)
    for _ in range(12):
        it = iter(kd.DataLoader(SmallSlow(), batch_size=2, num_workers=2))
        pids = [p.pid for p in it.workers]
        killer = threading.Timer(rng.uniform(0, 0.08), os.kill, (pids[1], signal.SIGKILL))
        killer.start()
        started = time.monotonic()
        got = []
        try:
            with _within(30):
                for batch in it:
                    got.append(batch.tolist())
            assert got == [[i, i + 1] for i in range(0, 60, 2)]
        except RuntimeError as e:
            _check_killed_worker_error(e, it.workers[1], started)
            assert got == [[i, i + 1] for i in range(0, 2 * len(got), 2)]
        killer.join()
        del it
        _assert_no_workers_left(pids)


def _unpicklable_datasets():
    class Boom(Exception):                     # a local class does not pickle
        pass

    class RaisesLocal(kd.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            raise Boom(f"item {i} is broken")

    class HoldsLambda(kd.Dataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return {"x": i, "fns": [i, lambda: i]}
    return RaisesLocal(), HoldsLambda()


def test_unpicklable_worker_results_raise_naming_worker_and_type():
    raises_local, holds_lambda = _unpicklable_datasets()
    started = time.monotonic()
    with pytest.raises(RuntimeError, match=r"Caught Boom in DataLoader worker process 0") as e, \
            _within(30):
        list(kd.DataLoader(raises_local, batch_size=2, num_workers=2))
    assert "item 0 is broken" in str(e.value) and "cannot be pickled" in str(e.value)
    it = iter(kd.DataLoader(holds_lambda, batch_size=None, num_workers=2))
    pids = [p.pid for p in it.workers]
    with pytest.raises(RuntimeError) as e, _within(30):
        next(it)
    message = str(e.value)
    assert f"DataLoader worker 0 (pid {pids[0]}) could not send its batch" in message, message
    assert "batch['fns'][1] is a function (" in message and "<lambda>" in message, message
    assert time.monotonic() - started < 30
    _assert_no_workers_left(pids)


_MAIN_SCRIPT = r'''
import sys, threading, time
import kiln.utils.data as kd

class Numbers(kd.Dataset):
    def __len__(self):
        return 1000

    def __getitem__(self, i):
        return i

def start(context=None):
    global it
    it = iter(kd.DataLoader(Numbers(), batch_size=2, num_workers=2,
                            multiprocessing_context=context))
    assert next(it).tolist() == [0, 1]
    time.sleep(0.5)          # the workers have sent what they were given and wait for jobs
    print(" ".join(str(w.pid) for w in it.workers), flush=True)

if __name__ == "__main__":
    if sys.argv[1] == "thread":  # no PR_SET_PDEATHSIG then: the workers' parent check must act
        t = threading.Thread(target=start)
        t.start()
        t.join()
        assert next(it).tolist() == [2, 3]        # the workers outlive the thread that made them
    elif sys.argv[1] == "forkserver":  # the workers' parent is the server, which stays while
        start("forkserver")            # they do: the main process's sentinel must act
    else:
        start()
    time.sleep(60)
'''


def _parent_of(pid):
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


@pytest.mark.parametrize("made_in", ["main", "thread", "forkserver"])
def test_workers_end_when_the_main_process_is_killed(made_in, tmp_path):
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
    script = tmp_path / "main_process.py"      # a file: forkserver's workers import it
    script.write_text(_MAIN_SCRIPT)
    main = subprocess.Popen([sys.executable, str(script), made_in], env=env,
                            stdout=subprocess.PIPE, text=True)
    try:
        pids = [int(p) for p in main.stdout.readline().split()]
        assert len(pids) == 2 and not any(_gone(p) for p in pids)
        parents = {_parent_of(p) for p in pids}
        assert parents == ({main.pid} if made_in != "forkserver" else parents - {main.pid})
    finally:
        main.kill()
        main.wait()
    left = pids + sorted(parents - {main.pid})  # the fork server ends with its last worker
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in left) and time.monotonic() < deadline:
        time.sleep(0.05)
    stayed = [p for p in left if not _gone(p)]
    for pid in stayed:                          # leave nothing behind, even on failure
        os.kill(pid, signal.SIGKILL)
    assert not stayed, f"still running 30 s after the main process was killed: {stayed}"


def test_dropping_an_unfinished_iterator_ends_workers_by_themselves():
    # worker 1 is stuck sending a 16 MB batch nobody reads, worker 0 waits for jobs: closing
    # must reach both through the stop flag (exit code 0), not by terminating them
    r, w = os.pipe()
    try:
        it = iter(kd.DataLoader(BigForWorker1(w), batch_size=None, num_workers=2))
        assert next(it).tolist() == [0] * 4
        os.read(r, 1)
        workers = list(it.workers)
        del it
    finally:
        os.close(r)
        os.close(w)
    assert [p.exitcode for p in workers] == [0, 0]
    _assert_no_workers_left([p.pid for p in workers])


class Stuck(kd.Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        time.sleep(0 if i == 0 else 30)
        return i


def test_timeout_raises_and_ends_workers():
    it = iter(kd.DataLoader(Stuck(), batch_size=None, num_workers=2, timeout=0.3))
    pids = [p.pid for p in it.workers]
    assert next(it) == 0
    with pytest.raises(RuntimeError, match=r"timed out after 0.3 seconds waiting for batch 1 "
                                           r"from worker 1"):
        next(it)
    _assert_no_workers_left(pids)       # worker 1, still sleeping in the dataset, was ended
