"""`kiln.distributed.checkpoint.state_dict` (torch.distributed.checkpoint.state_dict): model and
optimizer state dicts of a fully_shard'ed (or plain) model, sharded or full.

Sharded state dicts hold DTensors (this rank's rows, sharing the parameters' memory). Full ones
hold whole tensors gathered from every rank: every rank must call, and with `cpu_offload=True`
only rank 0 keeps the result (the other ranks get `{}`), as in torch. Optimizer state dicts are
keyed by parameter name (fully qualified, as in `model.state_dict()`), not by index, so they
load into an optimizer built in any order; an optimizer state tensor shaped like its
parameter's shard (Adam's moments, SGD's momentum) is sharded like the parameter.
"""

from __future__ import annotations

from collections import namedtuple
from dataclasses import dataclass

import kiln
from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed import process_group as pg
from kiln.distributed.tensor.api import DTensor, broadcast_bytes, local_piece
from kiln.nn.parameter import Parameter
from kiln.optim.optimizer import Optimizer

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])


@dataclass
class StateDictOptions:
    """How get_*/set_*_state_dict work (torch's fields and defaults).

    full_state_dict: whole tensors instead of DTensors. cpu_offload: tensors moved to the
    CPU; with full_state_dict only rank 0 gets the state dict. ignore_frozen_params: leave out
    parameters with requires_grad=False. strict: missing or unexpected keys raise in
    set_model_state_dict. broadcast_from_rank0: (with full_state_dict) only rank 0 needs to
    pass the state dict to the setters; the others receive it from rank 0.
    """

    full_state_dict: bool = False
    cpu_offload: bool = False
    ignore_frozen_params: bool = False
    keep_submodule_prefixes: bool = True
    strict: bool = True
    broadcast_from_rank0: bool = False
    flatten_optimizer_state_dict: bool = False
    dsd_fqn_modifiers: str = "_fqn_modifiers"


# ----------------------------------------------------------------------------- model

def get_model_state_dict(model, *, submodules=None,
                         options: StateDictOptions | None = None) -> dict:
    """The model's state dict: DTensors for sharded parameters, or (full_state_dict) whole
    tensors gathered from every rank."""
    opts = _options("get_model_state_dict", options, submodules)
    state = dict(model.state_dict())
    if opts.ignore_frozen_params:
        frozen = _frozen(model)
        state = {k: v for k, v in state.items() if k not in frozen}
    return _finish(state, opts)


def set_model_state_dict(model, model_state_dict: dict, *,
                         options: StateDictOptions | None = None) -> _IncompatibleKeys:
    """Load `model_state_dict` (full tensors with full_state_dict, else DTensors or this
    rank's shards) into the model's shards and buffers. Returns (missing, unexpected) keys."""
    opts = _options("set_model_state_dict", options, None)
    for module in model.modules():       # gathered copies would be stale after the load
        state = module.__dict__.get("_fsdp_state")
        if state is not None and state.group is not None:
            state.group.reshard()
    current = model.state_dict()
    given = _keys_from_rank0(model_state_dict, opts)
    missing = [k for k in current if k not in given]
    unexpected = [k for k in given if k not in current]
    if opts.strict and (missing or unexpected):
        raise RuntimeError(f"set_model_state_dict: the state dict does not match the model: "
                           f"missing keys {missing}, unexpected keys {unexpected}; pass "
                           "options=StateDictOptions(strict=False) to load the rest")
    with kiln.no_grad():
        for key, target in current.items():
            if key in given:
                _load_into(f"set_model_state_dict: {key}", target,
                           model_state_dict.get(key), opts)
    return _IncompatibleKeys(missing, unexpected)


# ----------------------------------------------------------------------------- optimizer

