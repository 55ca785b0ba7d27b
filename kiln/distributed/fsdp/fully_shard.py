"""`fully_shard` (torch.distributed.fsdp.fully_shard, FSDP2): shard a module's parameters over
the ranks and have its forward hooks gather them just in time.

Calling it on each layer and then on the root gives every layer its own parameter group: a
layer's parameters are all-gathered right before its forward and freed after it (when
`reshard_after_forward`), gathered again when the gradient reaches the layer's outputs in
backward, and their gradients reduce-scattered into the shards as soon as they are complete.
The root (the outermost fully_shard'ed module to run forward) keeps its own parameters
gathered from forward to the end of backward, unless told otherwise, as in torch.

The module's class becomes `FSDP<Name>`, a subclass of its class and of `FSDPModule`.
"""

from __future__ import annotations

from kiln import Tensor
from kiln.distributed import process_group as pg
from kiln.distributed.fsdp.api import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy
from kiln.distributed.fsdp.param_group import FSDPParam, FSDPParamGroup, ShardedParameter
from kiln.distributed.tensor.api import DTensor
from kiln.distributed.tensor.device_mesh import DeviceMesh, init_device_mesh
from kiln.nn.module import Module

_IN_FORWARD: list["FSDPState"] = []       # states whose module's forward is running
_CLASSES: dict[type, type] = {}


class FSDPState:
    """What fully_shard attaches to one module: its parameter group, policy and hooks."""

    def __init__(self, module: Module, group: FSDPParamGroup | None,
                 mp_policy: MixedPrecisionPolicy, reshard_after_forward: bool | None):
        self.module, self.group, self.mp_policy = module, group, mp_policy
        self.user_reshard = reshard_after_forward
        self.reshard_after_forward = bool(reshard_after_forward)
        self.is_root: bool | None = None

    def _lazy_init(self) -> None:
        """At the first forward: the outermost state to run is the root; its parameters stay
        gathered after forward by default (backward needs them right away)."""
        self.is_root = not _IN_FORWARD
        if self.is_root:
            for sub in self.module.modules():
                state = sub.__dict__.get("_fsdp_state")
                if state is not None and state is not self and state.is_root is None:
                    state.is_root = False
                    if state.user_reshard is None:
                        state.reshard_after_forward = True
        if self.user_reshard is None:
            self.reshard_after_forward = not self.is_root

    def pre_forward(self, module: Module, args: tuple, kwargs: dict):
        if self.is_root is None:
            self._lazy_init()
        if self.is_root:
            _IN_FORWARD.clear()      # left over only by a forward that raised
        _IN_FORWARD.append(self)
        mp = self.mp_policy
        if mp.cast_forward_inputs and mp.param_dtype is not None:
            args, kwargs = _cast_floats((args, kwargs), mp.param_dtype)
        if self.group is not None:
            self.group.unshard()
        return args, kwargs

    def post_forward(self, module: Module, args: tuple, output):
        if self in _IN_FORWARD:
            _IN_FORWARD.remove(self)
        group = self.group
        if group is not None:
            waiting = [t for t in _tensors(output) if t.requires_grad and t.grad_fn is not None]
            # no backward will come through outputs that need no gradient (eval, no_grad)
            if self.reshard_after_forward or not waiting:
                group.reshard()
            for t in waiting:
                t.register_hook(lambda g, group=group: group.pre_backward())
        if self.mp_policy.output_dtype is not None:
            output = _cast_floats(output, self.mp_policy.output_dtype)
        return output

    # ------------------------------------------------------------------ state dicts
    def state_dict_hook(self, module: Module, destination: dict, prefix: str, _meta) -> None:
        """`module.state_dict()` holds the DTensor shards, never the gathered parameters."""
        if self.group is None:
            return
        for p in self.group.params:
            for fqn in p.fqns:
                key = prefix + fqn
                if key not in destination:
                    continue
                value = destination[key]
                if value is p.sharded or value is p.unsharded:          # keep_vars=True
                    destination[key] = p.sharded
                    continue
                view = DTensor._wrap(p.sharded._data, p.sharded.dtype, p.sharded.device,
                                     p.sharded.device_mesh, p.sharded.placements,
                                     p.global_shape)
                view._version = p.sharded._version
                destination[key] = view

    def load_pre_hook(self, module: Module, *_args) -> None:
        """Before `load_state_dict`: register the shards, so the load writes into them."""
        if self.group is not None:
            self.group.reshard()

    def load_hook(self, module: Module, incompatible_keys) -> None:
        """After `load_state_dict(..., assign=True)` the modules hold new parameter objects:
        take their data as the shards and register the shards again."""
        if self.group is None:
            return
        for p in self.group.params:
            for owner, name in p.owners:
                current = owner._parameters.get(name)
                if current is p.sharded or current is p.unsharded or current is None:
                    continue
                if tuple(current.shape) != tuple(p.sharded.shape):
                    raise RuntimeError(
                        f"load_state_dict: {name} of {type(owner).__name__} got a tensor of "
                        f"shape {list(current.shape)}, but this rank's shard is "
                        f"{list(p.sharded.shape)}; load DTensors (distribute_tensor) or use "
                        "kiln.distributed.checkpoint.state_dict.set_model_state_dict")
                p.sharded._data = p.device.xp.ascontiguousarray(
                    current.detach().to(p.orig_dtype)._data)
                p.sharded._version[0] += 1
            p.install(self.group.is_unsharded)


