"""Choices measured on this machine's GPU, kept on disk between processes: one JSON file each
(convolution routes, Triton launch configurations) beside the kernel cache.

A file is read once per process; entries its reader cannot trust (a validator says which) are
skipped, and an unreadable or corrupt file counts as empty (the choices are measured again).
Saving merges into what is on disk now (another process may have added entries) and writes the
whole file to a temporary one renamed over it, so a reader never sees half of it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Callable


def tuning_root() -> Path:
    """The folder measured choices are kept in (`KILN_CACHE_DIR`, default `~/.cache/kiln`)."""
    return Path(os.environ.get("KILN_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "kiln"))


def load_choices(path: Path, valid: Callable[[object], bool]) -> dict:
    """The entries of the file at `path` that `valid` accepts; {} when it is missing, not
    JSON, or not a JSON object."""
    try:
        saved = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(saved, dict):
        return {}
    return {k: v for k, v in saved.items() if valid(v)}


def save_choices(path: Path, entries: dict, valid: Callable[[object], bool]) -> None:
    """Write `entries` into the file at `path`, over the valid ones already there."""
    path = Path(path)
    merged = load_choices(path, valid)
    merged.update(entries)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(merged, indent=1, sort_keys=True))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


__all__ = ["load_choices", "save_choices", "tuning_root"]
