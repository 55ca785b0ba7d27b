"""`kiln.amp`: automatic mixed precision (autocast) and gradient scaling (GradScaler), as torch.amp.

`autocast(device_type, dtype)` runs the ops of a region in lower precision where that is safe
and in float32 where it is not, by PyTorch's op lists (`kiln.tracer.autocast` holds the state
and the tables): inside `autocast("cpu", dtype=kiln.float16)` a linear layer computes in
float16 while its loss computes in float32. The default dtypes are PyTorch's: bfloat16 on the
CPU, float16 on CUDA. Casts are ordinary differentiable ops, so parameters' gradients come back
in float32, and a compiled function is specialized to the autocast state it was traced under.

GradScaler is implemented in full: the loss is multiplied by a scale, gradients are unscaled
before the step, a step whose gradients hold inf/NaN is skipped and the scale backs off, and the
scale grows after `growth_interval` clean steps. Like torch, a scaler for "cuda" without a usable
GPU disables itself with a warning (then scale/step/update pass through).
"""

from __future__ import annotations

import collections.abc
import copy
import functools
import math
import warnings

from kiln.ir import dtypes as _dt
from kiln.runtime.device import cuda_is_available as _cuda_is_available
from kiln.tracer import autocast as _state
from kiln.tracer.tensor import Tensor as _Tensor

_LOW_PRECISION = ("bfloat16", "float16")


def _dtype_name(dtype) -> str:
    return dtype if isinstance(dtype, str) else dtype.name


class autocast:
    """Mixed precision in a region (a context manager or a decorator), as torch.autocast.

    Args:
        device_type: "cpu" or "cuda", the device type whose ops are cast.
        dtype: the lower precision dtype; None takes `get_autocast_dtype(device_type)`
            (bfloat16 on the CPU, float16 on CUDA, unless set otherwise).
        enabled: False turns autocast off inside the region (also inside an enabled one).
        cache_enabled: reuse one cast of a float32 weight for every op of the region that casts
            it (None: `is_autocast_cache_enabled()`).
    """

    def __init__(self, device_type: str, dtype=None, enabled: bool = True,
                 cache_enabled: bool | None = None):
        self.device = _state.check_device_type(device_type)
        name = _state.dtype_name(device_type) if dtype is None else _dtype_name(dtype)
        self._cache_enabled = (_state.is_cache_enabled() if cache_enabled is None
                               else bool(cache_enabled))
        enabled = bool(enabled)
        if enabled:
            if device_type == "cuda" and not _cuda_is_available():
                warnings.warn("CUDA is not available. Disabling autocast.", stacklevel=2)
                enabled = False
            elif device_type == "cuda" and name == "bfloat16":
                # torch's answer on a GPU without bfloat16; kiln has none on CUDA (CuPy has no
                # bfloat16 type)
                raise RuntimeError("Current CUDA Device does not support bfloat16. Please switch "
                                   "dtype to float16.")
            elif device_type == "cpu" and name not in _LOW_PRECISION:
                warnings.warn("In CPU autocast, but the target dtype is not supported. Disabling "
                              "autocast.\nCPU Autocast only supports dtypes of kiln.bfloat16, "
                              "kiln.float16 currently.", stacklevel=2)
                enabled = False
        if enabled:
            _state.resolve_dtype(name, device_type)     # bfloat16 missing: say so now
        self._name, self._enabled = name, enabled

    @property
    def fast_dtype(self):
        return _state.resolve_dtype(self._name, self.device)

    def __enter__(self):
        self.prev = _state.is_enabled(self.device)
        self.prev_dtype = _state.dtype_name(self.device)
        self.prev_cache_enabled = _state.is_cache_enabled()
        _state.set_enabled(self.device, self._enabled)
        _state.set_dtype(self.device, self._name)
        _state.increment_nesting()
        _state.set_cache_enabled(self._cache_enabled)
        return self

    def __exit__(self, *exc) -> bool:
        # the cached casts of weights live as long as the outermost region
        if _state.decrement_nesting() == 0:
            _state.clear_cache()
        _state.set_enabled(self.device, self.prev)
        _state.set_dtype(self.device, self.prev_dtype)
        _state.set_cache_enabled(self.prev_cache_enabled)
        return False

    def __call__(self, func):
        if not callable(func):
            raise TypeError(f"autocast()(func) requires a callable, but got "
                            f"{type(func).__name__}. Did you mean to use autocast as a context "
                            f"manager? For example:\n    with torch.autocast(device_type=...):\n"
                            f"        output = model(input)")

        @functools.wraps(func)
        def decorate_autocast(*args, **kwargs):
            with copy.copy(self):        # a fresh one per call: recursion keeps its own state
                return func(*args, **kwargs)
        return decorate_autocast


