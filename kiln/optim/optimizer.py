"""The optimizer base class: parameter groups, per-parameter state and PyTorch's state_dict."""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict, defaultdict
from copy import deepcopy
from itertools import chain
import math
import sys
from typing import Any, Callable, Iterable

import kiln
from kiln import Tensor
from kiln.compiler import (active_traces, as_number, is_compiling, note_grad_cleared,
                           note_grads_checked, note_item_read, note_item_write, note_python_read,
                           note_state_read, scalar_input)

ParamsT = Iterable[Tensor] | Iterable[dict[str, Any]]


class _Required:
    """Marks a hyper-parameter that has no default and must be given (PyTorch's `required`)."""

    def __repr__(self) -> str:
        return "<required parameter>"


required = _Required()

# Numbers a compiled step reads from a group on every call (`_hyper`), so that a scheduler
# changing them does not retrace. Code other than the optimizer's and the schedulers' steps
# that reads one while tracing (to log it, return it, scale a loss by it) may bake it into the
# trace, so a group tells the trace, and that call keeps a guard on its value instead.
_RUN_TIME_KEYS = frozenset({"lr", "betas", "momentum"})
_INSIDE = threading.local()        # depth of optimizer and scheduler steps on this thread


class _ParamGroup(dict):
    """A parameter group (a dict, as PyTorch's) that tells a trace in progress of every read
    of its run-time numbers (`note_item_read`: a traced call that read none of them, a branch
    that does not step, is not guarded on them), of user code's reads (`note_python_read`) and
    of user code's writes (`note_item_write`: a step then computes with what the call set; a
    scheduler's writes are repeated by each replay, `replay_after`).
    Its Python `__iter__` makes `dict(group)`, `{**group}` and `f(**group)` read through
    `__getitem__`; `items`, `values` and `copy` tell of all of them."""

    __slots__ = ()
    _kiln_noted_keys = _RUN_TIME_KEYS

    def __getitem__(self, key):
        if key in _RUN_TIME_KEYS:
            _read(self, key)
        return dict.__getitem__(self, key)

    def __setitem__(self, key, value):
        if key in _RUN_TIME_KEYS and is_compiling() and not _library_depth():
            note_item_write(self, key)
        dict.__setitem__(self, key, value)

    def update(self, *args, **kwargs):
        for key, value in dict(*args, **kwargs).items():
            self[key] = value

    def __ior__(self, other):
        self.update(other)
        return self

    def get(self, key, default=None):
        return self[key] if key in self else default

    def setdefault(self, key, default=None):
        if key in _RUN_TIME_KEYS:
            _read(self, key)
            if key not in self and is_compiling() and not _library_depth():
                note_item_write(self, key)
        return dict.setdefault(self, key, default)

    def __iter__(self):
        return dict.__iter__(self)

    def items(self):
        _read_all(self)
        return dict.items(self)

    def values(self):
        _read_all(self)
        return dict.values(self)

    def copy(self):
        _read_all(self)
        return dict.copy(self)

    def __reduce_ex__(self, protocol):           # pickles as a plain dict (safe loaders)
        return dict, (dict(self),)

    def __deepcopy__(self, memo):
        return _ParamGroup(deepcopy(dict(self), memo))


def _read(group: _ParamGroup, key) -> None:
    if is_compiling():
        note_item_read(group, key)
        if not _library_depth() or not _read_by_kiln():
            note_python_read(group, key)


def _read_all(group: _ParamGroup) -> None:
    for key in _RUN_TIME_KEYS:
        if key in group:
            _read(group, key)


