"""`kiln.distributed.algorithms` (torch.distributed.algorithms): the activation-checkpoint
wrappers FSDP scripts apply to their blocks (`_checkpoint.checkpoint_wrapper`)."""