def is_autocast_available(device_type: str) -> bool:
    return device_type in _state.DEVICE_TYPES


def is_autocast_enabled(device_type: str | None = None) -> bool:
    """Whether `device_type` autocasts here; with no argument, CUDA's (PyTorch's legacy form)."""
    return _state.is_enabled("cuda" if device_type is None else device_type)


def set_autocast_enabled(device_type, enabled=None) -> None:
    """`set_autocast_enabled(device_type, enabled)`, or the legacy `set_autocast_enabled(enabled)`
    for CUDA."""
    if enabled is None:
        device_type, enabled = "cuda", device_type
    _state.set_enabled(device_type, enabled)


def get_autocast_dtype(device_type: str):
    return _state.resolve_dtype(_state.dtype_name(device_type), device_type)


def set_autocast_dtype(device_type: str, dtype) -> None:
    _state.set_dtype(device_type, _dtype_name(dtype))


def is_autocast_cache_enabled() -> bool:
    return _state.is_cache_enabled()


def set_autocast_cache_enabled(enabled: bool) -> None:
    _state.set_cache_enabled(enabled)


def clear_autocast_cache() -> None:
    _state.clear_cache()


# PyTorch's older per-device spellings: deprecated there (a DeprecationWarning), kept working
def _legacy(old: str, new: str):
    warnings.warn(f"kiln.{old} is deprecated. Please use kiln.{new} instead.", DeprecationWarning,
                  stacklevel=3)


def get_autocast_cpu_dtype():
    _legacy("get_autocast_cpu_dtype()", "get_autocast_dtype('cpu')")
    return get_autocast_dtype("cpu")


def get_autocast_gpu_dtype():
    _legacy("get_autocast_gpu_dtype()", "get_autocast_dtype('cuda')")
    return get_autocast_dtype("cuda")


def set_autocast_cpu_dtype(dtype) -> None:
    _legacy("set_autocast_cpu_dtype(dtype)", "set_autocast_dtype('cpu', dtype)")
    set_autocast_dtype("cpu", dtype)


def set_autocast_gpu_dtype(dtype) -> None:
    _legacy("set_autocast_gpu_dtype(dtype)", "set_autocast_dtype('cuda', dtype)")
    set_autocast_dtype("cuda", dtype)


def is_autocast_cpu_enabled() -> bool:
    _legacy("is_autocast_cpu_enabled()", "is_autocast_enabled('cpu')")
    return is_autocast_enabled("cpu")


def set_autocast_cpu_enabled(enabled: bool) -> None:
    _legacy("set_autocast_cpu_enabled(enabled)", "set_autocast_enabled('cpu', enabled)")
    set_autocast_enabled("cpu", enabled)


# ----------------------------------------------------------------------------- custom Functions

def _cast_inputs(value, device_type: str, dtype):
    if isinstance(value, _Tensor):
        eligible = (value.dtype.is_floating_point and value.device.type == device_type
                    and value.dtype is not _dt.float64)
        return value.to(dtype) if eligible else value
    if isinstance(value, (str, bytes)):
        return value
    if isinstance(value, collections.abc.Mapping):
        return {k: _cast_inputs(v, device_type, dtype) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_cast_inputs(v, device_type, dtype) for v in value)
    return value


