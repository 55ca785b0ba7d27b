"""How a DTensor's global tensor is laid out over a mesh dimension: `Shard(dim)` (split along
`dim` as `torch.chunk` splits it), `Replicate()` (every rank holds all of it) or
`Partial(reduce_op)` (every rank holds a term; the global tensor is their reduction)."""

from __future__ import annotations

from dataclasses import dataclass


class Placement:
    """Base class of the placements (torch.distributed.tensor.Placement)."""

    def is_shard(self, dim: int | None = None) -> bool:
        return False

    def is_replicate(self) -> bool:
        return False

    def is_partial(self, reduce_op: str | None = None) -> bool:
        return False


@dataclass(frozen=True)
class Shard(Placement):
    """The global tensor split along `dim` into world-size chunks, rank r holding chunk r. As
    torch.chunk: chunks of ceil(size / world) rows, so the last ranks may get fewer or none."""

    dim: int = 0

    def is_shard(self, dim: int | None = None) -> bool:
        return dim is None or dim == self.dim

    def __repr__(self) -> str:
        return f"Shard(dim={self.dim})"

    def __str__(self) -> str:
        return f"S({self.dim})"


@dataclass(frozen=True)
class _StridedShard(Shard):
    """FSDP's shard of a tensor-parallel piece (torch's _StridedShard): on a (dp, tp) mesh
    with the tp placement Shard(dim) too, the dp ranks split each tp rank's piece, not the
    global tensor, so the global split is strided. `split_factor`: the tp shards of `dim`."""

    split_factor: int = 1

    def __repr__(self) -> str:
        return f"_StridedShard(dim={self.dim}, sf={self.split_factor})"

    def __str__(self) -> str:
        return f"_S({self.dim}, {self.split_factor})"


@dataclass(frozen=True)
class Replicate(Placement):
    """Every rank holds the whole tensor."""

    def is_replicate(self) -> bool:
        return True

    def __repr__(self) -> str:
        return "Replicate()"

    def __str__(self) -> str:
        return "R"


@dataclass(frozen=True)
class Partial(Placement):
    """Every rank holds a tensor of the global shape, and the global tensor is their reduction
    over the mesh dimension by `reduce_op` ("sum", "avg", "max" or "min"): a partial sum
    waiting for its all-reduce. `full_tensor()` or `redistribute` to Replicate/Shard reduces."""

    reduce_op: str = "sum"

    def __post_init__(self):
        if self.reduce_op not in ("sum", "avg", "max", "min"):
            raise NotImplementedError(f"Partial: kiln supports reduce_op 'sum', 'avg', 'max' and "
                                      f"'min', got {self.reduce_op!r}")

    def is_partial(self, reduce_op: str | None = None) -> bool:
        return reduce_op is None or reduce_op == self.reduce_op

    def __repr__(self) -> str:
        return f"Partial({self.reduce_op})"

    def __str__(self) -> str:
        return f"P({self.reduce_op})"


def chunk_bounds(size: int, world: int, rank: int) -> tuple[int, int, int]:
    """(start, stop, chunk) of rank `rank`'s rows when `size` rows are split as torch.chunk
    splits them into `world` chunks: every chunk but the last ones has `chunk` rows."""
    chunk = -(-size // world) if size else 0
    start = min(rank * chunk, size)
    return start, min(start + chunk, size), chunk
