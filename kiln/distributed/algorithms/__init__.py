"""`kiln.distributed.algorithms` (torch.distributed.algorithms): the activation-checkpoint
wrappers FSDP scripts apply to their blocks (`_checkpoint.checkpoint_wrapper`)."""
from kiln.distributed.algorithms.join import Join, JoinHook, Joinable  # noqa: F401,E402
