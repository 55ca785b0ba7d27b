"""`kiln.nn.parallel`: data parallelism (DistributedDataParallel across ranks, DataParallel)."""

from kiln.nn.parallel.distributed import DataParallel, DistributedDataParallel  # noqa: F401

__all__ = ["DataParallel", "DistributedDataParallel"]
