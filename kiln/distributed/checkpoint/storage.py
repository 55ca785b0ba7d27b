"""`kiln.distributed.checkpoint.save` / `load` (torch's dcp.save / dcp.load): a state dict of
DTensors saved as a directory, each rank writing only its own shards, and loaded back on any
number of ranks (each reads the rows it needs, whichever files hold them).

Layout of `checkpoint_id/`:
  `__<rank>_0.kiln`  that rank's shards (and, from rank 0, the plain tensors and non-tensor
                     values), written with `kiln.save`: safetensors data, no pickle;
  `.metadata`        JSON, written by rank 0 last: the world size and, per key, what it is
                     (a DTensor's global shape, dtype and shard dim; a tensor; a value).
Nested dicts (a model's and an optimizer's state dict under one dict) are flattened to
dot-joined keys, as torch does.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import warnings

import kiln
from kiln import Tensor
from kiln.distributed import process_group as pg
from kiln.distributed.checkpoint.default_planner import DefaultLoadPlanner, DefaultSavePlanner
from kiln.distributed.checkpoint.filesystem import (  # noqa: F401 - torch's names here
    FileSystemReader, FileSystemWriter, StorageReader, StorageWriter)
from kiln.distributed.checkpoint.metadata import FORMAT, Metadata, from_json, read_json
from kiln.distributed.tensor.api import DTensor, local_chunk
from kiln.distributed.tensor.placement import chunk_bounds
from kiln.serialization import CheckpointError


def save(state_dict: dict, *, checkpoint_id: str | os.PathLike | None = None, storage_writer=None,
         planner=None, process_group=None, no_dist: bool = False) -> Metadata:
    """Save `state_dict` under the directory `checkpoint_id` (every rank must call). Returns
    what was written, as torch's Metadata."""
    path = _directory("save", checkpoint_id, storage_writer, planner, process_group)
    rank, world = _rank_world(no_dist)
    mine, entries = {}, {}
    for key, value in _flatten(state_dict).items():
        if isinstance(value, DTensor):
            _check_world_mesh("save", key, value, world)
            placement = value.placements[0]
            entries[key] = {"kind": "dtensor", "shape": list(value.global_shape),
                            "dtype": value.dtype.name,
                            "dim": placement.dim if placement.is_shard() else None}
            if placement.is_shard() or rank == 0:
                mine[key] = value.to_local().detach().clone()
        elif isinstance(value, Tensor):
            entries[key] = {"kind": "tensor", "shape": list(value.shape),
                            "dtype": value.dtype.name}
            if rank == 0:
                mine[key] = value.detach().clone()
        else:
            entries[key] = {"kind": "value"}
            if rank == 0:
                mine[key] = value
    os.makedirs(path, exist_ok=True)        # after the checks: a refused save leaves nothing
    kiln.save(mine, os.path.join(path, f"__{rank}_0.kiln"))
    metadata = {"format": FORMAT, "world_size": world, "entries": entries}
    _barrier(no_dist)                      # every rank's file is in place before the metadata
    if rank == 0:
        tmp = os.path.join(path, ".metadata.tmp")
        with open(tmp, "w") as f:
            json.dump(metadata, f, indent=1)
        os.replace(tmp, os.path.join(path, ".metadata"))
    _barrier(no_dist)
    return from_json(metadata)


def async_save(state_dict: dict, *, checkpoint_id: str | os.PathLike | None = None,
               storage_writer=None, planner=None, process_group=None,
               async_checkpointer_type=None, async_stager=None, no_dist: bool = False,
               use_collectives: bool = True) -> concurrent.futures.Future:
    """torch's dcp.async_save, run synchronously: the save is done (every rank must call)
    when this returns, and the returned Future already holds its Metadata, or the error it
    raised. (torch saves in a thread; kiln's save talks to the other ranks through MPI, which
    must not run beside the training loop's own collectives.)"""
    future: concurrent.futures.Future = concurrent.futures.Future()
    try:
        future.set_result(save(state_dict, checkpoint_id=checkpoint_id,
                               storage_writer=storage_writer, planner=planner,
                               process_group=process_group, no_dist=no_dist))
    except Exception as exc:       # torch's Future carries the save's error to result()
        future.set_exception(exc)
    return future


