"""What a distributed checkpoint holds, as torch.distributed.checkpoint.metadata describes it:
`Metadata.state_dict_metadata` maps each flattened key to a `TensorStorageMetadata` (dtype,
global size, the chunks the ranks wrote) or a `BytesStorageMetadata` (any other value). kiln
writes its own `.metadata` (JSON, see kiln.distributed.checkpoint.storage); these classes are
what `save` returns and `FileSystemReader.read_metadata()` reads back from it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field

import kiln
from kiln.distributed.tensor.placement import chunk_bounds
from kiln.serialization import CheckpointError
from kiln.tracer.tensor import Size

FORMAT = "kiln-dcp-1"


@dataclass
class ChunkStorageMetadata:
    """One saved piece of a tensor: where it starts in the global tensor and its size."""
    offsets: Size
    sizes: Size


@dataclass
class TensorProperties:
    dtype: object = None
    layout: object = None
    requires_grad: bool = False
    memory_format: object = None
    pin_memory: bool = False


@dataclass
class TensorStorageMetadata:
    properties: TensorProperties
    size: Size
    chunks: list[ChunkStorageMetadata]


@dataclass
class BytesStorageMetadata:
    """A saved value that is not a tensor."""


@dataclass
class Metadata:
    state_dict_metadata: dict = field(default_factory=dict)
    planner_data: object = None
    storage_data: object = None
    storage_meta: object = None
    version: str | None = None


def read_json(path: str, what: str) -> dict:
    """The `.metadata` JSON of the checkpoint directory `path`, checked to be kiln's."""
    meta_path = os.path.join(path, ".metadata")
    try:
        with open(meta_path) as f:
            metadata = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"kiln.distributed.checkpoint.{what}: {meta_path} is missing: "
                              "not a checkpoint directory, or its save did not finish") from None
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"kiln.distributed.checkpoint.{what}: {meta_path} is corrupt "
                              f"({exc})") from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(f"kiln.distributed.checkpoint.{what}: {meta_path} is not a kiln "
                              f"distributed checkpoint (format {metadata.get('format')!r})")
    return metadata


def from_json(metadata: dict) -> Metadata:
    """torch's description of the checkpoint whose kiln `.metadata` is `metadata`."""
    world, described = metadata["world_size"], {}
    for key, entry in metadata["entries"].items():
        if entry["kind"] == "value":
            described[key] = BytesStorageMetadata()
            continue
        shape = list(entry["shape"])
        chunks = []
        dim = entry.get("dim") if entry["kind"] == "dtensor" else None
        for r in range(world if dim is not None else 1):
            offsets, sizes = [0] * len(shape), list(shape)
            if dim is not None:
                start, stop, _ = chunk_bounds(shape[dim], world, r)
                if stop <= start:
                    continue
                offsets[dim], sizes[dim] = start, stop - start
            chunks.append(ChunkStorageMetadata(Size(offsets), Size(sizes)))
        properties = TensorProperties(dtype=getattr(kiln, entry["dtype"]), layout=kiln.strided,
                                      memory_format=kiln.contiguous_format)
        described[key] = TensorStorageMetadata(properties, Size(shape), chunks)
    return Metadata(described, version=metadata["format"])
