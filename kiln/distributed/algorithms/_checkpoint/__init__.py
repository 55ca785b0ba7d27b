"""`kiln.distributed.algorithms._checkpoint` (torch's path): `checkpoint_wrapper` and
`apply_activation_checkpointing`."""
