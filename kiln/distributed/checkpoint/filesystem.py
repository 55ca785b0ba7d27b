"""`FileSystemWriter` / `FileSystemReader` (torch.distributed.checkpoint.filesystem): the
storage objects torch's older checkpoint scripts pass to `save_state_dict` / `load_state_dict`
(or `save` / `load`). In kiln they name the checkpoint directory; the layout is kiln's own
(see kiln.distributed.checkpoint.storage), and the tuning arguments are accepted and unused."""

from __future__ import annotations

import os


class StorageWriter:
    """Where `save` writes (torch.distributed.checkpoint.StorageWriter); kiln writes to a
    directory only, through FileSystemWriter, and refuses a storage of a script's own."""


class StorageReader:
    """Where `load` reads (torch.distributed.checkpoint.StorageReader); kiln reads a directory
    only, through FileSystemReader."""


class FileSystemWriter(StorageWriter):
    """Save into the directory `path` (created if missing)."""

    def __init__(self, path: str | os.PathLike, single_file_per_rank: bool = True,
                 sync_files: bool = True, thread_count: int = 1,
                 per_thread_copy_ahead: int = 10_000_000,
                 cache_staged_state_dict: bool = False, overwrite: bool = True, **kwargs):
        self.path = os.fspath(path)
        self.overwrite = overwrite

    @property
    def checkpoint_id(self) -> str:
        return self.path

    def __repr__(self) -> str:
        return f"FileSystemWriter({self.path!r})"


class FileSystemReader(StorageReader):
    """Load from the checkpoint directory `path`."""

    def __init__(self, path: str | os.PathLike, **kwargs):
        self.path = os.fspath(path)

    @property
    def checkpoint_id(self) -> str:
        return self.path

    def read_metadata(self):
        """What the checkpoint holds: a `Metadata` (keys, dtypes, global sizes, chunks)."""
        from kiln.distributed.checkpoint.metadata import from_json, read_json
        return from_json(read_json(self.path, "FileSystemReader.read_metadata"))

    def __repr__(self) -> str:
        return f"FileSystemReader({self.path!r})"