def get_optimizer_state_dict(model, optimizers, *, submodules=None,
                             options: StateDictOptions | None = None) -> dict:
    """The optimizers' state dict keyed by parameter name: {"state": {name: {...}},
    "param_groups": [{..., "params": [names]}]}; state shaped like a sharded parameter's shard
    is a DTensor, or (full_state_dict) the gathered whole tensor."""
    opts = _options("get_optimizer_state_dict", options, submodules)
    names = _param_names(model)
    out = {"state": {}, "param_groups": []}
    for opt in _optimizers(optimizers):
        _init_optim_state(opt)
        params = _indexed(opt)
        saved = opt.state_dict()
        for index, entry in saved["state"].items():
            p = params[index]
            name = _name_of(names, p, "get_optimizer_state_dict")
            out["state"][name] = {k: _shard_like(v, p) for k, v in entry.items()}
        for group in saved["param_groups"]:
            packed = dict(group)
            packed["params"] = [_name_of(names, params[i], "get_optimizer_state_dict")
                                for i in group["params"]]
            out["param_groups"].append(packed)
    return _finish(out, opts)


def set_optimizer_state_dict(model, optimizers, optim_state_dict: dict, *,
                             options: StateDictOptions | None = None) -> None:
    """Load a state dict from get_optimizer_state_dict (sharded or full) into the optimizers,
    taking each sharded parameter's rows of full state tensors."""
    opts = _options("set_optimizer_state_dict", options, None)
    if opts.broadcast_from_rank0:
        optim_state_dict = _broadcast_tree(optim_state_dict)
    names = _param_names(model)
    saved_state = optim_state_dict.get("state", {})
    saved_groups = optim_state_dict.get("param_groups", [])
    for opt in _optimizers(optimizers):
        params = _indexed(opt)
        index = {id(p): i for i, p in enumerate(params)}
        groups = []
        for group in opt.param_groups:
            group_names = [_name_of(names, p, "set_optimizer_state_dict")
                           for p in group["params"]]
            match = [g for g in saved_groups if group_names and group_names[0] in g["params"]]
            if not match:
                raise ValueError(f"set_optimizer_state_dict: no saved param group holds "
                                 f"parameter {group_names[0] if group_names else '(none)'}; "
                                 "the state dict comes from another model or optimizer")
            packed = {k: v for k, v in match[0].items() if k != "params"}
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {}
        for p in params:
            name = _name_of(names, p, "set_optimizer_state_dict")
            if name in saved_state:
                state[index[id(p)]] = {k: _local_like(v, p, opts, f"{name}.{k}")
                                       for k, v in saved_state[name].items()}
        opt.load_state_dict({"state": state, "param_groups": groups})


def get_state_dict(model, optimizers, *, submodules=None,
                   options: StateDictOptions | None = None) -> tuple[dict, dict]:
    """(get_model_state_dict, get_optimizer_state_dict)."""
    return (get_model_state_dict(model, submodules=submodules, options=options),
            get_optimizer_state_dict(model, optimizers, submodules=submodules, options=options))


def set_state_dict(model, optimizers, *, model_state_dict: dict, optim_state_dict: dict,
                   options: StateDictOptions | None = None) -> _IncompatibleKeys:
    """set_model_state_dict then set_optimizer_state_dict."""
    keys = set_model_state_dict(model, model_state_dict, options=options)
    set_optimizer_state_dict(model, optimizers, optim_state_dict, options=options)
    return keys


def _init_optim_state(optim: Optimizer) -> None:
    """Create the optimizer's state if it has none, with one step at learning rate 0 on zero
    gradients (as torch does before reading or loading it). Left alone when some parameter
    has a gradient: a stateless optimizer (plain SGD) after backward, as torch leaves it."""
    if optim.state:
        return
    params = [p for g in optim.param_groups for p in g["params"]]
    if any(p.grad is not None for p in params):
        return
    for p in params:
        if p.requires_grad:
            p.grad = kiln.zeros_like(p)
    lrs = [g["lr"] for g in optim.param_groups]
    for g in optim.param_groups:
        g["lr"] = 0.0
    optim.step()
    for g, lr in zip(optim.param_groups, lrs):
        g["lr"] = lr
    optim.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------- helpers