def load(state_dict: dict, *, checkpoint_id: str | os.PathLike | None = None, storage_reader=None,
         planner=None, process_group=None, no_dist: bool = False) -> None:
    """Fill `state_dict` in place from the checkpoint: each DTensor gets this rank's rows
    (the saving world size may differ), tensors are copied into, other values replaced."""
    path = _directory("load", checkpoint_id, storage_reader, planner, process_group)
    rank, world = _rank_world(no_dist)
    metadata = read_json(path, "load")
    saved_world, entries = metadata["world_size"], metadata["entries"]
    files: dict[int, dict] = {}

    def read(r: int) -> dict:
        if r not in files:
            files[r] = kiln.load(os.path.join(path, f"__{r}_0.kiln"))
        return files[r]

    with kiln.no_grad():
        for key, (parent, name, target) in _leaves(state_dict).items():
            entry = entries.get(key)
            if entry is None:
                raise CheckpointError(f"kiln.distributed.checkpoint.load: {key!r} is not in "
                                      f"the checkpoint {path}")
            if entry["kind"] == "value":
                parent[name] = read(0)[key]
                continue
            if not isinstance(target, Tensor):
                raise TypeError(f"kiln.distributed.checkpoint.load: {key!r} is a tensor in the "
                                f"checkpoint but {type(target).__name__} in the state dict")
            if isinstance(target, DTensor):
                _check_world_mesh("load", key, target, world)
            shape = tuple(target.global_shape if isinstance(target, DTensor) else target.shape)
            if tuple(entry["shape"]) != shape:
                raise CheckpointError(f"kiln.distributed.checkpoint.load: {key!r} is "
                                      f"{entry['shape']} in the checkpoint, {list(shape)} in "
                                      "the state dict")
            if entry["kind"] == "dtensor" and entry["dim"] is not None:
                full = _rows(entry, key, saved_world, read, target, world, rank)
            else:
                full = read(0)[key]
            data = full.to(target.device).to(target.dtype)._data
            if isinstance(target, DTensor) and target.placements[0].is_shard():
                if data.shape != target._data.shape:     # saved sharded along another dim
                    data = local_chunk(data, target.placements[0].dim, world, rank)
            target._data[...] = data
            target._version[0] += 1


def _rows(entry: dict, key: str, saved_world: int, read, target, world: int, rank: int):
    """The saved DTensor's rows along its shard dim that `target` needs on this rank."""
    dim, size = entry["dim"], entry["shape"][entry["dim"]]
    if isinstance(target, DTensor) and target.placements[0].is_shard() and \
            target.placements[0].dim % len(entry["shape"]) == dim:
        start, stop, _ = chunk_bounds(size, world, rank)
    else:
        start, stop = 0, size
    pieces = []
    for r in range(saved_world):
        lo, hi, _ = chunk_bounds(size, saved_world, r)
        if hi > max(lo, start) and lo < stop:
            piece = read(r)[key]
            index = [slice(None)] * len(entry["shape"])
            index[dim] = slice(max(lo, start) - lo, min(hi, stop) - lo)
            pieces.append(piece[tuple(index)])
    if not pieces:
        shape = list(entry["shape"])
        shape[dim] = 0
        return kiln.empty(*shape, dtype=getattr(kiln, entry["dtype"]))
    return kiln.cat(pieces, dim) if len(pieces) > 1 else pieces[0]


def _check_world_mesh(what: str, key: str, value: DTensor, world: int) -> None:
    """The format splits a DTensor's rows by global rank: its mesh must be all ranks, 1-D."""
    if any(p.is_partial() for p in value.placements):
        raise NotImplementedError(f"kiln.distributed.checkpoint.{what}: {key!r} is a Partial "
                                  "DTensor (unreduced terms); redistribute it to Replicate() or "
                                  "Shard(dim) first")
    mesh = value.device_mesh
    if mesh.ndim != 1 or mesh.size() != world:
        raise NotImplementedError(
            f"kiln.distributed.checkpoint.{what}: {key!r} is a DTensor on {mesh!r} with "
            f"placements {value.placements}; kiln's dcp files hold DTensors over the 1-D mesh "
            "of all ranks only. For 2-D meshes (FSDP with tensor parallelism, HSDP) or a "
            "sub-mesh, save a full state dict (get_model_state_dict(model, options="
            "StateDictOptions(full_state_dict=True))) and load it with set_model_state_dict")


