"""`kiln.distributed.checkpoint` (torch.distributed.checkpoint): `save` / `load` of sharded
state dicts as a directory of per-rank files, and model and optimizer state dicts of sharded
models (`kiln.distributed.checkpoint.state_dict`)."""

from kiln.distributed.checkpoint import state_dict  # noqa: F401
from kiln.distributed.checkpoint.storage import load, save  # noqa: F401
from kiln.distributed.checkpoint.default_planner import (  # noqa: F401,E402
    DefaultLoadPlanner, DefaultSavePlanner)
from kiln.distributed.checkpoint.filesystem import (  # noqa: F401,E402
    FileSystemReader, FileSystemWriter)
from kiln.distributed.checkpoint.storage import load_state_dict, save_state_dict  # noqa: F401,E402