def _options(what: str, options, submodules) -> StateDictOptions:
    if submodules is not None:
        raise ValueError(f"{what}: `submodules` (deprecated in torch) is not supported; take "
                         "the keys you need from the whole state dict")
    opts = options or StateDictOptions()
    if opts.broadcast_from_rank0 and not opts.full_state_dict:
        raise ValueError(f"{what}: broadcast_from_rank0=True needs full_state_dict=True")
    return opts


def _rank() -> int:
    return pg.get_rank() if pg.is_initialized() else 0


def _finish(tree, opts: StateDictOptions):
    """Gather DTensors (full_state_dict) and move to the CPU (cpu_offload), walking nested
    dicts and lists in order (the same order on every rank: gathers are collectives)."""
    if not opts.full_state_dict and not opts.cpu_offload:
        return tree
    out = _map_tensors(tree, lambda t: _full_or_cpu(t, opts))
    if opts.full_state_dict and opts.cpu_offload and _rank() != 0:
        return {}
    return out


def _full_or_cpu(t: Tensor, opts: StateDictOptions) -> Tensor:
    if isinstance(t, DTensor):
        if opts.full_state_dict:
            t = t.full_tensor()
        elif opts.cpu_offload and t.device.type != "cpu":
            local = t.to_local().cpu()
            return DTensor._wrap(local._data, t.dtype, local.device, t.device_mesh,
                                 t.placements, tuple(t.global_shape))
    else:
        t = t.detach()
    return t.cpu() if opts.cpu_offload else t


def _map_tensors(tree, fn):
    if isinstance(tree, Tensor):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_tensors(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_tensors(v, fn) for v in tree]
    return tree


def _keys_from_rank0(state: dict, opts: StateDictOptions) -> set:
    keys = list(state) if state is not None else []
    if opts.broadcast_from_rank0 and pg.is_initialized() and pg.get_world_size() > 1:
        box = [keys]
        C.broadcast_object_list(box, src=0)
        keys = box[0]
    return set(keys)


def _load_into(what: str, target: Tensor, value, opts: StateDictOptions) -> None:
    """Write `value` into `target` (a DTensor view of a shard, or a plain tensor)."""
    sharded = isinstance(target, DTensor)
    full_shape = tuple(target.global_shape) if sharded else tuple(target.shape)
    bcast = opts.broadcast_from_rank0 and pg.is_initialized() and pg.get_world_size() > 1
    xp = target.device.xp
    if sharded and not opts.full_state_dict:
        if not isinstance(value, Tensor):
            raise TypeError(f"{what}: expected a DTensor or this rank's shard, got "
                            f"{type(value).__name__}")
        if isinstance(value, DTensor) and value.placements != target.placements:
            raise ValueError(f"{what}: placements {value.placements} differ from the model's "
                             f"{target.placements}; load a full state dict instead")
        data = value.detach().to(target.device).to(target.dtype)._data
        if tuple(data.shape) != tuple(target.shape):
            raise ValueError(f"{what}: this rank's shard is {list(target.shape)}, the state "
                             f"dict's is {list(data.shape)}")
    else:
        if bcast:
            if _rank() == 0:
                full = xp.ascontiguousarray(_checked(what, value, full_shape, target))
            else:
                full = xp.empty(full_shape, dtype=target._data.dtype)
            broadcast_bytes(full, target.device, 0)
        else:
            full = _checked(what, value, full_shape, target)
        data = local_piece(full, target.device_mesh, target.placements) if sharded else full
    target._data[...] = data
    target._version[0] += 1


def _checked(what: str, value, shape: tuple, target: Tensor):
    if isinstance(value, DTensor):
        value = value.full_tensor()
    if not isinstance(value, Tensor):
        raise TypeError(f"{what}: expected a tensor, got {type(value).__name__}")
    if tuple(value.shape) != shape:
        raise ValueError(f"{what}: the state dict's tensor is {list(value.shape)}, the model's "
                         f"is {list(shape)}")
    return value.detach().to(target.device).to(target.dtype)._data


