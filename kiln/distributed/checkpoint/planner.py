"""`SavePlanner` / `LoadPlanner` (torch.distributed.checkpoint.planner): the base classes of the
default planners, for scripts that name them in type hints or isinstance checks. kiln plans
every save and load as torch's default planners do; `save` / `load` refuse a planner of a
script's own (a subclass), since kiln would not call its methods."""


class SavePlanner:
    """What decides which rank writes which piece of a state dict (kiln: the defaults)."""


class LoadPlanner:
    """What decides which rank reads which piece of a checkpoint (kiln: the defaults)."""