def _flatten(tree, prefix: str = "") -> dict:
    return {key: leaf for key, (_, _, leaf) in _leaves(tree, prefix).items()}


def _leaves(tree: dict, prefix: str = "") -> dict:
    """Dot-joined key -> (the dict or list holding it, its key there, the leaf). Lists are
    walked only when they hold tensors (an optimizer's param_groups are one value)."""
    out = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for name, value in items:
        key = f"{prefix}{name}"
        if isinstance(value, dict) or (isinstance(value, list) and _has_tensor(value)):
            out.update(_leaves(value, key + "."))
        else:
            out[key] = (tree, name, value)
    return out


def _has_tensor(value) -> bool:
    if isinstance(value, Tensor):
        return True
    if isinstance(value, dict):
        return any(_has_tensor(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(_has_tensor(v) for v in value)
    return False


def _rank_world(no_dist: bool) -> tuple[int, int]:
    if no_dist or not pg.is_initialized():
        return 0, 1
    return pg.get_rank(), pg.get_world_size()


def _barrier(no_dist: bool) -> None:
    if not no_dist and pg.is_initialized():
        from kiln.distributed.collectives import barrier
        barrier()


def save_state_dict(state_dict: dict, storage_writer, process_group=None,
                    coordinator_rank: int = 0, no_dist: bool = False, planner=None) -> dict:
    """The deprecated spelling of `save(state_dict, storage_writer=...)`."""
    warnings.warn("`save_state_dict` is deprecated and will be removed in future versions. "
                  "Please use `save` instead.", FutureWarning, stacklevel=2)
    return save(state_dict, storage_writer=storage_writer, process_group=process_group,
                no_dist=no_dist, planner=planner)


def load_state_dict(state_dict: dict, storage_reader, process_group=None,
                    coordinator_rank: int = 0, no_dist: bool = False, planner=None) -> None:
    """The deprecated spelling of `load(state_dict, storage_reader=...)`."""
    warnings.warn("`load_state_dict` is deprecated and will be removed in future versions. "
                  "Please use `load` instead.", FutureWarning, stacklevel=2)
    load(state_dict, storage_reader=storage_reader, process_group=process_group,
         no_dist=no_dist, planner=planner)


def _directory(what: str, checkpoint_id, storage, planner, process_group) -> str:
    """The checkpoint directory: `checkpoint_id`, or the one a FileSystemWriter/Reader names.
    Default planners are accepted (kiln plans as they do); other storages, planners and
    process groups are refused."""
    if storage is not None and type(storage) not in (FileSystemWriter, FileSystemReader):
        raise ValueError(f"kiln.distributed.checkpoint.{what}: only FileSystemWriter / "
                         f"FileSystemReader storages are supported, got "
                         f"{type(storage).__name__}; or pass checkpoint_id=<directory>")
    if planner is not None and type(planner) not in (DefaultSavePlanner, DefaultLoadPlanner):
        raise ValueError(f"kiln.distributed.checkpoint.{what}: custom planners are not "
                         f"supported (got {type(planner).__name__}); kiln plans as the default "
                         "planners do")
    if process_group is not None and process_group is not pg.GroupMember.WORLD:
        raise ValueError(f"kiln.distributed.checkpoint.{what}: only the default process group "
                         "is supported")
    if checkpoint_id is None and storage is None:
        raise ValueError(f"kiln.distributed.checkpoint.{what}: pass checkpoint_id=<directory> "
                         "or a FileSystemWriter/FileSystemReader")
    return os.fspath(checkpoint_id if checkpoint_id is not None else storage.path)
