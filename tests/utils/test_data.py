"""kiln.utils.data: datasets, samplers, collation and the DataLoader, with and without workers."""

import collections
import os
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
