"""ChainDataset, StackDataset, WeightedRandomSampler and DistributedSampler against torch's."""

import numpy as np
import pytest
import torch
import torch.utils.data as tdata

import kiln
import kiln.utils.data as kdata


class _Range(kdata.IterableDataset):
    def __init__(self, start, stop):
        self.start, self.stop = start, stop

    def __iter__(self):
        return iter(range(self.start, self.stop))

    def __len__(self):
        return self.stop - self.start


def test_chain_dataset_iterates_in_order_and_rejects_map_style():
    chained = kdata.ChainDataset([_Range(0, 3), _Range(10, 12)])
    assert list(chained) == [0, 1, 2, 10, 11] and len(chained) == 5
    loader = kdata.DataLoader(chained, batch_size=2)
    assert [b.tolist() for b in loader] == [[0, 1], [2, 10], [11]]
    with pytest.raises(TypeError, match="IterableDataset"):
        list(kdata.ChainDataset([kdata.TensorDataset(kiln.zeros(2))]))


def test_stack_dataset_tuples_and_dicts_like_torch():
    a, b = np.arange(5.0), np.arange(5) * 10
    k = kdata.StackDataset(kdata.TensorDataset(kiln.tensor(a)), list(b))
    t = tdata.StackDataset(tdata.TensorDataset(torch.tensor(a)), list(b))
    assert len(k) == len(t) == 5
    assert float(k[3][0][0]) == float(t[3][0][0]) and k[3][1] == t[3][1]
    kd = kdata.StackDataset(x=list(a), y=list(b))
    assert kd[2] == {"x": 2.0, "y": 20}
    batch = next(iter(kdata.DataLoader(kd, batch_size=3)))
    assert batch["x"].tolist() == [0.0, 1.0, 2.0] and batch["y"].tolist() == [0, 10, 20]
    with pytest.raises(ValueError, match="Size mismatch"):
        kdata.StackDataset([1, 2], [1])


def test_weighted_random_sampler_frequencies_and_no_replacement():
    weights = [0.1, 0.0, 0.6, 0.3]
    kiln.manual_seed(0)
    draws = list(kdata.WeightedRandomSampler(weights, 20000))
    freq = np.bincount(draws, minlength=4) / len(draws)
    np.testing.assert_allclose(freq, weights, atol=0.015)
    once = list(kdata.WeightedRandomSampler([1.0, 2.0, 3.0, 4.0], 4, replacement=False,
                                            generator=kiln.Generator().manual_seed(1)))
    assert sorted(once) == [0, 1, 2, 3]
    assert len(kdata.WeightedRandomSampler(weights, 7)) == 7
    with pytest.raises(ValueError, match="num_samples"):
        kdata.WeightedRandomSampler(weights, 0)


@pytest.mark.parametrize("n,replicas,drop_last", [(10, 3, False), (10, 3, True), (9, 3, False),
                                                  (2, 4, False)])
def test_distributed_sampler_partitions_like_torch(n, replicas, drop_last):
    data = list(range(n))
    seen = []
    for rank in range(replicas):
        k = kdata.DistributedSampler(data, replicas, rank, shuffle=False, drop_last=drop_last)
        t = tdata.DistributedSampler(data, replicas, rank, shuffle=False, drop_last=drop_last)
        assert list(k) == list(t) and len(k) == len(t)
        seen += list(k)
    if not drop_last:
        assert set(seen) == set(data)


def test_distributed_sampler_shuffles_by_epoch_consistently_across_ranks():
    data = list(range(12))
    orders = []
    for epoch in (0, 1):
        ranks = []
        for rank in range(3):
            s = kdata.DistributedSampler(data, 3, rank, seed=5)
            s.set_epoch(epoch)
            ranks.append(list(s))
        assert sorted(sum(ranks, [])) == data          # a partition of the shuffled order
        orders.append(ranks)
    assert orders[0] != orders[1]
    with pytest.raises(ValueError, match="Invalid rank"):
        kdata.DistributedSampler(data, 2, 2)