def _frozen(model) -> set[str]:
    """Names of parameters with requires_grad=False (every name of a shared one)."""
    return {k for k, v in model.state_dict(keep_vars=True).items()
            if isinstance(v, Parameter) and not v.requires_grad}


def _param_names(model) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, p in model.state_dict(keep_vars=True).items():
        names.setdefault(id(p), name)
    return names


def _name_of(names: dict, p: Tensor, what: str) -> str:
    if id(p) not in names:
        raise ValueError(f"{what}: the optimizer holds a parameter of shape {list(p.shape)} "
                         "that is not in the model; build the optimizer after fully_shard, "
                         "over model.parameters()")
    return names[id(p)]


def _optimizers(optimizers) -> list[Optimizer]:
    return [optimizers] if isinstance(optimizers, Optimizer) else list(optimizers)


def _indexed(opt: Optimizer) -> list[Tensor]:
    """The optimizer's parameters in the order of its state dict's indices."""
    seen, params = set(), []
    for group in opt.param_groups:
        for p in group["params"]:
            if id(p) not in seen:
                seen.add(id(p))
                params.append(p)
    return params


def _shard_like(value, p: Tensor):
    if isinstance(value, Tensor) and isinstance(p, DTensor) and value.ndim > 0 and \
            tuple(value.shape) == tuple(p.shape):
        view = DTensor._wrap(value._data, value.dtype, value.device, p.device_mesh,
                             p.placements, tuple(p.global_shape))
        view._version = value._version
        return view
    return value


def _local_like(value, p: Tensor, opts: StateDictOptions, what: str):
    if isinstance(value, DTensor):
        return value.to_local()
    if isinstance(value, Tensor) and isinstance(p, DTensor) and opts.full_state_dict and \
            value.ndim > 0 and tuple(value.shape) == tuple(p.global_shape):
        if any(placement.is_shard() for placement in p.placements):
            local = local_piece(value.detach()._data, p.device_mesh, p.placements)
            return Tensor._make(local, value.dtype, value.device)
    return value


def _broadcast_tree(tree):
    """Rank 0's `tree` (nested dicts/lists of tensors and plain values) on every rank: the
    structure travels as a small object, the tensors' bytes as broadcasts."""
    if not pg.is_initialized() or pg.get_world_size() == 1:
        return tree
    tensors: list[Tensor] = []

    def skeleton(t: Tensor):
        tensors.append(t)
        return _TensorSpec(tuple(t.shape), t.dtype.name, str(t.device))
    box = [_map_tensors(tree, skeleton) if _rank() == 0 else None]
    C.broadcast_object_list(box, src=0)
    specs: list = []
    _walk_specs(box[0], specs)
    filled = []
    for i, spec in enumerate(specs):
        device = kiln.device(spec.device)
        if _rank() == 0:
            data = tensors[i].device.xp.ascontiguousarray(tensors[i].detach()._data)
            t = Tensor._make(data.copy(), tensors[i].dtype, tensors[i].device)
        else:
            t = kiln.empty(*spec.shape, dtype=getattr(kiln, spec.dtype), device=device)
        broadcast_bytes(t._data, t.device, 0)
        filled.append(t)
    it = iter(filled)
    return _map_specs(box[0], lambda _s: next(it))


_TensorSpec = namedtuple("_TensorSpec", ["shape", "dtype", "device"])


def _walk_specs(tree, out: list) -> None:
    if isinstance(tree, _TensorSpec):
        out.append(tree)
    elif isinstance(tree, dict):
        for v in tree.values():
            _walk_specs(v, out)
    elif isinstance(tree, list):
        for v in tree:
            _walk_specs(v, out)


def _map_specs(tree, fn):
    if isinstance(tree, _TensorSpec):
        return fn(tree)
    if isinstance(tree, dict):
        return {k: _map_specs(v, fn) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_map_specs(v, fn) for v in tree]
    return tree