def _read_by_kiln() -> bool:
    """Whether the group read being noted comes from kiln's own code (an optimizer's or a
    scheduler's step, which lifts the numbers it computes with) rather than a user's: a
    subclass's `step` that reads `group["lr"]` into Python after `super().step()` runs inside
    the library's step too, and what it bakes in must be guarded."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_code in _GROUP_CODE:
        frame = frame.f_back
    return frame is not None and frame.f_globals.get("__name__", "").startswith("kiln.")


# the frames a group read passes through on its way to `_read` (skipped to find the reader)
_GROUP_CODE = frozenset(f.__code__ for f in (
    _ParamGroup.__getitem__, _ParamGroup.get, _ParamGroup.setdefault, _ParamGroup.items,
    _ParamGroup.values, _ParamGroup.copy, _read, _read_all))


def _library_depth() -> int:
    """How many optimizer and scheduler steps this thread is inside (SequentialLR steps the
    schedulers it holds; 0: user code)."""
    return getattr(_INSIDE, "depth", 0)


def _user_read(container, key, value=None) -> None:
    """Tell a trace in progress that user code (not an optimizer's or a scheduler's step) read
    `container[key]` or `container.key` (`value`) into Python."""
    if not _library_depth() and is_compiling():
        note_python_read(container, key, value)


class _LibraryStep:
    """`with _LIBRARY_STEP:` around an optimizer's or a scheduler's step: its group reads are the
    library's, not user code's."""

    def __enter__(self) -> None:
        _INSIDE.depth = getattr(_INSIDE, "depth", 0) + 1

    def __exit__(self, *exc) -> None:
        _INSIDE.depth -= 1


_LIBRARY_STEP = _LibraryStep()

_SET_MESSAGE = ("optimizer parameters need to be organized in ordered collections, but the "
                "ordering of tensors in sets will change between runs. Please use a list instead.")


class Optimizer:
    """Base class of optimizers (`torch.optim.Optimizer`).

    Subclasses pass their hyper-parameter defaults and implement `step`. Updates run under
    `kiln.no_grad()` with in-place tensor ops only, so a traced training step can fuse them.
    """

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "step" in cls.__dict__:
            cls.step = _with_step_hooks(cls.__dict__["step"])

    def __init__(self, params: ParamsT, defaults: dict[str, Any]):
        self._optimizer_step_pre_hooks: dict = OrderedDict()
        self._optimizer_step_post_hooks: dict = OrderedDict()
        self._optimizer_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_state_dict_post_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks: dict = OrderedDict()
        self._optimizer_load_state_dict_post_hooks: dict = OrderedDict()
        self.defaults = defaults
        self.state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        self.param_groups: list[dict[str, Any]] = []
        if isinstance(params, Tensor):
            raise TypeError("params argument given to the optimizer should be an iterable of "
                            "Tensors or dicts, but got " + type(params).__name__)
        if isinstance(params, set):
            raise TypeError(_SET_MESSAGE)
        groups = list(params)
        if not groups:
            raise ValueError("optimizer got an empty parameter list")
        if not isinstance(groups[0], dict):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)

    @property
    def state(self) -> defaultdict[Tensor, dict[str, Any]]:
        """The per-parameter state, kept in `__dict__`; a read is told to a trace in progress,
        so that kiln.compile guards the state of the optimizers a call read, not of every one it
        can reach (a closure that only calls `zero_grad()`: each L-BFGS step changes the state's
        counters outside it)."""
        if active_traces[0]:
            note_state_read(self)
        try:
            return self.__dict__["state"]
        except KeyError:        # (Optimizer.__init__ not run yet)
            raise AttributeError("state") from None

    @state.setter
    def state(self, value) -> None:
        self.__dict__["state"] = value

    state.fget.tells_reads = True       # (what guards look for: see `note_state_read`)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group of parameters with its own options; missing options take the defaults."""
        if not isinstance(param_group, dict):
            raise TypeError(f"param_group must be a dict, but got {type(param_group).__name__}")
        params = param_group["params"]
        if isinstance(params, Tensor):
            params = [params]
        elif isinstance(params, set):
            raise TypeError(_SET_MESSAGE)
        params = list(params)
        for p in params:
            if not isinstance(p, Tensor):
                raise TypeError(f"optimizer can only optimize Tensors, but one of the params is "
                                f"{type(p).__name__}")
            if not p.is_leaf:
                raise ValueError("can't optimize a non-leaf Tensor")
        group = _ParamGroup(param_group, params=params)
        for name, default in self.defaults.items():
            if default is required and name not in group:
                raise ValueError(f"parameter group didn't specify a value of required "
                                 f"optimization parameter {name}")
            group.setdefault(name, default)
        if len({id(p) for p in params}) != len(params):
            raise ValueError("optimizer contains a parameter group with duplicate parameters")
        seen = {id(p) for g in self.param_groups for p in g["params"]}
        if any(id(p) in seen for p in params):
            raise ValueError("some parameters appear in more than one parameter group")
        self.param_groups.append(group)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of all parameters: to None (default) or to zeros."""
        for group in self.param_groups:
            for p in group["params"]:
                if set_to_none:
                    note_grad_cleared(p)
                    p.grad = None
                elif p.grad is not None:
                    if p.grad.grad_fn is not None:
                        p.grad.detach_()
                    else:
                        p.grad.requires_grad_(False)
                    p.grad.zero_()

    # an optimizer with a fused update on cuda (`_fused_update(params, group)`: one launch for
    # a device's and dtype's parameters) names the hyperparameters it reads (`_use_fused`)
    _fused_hypers: tuple | None = None

    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient: through `_update(p, group)`, or
        `_fused_update` for the parameters a fused update takes (see `_use_fused`)."""
        loss = self._run_closure(closure)
        note_grads_checked()
        capturing = _capture_check(self)
        with kiln.no_grad():
            for group in self.param_groups:
                fused = not capturing and self._fused_hypers is not None and \
                    _use_fused(group, self._fused_hypers)
                _STEPS.on_device = capturing or _capturable_on_cuda(group)
                try:
                    batch = []
                    for p in group["params"]:
                        if p.grad is None:
                            continue
                        if p.grad.is_sparse:
                            self._check_sparse_grad(group)
                        if fused and _fusable(p):
                            batch.append(p)
                        elif p.dtype.is_complex:
                            self._update_as_real(p, group)
                        else:
                            self._update(p, group)
                    for params in _fused_buckets(batch):
                        self._fused_update(params, group)
                finally:
                    _STEPS.on_device = False
        return loss

    def _update_as_real(self, p: Tensor, group: dict) -> None:
        """The update of a complex parameter, as PyTorch's optimizers make it: on the real views
        (view_as_real) of the parameter, its gradient and its state, so that Adam's second
        moment is per real and imaginary part, not a complex square. The views share memory
        with the complex tensors, which stay what `state` holds (complex, as in PyTorch)."""
        real = kiln.view_as_real(p)
        real.grad = kiln.view_as_real(p.grad)
        state = self.state.pop(p, {})
        self.state[real] = {k: kiln.view_as_real(v) if isinstance(v, Tensor) and v.is_complex()
                            else v for k, v in state.items()}
        try:
            self._update(real, group)
        finally:
            moved = self.state.pop(real, {})
            self.state[p] = {k: kiln.view_as_complex(v) if isinstance(v, Tensor) and
                             tuple(v.shape) == tuple(real.shape) and v.is_floating_point()
                             else v for k, v in moved.items()}

    def _update(self, p: Tensor, group: dict) -> None:
        raise NotImplementedError(f"{type(self).__name__} must define step or _update")

    def _check_sparse_grad(self, group: dict) -> None:
        """Before updating a parameter whose gradient is sparse: PyTorch's error for an
        optimizer that takes none (SGD and Adagrad override this; `_grad` makes such a gradient
        dense for their update, which is the same arithmetic)."""
        raise RuntimeError(f"{type(self).__name__} does not support sparse gradients")

    def _run_closure(self, closure):
        if closure is None:
            return None
        with kiln.enable_grad():
            return closure()

    # ----------------------------------------------------------------------- hooks
    def register_step_pre_hook(self, hook: Callable):
        """`hook(optimizer, args, kwargs)` before each step; may return new (args, kwargs)."""
        return _hook_handle(self, "_optimizer_step_pre_hooks", hook)

    def register_step_post_hook(self, hook: Callable):
        """`hook(optimizer, args, kwargs)` after each step."""
        return _hook_handle(self, "_optimizer_step_post_hooks", hook)

    def register_state_dict_pre_hook(self, hook: Callable, prepend: bool = False):
        """`hook(optimizer)` before state_dict()."""
        return _hook_handle(self, "_optimizer_state_dict_pre_hooks", hook, prepend)

    def register_state_dict_post_hook(self, hook: Callable, prepend: bool = False):
        """`hook(optimizer, state_dict)` after state_dict(); a non-None result replaces it."""
        return _hook_handle(self, "_optimizer_state_dict_post_hooks", hook, prepend)

    def register_load_state_dict_pre_hook(self, hook: Callable, prepend: bool = False):
        """`hook(optimizer, state_dict)` before loading; a non-None result is loaded instead."""
        return _hook_handle(self, "_optimizer_load_state_dict_pre_hooks", hook, prepend)

    def register_load_state_dict_post_hook(self, hook: Callable, prepend: bool = False):
        """`hook(optimizer)` after loading."""
        return _hook_handle(self, "_optimizer_load_state_dict_post_hooks", hook, prepend)

    # ----------------------------------------------------------------------- checkpoints
    def state_dict(self) -> dict[str, Any]:
        for hook in list(_hooks(self, "_optimizer_state_dict_pre_hooks")):
            hook(self)
        result = self._state_dict()
        for hook in list(_hooks(self, "_optimizer_state_dict_post_hooks")):
            out = hook(self, result)
            if out is not None:
                result = out
        return result

    def _state_dict(self) -> dict[str, Any]:
        """`{"state": {index: {...}}, "param_groups": [{..., "params": [indices]}]}`.

        Parameters are numbered in group order, as in PyTorch; the state tensors are the live
        ones (not copies), also as in PyTorch, so save or deep-copy the result to keep it.
        """
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            packed["params"] = [index[id(p)] for p in group["params"]]
            groups.append(packed)
        state = {index[id(p)]: s for p, s in self.state.items() if id(p) in index}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore state saved by `state_dict` into an optimizer over the same parameters."""
        for hook in list(_hooks(self, "_optimizer_load_state_dict_pre_hooks")):
            out = hook(self, state_dict)
            if out is not None:
                state_dict = out
        self._load_state_dict(state_dict)
        for hook in list(_hooks(self, "_optimizer_load_state_dict_post_hooks")):
            hook(self)

    def _load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved_groups = deepcopy(state_dict["param_groups"])
        if len(saved_groups) != len(self.param_groups):
            raise ValueError("loaded state dict has a different number of parameter groups")
        for g, s in zip(self.param_groups, saved_groups):
            if len(g["params"]) != len(s["params"]):
                raise ValueError("loaded state dict contains a parameter group that doesn't "
                                 "match the size of optimizer's group")
        by_index = dict(zip(chain.from_iterable(g["params"] for g in saved_groups),
                            chain.from_iterable(g["params"] for g in self.param_groups)))
        state: defaultdict[Tensor, dict[str, Any]] = defaultdict(dict)
        for key, value in state_dict["state"].items():
            key = int(key) if isinstance(key, str) and key.isdigit() else key
            if key in by_index:
                param = by_index[key]
                state[param] = {k: _cast_state(param, k, v) for k, v in value.items()}
            else:
                state[key] = value
        for g, s in zip(self.param_groups, saved_groups):
            s["params"] = g["params"]
            if isinstance(s.get("betas"), list):   # a JSON round trip turns tuples into lists
                s["betas"] = tuple(s["betas"])
        self.param_groups = [_ParamGroup(s) for s in saved_groups]
        self.state = state

    def __getstate__(self) -> dict[str, Any]:
        return {"defaults": self.defaults, "state": self.state,
                "param_groups": self.param_groups}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __repr__(self) -> str:
        lines = [self.__class__.__name__ + " ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        return "\n".join(lines) + "\n)"


def _hooks(optimizer: Optimizer, registry: str):
    """The hooks in `registry` (an optimizer unpickled without the registries has none)."""
    return optimizer.__dict__.get(registry, {}).values()


def _hook_handle(optimizer: Optimizer, registry: str, hook: Callable, prepend: bool = False):
    from kiln.utils.hooks import RemovableHandle
    hooks = optimizer.__dict__.setdefault(registry, OrderedDict())
    handle = RemovableHandle(hooks)
    hooks[handle.id] = hook
    if prepend:
        hooks.move_to_end(handle.id, last=False)
    return handle


def _with_step_hooks(step: Callable) -> Callable:
    """`step` wrapped to run the optimizer's step pre- and post-hooks around it."""
    @functools.wraps(step)
    def hooked(self, *args, **kwargs):
        for hook in list(_hooks(self, "_optimizer_step_pre_hooks")):
            result = hook(self, args, kwargs)
            if result is not None:
                args, kwargs = result
        with _LIBRARY_STEP:
            out = step(self, *args, **kwargs)
        for hook in list(_hooks(self, "_optimizer_step_post_hooks")):
            hook(self, args, kwargs)
        return out
    hooked._with_hooks = True
    return hooked


