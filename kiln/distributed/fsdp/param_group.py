"""The parameters of one `fully_shard` call: their dim-0 shards (DTensor parameters), the
all-gather that rebuilds the full parameters for forward and backward, and the reduce-scatter
that turns the full gradients into averaged gradient shards.

Each FSDP parameter has two faces: `sharded`, the DTensor parameter the module registers and
the optimizer updates (this rank's rows), and `unsharded`, a plain parameter of the whole shape
that the module holds while it is unsharded and that autograd accumulates the full gradient
into. All of a group's shards travel in one flat buffer per dtype, each padded to
ceil(rows / world) rows (torch.chunk's split), so one all-gather and one reduce-scatter serve
the whole group, as in torch's FSDP2.
"""

from __future__ import annotations

import math

import kiln
from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed.process_group import ReduceOp
from kiln.distributed.tensor.api import DTensor, all_gather_bytes
from kiln.distributed.tensor.device_mesh import DeviceMesh
from kiln.distributed.tensor.placement import Replicate, Shard, _StridedShard, chunk_bounds
from kiln.ir import dtypes as dt
from kiln.nn.parameter import Parameter
from kiln.tracer import autograd


class ShardedParameter(DTensor, Parameter):
    """A parameter that is a DTensor: what `model.parameters()` yields after fully_shard."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "Parameter containing:\n" + DTensor.__repr__(self)

    __str__ = __repr__


class FSDPParam:
    """One parameter (maybe registered under several modules) split into dim-0 shards over the
    shard dimension of the mesh (its last: HSDP's mesh replicates over its first).

    A tensor-parallel parameter (a DTensor on a 1-D tp mesh) has its tp piece split: the shard
    lives on the (dp, tp) mesh with placements (Shard(0), tp's placement), or, when tp also
    splits dim 0, (_StridedShard(0, tp size), Shard(0)) as in torch; the unsharded face is the
    tp piece again, a DTensor laid out as before, so the tp styles compute with it unchanged."""

    def __init__(self, owners: list[tuple], fqns: list[str], param: Parameter,
                 mesh: DeviceMesh, param_dtype, reduce_dtype):
        self.owners, self.fqns = owners, fqns           # [(module, attribute name)], names
        tp = isinstance(param, DTensor)
        self.global_shape = tuple(param.global_shape) if tp else tuple(param.shape)
        self.local_shape = tuple(param.shape)           # what the shard dim splits
        self.rows = self.local_shape[0] if self.local_shape else 1
        self.row_shape = self.local_shape[1:]
        self.rowsize = math.prod(self.row_shape)
        shard_dim = mesh.ndim - 1
        world, rank = mesh.size(shard_dim), mesh.get_local_rank(shard_dim)
        start, stop, self.chunk = chunk_bounds(self.rows, world, rank)
        rows = param.reshape((self.rows,) + self.row_shape)
        local = rows[start:stop].detach().clone()
        if tp:
            tp_mesh, tp_placement = param.device_mesh, param.placements[0]
            dp = _StridedShard(0, split_factor=tp_mesh.size()) \
                if tp_placement.is_shard(0) and tp_mesh.size() > 1 else Shard(0)
            spmd_mesh = DeviceMesh._concatenate([mesh, tp_mesh])
            placements = (dp, tp_placement)
        else:
            spmd_mesh = mesh
            placements = (Replicate(), Shard(0)) if mesh.ndim == 2 else (Shard(0),)
        self.sharded = DTensor._wrap(local._data, param.dtype, param.device, spmd_mesh,
                                     placements, self.global_shape, ShardedParameter,
                                     param.requires_grad)
        self._param_dtype, self._reduce_dtype = param_dtype, reduce_dtype
        empty = kiln.empty(0, dtype=self.param_dtype, device=param.device)
        if tp:
            self.unsharded = DTensor._wrap(empty._data, empty.dtype, empty.device, tp_mesh,
                                           param.placements, self.global_shape, type(param),
                                           param.requires_grad)
        else:
            self.unsharded = Parameter(empty, param.requires_grad)
        # tensor parallelism's gradient hooks (the all-reduce of a replicated parameter's
        # shares) belong on the face autograd accumulates into
        for hook in param._hooks or ():
            self.unsharded.register_hook(hook)
        for module, name in owners:
            module._parameters[name] = self.sharded

    # the shard's dtype and device are read at each use: `.to()`, `.double()` or `to_empty()`
    # after fully_shard convert the shards in place (Module._apply keeps parameter identity)
    @property
    def orig_dtype(self) -> dt.DType:
        return self.sharded.dtype

    @property
    def device(self):
        return self.sharded.device

    @property
    def param_dtype(self) -> dt.DType:
        return self._param_dtype or self.sharded.dtype

    @property
    def reduce_dtype(self) -> dt.DType:
        # MPI has no 16-bit float sum: such reductions run in float32, then round
        return self._reduce_dtype or self.param_dtype

    @property
    def padded_numel(self) -> int:
        return self.chunk * self.rowsize

    def install(self, unsharded: bool) -> None:
        """Register the unsharded (or the sharded) face in every owning module."""
        face = self.unsharded if unsharded else self.sharded
        for module, name in self.owners:
            module._parameters[name] = face


class FSDPParamGroup:
    """The parameters of one fully_shard call, gathered and reduced together."""

    def __init__(self, params: list[FSDPParam], mesh: DeviceMesh):
        self.params, self.mesh = params, mesh
        # HSDP (a 2-D mesh): shards over the last dimension, replicas over the first
        self.shard_size = mesh.size(mesh.ndim - 1)
        self.shard_group = mesh.get_group(mesh.ndim - 1)
        self.replicate_group = mesh.get_group(0) if mesh.ndim == 2 else None
        self.is_unsharded = False
        self.reduce_grads = True
        self.reshard_after_backward = True
        self._ready: set[int] = set()
        for p in params:
            if p.unsharded.requires_grad:
                autograd.register_post_accumulate_grad_hook(
                    p.unsharded, lambda _t, p=p: self._grad_ready(p))

    # ------------------------------------------------------------------ forward
    def unshard(self) -> None:
        """All-gather the shards into the full parameters and register those in the modules."""
        if self.is_unsharded:
            return
        world = self.shard_size
        for dtype, params in _by(self.params, lambda p: p.orig_dtype):
            device = params[0].device
            xp = device.xp
            np_dtype = params[0].sharded._data.dtype
            send = xp.zeros(sum(p.padded_numel for p in params), dtype=np_dtype)
            off = 0
            for p in params:
                local = p.sharded._data.reshape(-1)
                send[off:off + local.size] = local
                off += p.padded_numel
            rows = all_gather_bytes(send, device, world, self.shard_group).view(np_dtype)
            off = 0
            for p in params:
                part = rows[:, off:off + p.padded_numel]
                full = xp.ascontiguousarray(part.reshape((world * p.chunk,) + p.row_shape)
                                            [:p.rows]).reshape(p.local_shape)
                off += p.padded_numel
                if p.param_dtype is not p.orig_dtype:
                    with kiln.no_grad():
                        full = Tensor._make(full, dtype, device).to(p.param_dtype)._data
                # the version counter is left alone: autograd saved this parameter in forward
                # and must not take the re-gathered (identical) values for an in-place change
                p.unsharded._data = full
                p.unsharded.dtype, p.unsharded.device = p.param_dtype, device
        for p in self.params:
            p.install(unsharded=True)
        self.is_unsharded = True

    def reshard(self) -> None:
        """Free the full parameters and register the shards again."""
        if not self.is_unsharded:
            return
        for p in self.params:
            p.install(unsharded=False)
            p.unsharded._data = kiln.empty(0, dtype=p.unsharded.dtype, device=p.device)._data
        self.is_unsharded = False

    # ------------------------------------------------------------------ backward
    def pre_backward(self) -> None:
        """A gradient reached one of the module's outputs: its backward needs the full
        parameters again if they were freed after forward."""
        _touched(self)
        self.unshard()

    def _grad_ready(self, p: FSDPParam) -> None:
        _touched(self)
        self._ready.add(id(p))
        if all(id(q) in self._ready for q in self.params if q.unsharded.requires_grad):
            self.post_backward()

    def post_backward(self) -> None:
        """Reduce-scatter the full gradients into the shards' `.grad` (averaged over ranks,
        added to what is there), then reshard."""
        self._ready.clear()
        if self.reduce_grads:
            params = [p for p in self.params if p.unsharded.grad is not None]
            for _, group in _by(params, lambda p: _wire_dtype(p.reduce_dtype)):
                self._reduce_scatter(group)
        if self.reshard_after_backward:
            self.reshard()

    def _reduce_scatter(self, params: list[FSDPParam]) -> None:
        world = self.shard_size
        device = params[0].device
        xp = device.xp
        wire = _wire_dtype(params[0].reduce_dtype)
        total = sum(p.padded_numel for p in params)
        with kiln.no_grad():
            grads = [p.unsharded.grad.to(wire)._data for p in params]
            np_dtype = grads[0].dtype
            send = xp.zeros((world, total), dtype=np_dtype)
            off = 0
            for p, g in zip(params, grads):
                padded = xp.zeros((world * p.chunk, p.rowsize), dtype=np_dtype)
                padded[:p.rows] = g.reshape(p.rows, p.rowsize)
                send[:, off:off + p.padded_numel] = padded.reshape(world, p.padded_numel)
                off += p.padded_numel
            out = xp.empty(total, dtype=np_dtype)
            C.reduce_scatter_tensor(Tensor._make(out, wire, device),
                                    Tensor._make(send.reshape(-1), wire, device),
                                    op=ReduceOp.AVG, group=self.shard_group)
            if self.replicate_group is not None:    # HSDP: then the mean over the replicas
                C.all_reduce(Tensor._make(out, wire, device), op=ReduceOp.AVG,
                             group=self.replicate_group)
            off = 0
            for p in params:
                shape = p.sharded._data.shape
                local = Tensor._make(out[off:off + p.sharded._data.size].reshape(shape), wire,
                                     device)
                off += p.padded_numel
                if p.reduce_dtype is not wire:       # a 16-bit reduce dtype, summed in f32
                    local = local.to(p.reduce_dtype)
                local = local.to(p.orig_dtype)._data
                local = local.copy() if local.base is not None else local
                sharded = p.sharded
                if sharded.grad is None:
                    sharded.grad = DTensor._wrap(local, p.orig_dtype, device,
                                                 sharded.device_mesh, sharded.placements,
                                                 p.global_shape)
                else:
                    sharded.grad._data += local
                    sharded.grad._version[0] += 1
                p.unsharded.grad = None


# ----------------------------------------------------------------------------- end of backward

_TOUCHED: list[FSDPParamGroup] = []     # groups with backward work since the last finish


def _touched(group: FSDPParamGroup) -> None:
    if group not in _TOUCHED:
        _TOUCHED.append(group)
    # looked up in autograd's queue, not remembered here: a backward that raised drops it
    if _finish_backward not in autograd._QUEUED:
        autograd.queue_callback(_finish_backward)


def _finish_backward() -> None:
    """Backward is over: groups whose gradients were not all produced (parameters unused in
    this forward) reduce what they have; every group reshards."""
    groups = list(_TOUCHED)
    _TOUCHED.clear()
    for group in groups:
        if group._ready or group.is_unsharded:
            group.post_backward()


def _wire_dtype(dtype: dt.DType) -> dt.DType:
    return dt.float32 if dtype in (dt.float16, dt.bfloat16) else dtype


def _by(params: list, key) -> list[tuple]:
    """`params` grouped by `key`, in first-seen order."""
    groups: dict = {}
    for p in params:
        groups.setdefault(key(p), []).append(p)
    return list(groups.items())
