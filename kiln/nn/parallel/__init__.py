"""`kiln.nn.parallel`: data parallelism (DistributedDataParallel across ranks, DataParallel)."""

from kiln.nn.parallel.distributed import DataParallel, DistributedDataParallel  # noqa: F401

from kiln.nn.parallel.data_parallel import data_parallel  # noqa: F401

__all__ = ["DataParallel", "DistributedDataParallel", "data_parallel"]
