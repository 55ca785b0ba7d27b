"""DistributedSampler's index assignment against torch's, rank by rank. kiln's random
permutations are not torch's bit for bit, so the shuffled cases give both samplers torch's
permutation and compare what each does with it (padding, dropping, striding)."""

import numpy as np
import pytest
import torch
from torch.utils.data.distributed import DistributedSampler as TorchSampler

import kiln
from kiln.utils.data.distributed import DistributedSampler


@pytest.mark.parametrize("n", [1, 2, 5, 10, 11, 16, 17])
@pytest.mark.parametrize("replicas", [1, 2, 3, 4, 7])
@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("shuffle", [False, True])
def test_indices_match_torch(n, replicas, drop_last, shuffle, monkeypatch):
    data = list(range(n))
    if shuffle:
        monkeypatch.setattr(DistributedSampler, "_permutation", lambda self, k: torch.randperm(
            k, generator=torch.Generator().manual_seed(self.seed + self.epoch)).tolist())
    for epoch in (0, 3):
        for rank in range(replicas):
            ours = DistributedSampler(data, replicas, rank, shuffle=shuffle, seed=7,
                                      drop_last=drop_last)
            ref = TorchSampler(data, replicas, rank, shuffle=shuffle, seed=7,
                               drop_last=drop_last)
            ours.set_epoch(epoch)
            ref.set_epoch(epoch)
            assert list(ours) == list(ref)
            assert len(ours) == len(ref)


def test_kiln_shuffle_agrees_across_ranks_and_changes_with_epoch():
    data = list(range(23))
    samplers = [DistributedSampler(data, 3, r, seed=1) for r in range(3)]
    epoch0 = [list(s) for s in samplers]
    assert set(sum(epoch0, [])) == set(range(23))      # every index visited
    assert len(sum(epoch0, [])) == 24                     # one repeated to pad
    again = [list(DistributedSampler(data, 3, r, seed=1)) for r in range(3)]
    assert again == epoch0                                # same seed and epoch: same order
    for s in samplers:
        s.set_epoch(1)
    assert [list(s) for s in samplers] != epoch0


def test_rank_out_of_range_and_missing_group():
    with pytest.raises(ValueError, match="Invalid rank 2"):
        DistributedSampler(list(range(4)), num_replicas=2, rank=2)
    with pytest.raises(RuntimeError, match="init_process_group"):
        DistributedSampler(list(range(4)))


def test_works_with_the_dataloader():
    ds = kiln.utils.data.TensorDataset(kiln.arange(10))
    loader = kiln.utils.data.DataLoader(ds, batch_size=2,
                                        sampler=DistributedSampler(ds, 2, 1, shuffle=False))
    got = np.concatenate([b[0].numpy() for b in loader])
    np.testing.assert_array_equal(got, [1, 3, 5, 7, 9])
