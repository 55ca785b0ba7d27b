"""`FullyShardedDataParallel` (torch.distributed.fsdp, FSDP1): the wrapper-module FSDP of
pytorch/examples' FSDP scripts, built on kiln's FSDP2 (`fully_shard`).

`FSDP(model, auto_wrap_policy=...)` first wraps the submodules the policy selects in their own
FSDP units (innermost first), then makes `model` the outermost unit. Each unit is a
`FullyShardedDataParallel` module holding the wrapped module as `_fsdp_wrapped_module`
(`.module`), whose own parameters (those not in a unit inside it) are one FSDP2 parameter group:
the wrapped module is `fully_shard`ed, so its forward all-gathers them and backward
reduce-scatters their gradients, exactly as FSDP2 does.

Parameters: kiln keeps the original parameters, each a dim-0 shard (a DTensor parameter), where
torch's default (`use_orig_params=False`) flattens each unit's parameters into one
`FlatParameter`. Optimizers over `model.parameters()` update each rank's rows with the averaged
gradient rows, which for SGD, Adam and AdamW (elementwise updates) is what stepping torch's
flat shards does. `use_orig_params` is therefore accepted and changes nothing;
`named_parameters()` gives the original names (without `_fsdp_wrapped_module.`), as torch's
use_orig_params=True does.

ShardingStrategy: FULL_SHARD (the units but the root free their gathered parameters after
forward), SHARD_GRAD_OP (kept from forward to backward), NO_SHARD (parameters stay whole; their
gradients are all-reduced, averaged, when backward ends). The hybrid strategies need a 2-D mesh
and are refused. Accepted and without effect: `backward_prefetch`, `forward_prefetch`,
`limit_all_gathers` (kiln's collectives are blocking: nothing runs ahead to prefetch or limit),
`use_orig_params`, `CPUOffload(offload_params=True)` for CPU parameters.
"""

from __future__ import annotations

import contextlib
import os
from collections import namedtuple
from enum import Enum, auto
from typing import Any, Callable, Iterable, Iterator

import kiln
from kiln import Tensor
from kiln.distributed import collectives as C
from kiln.distributed import process_group as pg
from kiln.distributed.checkpoint import state_dict as dsd
from kiln.distributed.fsdp.api import (
    BackwardPrefetch, CPUOffload, CPUOffloadPolicy, FullOptimStateDictConfig,
    FullStateDictConfig, LocalOptimStateDictConfig, LocalStateDictConfig, MixedPrecision,
    MixedPrecisionPolicy, OffloadPolicy, OptimStateDictConfig, ShardedOptimStateDictConfig,
    ShardedStateDictConfig, ShardingStrategy, StateDictConfig, StateDictSettings, StateDictType)
from kiln.distributed.fsdp.fully_shard import _cast_floats, fully_shard
from kiln.distributed.fsdp.wrap import recursive_wrap
from kiln.distributed.process_group import ReduceOp
from kiln.distributed.tensor.api import DTensor, broadcast_bytes, local_chunk
from kiln.nn.module import Module
from kiln.nn.parameter import Parameter
from kiln.tracer import autograd

__all__ = ["FullyShardedDataParallel", "OptimStateKeyType", "BackwardPrefetch", "CPUOffload", "MixedPrecision",
           "ShardingStrategy", "StateDictType", "StateDictConfig", "FullStateDictConfig",
           "ShardedStateDictConfig", "LocalStateDictConfig", "OptimStateDictConfig",
           "FullOptimStateDictConfig", "ShardedOptimStateDictConfig",
           "LocalOptimStateDictConfig", "StateDictSettings"]

FSDP_WRAPPED_MODULE = "_fsdp_wrapped_module"
FSDP_PREFIX = FSDP_WRAPPED_MODULE + "."
_CHECKPOINT_PREFIX = "_checkpoint_wrapped_module."

_IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
_IN_FORWARD: list["FullyShardedDataParallel"] = []
_SUMMONED: list[Module] = []       # modules inside summon_full_params now

_DEFAULT_CONFIGS = {
    StateDictType.FULL_STATE_DICT: (FullStateDictConfig, FullOptimStateDictConfig),
    StateDictType.SHARDED_STATE_DICT: (ShardedStateDictConfig, ShardedOptimStateDictConfig),
    StateDictType.LOCAL_STATE_DICT: (LocalStateDictConfig, LocalOptimStateDictConfig),
}


class OptimStateKeyType(Enum):
    """How an optimizer state dict keys its parameters: by name or by index."""

    PARAM_NAME = auto()
    PARAM_ID = auto()


def clean_tensor_name(name: str) -> str:
    """A parameter or buffer name as the user's model spells it (no wrapper prefixes)."""
    return name.replace(FSDP_PREFIX, "").replace(_CHECKPOINT_PREFIX, "")