class FSDPModule:
    """Mixed into a module's class by `fully_shard` (the class becomes `FSDP<Name>`)."""

    def _get_fsdp_state(self) -> FSDPState:
        return self.__dict__["_fsdp_state"]

    def unshard(self, async_op: bool = False):
        """All-gather this module's parameters now (forward would do it)."""
        group = self._get_fsdp_state().group
        if group is not None:
            group.unshard()
        return UnshardHandle() if async_op else None

    def reshard(self) -> None:
        """Free this module's gathered parameters; the module holds its shards again."""
        group = self._get_fsdp_state().group
        if group is not None:
            group.reshard()

    def set_requires_gradient_sync(self, requires_gradient_sync: bool, *,
                                   recurse: bool = True) -> None:
        """False: backward leaves the full gradients accumulated on the gathered parameters
        (no reduce-scatter) until a backward with sync on reduces their sum (torch's no_sync)."""
        for state in _states(self, recurse):
            if state.group is not None:
                state.group.reduce_grads = bool(requires_gradient_sync)

    def set_reshard_after_forward(self, reshard_after_forward: bool, *,
                                  recurse: bool = True) -> None:
        for state in _states(self, recurse):
            state.user_reshard = state.reshard_after_forward = bool(reshard_after_forward)

    def set_reshard_after_backward(self, reshard_after_backward: bool, *,
                                   recurse: bool = True) -> None:
        for state in _states(self, recurse):
            if state.group is not None:
                state.group.reshard_after_backward = bool(reshard_after_backward)

    def set_modules_to_forward_prefetch(self, modules: list) -> None:
        """Accepted for torch compatibility. kiln gathers each module when its forward starts:
        its collectives are blocking, so there is nothing to overlap a prefetch with."""
        _check_fsdp_modules("set_modules_to_forward_prefetch", modules)

    def set_modules_to_backward_prefetch(self, modules: list) -> None:
        """Accepted for torch compatibility (see set_modules_to_forward_prefetch)."""
        _check_fsdp_modules("set_modules_to_backward_prefetch", modules)


class UnshardHandle:
    """What `unshard(async_op=True)` returns; kiln's all-gather is already done."""

    def wait(self) -> None:
        return None


