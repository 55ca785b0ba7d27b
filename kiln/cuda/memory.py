"""torch.cuda.memory's pools and raw allocations, on CuPy's memory pools.

- `MemPool()` is a memory pool of its own (a CuPy `MemoryPool`): `with use_mem_pool(pool):`
  makes the arrays made inside come from it, and `graph(g, pool=pool.id)` makes a CUDA graph
  capture allocate from it (kiln.cuda.graphs).
- `caching_allocator_alloc(size)` hands out raw device memory from the default pool (for
  interoperability: the int is a device pointer), kept until `caching_allocator_delete(ptr)`.
- `memory_stats_as_nested_dict()` nests `memory_stats()`'s dotted keys as PyTorch does;
  `reset_accumulated_memory_stats()` starts the peaks over.

The allocation history (`_record_memory_history`, `_snapshot`, `_dump_snapshot`) is in
`kiln.cuda.memory_history`. The pools are CuPy's; `get_allocator_backend()` says "native" (a caching allocator in the
process, as PyTorch's native one is), never "cudaMallocAsync".
"""

from __future__ import annotations

from contextlib import contextmanager

from kiln.cuda.graphs import _MemPool
from kiln.cuda.streams import _cupy

_RAW: dict = {}          # device pointer -> the CuPy memory `caching_allocator_alloc` handed out


class MemPool:
    """A memory pool of its own (torch.cuda.MemPool): allocations inside
    `with use_mem_pool(pool):` come from it; `pool.id` shares it with a graph capture."""

    def __init__(self, allocator=None, use_on_oom: bool = False, no_split: bool = False):
        if allocator is not None:
            raise NotImplementedError("torch.cuda.MemPool(allocator=...): kiln's pools are "
                                      "CuPy's; a pluggable allocator is not supported")
        self._handle = _MemPool()

    @property
    def id(self) -> _MemPool:
        """What `kiln.cuda.graph(g, pool=...)` takes to allocate from this pool."""
        return self._handle

    def used_bytes(self) -> int:
        return int(self._handle.pool.used_bytes())

    def __repr__(self) -> str:
        return f"<kiln.cuda.MemPool: {self._handle.pool.total_bytes()} bytes held>"


@contextmanager
def use_mem_pool(pool: MemPool, device=None):
    """Arrays made in the block (on this thread) come from `pool`."""
    cp = _cupy("use_mem_pool")
    if not isinstance(pool, MemPool):
        raise TypeError(f"use_mem_pool: expected a kiln.cuda.MemPool, got "
                        f"{type(pool).__name__}")
    with cp.cuda.using_allocator(pool._handle.pool.malloc):
        yield


def caching_allocator_alloc(size: int, device=None, stream=None) -> int:
    """`size` bytes of device memory from the default pool; returns the device pointer."""
    cp = _cupy("caching_allocator_alloc")
    from kiln.cuda import _index
    if stream is not None:
        raise NotImplementedError("caching_allocator_alloc(stream=...): CuPy's pool takes "
                                  "the current stream; make the stream current instead")
    with cp.cuda.Device(_index(device, "caching_allocator_alloc")):
        memory = cp.get_default_memory_pool().malloc(int(size))
    _RAW[int(memory.ptr)] = memory
    return int(memory.ptr)


def caching_allocator_delete(mem_ptr: int) -> None:
    """Give back memory from `caching_allocator_alloc`."""
    if _RAW.pop(int(mem_ptr), None) is None:
        raise ValueError(f"caching_allocator_delete: {mem_ptr:#x} was not allocated by "
                         "caching_allocator_alloc (or was deleted already)")


def memory_stats_as_nested_dict(device=None) -> dict:
    """`memory_stats()` with its dotted keys nested (`stats["allocated_bytes"]["all"]`)."""
    from kiln.cuda import memory_stats
    nested: dict = {}
    for key, value in memory_stats(device).items():
        *path, last = key.split(".")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[last] = value
    return nested


def reset_accumulated_memory_stats(device=None) -> None:
    """Start the counted peaks over (kiln keeps no other accumulated counters)."""
    from kiln.cuda import reset_peak_memory_stats
    reset_peak_memory_stats(device)


def get_allocator_backend() -> str:
    return "native"


from kiln.cuda.memory_history import (_dump_snapshot, _record_memory_history,  # noqa: E402,F401
                                      _snapshot, memory_snapshot)