def _cast_state(param: Tensor, key: str, value):
    """A copy of one loaded state value on the parameter's device (and dtype, except `step`)."""
    if key == "step":
        # PyTorch keeps the step count as a float32 scalar tensor, whatever the param dtype
        if isinstance(value, Tensor):
            return value.detach().to(device=param.device, dtype=kiln.float32).clone()
        return _scalar_state(param, float(value))
    if isinstance(value, Tensor):
        dtype = param.dtype if param.is_floating_point() else value.dtype
        return value.detach().to(device=param.device, dtype=dtype).clone()
    return deepcopy(value)


def _grad(param: Tensor, maximize: bool) -> Tensor:
    grad = param.grad.to_dense() if param.grad.is_sparse else param.grad
    return -grad if maximize else grad


class _StepCounts(threading.local):
    on_device = False       # step counts are read as tensors (`_step_count`), not into Python


_STEPS = _StepCounts()


def _step_count(step: Tensor):
    """The step count for bias corrections: a Python float in eager mode (as PyTorch reads it);
    a float64 tensor while tracing, while a CUDA graph captures the step, and for a
    `capturable` group on cuda, so such a step never reads a value into Python (a capture
    could not, and a replay would reuse the value read)."""
    if not is_compiling() and not _STEPS.on_device:
        return float(step.item())
    return as_number(step.to(kiln.float64))


