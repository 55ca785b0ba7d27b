"""`DTensor`: a kiln Tensor holding this rank's piece of a global tensor spread over a
`DeviceMesh` as its `placements` say (`Shard(dim)` or `Replicate()`), with `full_tensor()`,
`to_local()`, `from_local` and `distribute_tensor`.

Unlike torch's DTensor, which reports the global shape and runs every op through sharding
propagation, a kiln DTensor *is* its local shard to every tensor op: `.shape`, arithmetic and
optimizers see the local rows. That is what FSDP needs (each rank's optimizer updates its shard
of the parameters and their state); `full_tensor()` and `global_shape` give the global view.
"""

from __future__ import annotations

from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed import process_group as pg
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh
from kiln.distributed.tensor.placement import Placement, Replicate, Shard, chunk_bounds
from kiln.ir import dtypes as dt
from kiln.tracer.tensor import Size


class DTensor(Tensor):
    """A tensor distributed over a 1-D DeviceMesh; its data is this rank's local piece."""

    __slots__ = ("_mesh", "_placements", "_global_shape")

    def __init__(self, *args, **kwargs):
        raise TypeError("DTensor: build one with distribute_tensor(tensor, mesh, placements) or "
                        "DTensor.from_local(local_tensor, mesh, placements)")

    @staticmethod
    def _wrap(data, dtype: dt.DType, device, mesh: DeviceMesh, placements: tuple,
              global_shape: tuple[int, ...], cls: type | None = None,
              requires_grad: bool = False) -> "DTensor":
        """A DTensor (or subclass `cls`) over the array `data`, no copy."""
        t = Tensor._make(data, dtype, device, cls or DTensor)
        t._mesh, t._placements, t._global_shape = mesh, tuple(placements), tuple(global_shape)
        t.requires_grad = requires_grad
        return t

    # ------------------------------------------------------------------ metadata
    @property
    def device_mesh(self) -> DeviceMesh:
        return self._mesh

    @property
    def placements(self) -> tuple[Placement, ...]:
        return self._placements

    @property
    def global_shape(self) -> Size:
        """The shape of the whole tensor (torch's DTensor.shape; kiln's `.shape` is local)."""
        return Size(self._global_shape)

    def to_local(self, *, grad_placements=None) -> Tensor:
        """This rank's piece as a plain tensor sharing its memory (and version counter)."""
        out = Tensor._make(self._data, self.dtype, self.device)
        out._version = self._version
        return out

    def full_tensor(self, *, grad_placements=None) -> Tensor:
        """The global tensor, gathered from every rank (a collective: every rank must call it)."""
        return Tensor._make(_gather_global(self), self.dtype, self.device)

    def redistribute(self, device_mesh: DeviceMesh | None = None,
                     placements=None, *, async_op: bool = False) -> "DTensor":
        """The same global tensor with other placements (Shard <-> Replicate)."""
        placements = _check_placements("redistribute", placements or self._placements)
        full = Tensor._make(_gather_global(self), self.dtype, self.device)
        return _distribute(full, device_mesh or self._mesh, placements, None)

    @staticmethod
    def from_local(local_tensor: Tensor, device_mesh: DeviceMesh | None = None,
                   placements=None, *, run_check: bool = False, shape=None,
                   stride=None) -> "DTensor":
        """A DTensor whose piece on this rank is `local_tensor` (shared, not copied). Without
        `shape`, Shard(d) pieces are taken to be equal: the global size is world x local."""
        if not isinstance(local_tensor, Tensor):
            raise TypeError(f"DTensor.from_local: expected a kiln.Tensor, got "
                            f"{type(local_tensor).__name__}")
        mesh = device_mesh or init_device_mesh(local_tensor.device.type, (pg.get_world_size(),))
        placements = _check_placements("DTensor.from_local", placements or (Replicate(),))
        if shape is None:
            shape = list(local_tensor.shape)
            if placements[0].is_shard():
                shape[_dim(placements[0].dim, local_tensor.ndim)] *= mesh.size()
        return DTensor._wrap(local_tensor._data, local_tensor.dtype, local_tensor.device, mesh,
                             placements, tuple(shape), requires_grad=local_tensor.requires_grad)

    def __repr__(self) -> str:
        local = Tensor.__repr__(Tensor._make(self._data, self.dtype, self.device))
        return (f"DTensor(local_tensor={local}, device_mesh={self._mesh!r}, "
                f"placements={self._placements!r})")

    __str__ = __repr__

    def __deepcopy__(self, memo) -> "DTensor":
        if id(self) in memo:
            return memo[id(self)]
        copy = DTensor._wrap(self._data.copy(), self.dtype, self.device, self._mesh,
                             self._placements, self._global_shape, type(self),
                             self.requires_grad)
        if self.grad is not None:
            copy.grad = self.grad.__deepcopy__(memo) if isinstance(self.grad, DTensor) else \
                Tensor._make(self.grad._data.copy(), self.grad.dtype, self.grad.device)
        memo[id(self)] = copy
        return copy

    def __reduce_ex__(self, protocol):
        raise TypeError("DTensor cannot be pickled: save a full state dict "
                        "(kiln.distributed.checkpoint.state_dict) or use "
                        "kiln.distributed.checkpoint.save")