def custom_fwd(fwd=None, *, device_type: str, cast_inputs=None):
    """Decorates a custom Function's `forward`: with `cast_inputs`, inside an autocast region its
    floating inputs are cast to that dtype and it runs with autocast off; without, it runs under
    the region's autocast. `custom_bwd` then runs `backward` in the same autocast state."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if fwd is None:
        return functools.partial(custom_fwd, device_type=device_type, cast_inputs=cast_inputs)

    @functools.wraps(fwd)
    def decorate_fwd(*args, **kwargs):
        args[0]._dtype = get_autocast_dtype(device_type)
        if cast_inputs is None:
            args[0]._fwd_used_autocast = is_autocast_enabled(device_type)
            return fwd(*args, **kwargs)
        args[0]._fwd_used_autocast = False
        if not is_autocast_enabled(device_type):
            return fwd(*args, **kwargs)
        with autocast(device_type=device_type, enabled=False):
            return fwd(*_cast_inputs(args, device_type, cast_inputs),
                       **_cast_inputs(kwargs, device_type, cast_inputs))
    return decorate_fwd


def custom_bwd(bwd=None, *, device_type: str):
    """Decorates a custom Function's `backward`: it runs in the autocast state of its forward."""
    if not isinstance(device_type, str):
        raise ValueError(f"Expected `device_type` of type `str`, got: `{type(device_type)}`")
    if bwd is None:
        return functools.partial(custom_bwd, device_type=device_type)

    @functools.wraps(bwd)
    def decorate_bwd(*args, **kwargs):
        with autocast(device_type=device_type, enabled=args[0]._fwd_used_autocast,
                      dtype=args[0]._dtype):
            return bwd(*args, **kwargs)
    return decorate_bwd


# ----------------------------------------------------------------------------- older spellings

def _deprecated(old: str, new: str) -> None:
    warnings.warn(f"`{old}(args...)` is deprecated. Please use `{new}` instead.", FutureWarning,
                  stacklevel=3)


class _CudaAutocast(autocast):
    """torch.cuda.amp.autocast: `autocast("cuda", ...)` under its older name (deprecated)."""

    def __init__(self, enabled: bool = True, dtype=_dt.float16, cache_enabled: bool = True):
        _deprecated("torch.cuda.amp.autocast", "torch.amp.autocast('cuda', args...)")
        super().__init__("cuda", dtype=dtype, enabled=enabled, cache_enabled=cache_enabled)


class _CpuAutocast(autocast):
    """torch.cpu.amp.autocast: `autocast("cpu", ...)` under its older name (deprecated); its
    default dtype is bfloat16, looked up when the region is entered."""

    def __init__(self, enabled: bool = True, dtype=None, cache_enabled: bool = True):
        _deprecated("torch.cpu.amp.autocast", "torch.amp.autocast('cpu', args...)")
        super().__init__("cpu", dtype=dtype or "bfloat16", enabled=enabled,
                         cache_enabled=cache_enabled)