def fully_shard(module: Module, *, mesh: DeviceMesh | None = None,
                reshard_after_forward: bool | None = None, shard_placement_fn=None,
                mp_policy: MixedPrecisionPolicy = MixedPrecisionPolicy(),
                offload_policy: OffloadPolicy = OffloadPolicy(),
                ignored_params: set | None = None) -> Module:
    """Shard `module`'s parameters (those not already sharded by a fully_shard call on a
    submodule) along dim 0 over `mesh` and gather them around its forward and backward.

    Returns `module`, whose class is now `FSDP<Name>` and whose parameters are DTensors.
    `reshard_after_forward`: free the gathered parameters after forward (None: yes, except
    for the root). `.to()`, `.double()` and `to_empty()` afterwards convert the shards.
    """
    if isinstance(module, (list, tuple)):
        raise ValueError("fully_shard: kiln shards one module per call (grouping several "
                         "modules into one parameter group is not built)")
    if not isinstance(module, Module):
        raise TypeError(f"fully_shard: expected a kiln.nn.Module, got {type(module).__name__}")
    if isinstance(module, FSDPModule):
        raise ValueError(f"fully_shard: {type(module).__name__} was already fully_shard'ed")
    if shard_placement_fn is not None:
        raise ValueError("fully_shard: shard_placement_fn is not supported; kiln shards every "
                         "parameter along dim 0")
    if not isinstance(reshard_after_forward, (bool, type(None))):
        raise ValueError(f"fully_shard: reshard_after_forward must be True, False or None "
                         f"(resharding to a smaller mesh is not built), got "
                         f"{reshard_after_forward!r}")
    pg._require("fully_shard")
    ignored = {id(p) for p in ignored_params or ()}
    owners: dict[int, list] = {}
    fqns: dict[int, list] = {}
    params: dict[int, object] = {}
    for prefix, sub in module.named_modules():
        for name, p in sub._parameters.items():
            # taken by a fully_shard call on a submodule (tensor parallelism's DTensors are not)
            if p is None or isinstance(p, ShardedParameter) or id(p) in ignored:
                continue
            params.setdefault(id(p), p)
            owners.setdefault(id(p), []).append((sub, name))
            fqns.setdefault(id(p), []).append(f"{prefix}.{name}" if prefix else name)
    devices = {p.device for p in params.values()}
    if len(devices) > 1:
        raise ValueError(f"fully_shard: the parameters of {type(module).__name__} are on "
                         f"several devices {sorted(map(str, devices))}; move the module to one")
    device = next(iter(devices)) if devices else None
    if isinstance(offload_policy, CPUOffloadPolicy) and device is not None and \
            device.type != "cpu":
        raise RuntimeError("fully_shard: CPUOffloadPolicy for cuda parameters is not built in "
                           "kiln; keep OffloadPolicy() or keep the model on the CPU")
    if mesh is None:
        mesh = init_device_mesh(device.type if device is not None else "cpu",
                                (pg.get_world_size(),))
    if not isinstance(mesh, DeviceMesh):
        raise TypeError(f"fully_shard: mesh must be a DeviceMesh (init_device_mesh), got "
                        f"{type(mesh).__name__}")
    if mesh.ndim not in (1, 2):
        raise ValueError(f"fully_shard: mesh must be 1-D (FSDP) or 2-D (HSDP: replicate over "
                         f"dim 0, shard over dim 1), got a {mesh.ndim}-d mesh {mesh!r}")
    for k, p in params.items():
        if isinstance(p, DTensor):
            _check_tp_param(fqns[k][0], p, mesh)
    fsdp_params = [FSDPParam(owners[k], fqns[k], p, mesh, mp_policy.param_dtype,
                             mp_policy.reduce_dtype) for k, p in params.items()]
    group = FSDPParamGroup(fsdp_params, mesh) if fsdp_params else None
    state = FSDPState(module, group, mp_policy, reshard_after_forward)
    object.__setattr__(module, "_fsdp_state", state)
    module.register_forward_pre_hook(state.pre_forward, prepend=True, with_kwargs=True)
    module.register_forward_hook(state.post_forward)
    module.register_state_dict_post_hook(state.state_dict_hook)
    module.register_load_state_dict_pre_hook(state.load_pre_hook)
    module.register_load_state_dict_post_hook(state.load_hook)
    cls = type(module)
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"FSDP{cls.__name__}", (FSDPModule, cls), {})
    module.__class__ = _CLASSES[cls]
    return module


# ----------------------------------------------------------------------------- helpers

def _check_tp_param(name: str, p: DTensor, mesh: DeviceMesh) -> None:
    """A tensor-parallel parameter: its 1-D tp mesh and FSDP's 1-D dp mesh must be two
    dimensions of one mesh (init_device_mesh(..., mesh_dim_names=("dp", "tp")))."""
    if mesh.ndim != 1 or p.device_mesh.ndim != 1:
        raise NotImplementedError(f"fully_shard: {name} is a DTensor on {p.device_mesh!r} and "
                                  f"the mesh given is {mesh.ndim}-d; kiln shards "
                                  f"tensor-parallel parameters over a 1-D dp mesh only: pass "
                                  f"mesh=mesh['dp'] (HSDP with tensor parallelism is not built)")
    try:
        DeviceMesh._concatenate([mesh, p.device_mesh])
    except ValueError:
        raise ValueError(f"fully_shard: {name} is tensor-parallel on {p.device_mesh!r}, which "
                         f"is not another dimension of the mesh {mesh!r} of the same "
                         f"init_device_mesh; cut both from one mesh: mesh['dp'], "
                         f"mesh['tp']") from None


def _states(module, recurse: bool) -> list[FSDPState]:
    mods = module.modules() if recurse else [module]
    return [m.__dict__["_fsdp_state"] for m in mods if "_fsdp_state" in m.__dict__]


def _check_fsdp_modules(what: str, modules) -> None:
    for m in modules:
        if not isinstance(m, FSDPModule):
            raise ValueError(f"{what}: expects FSDP modules (fully_shard'ed), got "
                             f"{type(m).__name__}")


def _tensors(value) -> list[Tensor]:
    if isinstance(value, Tensor):
        return [value]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _tensors(v)]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _tensors(v)]
    return []


def _cast_floats(value, dtype):
    """`value` with every floating-point tensor in it cast to `dtype` (the structure kept)."""
    if isinstance(value, Tensor):
        return value.to(dtype) if value.is_floating_point() and value.dtype is not dtype \
            else value
    if isinstance(value, tuple) and hasattr(value, "_fields"):
        return type(value)(*(_cast_floats(v, dtype) for v in value))
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_floats(v, dtype) for v in value)
    if isinstance(value, dict):
        return {k: _cast_floats(v, dtype) for k, v in value.items()}
    return value
