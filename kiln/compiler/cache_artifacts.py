"""`torch.compiler.save_cache_artifacts` / `load_cache_artifacts` (the "mega-cache"): the
compiled programs of this process as bytes, to put into another machine's cache before it
compiles the same functions.

kiln's artifacts are the compiled-program entries (`kiln.program_cache`): the optimized graphs,
fusion schedules, executor layouts and the rendered C kernels' source. The kernels' shared
objects are not packed: they are built for the CPU they run on (`-march=native`), so a loading
machine compiles the C source again, once, into its own kernel cache; it skips tracing's
passes, fusion and rendering. An entry is keyed by the kiln version and sources that made it,
so artifacts from another kiln are loaded but never used. The bytes are JSON (never pickle),
but they hold C source that is compiled and run: load only artifacts you trust, as you would
a cache directory.
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict
from dataclasses import dataclass, field

FORMAT = "kiln.compiler.cache_artifacts"
VERSION = 1


@dataclass
class CacheInfo:
    """What was saved or loaded: artifact kind -> keys (torch's CacheInfo). kiln has one kind,
    `compiled_program`; torch's kinds (inductor, autotune, aot_autograd, pgo, precompile) are
    there and empty."""

    artifacts: defaultdict = field(default_factory=lambda: defaultdict(list))

    @property
    def compiled_program_artifacts(self) -> list:
        return self.artifacts["compiled_program"]

    inductor_artifacts = autotune_artifacts = aot_autograd_artifacts = property(
        lambda self: [])
    pgo_artifacts = precompile_artifacts = property(lambda self: [])

    def empty(self) -> bool:
        return not any(self.artifacts.values())


def save_cache_artifacts() -> tuple[bytes, CacheInfo] | None:
    """Every compiled program this process built or read from its cache, as bytes and the
    CacheInfo naming them; None when there is none (nothing compiled yet, or the cache could
    not be written)."""
    from kiln import program_cache
    info = CacheInfo()
    entries = {}
    for key in program_cache.USED:
        payload = program_cache.read_entry(key)
        if payload is not None:
            entries[key] = base64.b64encode(payload).decode("ascii")
            info.artifacts["compiled_program"].append(key)
    if not entries:
        return None
    doc = {"format": FORMAT, "version": VERSION, "programs": entries}
    return json.dumps(doc).encode(), info


def load_cache_artifacts(serialized_artifacts: bytes) -> CacheInfo | None:
    """Put what `save_cache_artifacts` returned into this machine's cache: later compiles of
    the same functions (by the same kiln) read their programs from it. Returns the CacheInfo
    of what was loaded, None when nothing was.

    Raises:
        ValueError: the bytes are not kiln's cache artifacts.
    """
    try:
        doc = json.loads(bytes(serialized_artifacts))
        if doc.get("format") != FORMAT:
            raise ValueError("not kiln's cache artifacts")
        if doc.get("version") != VERSION:
            raise ValueError(f"format version {doc.get('version')!r}; this kiln reads "
                             f"{VERSION}")
        entries = {str(k): base64.b64decode(v, validate=True)
                   for k, v in doc["programs"].items()}
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        raise ValueError(f"load_cache_artifacts: the bytes are not what "
                         f"save_cache_artifacts returned ({e})") from None
    from kiln import program_cache
    info = CacheInfo()
    for key, payload in entries.items():
        if program_cache.write_entry(key, payload):
            info.artifacts["compiled_program"].append(key)
    return None if info.empty() else info
