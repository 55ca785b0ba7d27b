"""`torch.distributed.elastic.multiprocessing`: the `errors` module (`record`)."""

from kiln.distributed.elastic.multiprocessing import errors  # noqa: F401
