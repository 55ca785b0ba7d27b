"""Differentiable layout changes of tensor parallelism's activations: each rank's local piece
goes from one placement (`Shard(dim)`, `Replicate()` or a partial sum) to another through a
collective whose backward is the dual collective.

The rule that keeps every gradient equal to one process's: the gradient of a replicated
activation is itself replicated (the same full gradient on every rank). Where a replicated
input meets sharded weights (ColwiseParallel) each rank only sees its columns' share of the
input gradient, so `replicate_input` all-reduces it in backward; everything else follows:

    partial -> Replicate   all_reduce        backward: identity
    partial -> Shard(d)    reduce_scatter    backward: all_gather
    Shard(d) -> Replicate  all_gather        backward: this rank's chunk
    Replicate -> Shard(d)  this rank's chunk backward: all_gather
    Replicate (colwise)    identity          backward: all_reduce
    Shard(d) (colwise)     all_gather        backward: reduce_scatter
"""

from __future__ import annotations

from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed.tensor.api import DTensor, all_gather_bytes, local_chunk
from kiln.distributed.tensor.device_mesh import DeviceMesh
from kiln.distributed.tensor.placement import Placement, Replicate, Shard
from kiln.ir import dtypes as dt
from kiln.tracer.custom_function import Function

PARTIAL = "partial"     # the local pieces sum to the global tensor (a rowwise matmul's output)


# ----------------------------------------------------------------------------- array steps

def _all_reduced(x: Tensor, mesh: DeviceMesh) -> Tensor:
    xp = x.device.xp
    if x.dtype.is_floating_point and x.dtype.itemsize == 2:
        # 16-bit floats are summed in float32 on the wire, then rounded (MPI has no bfloat16)
        wide = Tensor._make(x._data.astype(xp.float32), dt.float32, x.device)
        C.all_reduce(wide, group=mesh.get_group())
        return Tensor._make(wide._data.astype(x._data.dtype), x.dtype, x.device)
    out = Tensor._make(xp.array(x._data, copy=True, order="C"), x.dtype, x.device)
    C.all_reduce(out, group=mesh.get_group())
    return out


def _gathered(x: Tensor, dim: int, mesh: DeviceMesh) -> tuple[Tensor, list[int]]:
    """Every rank's piece of `x` joined along `dim`, and each rank's size along it (pieces may
    differ in size, as torch.chunk splits)."""
    xp, world = x.device.xp, mesh.size()
    rows = xp.moveaxis(x._data, dim, 0)
    group = mesh.get_group()
    sizes = all_gather_bytes(xp.asarray([rows.shape[0]], dtype=xp.int64), x.device, world,
                             group)
    sizes = [int(s) for s in sizes.view(xp.int64).reshape(world).tolist()]
    padded = xp.zeros((max(sizes),) + rows.shape[1:], dtype=rows.dtype)
    padded[:rows.shape[0]] = rows
    every = all_gather_bytes(padded, x.device, world, group).view(rows.dtype)
    every = every.reshape((world, max(sizes)) + rows.shape[1:])
    joined = xp.concatenate([every[r, :sizes[r]] for r in range(world)], axis=0)
    return Tensor._make(xp.ascontiguousarray(xp.moveaxis(joined, 0, dim)), x.dtype,
                        x.device), sizes


def _chunk(x: Tensor, dim: int, mesh: DeviceMesh) -> Tensor:
    data = local_chunk(x._data, dim, mesh.size(), mesh.get_local_rank())
    return Tensor._make(x.device.xp.array(data, copy=True, order="C"), x.dtype, x.device)


