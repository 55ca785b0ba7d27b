"""`kiln.amp`: gradient scaling (GradScaler) and the autocast context of torch.amp.

GradScaler is implemented in full: the loss is multiplied by a scale, gradients are unscaled
before the step, a step whose gradients hold inf/NaN is skipped and the scale backs off, and the
scale grows after `growth_interval` clean steps. Like torch, a scaler for "cuda" without a usable
GPU disables itself with a warning (then scale/step/update pass through).

kiln has no automatic mixed precision: inside `autocast(enabled=True)` ops still run in their
inputs' dtypes. The context manager is accepted (with a warning) so scripts run, and
`is_autocast_enabled()` reports it, but results are full precision, unlike torch's.
"""

from __future__ import annotations

import math
import warnings

from kiln.runtime.device import cuda_is_available as _cuda_is_available

_AUTOCAST = {"enabled": False, "dtype": {"cpu": "bfloat16", "cuda": "float16"}}


class autocast:
    """Accepted for compatibility; ops keep their dtypes (see the module docstring)."""

    def __init__(self, device_type: str = "cuda", dtype=None, enabled: bool = True,
                 cache_enabled=None):
        self.device_type, self.dtype, self.enabled = device_type, dtype, bool(enabled)

    def __enter__(self):
        self.prev = _AUTOCAST["enabled"]
        if self.enabled:     # Python shows it once per calling line
            warnings.warn("kiln has no automatic mixed precision: inside autocast ops run in "
                          "their inputs' dtypes (full precision)", stacklevel=2)
        _AUTOCAST["enabled"] = self.enabled
        return self

    def __exit__(self, *exc):
        _AUTOCAST["enabled"] = self.prev
        return False

    def __call__(self, fn):
        import functools

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            with autocast(self.device_type, self.dtype, self.enabled):
                return fn(*args, **kwargs)
        return wrapper


def is_autocast_enabled(device_type: str | None = None) -> bool:
    return _AUTOCAST["enabled"]


def set_autocast_enabled(device_type, enabled=None) -> None:
    _AUTOCAST["enabled"] = bool(device_type if enabled is None else enabled)


def get_autocast_dtype(device_type: str):
    import kiln
    name = _AUTOCAST["dtype"].get(device_type, "float16")
    return getattr(kiln, name, None) or name


def set_autocast_dtype(device_type: str, dtype) -> None:
    _AUTOCAST["dtype"][device_type] = getattr(dtype, "name", str(dtype))


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
                    p.grad.mul_(inv)
                    ok = kiln.isfinite(p.grad).all()
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
