"""DistributedSampler: each rank's share of a dataset's indices, as PyTorch assigns them.

The indices (shuffled by a generator seeded with `seed + epoch`, the same on every rank) are
padded by repeating the first ones to a multiple of the number of replicas (or cut to one, with
`drop_last`), and rank r takes every num_replicas-th index starting at r.
"""

from __future__ import annotations

import math
from typing import Iterator, Sized

import kiln
import kiln.distributed as dist
from kiln.utils.data.sampler import Sampler


class DistributedSampler(Sampler):
    """torch.utils.data.distributed.DistributedSampler; call `set_epoch(e)` before each epoch
    so the shuffle changes between epochs."""

    def __init__(self, dataset: Sized, num_replicas: int | None = None,
                 rank: int | None = None, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False) -> None:
        if num_replicas is None or rank is None:
            if not dist.is_initialized():
                raise RuntimeError("DistributedSampler: pass num_replicas and rank, or call "
                                   "kiln.distributed.init_process_group() first")
            num_replicas = dist.get_world_size() if num_replicas is None else num_replicas
            rank = dist.get_rank() if rank is None else rank
        if rank >= num_replicas or rank < 0:
            raise ValueError(f"Invalid rank {rank}, rank should be in the interval "
                             f"[0, {num_replicas - 1}]")
        self.dataset, self.num_replicas, self.rank = dataset, num_replicas, rank
        self.epoch, self.drop_last, self.shuffle, self.seed = 0, drop_last, shuffle, seed
        n = len(dataset)
        if drop_last and n % num_replicas != 0:
            self.num_samples = math.ceil((n - num_replicas) / num_replicas)
        else:
            self.num_samples = math.ceil(n / num_replicas)
        self.total_size = self.num_samples * num_replicas

    def _permutation(self, n: int) -> list[int]:
        g = kiln.Generator()
        g.manual_seed(self.seed + self.epoch)
        return kiln.randperm(n, generator=g).tolist()

    def __iter__(self) -> Iterator[int]:
        n = len(self.dataset)
        indices = self._permutation(n) if self.shuffle else list(range(n))
        if not self.drop_last:
            padding = self.total_size - len(indices)
            if padding <= len(indices):
                indices += indices[:padding]
            else:
                indices += (indices * math.ceil(padding / len(indices)))[:padding]
        else:
            indices = indices[:self.total_size]
        assert len(indices) == self.total_size
        indices = indices[self.rank:self.total_size:self.num_replicas]
        assert len(indices) == self.num_samples
        return iter(indices)

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Seed the next shuffle with `seed + epoch` (every rank must pass the same epoch)."""
        self.epoch = epoch
