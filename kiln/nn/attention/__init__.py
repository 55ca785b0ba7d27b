"""`kiln.nn.attention`: choosing scaled_dot_product_attention's backend (`sdpa_kernel`).

kiln has one implementation of `F.scaled_dot_product_attention`: the math one, softmax(q k^T *
scale + mask) v composed of primitives (the compiler fuses it like any composite). It is
`SDPBackend.MATH`. `sdpa_kernel` sets and restores the same flags as
`kiln.backends.cuda.enable_*_sdp`; the fused backends' flags are only stored, and a call made
while MATH is turned off raises, since kiln has no other kernel to run (checked when the call
runs eagerly or is traced: the replay of a compiled function traced with MATH on runs the
attention it traced).
"""

from __future__ import annotations

import contextlib
import enum
from typing import Iterator

import kiln.backends
from kiln.nn.attention import bias  # noqa: F401  (torch.nn.attention.bias)
from kiln.nn.attention import flex_attention  # noqa: F401  (torch.nn.attention.flex_attention)
from kiln.nn.attention import varlen  # noqa: F401  (torch.nn.attention.varlen)

__all__ = ["SDPBackend", "sdpa_kernel"]


class SDPBackend(enum.IntEnum):
    """The backends PyTorch names (with its numbering); kiln implements MATH."""
    ERROR = -1
    MATH = 0
    FLASH_ATTENTION = 1
    EFFICIENT_ATTENTION = 2
    CUDNN_ATTENTION = 3
    OVERRIDEABLE = 4

    def __str__(self) -> str:
        return f"SDPBackend.{self.name}"    # as torch prints it (an IntEnum prints its number)


_FLAG_OF = {SDPBackend.MATH: "math", SDPBackend.FLASH_ATTENTION: "flash",
            SDPBackend.EFFICIENT_ATTENTION: "mem_efficient",
            SDPBackend.CUDNN_ATTENTION: "cudnn", SDPBackend.OVERRIDEABLE: "overrideable"}


@contextlib.contextmanager
def sdpa_kernel(backends: list[SDPBackend] | SDPBackend,
                set_priority: bool = False) -> Iterator[dict]:
    """Within the block, only `backends` are enabled for scaled_dot_product_attention; the
    previous flags come back on exit. `set_priority` is accepted and has nothing to order."""
    if isinstance(backends, SDPBackend):
        backends = [backends]
    if not isinstance(backends, list) or \
            not all(isinstance(b, SDPBackend) for b in backends):
        raise TypeError(f"sdpa_kernel: backends must be an SDPBackend or a list of SDPBackend "
                        f"members, got {backends!r}")
    # the flags torch.backends.cuda's functions set (OVERRIDEABLE has none: nothing to set)
    cuda = kiln.backends.cuda
    flags = {b: f for b, f in _FLAG_OF.items() if hasattr(cuda, f"enable_{f}_sdp")}
    previous = {flag: getattr(cuda, f"{flag}_sdp_enabled")() for flag in flags.values()}
    for backend, flag in flags.items():
        getattr(cuda, f"enable_{flag}_sdp")(backend in backends)
    try:
        yield {}
    finally:
        for flag, enabled in previous.items():
            getattr(cuda, f"enable_{flag}_sdp")(enabled)