def distribute_tensor(tensor: Tensor, device_mesh: DeviceMesh | None = None,
                      placements=None, *, src_data_rank: int | None = 0) -> DTensor:
    """Spread `tensor` over `device_mesh` as `placements` say. As in torch, the data comes from
    rank `src_data_rank` (broadcast first); with None each rank splits its own `tensor`."""
    if isinstance(tensor, DTensor):
        raise ValueError("distribute_tensor: the tensor is already a DTensor; use "
                         "dtensor.redistribute(mesh, placements)")
    if not isinstance(tensor, Tensor):
        raise TypeError(f"distribute_tensor: expected a kiln.Tensor, got {type(tensor).__name__}")
    mesh = device_mesh or init_device_mesh(tensor.device.type, (pg.get_world_size(),))
    placements = _check_placements("distribute_tensor", placements or (Replicate(),))
    return _distribute(tensor, mesh, placements, src_data_rank)


def _distribute(tensor: Tensor, mesh: DeviceMesh, placements: tuple,
                src_data_rank: int | None) -> DTensor:
    xp = tensor.device.xp
    data = xp.ascontiguousarray(tensor._data)
    if src_data_rank is not None and mesh.size() > 1:
        data = data.copy() if data is tensor._data else data
        broadcast_bytes(data, tensor.device, src_data_rank)
    placement = placements[0]
    if placement.is_shard():
        data = xp.ascontiguousarray(local_chunk(data, placement.dim, mesh.size(),
                                                mesh.get_rank()))
    elif data is tensor._data:
        data = data.copy()
    return DTensor._wrap(data, tensor.dtype, tensor.device, mesh, placements, tuple(tensor.shape),
                         requires_grad=tensor.requires_grad)


# ----------------------------------------------------------------------------- helpers

def local_chunk(data, dim: int, world: int, rank: int):
    """Rank `rank`'s chunk of `data` along `dim` (torch.chunk's split; maybe empty), a view."""
    dim = _dim(dim, data.ndim)
    start, stop, _ = chunk_bounds(data.shape[dim], world, rank)
    index = [slice(None)] * data.ndim
    index[dim] = slice(start, stop)
    return data[tuple(index)]


def all_gather_bytes(send, device, world: int):
    """Every rank's contiguous array `send` (same size on every rank), as a (world, nbytes)
    uint8 array. Bytes, so any dtype travels (MPI knows no bfloat16)."""
    xp = device.xp
    raw = xp.ascontiguousarray(send).reshape(-1).view(xp.uint8)
    out = xp.empty((world, raw.size), dtype=xp.uint8)
    C.all_gather_into_tensor(Tensor._make(out, dt.uint8, device), Tensor._make(raw, dt.uint8,
                                                                               device))
    return out


def broadcast_bytes(data, device, src: int) -> None:
    """Rank `src`'s contiguous array `data` into `data` on every rank."""
    raw = data.reshape(-1).view(device.xp.uint8)
    C.broadcast(Tensor._make(raw, dt.uint8, device), src=src)


def _gather_global(t: DTensor):
    placement = t._placements[0]
    xp = t.device.xp
    if not placement.is_shard():
        return t._data.copy()
    world = t._mesh.size()
    dim = _dim(placement.dim, len(t._global_shape))
    size = t._global_shape[dim]
    _, _, chunk = chunk_bounds(size, world, 0)
    local = xp.moveaxis(t._data, dim, 0)
    rest = local.shape[1:]
    padded = xp.zeros((chunk,) + rest, dtype=t._data.dtype)
    padded[:local.shape[0]] = local
    rows = all_gather_bytes(padded, t.device, world).view(t._data.dtype)
    full = rows.reshape((world * chunk,) + rest)[:size]
    return xp.ascontiguousarray(xp.moveaxis(full, 0, dim))


def _check_placements(what: str, placements) -> tuple:
    placements = tuple(placements) if isinstance(placements, (list, tuple)) else (placements,)
    if len(placements) != 1 or not isinstance(placements[0], (Shard, Replicate)):
        raise ValueError(f"{what}: kiln supports one placement on a 1-D mesh, Shard(dim) or "
                         f"Replicate(); got {placements}")
    return placements


def _dim(dim: int, ndim: int) -> int:
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"Shard(dim={dim}) is out of range for a {ndim}-d tensor")
    return dim % max(ndim, 1)

