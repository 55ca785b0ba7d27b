"""`kiln.distributed.checkpoint` (torch.distributed.checkpoint): `save` / `load` (and
`async_save`, run synchronously) of sharded state dicts as a directory of per-rank files, what
a checkpoint holds (`Metadata`, from `FileSystemReader.read_metadata()`), and model and
optimizer state dicts of sharded models (`kiln.distributed.checkpoint.state_dict`)."""

from kiln.distributed.checkpoint import state_dict  # noqa: F401
from kiln.distributed.checkpoint.storage import load, save  # noqa: F401
from kiln.distributed.checkpoint.default_planner import (  # noqa: F401,E402
    DefaultLoadPlanner, DefaultSavePlanner)
from kiln.distributed.checkpoint.filesystem import (  # noqa: F401,E402
    FileSystemReader, FileSystemWriter)
from kiln.distributed.checkpoint.storage import load_state_dict, save_state_dict  # noqa: F401,E402
from kiln.distributed.checkpoint.storage import async_save  # noqa: F401,E402
from kiln.distributed.checkpoint.metadata import (  # noqa: F401,E402
    BytesStorageMetadata, ChunkStorageMetadata, Metadata, TensorStorageMetadata)
from kiln.distributed.checkpoint.planner import LoadPlanner, SavePlanner  # noqa: F401,E402
from kiln.distributed.checkpoint.filesystem import StorageReader, StorageWriter  # noqa: F401,E402
# what save/load raise for an unreadable checkpoint, under torch's name for their failures
from kiln.serialization import CheckpointError as CheckpointException  # noqa: F401,E402