def _capturable_on_cuda(group: dict) -> bool:
    return bool(group.get("capturable")) and any(p.is_cuda for p in group["params"])


def _capture_check(optimizer: "Optimizer") -> bool:
    """Whether this step is being captured into a CUDA graph (`kiln.cuda.graph`). An optimizer
    with step counts (one that takes `capturable`) refuses to be captured unless every group is
    `capturable`, as PyTorch's do: a step count read into Python would be baked into the graph,
    and every replay would apply the captured step's bias correction."""
    if is_compiling():
        return False
    if not kiln.cuda.is_current_stream_capturing():
        return False
    if "capturable" in optimizer.defaults and \
            not all(group.get("capturable") for group in optimizer.param_groups):
        raise RuntimeError(f"Attempting CUDA graph capture of step() for an instance of "
                           f"{type(optimizer).__name__} but param_groups' capturable is False. "
                           f"Make it with capturable=True to capture its step.")
    return True


_HYPER_NAMES = {"lr": "learning rate", "eps": "epsilon value"}


def _check_nonnegative(**hypers) -> None:
    """PyTorch's constructor checks, with its messages: each hyperparameter named is >= 0."""
    for key, value in hypers.items():
        if value < 0.0:
            raise ValueError(f"Invalid {_HYPER_NAMES.get(key, key + ' value')}: {value}")


