"""`kiln.distributed.checkpoint` (torch.distributed.checkpoint): `save` / `load` of sharded
state dicts as a directory of per-rank files, and model and optimizer state dicts of sharded
models (`kiln.distributed.checkpoint.state_dict`)."""

from kiln.distributed.checkpoint import state_dict  # noqa: F401
from kiln.distributed.checkpoint.storage import load, save  # noqa: F401
