"""kiln keeps freed host memory for reuse (glibc), unless the user tuned malloc or opted out."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from kiln.runtime import host_memory

# frees and reallocates 24 MB and 48 MB (past glibc's largest mmap threshold) ten times,
# touching every page, and prints the page faults taken after the first round (the first fills
# the heap either way)
SCRIPT = """
import resource, numpy as np
import kiln
from kiln.runtime import host_memory
print(host_memory.keep_freed_memory())
a = np.ones(3 << 20); b = np.ones(6 << 20); del a, b
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    a = np.ones(3 << 20); b = np.ones(6 << 20)
    del a, b
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_update: dict) -> tuple[str, int]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_update)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0], int(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_memory_is_reused_without_page_faults():
    applied, kept = _faults({})
    if applied != "True":
        pytest.skip("not glibc")
    off, returned = _faults({"KILN_KEEP_FREED_MEMORY": "0"})
    assert off == "False"
    # 10 rounds of 72 MB: a fault per page touched again when the memory goes back to the
    # system each round (at least 36 a round even in 2 MiB transparent huge pages, 18,432 in
    # 4 KiB pages: which one a machine gives varies), next to none when it is kept
    assert returned >= 10 * 36 and kept * 5 < returned, (returned, kept)


def test_the_users_malloc_settings_win(monkeypatch):
    monkeypatch.setattr(host_memory, "_applied", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert host_memory.keep_freed_memory() is False
