"""Data loading (`torch.utils.data`): datasets, samplers, collation and the DataLoader."""

from kiln.utils.data.dataset import (ChainDataset, ConcatDataset, Dataset, IterableDataset,
                                     StackDataset, Subset, TensorDataset, random_split)
from kiln.utils.data.sampler import (BatchSampler, RandomSampler, Sampler, SequentialSampler,
                                     SubsetRandomSampler, WeightedRandomSampler)
from kiln.utils.data.collate import default_collate, default_convert
from kiln.utils.data.dataloader import DataLoader, WorkerInfo, get_worker_info

__all__ = ["ConcatDataset", "Dataset", "IterableDataset", "Subset", "TensorDataset",
           "random_split", "BatchSampler", "RandomSampler", "Sampler", "SequentialSampler",
           "SubsetRandomSampler", "default_collate", "default_convert", "DataLoader",
           "WorkerInfo", "get_worker_info", "ChainDataset", "StackDataset",
           "WeightedRandomSampler", "DistributedSampler"]
from kiln.utils.data.distributed import DistributedSampler  # noqa: F401,E402
