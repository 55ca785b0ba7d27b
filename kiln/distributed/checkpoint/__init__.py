"""`kiln.distributed.checkpoint` (torch.distributed.checkpoint): model and optimizer state
dicts of sharded models (`kiln.distributed.checkpoint.state_dict`)."""

from kiln.distributed.checkpoint import state_dict  # noqa: F401
