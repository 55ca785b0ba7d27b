"""`torch._inductor.utils.fresh_inductor_cache`: a clean kernel cache on disk for a block."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

from kiln.runtime import c_build


@contextlib.contextmanager
def fresh_inductor_cache(cache_entries: dict | None = None, dir: str | None = None,
                         delete: bool = True) -> Iterator[None]:
    """Inside the block kiln builds its kernels into an empty cache folder (KILN_CACHE_DIR
    points at a temporary directory, removed afterwards unless `delete=False`), so a compile
    there pays the cold-start cost, as PyTorch's does for inductor. Kernels this process has
    already loaded stay loaded. `cache_entries`, when given, is filled with nothing: kiln keeps
    no inductor cache entries to report. Kernels still building when the block ends are
    finished and loaded first, so what was compiled inside runs compiled afterwards."""
    before = os.environ.get("KILN_CACHE_DIR")
    root = tempfile.mkdtemp(prefix="kiln-fresh-cache-", dir=dir)
    os.environ["KILN_CACHE_DIR"] = root
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("KILN_CACHE_DIR", None)
        else:
            os.environ["KILN_CACHE_DIR"] = before
        if delete:
            c_build.load_builds_in(root)
            shutil.rmtree(root, ignore_errors=True)


fresh_cache = fresh_inductor_cache        # the name torch 2.8+ gives it too