def _check_betas(betas) -> None:
    """Adam's family: each beta in [0, 1)."""
    for i, beta in enumerate(betas):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"Invalid beta parameter at index {i}: {beta}")


def _hyper(group: dict, key: str, param: Tensor):
    """A hyperparameter of `group` as the update reads it: the Python number in eager mode; while
    tracing, a float64 scalar tensor that a compiled step reads from `group[key]` on every call,
    so a scheduler that changes it between steps does not make the step trace again. (A group
    that is not the optimizer's own `_ParamGroup`, put in by hand, cannot tell the trace of
    other reads: its number is baked in and guarded by value.)

    For every parameter dtype: with float32 and float64 tensors the scalar converts as the
    number does (to their dtype), so those steps compute eager's bits; a float16 or bfloat16 CPU
    tensor meeting it, or what is computed from it and the step count alone (`-lr /
    bias_correction1`), takes it as that op's eager kernel takes the number (the trace knows it
    stands for one: `Tracer.stands_for_number`; `functional.common._with_half`), and the
    updates with a number argument mirror their ops' half-precision kernels (`_plus_scaled`,
    `_add_scaled`, `_addcmul_`, `_addcdiv_`, `_lerp_`). Only half parameters take those:
    float32 steps compute exactly as before."""
    if type(group) is not _ParamGroup:
        return group[key]
    return scalar_input(group, key, param.device)


