"""`kiln.distributed.algorithms.ddp_comm_hooks` (torch's): functions DistributedDataParallel
calls, through `register_comm_hook(state, hook)`, to reduce each gradient bucket."""

from kiln.distributed.algorithms.ddp_comm_hooks import default_hooks  # noqa: F401
