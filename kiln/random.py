"""`kiln.random`: torch.random's seeding and state functions, and `fork_rng`.

One generator (`kiln.default_generator`, PyTorch's CPU Mersenne Twister) draws for every device,
so forking it forks the random numbers of the CPU and of every GPU alike.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from kiln.tracer.creation import (default_generator, get_rng_state, initial_seed,  # noqa: F401
                                  manual_seed, seed, set_rng_state)

__all__ = ["default_generator", "fork_rng", "get_rng_state", "initial_seed", "manual_seed",
           "seed", "set_rng_state"]


@contextlib.contextmanager
def fork_rng(devices=None, enabled: bool = True, _caller: str = "fork_rng",
             _devices_kw: str = "devices", device_type: str | None = None) -> Iterator[None]:
    """Restore the generator's state on leaving the block (`torch.random.fork_rng`).

    `devices` and `device_type` are accepted as torch's: the state saved is the one generator
    every device draws from, so there is nothing more to save per device.
    """
    if device_type not in (None, "cpu", "cuda", "meta"):
        raise RuntimeError(f"torch.random.fork_rng: kiln has no device type {device_type!r} "
                           "(it runs on 'cpu' and 'cuda')")
    if device_type == "meta" or not enabled:
        yield
        return
    if devices is not None:
        devices = list(devices)          # a generator argument is read once, as torch does
    state = get_rng_state()
    try:
        yield
    finally:
        set_rng_state(state)
