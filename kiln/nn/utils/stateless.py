"""`kiln.nn.utils.stateless` (torch.nn.utils.stateless): the pre-2.0 home of functional_call,
kept for scripts that still import it from here; it is `kiln.func.functional_call`."""

from __future__ import annotations

import warnings
from typing import Any

__all__ = ["functional_call"]


def functional_call(module, parameters_and_buffers: dict, args: Any = None,
                    kwargs: dict | None = None, *, tie_weights: bool = True,
                    strict: bool = False):
    """Call `module` with the given tensors in place of its parameters and buffers (see
    kiln.func.functional_call); warns, as PyTorch does, that the API moved to torch.func."""
    import kiln.func
    warnings.warn("`torch.nn.utils.stateless.functional_call` is deprecated as of PyTorch 2.0 "
                  "and will be removed in a future version of PyTorch. Please use "
                  "`torch.func.functional_call` instead which is a drop-in replacement.",
                  FutureWarning, stacklevel=2)
    return kiln.func.functional_call(module, parameters_and_buffers, args, kwargs,
                                     tie_weights=tie_weights, strict=strict)
