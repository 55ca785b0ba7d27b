"""`DTensor`: a kiln Tensor holding this rank's piece of a global tensor spread over a
`DeviceMesh` as its `placements` say (one per mesh dimension: `Shard(dim)` or `Replicate()`),
with `full_tensor()`, `to_local()`, `from_local` and `distribute_tensor`.

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
from kiln.distributed.tensor.placement import (
    Partial, Placement, Replicate, Shard, _StridedShard, chunk_bounds)
from kiln.ir import dtypes as dt
from kiln.tracer.custom_function import Function
from kiln.tracer.tensor import Size
from kiln.tracer.torch_function import \
    disabled_torch_function_impl as _disabled_torch_function_impl


class DTensor(Tensor):
    """A tensor distributed over a DeviceMesh; its data is this rank's local piece."""
    # kiln's own handling, not the __torch_function__ protocol's (as torch.nn.Parameter)
    __torch_function__ = _disabled_torch_function_impl

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
        """The same global tensor with other placements (Shard <-> Replicate; Partial to
        either reduces it, to Partial("sum") splits it into equal terms)."""
        mesh = device_mesh or self._mesh
        placements = _check_placements("redistribute", placements or self._placements, mesh)
        if mesh is self._mesh and placements == self._placements:
            return self
        full = Tensor._make(_gather_global(self), self.dtype, self.device)
        return _distribute(full, mesh, placements, None)

    def _as_parameter(self, requires_grad: bool) -> "DTensor":
        """`nn.Parameter(dtensor)`: a parameter that is still this DTensor (same memory),
        whose gradient is a DTensor too, as in torch."""
        from kiln.distributed.tensor.parallel.style import DTensorParameter, _grad_as_dtensor
        param = DTensor._wrap(self._data, self.dtype, self.device, self._mesh,
                              self._placements, self._global_shape, DTensorParameter,
                              requires_grad)
        param._version = self._version
        if requires_grad:
            param.register_post_accumulate_grad_hook(_grad_as_dtensor)
        return param

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
        placements = _check_placements("DTensor.from_local",
                                       placements or (Replicate(),) * mesh.ndim, mesh)
        if shape is None:
            shape = list(local_tensor.shape)
            for i, placement in enumerate(placements):
                if placement.is_shard():
                    shape[_dim(placement.dim, local_tensor.ndim)] *= mesh.size(i)
        return DTensor._wrap(local_tensor._data, local_tensor.dtype, local_tensor.device, mesh,
                             placements, tuple(shape), requires_grad=local_tensor.requires_grad)

    def flatten(self, start_dim: int = 0, end_dim: int = -1) -> Tensor:
        """The local piece flattened (differentiably). While no flattened dimension is
        sharded, the result is still a DTensor of the flattened global tensor, so
        `logits.flatten(0, 1)` keeps class-sharded logits sharded for loss_parallel."""
        out = Tensor.flatten(self, start_dim, end_dim)
        ndim = len(self._global_shape)
        if ndim == 0:
            return out
        start, end = start_dim % ndim, end_dim % ndim
        placements = []
        for p in self._placements:
            if isinstance(p, Replicate):
                placements.append(p)
                continue
            dim = _dim(p.dim, ndim)
            if type(p) is not Shard or start <= dim <= end and start != end:
                return out                  # a sharded dimension flattened: the local piece
            placements.append(Shard(dim if dim < start else dim - (end - start)))
        shape = self._global_shape
        merged = 1
        for size in shape[start:end + 1]:
            merged *= size
        return _AsDTensor.apply(out, self._mesh, tuple(placements),
                                shape[:start] + (merged,) + shape[end + 1:])

    # a cast changes no placement: the result stays a DTensor, as torch's does, so a
    # class-sharded `logits.float()` under loss_parallel is still the sharded logits (as a
    # plain tensor, the local piece, cross_entropy would silently take one rank's classes)
    def _cast(self, out: Tensor) -> Tensor:
        if out is self or isinstance(out, DTensor) or out.device != self.device:
            return out
        return _AsDTensor.apply(out, self._mesh, self._placements, self._global_shape)

    def to(self, *args, **kwargs) -> Tensor:
        return self._cast(Tensor.to(self, *args, **kwargs))

    def float(self) -> Tensor:
        return self._cast(Tensor.float(self))

    def double(self) -> Tensor:
        return self._cast(Tensor.double(self))

    def half(self) -> Tensor:
        return self._cast(Tensor.half(self))

    def bfloat16(self) -> Tensor:
        return self._cast(Tensor.bfloat16(self))

    def type_as(self, other: Tensor) -> Tensor:
        return self._cast(Tensor.type_as(self, other))

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


class _AsDTensor(Function):
    """A plain tensor (this rank's piece) as a DTensor, still in the autograd graph."""

    @staticmethod
    def forward(ctx, x, mesh, placements, global_shape):
        return DTensor._wrap(x._data, x.dtype, x.device, mesh, placements, global_shape)

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


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
    placements = _check_placements("distribute_tensor",
                                   placements or (Replicate(),) * mesh.ndim, mesh)
    return _distribute(tensor, mesh, placements, src_data_rank)