class _CpuGradScaler:
    """torch.cpu.amp.GradScaler: a GradScaler for "cpu" (its first argument is init_scale)."""

    def __new__(cls, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        _deprecated("torch.cpu.amp.GradScaler", "torch.amp.GradScaler('cpu', args...)")
        return GradScaler("cpu", init_scale, growth_factor, backoff_factor, growth_interval,
                          enabled)


def _cuda_custom_fwd(fwd=None, *, cast_inputs=None):
    """torch.cuda.amp.custom_fwd: `custom_fwd(..., device_type="cuda")` (deprecated)."""
    _deprecated("torch.cuda.amp.custom_fwd", "torch.amp.custom_fwd(args..., device_type='cuda')")
    return custom_fwd(fwd, device_type="cuda", cast_inputs=cast_inputs)


def _cuda_custom_bwd(bwd):
    """torch.cuda.amp.custom_bwd: `custom_bwd(..., device_type="cuda")` (deprecated)."""
    _deprecated("torch.cuda.amp.custom_bwd", "torch.amp.custom_bwd(args..., device_type='cuda')")
    return custom_bwd(bwd, device_type="cuda")


class GradScaler:
    """Dynamic loss scaling (torch.amp.GradScaler)."""

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16,
                 growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True):
        if enabled and device == "cuda" and not _cuda_is_available():
            warnings.warn("kiln.amp.GradScaler is enabled, but CUDA is not available. "
                          "Disabling.", stacklevel=2)
            enabled = False
        self._device, self._enabled = device, enabled
        self._scale, self._growth_factor = float(init_scale), float(growth_factor)
        self._backoff_factor, self._growth_interval = float(backoff_factor), int(growth_interval)
        self._growth_tracker = 0
        self._per_optimizer: dict[int, dict] = {}

    def is_enabled(self) -> bool:
        return self._enabled

    def get_scale(self) -> float:
        return self._scale if self._enabled else 1.0

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def scale(self, outputs):
        if not self._enabled:
            return outputs
        if isinstance(outputs, (list, tuple)):
            return type(outputs)(self.scale(o) for o in outputs)
        return outputs * self._scale

    def _state(self, optimizer) -> dict:
        return self._per_optimizer.setdefault(id(optimizer), {"unscaled": False,
                                                               "found_inf": False})

    def unscale_(self, optimizer) -> None:
        if not self._enabled:
            return
        state = self._state(optimizer)
        if state["unscaled"]:
            raise RuntimeError("unscale_() has already been called on this optimizer since the "
                               "last update().")
        import kiln
        inv = 1.0 / self._scale
        # one flag per device, read once at the end: reading each gradient's on the host
        # would make the host wait for the GPU once per parameter
        finite: dict = {}
        with kiln.no_grad():
            for group in optimizer.param_groups:
                for p in group["params"]:
                    if p.grad is None:
                        continue
                    grad = p.grad
                    if grad.is_sparse:      # an embedding's sparse=True: its entries' values
                        if grad.dtype == kiln.float16:
                            # duplicates summed first, as PyTorch does: their sum may overflow
                            p.grad = grad = grad.coalesce()
                        grad = grad._values()
                    grad.mul_(inv)
                    ok = kiln.isfinite(grad).all()
                    key = str(ok.device)
                    finite[key] = ok if key not in finite else kiln.logical_and(finite[key], ok)
        state["unscaled"] = True
        state["found_inf"] = not all(bool(ok) for ok in finite.values())

    def step(self, optimizer, *args, **kwargs):
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        state = self._state(optimizer)
        if not state["unscaled"]:
            self.unscale_(optimizer)
        if state["found_inf"]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None) -> None:
        if not self._enabled:
            return
        if new_scale is not None:
            self._scale = float(new_scale)
        else:
            found = any(s["found_inf"] for s in self._per_optimizer.values())
            if found:
                self._scale *= self._backoff_factor
                self._growth_tracker = 0
            else:
                self._growth_tracker += 1
                if self._growth_tracker == self._growth_interval:
                    grown = self._scale * self._growth_factor
                    if math.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
        self._per_optimizer.clear()

    def state_dict(self) -> dict:
        if not self._enabled:
            return {}
        return {"scale": self._scale, "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict) -> None:
        if not self._enabled:
            return
        self._scale = float(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])


class _CudaGradScaler(GradScaler):
    """torch.cuda.amp.GradScaler: a GradScaler for "cuda" (its first argument is init_scale),
    deprecated; without a GPU it disables itself, as GradScaler("cuda") does."""

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        _deprecated("torch.cuda.amp.GradScaler", "torch.amp.GradScaler('cuda', args...)")
        super().__init__("cuda", init_scale, growth_factor, backoff_factor, growth_interval,
                         enabled)


# torch.cuda.amp and torch.cpu.amp, the older namespaces, are the modules kiln.cuda.amp and
# kiln.cpu.amp, which take their classes from here