def _hyper_pair(group: dict, key: str, param: Tensor) -> tuple:
    """`group[key]`, a pair such as Adam's betas, read as `_hyper` reads a number (OneCycleLR
    replaces the pair each step when it cycles the momentum)."""
    if type(group) is not _ParamGroup:
        return tuple(group[key])
    return tuple(scalar_input(group, key, param.device, i) for i in range(2))


def _decay_add_square(avg_sq: Tensor, grad: Tensor, beta2) -> None:
    """avg_sq = avg_sq * beta2 + (1 - beta2) * grad * grad, in place, for a Python or a traced
    (tensor) beta2 (`_addcmul_`)."""
    _addcmul_(avg_sq.mul_(beta2), grad, grad, 1 - beta2)


def _addcmul_(x: Tensor, t1: Tensor, t2: Tensor, value) -> Tensor:
    """x.addcmul_(t1, t2, value=value) for a Python or a traced (tensor) value, which addcmul_
    does not take (PyTorch's takes a number): x + value * t1 * t2, op by op as addcmul's
    composite computes it, on float32 copies rounded once for float16/bfloat16 CPU tensors
    as its kernel computes them (`provenance.WIDEN_HALF`)."""
    if not isinstance(value, Tensor):
        return x.addcmul_(t1, t2, value=value)
    if _half_cpu(x) and t1.dtype is x.dtype is t2.dtype:
        return x.copy_((x.float() + value * t1.float() * t2.float()).to(x.dtype))
    return x.add_(value * t1 * t2)


def _addcdiv_(x: Tensor, t1: Tensor, t2: Tensor, value) -> Tensor:
    """x.addcdiv_(t1, t2, value=value) for a Python or a traced (tensor) value, as `_addcmul_`
    (x + value * (t1 / t2))."""
    if not isinstance(value, Tensor):
        return x.addcdiv_(t1, t2, value=value)
    if _half_cpu(x) and t1.dtype is x.dtype is t2.dtype:
        return x.copy_((x.float() + value * (t1.float() / t2.float())).to(x.dtype))
    return x.add_((t1 / t2) * value)