def _reduce_scattered(x: Tensor, dim: int, mesh: DeviceMesh) -> Tensor:
    xp, world = x.device.xp, mesh.size()
    if x.shape[dim] % world or x.dtype.itemsize == 2 and x.dtype.is_floating_point:
        # uneven chunks (reduce_scatter_tensor needs equal slices) or 16-bit floats
        return _chunk(_all_reduced(x, mesh), dim, mesh)
    rows = xp.ascontiguousarray(xp.moveaxis(x._data, dim, 0))
    out = xp.empty((rows.shape[0] // world,) + rows.shape[1:], dtype=rows.dtype)
    C.reduce_scatter_tensor(Tensor._make(out, x.dtype, x.device),
                            Tensor._make(rows, x.dtype, x.device), group=mesh.get_group())
    return Tensor._make(xp.ascontiguousarray(xp.moveaxis(out, 0, dim)), x.dtype, x.device)


# ----------------------------------------------------------------------------- Functions

class _AllReduce(Function):
    """partial -> Replicate: the sum over ranks; the replicated gradient passes through."""

    @staticmethod
    def forward(ctx, x, mesh):
        return _all_reduced(x, mesh)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ReplicateInput(Function):
    """A replicated input of sharded weights: identity; each rank's share of the gradient is
    summed over ranks in backward."""

    @staticmethod
    def forward(ctx, x, mesh):
        ctx.mesh = mesh
        return x

    @staticmethod
    def backward(ctx, grad):
        return _all_reduced(grad, ctx.mesh), None


class _AllGather(Function):
    """Shard(dim) -> Replicate; backward keeps this rank's chunk of the replicated gradient."""

    @staticmethod
    def forward(ctx, x, dim, mesh):
        out, sizes = _gathered(x, dim, mesh)
        ctx.dim, ctx.start = dim, sum(sizes[:mesh.get_local_rank()])
        ctx.size = sizes[mesh.get_local_rank()]
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad.narrow(ctx.dim, ctx.start, ctx.size).contiguous(), None, None


class _AllGatherForColwise(Function):
    """Shard(dim) -> Replicate as a colwise layer's input: each rank's share of the input
    gradient is partial, so backward reduce-scatters it (the all-reduce of `_ReplicateInput`
    and the chunk of `_AllGather` in one collective)."""

    @staticmethod
    def forward(ctx, x, dim, mesh):
        out, sizes = _gathered(x, dim, mesh)
        ctx.dim, ctx.mesh, ctx.sizes = dim, mesh, sizes
        return out

    @staticmethod
    def backward(ctx, grad):
        if len(set(ctx.sizes)) == 1:
            return _reduce_scattered(grad, ctx.dim, ctx.mesh), None, None
        rank = ctx.mesh.get_local_rank()
        start = sum(ctx.sizes[:rank])
        whole = _all_reduced(grad, ctx.mesh)
        return whole.narrow(ctx.dim, start, ctx.sizes[rank]).contiguous(), None, None


class _Chunk(Function):
    """Replicate -> Shard(dim); backward all-gathers the pieces' gradients."""

    @staticmethod
    def forward(ctx, x, dim, mesh):
        ctx.dim, ctx.mesh = dim, mesh
        return _chunk(x, dim, mesh)

    @staticmethod
    def backward(ctx, grad):
        return _gathered(grad.contiguous(), ctx.dim, ctx.mesh)[0], None, None


class _ReduceScatter(Function):
    """partial -> Shard(dim); backward all-gathers the pieces' gradients."""

    @staticmethod
    def forward(ctx, x, dim, mesh):
        ctx.dim, ctx.mesh = dim, mesh
        return _reduce_scattered(x, dim, mesh)

    @staticmethod
    def backward(ctx, grad):
        return _gathered(grad.contiguous(), ctx.dim, ctx.mesh)[0], None, None


class _WrapDTensor(Function):
    """This rank's piece as a DTensor (use_local_output=False), still in the autograd graph."""

    @staticmethod
    def forward(ctx, x, mesh, placement, size):
        shape = list(x.shape)
        if placement.is_shard():
            dim = placement.dim % max(x.ndim, 1)
            shape[dim] = shape[dim] * mesh.size() if size is None else size
        return DTensor._wrap(x._data, x.dtype, x.device, mesh, (placement,), tuple(shape))

    @staticmethod
    def backward(ctx, grad):
        return grad, None, None, None


class _ToLocal(Function):
    """A DTensor's piece as a plain tensor, still in the autograd graph (to_local() is not)."""

    @staticmethod
    def forward(ctx, x):
        return Tensor._make(x._data, x.dtype, x.device)

    @staticmethod
    def backward(ctx, grad):
        return grad


# ----------------------------------------------------------------------------- entry points

def normalize(placement, ndim: int):
    """`Shard(-1)` of a 3-d tensor is `Shard(2)`: placements compare by their real dim."""
    if isinstance(placement, Shard) and placement.dim < 0:
        return Shard(placement.dim % max(ndim, 1))
    return placement


def redistribute(x: Tensor, src, dst: Placement, mesh: DeviceMesh) -> Tensor:
    """The local piece of `x` (laid out as `src`: a Placement or PARTIAL) laid out as `dst`."""
    if not isinstance(dst, (Shard, Replicate)):
        raise ValueError(f"tensor parallel: kiln redistributes to Shard(dim) or Replicate(), "
                         f"got {dst!r}")
    src, dst = normalize(src, x.ndim), normalize(dst, x.ndim)
    if src == dst or mesh.size() == 1 and src != PARTIAL:
        return x
    if src == PARTIAL:
        return _AllReduce.apply(x, mesh) if dst.is_replicate() else \
            _ReduceScatter.apply(x, dst.dim, mesh)
    if src.is_shard():
        x = _AllGather.apply(x, src.dim, mesh)
        if dst.is_replicate():
            return x
    return _Chunk.apply(x, dst.dim, mesh)


def replicate_input(x: Tensor, src, mesh: DeviceMesh) -> Tensor:
    """`x` (laid out as `src`) replicated as the input of sharded weights, whose input
    gradient is partial on each rank: all-reduced in backward (reduce-scattered when `x`
    came as Shard(d))."""
    src = normalize(src, x.ndim)
    if src.is_shard() and mesh.size() > 1:
        return _AllGatherForColwise.apply(x, src.dim, mesh)
    x = redistribute(x, src, Replicate(), mesh)
    if not (x.dtype.is_floating_point or x.dtype.is_complex) or mesh.size() == 1:
        return x
    return _ReplicateInput.apply(x, mesh)


def wrap(x: Tensor, placement: Placement, mesh: DeviceMesh, size: int | None = None) -> Tensor:
    """`x`, this rank's piece laid out as `placement`, as a differentiable DTensor. `size`:
    the global size of a Shard placement's dim (default: the local size times the ranks)."""
    return _WrapDTensor.apply(x, mesh, normalize(placement, x.ndim), size)


def to_local(x: Tensor) -> Tensor:
    """A DTensor's local piece as a plain differentiable tensor; a plain tensor as it is."""
    return _ToLocal.apply(x) if getattr(x, "placements", None) else x


def placement_of(x, default: Placement) -> Placement:
    """A DTensor's own placement, or `default` (what the caller says a plain tensor holds)."""
    placements = getattr(x, "placements", None)
    return placements[0] if placements else default


def all_reduce_grad(grad: Tensor, mesh: DeviceMesh) -> Tensor:
    """A parameter-gradient hook (bound to its mesh with functools.partial): the sum of every
    rank's share (replicated parameters used on sharded activations)."""
    return _all_reduced(grad, mesh)