def _distribute(tensor: Tensor, mesh: DeviceMesh, placements: tuple,
                src_data_rank: int | None) -> DTensor:
    xp = tensor.device.xp
    data = xp.ascontiguousarray(tensor._data)
    if src_data_rank is not None and mesh.size() > 1:
        data = data.copy() if data is tensor._data else data
        # along each mesh dimension from its rank `src_data_rank`: every rank ends up with the
        # data of the rank at coordinate (src_data_rank, ...)
        for i in range(mesh.ndim):
            if mesh.size(i) > 1:
                broadcast_bytes(data, tensor.device, src_data_rank, mesh.get_group(i))
    if any(p.is_shard() for p in placements):
        data = xp.ascontiguousarray(local_piece(data, mesh, placements))
    elif data is tensor._data:
        data = data.copy()
    for i, placement in enumerate(placements):
        if placement.is_partial("sum"):       # n equal terms that sum to the value
            data = (data / mesh.size(i)).astype(data.dtype, copy=False)
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


def local_piece(data, mesh: DeviceMesh, placements: tuple):
    """This rank's piece of the global array `data` laid out as `placements` (a view)."""
    for i in _split_order(placements):
        placement = placements[i]
        if placement.is_shard():
            data = local_chunk(data, placement.dim, mesh.size(i), mesh.get_local_rank(i))
    return data


def _split_order(placements: tuple) -> list[int]:
    """The mesh dimensions in the order their splits apply to the global tensor: mesh order,
    except that FSDP's strided dp shard splits the tp piece, so it comes after the tp split."""
    order = list(range(len(placements)))
    if any(isinstance(p, _StridedShard) for p in placements):
        if len(placements) != 2 or not isinstance(placements[0], _StridedShard):
            raise NotImplementedError(f"DTensor: kiln supports _StridedShard only as the first "
                                      f"of two placements (FSDP over tensor parallelism), got "
                                      f"{placements}")
        order = [1, 0]
    return order


def all_gather_bytes(send, device, world: int, group=None):
    """Every rank's contiguous array `send` (same size on every rank of `group`, default the
    world), as a (world, nbytes) uint8 array. Bytes, so any dtype travels (MPI knows no
    bfloat16)."""
    xp = device.xp
    raw = xp.ascontiguousarray(send).reshape(-1).view(xp.uint8)
    out = xp.empty((world, raw.size), dtype=xp.uint8)
    C.all_gather_into_tensor(Tensor._make(out, dt.uint8, device), Tensor._make(raw, dt.uint8,
                                                                               device),
                             group=group)
    return out


def broadcast_bytes(data, device, src: int, group=None) -> None:
    """The contiguous array `data` of `group`'s rank `src` (default: the world's) into `data`
    on every rank of the group."""
    raw = data.reshape(-1).view(device.xp.uint8)
    C.broadcast(Tensor._make(raw, dt.uint8, device), group=group, group_src=src)


def _gather_global(t: DTensor):
    """The global array of `t`: its splits undone in reverse order, each an all-gather over
    the group of its mesh dimension (pieces padded to torch.chunk's chunk size)."""
    xp = t.device.xp
    mesh, placements = t._mesh, t._placements
    order = [i for i in _split_order(placements) if placements[i].is_shard()]
    data = _reduce_partial(t)
    if not order:
        return data.copy() if data is t._data else data
    # the shape before each split, from the global shape (every rank of a split's group
    # shares the coordinates of the splits before it, so the shapes agree within the group)
    shapes, shape = [], list(t._global_shape)
    for i in order:
        dim = _dim(placements[i].dim, len(shape))
        shapes.append(tuple(shape))
        start, stop, _ = chunk_bounds(shape[dim], mesh.size(i), mesh.get_local_rank(i))
        shape[dim] = stop - start
    for i, before in zip(reversed(order), reversed(shapes)):
        dim = _dim(placements[i].dim, len(before))
        world, size = mesh.size(i), before[dim]
        _, _, chunk = chunk_bounds(size, world, 0)
        local = xp.moveaxis(data, dim, 0)
        rest = local.shape[1:]
        padded = xp.zeros((chunk,) + rest, dtype=data.dtype)
        padded[:local.shape[0]] = local
        rows = all_gather_bytes(padded, t.device, world, mesh.get_group(i)).view(data.dtype)
        full = rows.reshape((world * chunk,) + rest)[:size]
        data = xp.ascontiguousarray(xp.moveaxis(full, 0, dim))
    return data


def _reduce_partial(t: DTensor):
    """`t`'s local array with its Partial mesh dimensions reduced (all-reduce over each one's
    group); the array itself when it has none."""
    data = t._data
    for i, placement in enumerate(t._placements):
        if placement.is_partial():
            out = Tensor._make(t.device.xp.array(data, copy=True), t.dtype, t.device)
            C.all_reduce(out, op=placement.reduce_op, group=t._mesh.get_group(i))
            data = out._data
    return data


def _check_placements(what: str, placements, mesh: DeviceMesh | None = None) -> tuple:
    placements = tuple(placements) if isinstance(placements, (list, tuple)) else (placements,)
    ndim = mesh.ndim if mesh is not None else 1
    if len(placements) != ndim or not all(isinstance(p, (Shard, Replicate, Partial))
                                          for p in placements):
        raise ValueError(f"{what}: give one placement per mesh dimension ({ndim}), each "
                         f"Shard(dim), Replicate() or Partial(); got {placements}")
    return placements


def _dim(dim: int, ndim: int) -> int:
    if not -max(ndim, 1) <= dim < max(ndim, 1):
        raise IndexError(f"Shard(dim={dim}) is out of range for a {ndim}-d tensor")
    return dim % max(ndim, 1)