def _half_cpu(t: Tensor) -> bool:
    """Whether `t` is a float16/bfloat16 CPU tensor, whose eager ops compute in float32 and round
    once (on cuda, kiln's kernels take float16 as it is)."""
    return t.dtype in (kiln.float16, kiln.bfloat16) and t.device.type == "cpu"


def _plus_scaled(a: Tensor, t: Tensor, scale) -> Tensor:
    """a + t * scale, as `a.add(t, alpha=scale)` computes it, for a Python or a traced (tensor)
    scale. On float16/bfloat16 CPU tensors add's kernel computes in float32 with alpha rounded
    to their dtype and rounds once; a traced scale does the same with tensor ops."""
    if not isinstance(scale, Tensor):
        return a.add(t, alpha=scale)
    if _half_cpu(a) and t.dtype is a.dtype:
        alpha = scale.float().to(a.dtype).float()
        return (a.float() + t.float() * alpha).to(a.dtype)
    return a + t * scale


def _add_scaled(p: Tensor, t: Tensor, scale) -> None:
    """p += t * scale, in place, as `p.add_(t, alpha=scale)` (`_plus_scaled`)."""
    if not isinstance(scale, Tensor):
        p.add_(t, alpha=scale)
    elif _half_cpu(p) and t.dtype is p.dtype:
        p.copy_(_plus_scaled(p, t, scale))
    else:
        p.add_(t * scale)


def _lerp_(x: Tensor, end: Tensor, weight) -> None:
    """x.lerp_(end, weight) for a Python or a traced (tensor) weight. lerp's kernel reads a
    number weight as a float32 on float16/bfloat16 tensors (a 0-d tensor weight would be
    rounded to their dtype): a traced weight computes on float32 copies, rounded once."""
    if isinstance(weight, Tensor) and _half_cpu(x):
        x.copy_(x.float().lerp(end.float(), weight).to(x.dtype))
    else:
        x.lerp_(end, weight)


def _sqrt(x):
    return math.sqrt(x) if isinstance(x, float) else x.sqrt()


# the dtypes the fused updates take (kiln.runtime.fused_optim)
_FUSED_DTYPES = (kiln.float16, kiln.float32, kiln.float64)


def _use_fused(group: dict, hypers: tuple) -> bool:
    """Whether `group`'s cuda parameters take the fused update (one kernel launch per group and
    dtype, no host sync): in eager mode (a traced step keeps the per-op update, which the
    compiler fuses into the step's program), when `fused` is True, or when it is None and
    `foreach` is not False (PyTorch's multi-tensor default on cuda); never with
    `differentiable`, `capturable` or a hyperparameter given as a tensor."""
    if is_compiling() or group.get("differentiable") or group.get("capturable"):
        return False
    fused = group.get("fused")
    if fused is False or (fused is None and group.get("foreach") is False):
        return False
    values = [v for k in hypers for v in (group[k] if isinstance(group[k], tuple) else
                                           (group[k],))]   # betas: a tuple
    return not any(isinstance(v, Tensor) for v in values)


def _fusable(p: Tensor) -> bool:
    """Whether parameter `p` (with a gradient) can be updated by a fused kernel."""
    g = p.grad
    return (p.is_cuda and p.dtype in _FUSED_DTYPES and p.is_contiguous() and not g.is_sparse
            and g.dtype == p.dtype and g.device == p.device and g.shape == p.shape)


def _fused_buckets(params: list) -> list[list[Tensor]]:
    """`params` split by device and dtype, the unit of one fused launch."""
    buckets: dict = {}
    for p in params:
        buckets.setdefault((str(p.device), p.dtype), []).append(p)
    return list(buckets.values())


def _scalar_state(param: Tensor, value: float = 0.0) -> Tensor:
    """A step count: a float32 scalar on `param`'s device (PyTorch keeps it on the CPU, where it
    would meet the parameter's tensors in a traced step's bias corrections)."""
    return kiln.tensor(value, dtype=kiln.float32, device=param.device)


Optimizer.step = _with_step_hooks(Optimizer.step)