class FullyShardedDataParallel(Module):
    """Shard `module`'s parameters over the ranks (torch's FSDP1 wrapper); see the module
    docstring for what each argument does in kiln."""

    def __init__(self, module: Module, process_group=None,
                 sharding_strategy: ShardingStrategy | None = None,
                 cpu_offload: CPUOffload | None = None,
                 auto_wrap_policy: Callable | None = None,
                 backward_prefetch: BackwardPrefetch | None = BackwardPrefetch.BACKWARD_PRE,
                 mixed_precision: MixedPrecision | None = None,
                 ignored_modules: Iterable[Module] | None = None,
                 param_init_fn: Callable[[Module], None] | None = None,
                 device_id=None, sync_module_states: bool = False,
                 forward_prefetch: bool = False, limit_all_gathers: bool = True,
                 use_orig_params: bool = False, ignored_states=None, device_mesh=None):
        super().__init__()
        if not isinstance(module, Module):
            raise TypeError(f"FullyShardedDataParallel: expected a kiln.nn.Module, got "
                            f"{type(module).__name__}")
        if isinstance(module, FullyShardedDataParallel):
            raise ValueError("FullyShardedDataParallel: the module is already wrapped in FSDP")
        pg._require("FullyShardedDataParallel")
        given = sharding_strategy or ShardingStrategy.FULL_SHARD
        strategy = _effective_strategy(given)
        if process_group is not None and process_group is not pg.GroupMember.WORLD:
            raise ValueError("FullyShardedDataParallel: kiln has only the default process "
                             "group; pass process_group=None")
        if device_mesh is not None and device_mesh.ndim != 1:
            raise ValueError("FullyShardedDataParallel: only a 1-D device_mesh is supported")
        mp = mixed_precision or MixedPrecision()
        if mp.keep_low_precision_grads:
            raise ValueError("FullyShardedDataParallel: MixedPrecision(keep_low_precision_grads"
                             "=True) is not built in kiln; gradient shards keep the "
                             "parameters' dtype")
        ignored = _ignored(module, ignored_modules, ignored_states)
        # before auto-wrapping, for the whole tree: the units made below skip these steps
        # (units the user nested by hand did them for themselves)
        _materialize(module, param_init_fn, device_id, ignored["modules"])
        if sync_module_states:
            _broadcast_from_rank0(module)
        if auto_wrap_policy is not None:
            nested = dict(sharding_strategy=given, cpu_offload=cpu_offload,
                          backward_prefetch=backward_prefetch, mixed_precision=mixed_precision,
                          forward_prefetch=forward_prefetch, limit_all_gathers=limit_all_gathers,
                          use_orig_params=use_orig_params)
            recursive_wrap(module, auto_wrap_policy, FullyShardedDataParallel,
                           {id(m) for m in ignored["modules"]}, FullyShardedDataParallel,
                           **nested)
        self._fsdp_wrapped_module = module
        # buffers in `buffer_dtype` for compute; FULL_STATE_DICT gives their own dtypes back
        object.__setattr__(self, "_buffer_dtypes", _cast_buffers(module, mp.buffer_dtype))
        object.__setattr__(self, "sharding_strategy", given)
        object.__setattr__(self, "mixed_precision", mp)
        object.__setattr__(self, "cpu_offload", cpu_offload or CPUOffload())
        object.__setattr__(self, "backward_prefetch", backward_prefetch)
        object.__setattr__(self, "forward_prefetch", forward_prefetch)
        object.__setattr__(self, "limit_all_gathers", limit_all_gathers)
        object.__setattr__(self, "use_orig_params", use_orig_params)
        object.__setattr__(self, "_is_root", None)
        object.__setattr__(self, "_sync_gradients", True)
        object.__setattr__(self, "_keep_vars", False)
        object.__setattr__(self, "_state_dict_type", StateDictType.FULL_STATE_DICT)
        object.__setattr__(self, "_state_dict_config", FullStateDictConfig())
        object.__setattr__(self, "_optim_state_dict_config", FullOptimStateDictConfig())

        # this unit's parameters: not in a unit inside it, not ignored
        taken = {id(p) for m in module.modules() if isinstance(m, FullyShardedDataParallel)
                 for p in m.parameters()} | {id(p) for p in ignored["params"]}
        own = [p for p in _unique(module.parameters()) if id(p) not in taken]
        object.__setattr__(self, "_replicated", [])
        # the fully_shard'ed module; kept apart from `.module`, which a checkpoint wrapper
        # applied later may replace
        object.__setattr__(self, "_sharded_module", None)
        if strategy is ShardingStrategy.NO_SHARD:
            self._setup_no_shard(own, mp)
        else:
            offload = self.cpu_offload.offload_params
            fully_shard(module, reshard_after_forward=(None if strategy is
                                                       ShardingStrategy.FULL_SHARD else False),
                        mp_policy=MixedPrecisionPolicy(param_dtype=mp.param_dtype,
                                                       reduce_dtype=mp.reduce_dtype,
                                                       cast_forward_inputs=False),
                        offload_policy=CPUOffloadPolicy() if offload else OffloadPolicy(),
                        ignored_params={p for p in _unique(module.parameters())
                                        if id(p) in taken})
            object.__setattr__(self, "_sharded_module", module)
        self.register_state_dict_pre_hook(FullyShardedDataParallel._state_dict_pre_hook)
        self.register_state_dict_post_hook(FullyShardedDataParallel._state_dict_post_hook)
        self.register_load_state_dict_pre_hook(FullyShardedDataParallel._load_pre_hook)

    # ------------------------------------------------------------------ module surface
    @property
    def module(self) -> Module:
        """The wrapped module."""
        return self._modules[FSDP_WRAPPED_MODULE]

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            inner = self.__dict__.get("_modules", {}).get(FSDP_WRAPPED_MODULE)
            if inner is None:
                raise
            return getattr(inner, name)

    def __getitem__(self, key):
        return self.module[key]

    def forward(self, *args, **kwargs):
        if self._is_root is None:       # decided once: a recomputation in backward is no root
            object.__setattr__(self, "_is_root", not _IN_FORWARD)
        mp = self.mixed_precision
        cast = mp.cast_root_forward_inputs if self._is_root else mp.cast_forward_inputs
        if cast and mp.param_dtype is not None:
            args, kwargs = _cast_floats((args, kwargs), mp.param_dtype)
        _IN_FORWARD.append(self)
        try:
            return self.module(*args, **kwargs)
        finally:
            _IN_FORWARD.remove(self)

    def named_parameters(self, prefix: str = "", recurse: bool = True,
                         remove_duplicate: bool = True) -> Iterator[tuple[str, Parameter]]:
        """The original names: without `_fsdp_wrapped_module.` (torch's FSDP does the same)."""
        for name, p in super().named_parameters(prefix, recurse, remove_duplicate):
            yield clean_tensor_name(name), p

    def named_buffers(self, prefix: str = "", recurse: bool = True,
                      remove_duplicate: bool = True) -> Iterator[tuple[str, Tensor]]:
        for name, b in super().named_buffers(prefix, recurse, remove_duplicate):
            yield clean_tensor_name(name), b

    def apply(self, fn: Callable[[Module], None]) -> "FullyShardedDataParallel":
        """`fn` on every submodule, with the whole parameters in place (summon_full_params):
        an initialization draws the full tensors, as on one process, and each rank keeps its
        rows (torch's FSDP.apply does the same)."""
        if _SUMMONED:
            return super().apply(fn)
        with FullyShardedDataParallel.summon_full_params(self):
            return super().apply(fn)

    def check_is_root(self) -> bool:
        if self._is_root is None:
            return not any(self in m.modules() for m in _fsdp_modules(self) if m is not self)
        return bool(self._is_root)

    @staticmethod
    def fsdp_modules(module: Module, root_only: bool = False) -> list["FullyShardedDataParallel"]:
        """The FSDP units in `module` (maybe itself); with root_only the outermost ones."""
        units = _fsdp_modules(module)
        if root_only:
            inner = {id(m) for u in units for m in u.module.modules()}
            units = [u for u in units if id(u) not in inner]
        return units

    # ------------------------------------------------------------------ gradients
    @contextlib.contextmanager
    def no_sync(self):
        """Backward inside accumulates local (full) gradients without reducing them; the
        first backward after it reduces their sum (torch's no_sync)."""
        units = _fsdp_modules(self)
        for unit in units:
            unit._set_sync(False)
        try:
            yield
        finally:
            for unit in units:
                unit._set_sync(True)

    def _set_sync(self, sync: bool) -> None:
        object.__setattr__(self, "_sync_gradients", sync)
        if self._sharded_module is not None:
            self._sharded_module.set_requires_gradient_sync(sync, recurse=False)

    def clip_grad_norm_(self, max_norm: float, norm_type: float = 2.0) -> Tensor:
        """Clip the gradients of all ranks by their joint norm (every rank's shard counts);
        returns that norm, the same on every rank."""
        return kiln.nn.utils.clip_grad_norm_(list(self.parameters()), max_norm,
                                             norm_type=norm_type)

    def _setup_no_shard(self, params: list[Parameter], mp: MixedPrecision) -> None:
        if mp.param_dtype is not None and any(p.dtype is not mp.param_dtype for p in params):
            raise ValueError("FullyShardedDataParallel: NO_SHARD with a MixedPrecision "
                             "param_dtype other than the parameters' dtype is not built in "
                             "kiln; use FULL_SHARD or SHARD_GRAD_OP for mixed precision")
        if self.cpu_offload.offload_params and any(p.device.type != "cpu" for p in params):
            raise RuntimeError("FullyShardedDataParallel: CPUOffload for cuda parameters is "
                               "not built in kiln")
        object.__setattr__(self, "_replicated", params)
        for p in params:
            if p.requires_grad:
                autograd.register_post_accumulate_grad_hook(p, lambda _t: self._arm_all_reduce())

    def _arm_all_reduce(self) -> None:
        if self._sync_gradients and self._all_reduce_grads not in autograd._QUEUED:
            autograd.queue_callback(self._all_reduce_grads)

    def _all_reduce_grads(self) -> None:
        """NO_SHARD: average this unit's gradients over the ranks (in `reduce_dtype`), once
        the backward that produced them has finished."""
        grads = [p.grad for p in self._replicated if p.grad is not None]
        if not grads or pg.get_world_size() == 1:
            return
        reduce_dtype = self.mixed_precision.reduce_dtype or self.mixed_precision.param_dtype
        wire = reduce_dtype or grads[0].dtype
        if wire in (kiln.float16, kiln.bfloat16):       # MPI has no 16-bit float sum
            wire = kiln.float32
        with kiln.no_grad():
            flat = kiln.cat([g.reshape(-1).to(wire) for g in grads])
            C.all_reduce(flat, op=ReduceOp.AVG)
            off = 0
            for g in grads:
                part = flat[off:off + g.numel()].reshape(g.shape)
                if reduce_dtype is not None and reduce_dtype is not wire:
                    part = part.to(reduce_dtype)
                g.copy_(part.to(g.dtype))
                off += g.numel()

    # ------------------------------------------------------------------ state dicts
    @staticmethod
    def set_state_dict_type(module: Module, state_dict_type: StateDictType,
                            state_dict_config: StateDictConfig | None = None,
                            optim_state_dict_config: OptimStateDictConfig | None = None
                            ) -> StateDictSettings:
        """Make every FSDP unit in `module` return `state_dict_type` state dicts; returns the
        previous settings."""
        if not isinstance(state_dict_type, StateDictType):
            raise TypeError(f"set_state_dict_type: expected a StateDictType, got "
                            f"{state_dict_type!r}")
        units = _fsdp_modules(module)
        if not units:
            raise ValueError(f"set_state_dict_type: {type(module).__name__} holds no "
                             "FullyShardedDataParallel module")
        previous = FullyShardedDataParallel.get_state_dict_type(module)
        model_cls, optim_cls = _DEFAULT_CONFIGS[state_dict_type]
        config = state_dict_config if state_dict_config is not None else model_cls()
        optim_config = optim_state_dict_config if optim_state_dict_config is not None \
            else optim_cls()
        if not isinstance(config, model_cls):
            raise ValueError(f"set_state_dict_type: {state_dict_type} takes a "
                             f"{model_cls.__name__}, got {type(config).__name__}")
        if not isinstance(optim_config, optim_cls):
            raise ValueError(f"set_state_dict_type: {state_dict_type} takes a "
                             f"{optim_cls.__name__}, got {type(optim_config).__name__}")
        for unit in units:
            object.__setattr__(unit, "_state_dict_type", state_dict_type)
            object.__setattr__(unit, "_state_dict_config", config)
            object.__setattr__(unit, "_optim_state_dict_config", optim_config)
        return previous

    @staticmethod
    def get_state_dict_type(module: Module) -> StateDictSettings:
        units = _fsdp_modules(module)
        if not units:
            raise ValueError(f"get_state_dict_type: {type(module).__name__} holds no "
                             "FullyShardedDataParallel module")
        first = units[0]
        for unit in units[1:]:
            if unit._state_dict_type is not first._state_dict_type:
                raise RuntimeError("get_state_dict_type: the FSDP units of this model have "
                                   "different state dict types; set one with "
                                   "FSDP.set_state_dict_type(model, ...)")
        return StateDictSettings(first._state_dict_type, first._state_dict_config,
                                 first._optim_state_dict_config)

    @staticmethod
    @contextlib.contextmanager
    def state_dict_type(module: Module, state_dict_type: StateDictType,
                        state_dict_config: StateDictConfig | None = None,
                        optim_state_dict_config: OptimStateDictConfig | None = None):
        """set_state_dict_type inside the `with` block, the previous settings after it."""
        previous = FullyShardedDataParallel.set_state_dict_type(
            module, state_dict_type, state_dict_config, optim_state_dict_config)
        try:
            yield
        finally:
            FullyShardedDataParallel.set_state_dict_type(
                module, previous.state_dict_type, previous.state_dict_config,
                previous.optim_state_dict_config)

    def _state_dict_pre_hook(self, prefix: str, keep_vars: bool) -> None:
        object.__setattr__(self, "_keep_vars", keep_vars)

    def _state_dict_post_hook(self, destination: dict, prefix: str, _meta) -> None:
        """Drop the `_fsdp_wrapped_module.` in this unit's keys and give its sharded values
        the state dict type's form: gathered (FULL), DTensors (SHARDED), this rank's rows
        (LOCAL). Units inside ran first, so this sees their keys already done."""
        inner = prefix + FSDP_PREFIX
        kind, config = self._state_dict_type, self._state_dict_config
        drop = (not self._keep_vars and kind is StateDictType.FULL_STATE_DICT and
                getattr(config, "rank0_only", False) and pg.get_rank() != 0)
        items = list(destination.items())
        destination.clear()
        for key, value in items:
            if key.startswith(inner):
                key = prefix + key[len(inner):]
                if not self._keep_vars:
                    value = _state_value(value, kind, config.offload_to_cpu)
                    orig = self._buffer_dtypes.get(key[len(prefix):])
                    if orig is not None and kind is StateDictType.FULL_STATE_DICT:
                        value = value.to(orig)
                    if drop:        # gathered first: every rank takes part in the gather
                        continue
            destination[key] = value

    def _load_pre_hook(self, state_dict: dict, prefix: str, *_args) -> None:
        """When a module holding this unit loads (a plain root around FSDP units; an FSDP
        root loads by its own load_state_dict): the model's keys get their wrapper prefixes
        back, and whole tensors become this rank's rows of the shards they load into."""
        for unit in _fsdp_modules(self):
            if unit._sharded_module is not None:
                unit._sharded_module.reshard()
        kind = self._state_dict_type
        for module_prefix, m in Module.named_modules(self):
            here = module_prefix + "." if module_prefix else ""
            entries = list(m._parameters.items()) + [
                (k, b) for k, b in m._buffers.items() if k not in m._non_persistent_buffers_set]
            for name, target in entries:
                raw = here + name
                clean = clean_tensor_name(raw)
                if target is None or raw == clean or prefix + clean not in state_dict or \
                        prefix + raw in state_dict:
                    continue
                value = state_dict.pop(prefix + clean)
                state_dict[prefix + raw] = _rows_for(target, value, kind)

    def load_state_dict(self, state_dict: dict, strict: bool = True, assign: bool = False):
        """Load a state dict of this model's keys: whole tensors (FULL_STATE_DICT; each rank
        takes its rows), DTensors (SHARDED_STATE_DICT) or this rank's rows
        (LOCAL_STATE_DICT). Returns (missing_keys, unexpected_keys)."""
        if not isinstance(state_dict, dict):
            raise TypeError(f"Expected state_dict to be dict-like, got {type(state_dict)}.")
        for unit in _fsdp_modules(self):     # the shards must be what the modules hold
            if unit._sharded_module is not None:
                unit._sharded_module.reshard()
        given = {clean_tensor_name(k): v for k, v in state_dict.items()}
        targets = self.state_dict(keep_vars=True)
        missing = [k for k in targets if k not in given]
        unexpected = [k for k in given if k not in targets]
        errors = []
        kind = self._state_dict_type
        with kiln.no_grad():
            for key, target in targets.items():
                if key in given:
                    error = _load_value(key, target, given[key], kind)
                    if error:
                        errors.append(error)
        if strict:
            if unexpected:
                errors.insert(0, "Unexpected key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in unexpected)))
            if missing:
                errors.insert(0, "Missing key(s) in state_dict: {}. ".format(
                    ", ".join(f'"{k}"' for k in missing)))
        if errors:
            raise RuntimeError("Error(s) in loading state_dict for FullyShardedDataParallel:"
                               "\n\t" + "\n\t".join(errors))
        return _IncompatibleKeys(missing, unexpected)

    @staticmethod
    @contextlib.contextmanager
    def summon_full_params(module: Module, recurse: bool = True, writeback: bool = True,
                           rank0_only: bool = False, offload_to_cpu: bool = False,
                           with_grads: bool = False):
        """Inside, the modules hold their whole parameters (gathered from every rank); with
        `writeback`, changes made to them are written to the shards on exit. `rank0_only`
        and `offload_to_cpu` are accepted (every rank gets the parameters where they are)."""
        if with_grads:
            raise ValueError("summon_full_params: with_grads=True is not built in kiln; "
                             "gather gradients with p.grad.full_tensor()")
        units = [u._sharded_module for u in _fsdp_modules(module)
                 if u._sharded_module is not None]
        for unit in units:
            unit.unshard()
        _SUMMONED.append(module)
        # keyed by unit and name: nested units' names repeat ("w1.weight" in every block)
        full = {(id(unit), name): p for unit in units for name, p in unit.named_parameters()}
        try:
            yield
        finally:
            _SUMMONED.remove(module)
            world, rank = pg.get_world_size(), pg.get_rank()
            rows = {key: local_chunk(p._data, 0, world, rank).copy()
                    for key, p in full.items()
                    if writeback and p.ndim > 0 and p._data.size}
            for unit in units:
                unit.reshard()
            for unit in units:
                for name, p in unit.named_parameters():
                    key = (id(unit), name)
                    if isinstance(p, DTensor) and key in rows and \
                            rows[key].shape == p._data.shape:
                        p._data[...] = rows[key]
                        p._version[0] += 1

    # ------------------------------------------------------------------ optimizer state
    @staticmethod
    def optim_state_dict(model: Module, optim, optim_state_dict: dict | None = None,
                         group=None) -> dict:
        """The optimizer's state keyed by parameter name, in the form the model's state dict
        type says: whole state tensors (FULL_STATE_DICT; `{}` on ranks but 0 with
        `rank0_only`), DTensors (SHARDED) or this rank's rows (LOCAL). It is read from `optim`
        itself; a given `optim_state_dict` is not used."""
        settings = FullyShardedDataParallel.get_state_dict_type(model)
        kind, config = settings.state_dict_type, settings.optim_state_dict_config
        full = kind is StateDictType.FULL_STATE_DICT
        osd = dsd.get_optimizer_state_dict(
            model, optim, options=dsd.StateDictOptions(full_state_dict=full))
        if full and getattr(config, "rank0_only", False) and pg.get_rank() != 0:
            return {}
        if kind is StateDictType.LOCAL_STATE_DICT:
            osd = dsd._map_tensors(osd, lambda t: t.to_local() if isinstance(t, DTensor)
                                   else t)
        if config.offload_to_cpu:
            osd = dsd._map_tensors(osd, lambda t: _to_cpu(t))
        return osd

    @staticmethod
    def optim_state_dict_to_load(model: Module, optim, optim_state_dict: dict,
                                 is_named_optimizer: bool = False, load_directly: bool = False,
                                 group=None) -> dict:
        """`optim_state_dict` (from optim_state_dict: whole, DTensor or local state) as a
        state dict `optim.load_state_dict` takes: indexed by parameter, this rank's rows."""
        osd = _to_load(model, optim, optim_state_dict)
        if load_directly:
            optim.load_state_dict(osd)
        return osd

    @staticmethod
    def full_optim_state_dict(model: Module, optim, optim_input=None, rank0_only: bool = True,
                              group=None) -> dict:
        """The whole optimizer state keyed by parameter name (older name); `{}` on ranks but
        0 with rank0_only."""
        osd = dsd.get_optimizer_state_dict(
            model, optim, options=dsd.StateDictOptions(full_state_dict=True))
        return {} if rank0_only and pg.get_rank() != 0 else osd

    @staticmethod
    def sharded_optim_state_dict(model: Module, optim, group=None) -> dict:
        """The optimizer state keyed by parameter name, sharded state as DTensors."""
        return dsd.get_optimizer_state_dict(model, optim)

    @staticmethod
    def shard_full_optim_state_dict(full_optim_state_dict: dict, model: Module,
                                    optim_input=None, optim=None) -> dict:
        """A full optimizer state dict (every rank has it) as this rank's loadable one."""
        return _to_load(model, optim, full_optim_state_dict)

    @staticmethod
    def scatter_full_optim_state_dict(full_optim_state_dict: dict | None, model: Module,
                                      optim_input=None, optim=None, group=None) -> dict:
        """Rank 0's full optimizer state dict (the others may pass None) as each rank's
        loadable one: `optim.load_state_dict(FSDP.scatter_full_optim_state_dict(osd, model))`."""
        full = dsd._broadcast_tree(full_optim_state_dict if pg.get_rank() == 0 else None)
        return _to_load(model, optim, full)

    @staticmethod
    def rekey_optim_state_dict(optim_state_dict: dict, optim_state_key_type: OptimStateKeyType,
                               model: Module, optim_input=None, optim=None) -> dict:
        """`optim_state_dict` keyed the other way: by parameter name (PARAM_NAME, as FSDP's
        full optimizer state dicts) or by index (PARAM_ID, as `optim.state_dict()`; indices
        in `optim`'s order, or `model.parameters()`'s). Moves state between FSDP and plain
        models."""
        if not isinstance(optim_state_key_type, OptimStateKeyType):
            raise TypeError(f"rekey_optim_state_dict: expected an OptimStateKeyType, got "
                            f"{optim_state_key_type!r}")
        params = dsd._indexed(optim) if optim is not None else _unique(model.parameters())
        names = {id(p): clean_tensor_name(n) for n, p in Module.named_parameters(model)}
        by_index = [names[id(p)] for p in params]
        by_name = {n: i for i, n in enumerate(by_index)}

        def key(k):
            if optim_state_key_type is OptimStateKeyType.PARAM_NAME:
                return by_index[k] if isinstance(k, int) else k
            return by_name[k] if isinstance(k, str) else k
        try:
            state = {key(k): v for k, v in optim_state_dict.get("state", {}).items()}
            groups = [{**g, "params": [key(k) for k in g["params"]]}
                      for g in optim_state_dict.get("param_groups", [])]
        except (KeyError, IndexError) as exc:
            raise ValueError(f"rekey_optim_state_dict: the state dict names parameter {exc} "
                             f"that the model (of {len(params)} parameters) does not have") \
                from None
        return {"state": state, "param_groups": groups}

    def register_comm_hook(self, state: object, hook: Callable) -> None:
        raise NotImplementedError("FullyShardedDataParallel.register_comm_hook: communication "
                                  "hooks are not built in kiln; gradients are reduce-scattered "
                                  "(all-reduced for NO_SHARD) averaged, in reduce_dtype")


# ----------------------------------------------------------------------------- helpers

def _effective_strategy(strategy: ShardingStrategy) -> ShardingStrategy:
    """The strategy to run. The hybrid ones shard within a node and replicate across nodes:
    with every rank on one node that is FULL_SHARD (SHARD_GRAD_OP for _HYBRID_SHARD_ZERO2);
    across nodes it needs a 2-D mesh, which kiln does not have."""
    if not isinstance(strategy, ShardingStrategy):
        raise TypeError(f"FullyShardedDataParallel: sharding_strategy must be a "
                        f"ShardingStrategy, got {strategy!r}")
    if strategy not in (ShardingStrategy.HYBRID_SHARD, ShardingStrategy._HYBRID_SHARD_ZERO2):
        return strategy
    world = pg.get_world_size()
    node = int(os.environ.get("LOCAL_WORLD_SIZE") or 0)
    if world == 1 or node == world:
        return ShardingStrategy.FULL_SHARD if strategy is ShardingStrategy.HYBRID_SHARD \
            else ShardingStrategy.SHARD_GRAD_OP
    raise ValueError(f"FullyShardedDataParallel: {strategy} shards within a node and "
                     f"replicates across nodes ({world} ranks, {node or 'unknown'} per node), "
                     "which needs a 2-D device mesh; kiln's meshes are 1-D. Use "
                     "ShardingStrategy.FULL_SHARD (or SHARD_GRAD_OP, NO_SHARD)")


def _fsdp_modules(module: Module) -> list[FullyShardedDataParallel]:
    return [m for m in module.modules() if isinstance(m, FullyShardedDataParallel)]


def _unique(params) -> list:
    seen, out = set(), []
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _ignored(module: Module, ignored_modules, ignored_states) -> dict:
    modules, params = list(ignored_modules or ()), []
    for item in ignored_states or ():
        (modules if isinstance(item, Module) else params).append(item)
    for m in modules:
        if isinstance(m, FullyShardedDataParallel):
            raise ValueError("FullyShardedDataParallel: ignored_modules may not hold FSDP "
                             "modules")
        params.extend(m.parameters())
    return {"modules": modules, "params": params}


def _device_of(device_id):
    if device_id is None:
        return None
    if isinstance(device_id, int):
        return kiln.device("cuda", device_id)
    return kiln.device(str(device_id))


def _materialize(module: Module, param_init_fn, device_id, ignored: list[Module]) -> None:
    """Meta-device tensors get memory, as torch's FSDP1 gives it: `param_init_fn(m)` for every
    submodule `m` (breadth first, ignored modules left out), or else `to_empty` +
    `reset_parameters()` on each submodule that holds tensors itself. With `device_id` the
    module then moves there."""
    device = _device_of(device_id)
    skip = {id(m) for m in ignored}
    order, queue = [], [module]         # breadth first, stopping at units and ignored modules
    while queue:
        m = queue.pop(0)
        order.append(m)
        queue.extend(c for c in m.children()
                     if id(c) not in skip and not isinstance(c, FullyShardedDataParallel))
    own = [t for m in order for t in list(m.parameters(recurse=False)) +
           list(m.buffers(recurse=False))]
    if any(t.device.type == "meta" for t in own):
        for m in order:
            if param_init_fn is not None:
                param_init_fn(m)
            elif list(m.parameters(recurse=False)) or list(m.buffers(recurse=False)):
                m.to_empty(device=device or kiln.device("cpu"), recurse=False)
                if hasattr(m, "reset_parameters"):
                    with kiln.no_grad():
                        m.reset_parameters()
    if device is not None:
        module.to(device)


def _broadcast_from_rank0(module: Module) -> None:
    """sync_module_states: every rank takes rank 0's parameters and buffers (those not in a
    unit inside `module`: a unit syncs its own before sharding them)."""
    if pg.get_world_size() == 1:
        return
    own = [t for _, m in _own_modules(module) for t in list(m.parameters(recurse=False)) +
           list(m.buffers(recurse=False))]
    for t in _unique(own):
        data = t.device.xp.ascontiguousarray(t._data)       # a copy only if it is a view
        broadcast_bytes(data, t.device, 0)
        if data is not t._data:
            t._data[...] = data
        t._version[0] += 1


def _cast_buffers(module: Module, dtype) -> dict[str, object]:
    """Cast the floating-point buffers of `module` that are not in a unit inside it to
    `dtype`; returns {name: original dtype} of those cast."""
    cast: dict[str, object] = {}
    if dtype is None:
        return cast
    for prefix, m in _own_modules(module):
        for name, b in m._buffers.items():
            if b is not None and b.is_floating_point() and b.dtype is not dtype:
                cast[clean_tensor_name(prefix + name)] = b.dtype    # as state_dict keys
                m._buffers[name] = b.to(dtype)
    return cast


def _own_modules(module: Module, prefix: str = "") -> Iterator[tuple[str, Module]]:
    """(dotted prefix, module) for `module` and its descendants outside nested FSDP units."""
    yield prefix, module
    for name, child in module.named_children():
        if not isinstance(child, FullyShardedDataParallel):
            yield from _own_modules(child, f"{prefix}{name}.")


def _to_cpu(t: Tensor) -> Tensor:
    if t.device.type == "cpu":
        return t
    if isinstance(t, DTensor):
        local = t.to_local().cpu()
        return DTensor._wrap(local._data, t.dtype, local.device, t.device_mesh, t.placements,
                             tuple(t.global_shape))
    return t.cpu()


def _state_value(value, kind: StateDictType, offload: bool):
    """A state dict value (a DTensor view of a shard, or a plain tensor) in `kind`'s form."""
    if isinstance(value, DTensor):
        if kind is StateDictType.FULL_STATE_DICT:
            value = value.full_tensor()
        elif kind is StateDictType.LOCAL_STATE_DICT:
            value = value.to_local()
    return _to_cpu(value) if offload and isinstance(value, Tensor) else value


def _rows_for(target: Tensor, value, kind: StateDictType):
    """`value` as `target` holds it: this rank's rows of a whole tensor or a DTensor when
    `target` is a shard (a plain tensor of its local shape), else `value` itself."""
    if not isinstance(value, Tensor):
        return value
    if isinstance(value, DTensor):
        value = value.to_local() if isinstance(target, DTensor) and \
            value.placements == target.placements else value.full_tensor()
    if not isinstance(target, DTensor):
        return value
    local, whole = tuple(target.shape), tuple(target.global_shape)
    shape = tuple(value.shape)
    if shape == whole and (kind is StateDictType.FULL_STATE_DICT or shape != local):
        placement = target.placements[0]
        if placement.is_shard():
            rows = local_chunk(value.detach()._data, placement.dim, target.device_mesh.size(),
                               target.device_mesh.get_rank())
            value = Tensor._make(rows, value.dtype, value.device)
    return value


def _load_value(key: str, target: Tensor, value, kind: StateDictType) -> str | None:
    """Write `value` into `target` (a shard or a whole tensor); an error message, or None."""
    if not isinstance(value, Tensor):
        return (f'While copying the parameter named "{key}", expected Tensor from checkpoint '
                f"but received {type(value)}")
    data = _rows_for(target, value, kind).detach().to(target.device).to(target.dtype)._data
    local, whole = tuple(target.shape), tuple(getattr(target, "global_shape", target.shape))
    if tuple(data.shape) != local:
        return (f"size mismatch for {key}: copying a param with shape {list(value.shape)} "
                f"from checkpoint, the shape in current model is {list(whole)} (this rank's "
                f"rows: {list(local)}).")
    target._data[...] = data
    target._version[0] += 1
    return None


def _to_load(model: Module, optim, osd: dict) -> dict:
    """A name-keyed optimizer state dict as an index-keyed one with this rank's rows. The
    indices are `optim`'s order, or (optim None) `model.parameters()`'s, as torch's."""
    names = dsd._param_names(model)
    if optim is not None:
        params = dsd._indexed(optim)
        group_params = [g["params"] for g in optim.param_groups]
    else:
        params = _unique(model.parameters())
        group_params = None
    opts = dsd.StateDictOptions(full_state_dict=True)
    index = {id(p): i for i, p in enumerate(params)}
    by_name = {dsd._name_of(names, p, "optim_state_dict_to_load"): p for p in params}
    saved_state, saved_groups = osd.get("state", {}), osd.get("param_groups", [])
    state: dict[int, Any] = {}
    for name, entry in saved_state.items():
        p = by_name.get(name)
        if p is None:
            raise ValueError(f"optim_state_dict_to_load: the state dict has state for "
                             f"{name!r}, which is not a parameter of the model")
        state[index[id(p)]] = {k: dsd._local_like(v, p, opts, f"{name}.{k}")
                               for k, v in entry.items()}
    groups = []
    if group_params is None:
        for g in saved_groups:
            packed = {k: v for k, v in g.items() if k != "params"}
            packed["params"] = [index[id(by_name[n])] for n in g["params"]]
            groups.append(packed)
    else:
        for plist in group_params:
            first = dsd._name_of(names, plist[0], "optim_state_dict_to_load") if plist \
                else None
            match = [g for g in saved_groups if first in g["params"]]
            if not match:
                raise ValueError(f"optim_state_dict_to_load: no saved param group holds "
                                 f"parameter {first}; the state dict comes from another model "
                                 "or optimizer")
            packed = {k: v for k, v in match[0].items() if k != "params"}
            packed["params"] = [index[id(p)] for p in plist]
            groups.append(packed)
    return {"state": state, "param_groups": groups}
