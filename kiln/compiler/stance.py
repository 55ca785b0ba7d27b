"""`torch.compiler.set_stance`: what a compiled function does on its next calls, process-wide.

- "default": replay a valid entry, trace a new one when none is valid;
- "force_eager": run every compiled function eagerly (its entries are kept for later);
- "eager_on_recompile": replay a valid entry, but run eagerly instead of tracing one;
- "fail_on_recompile": replay a valid entry, but raise instead of tracing one.

Set by a plain call (until changed), as a context manager, or as a decorator (for the calls of
the decorated function only), as in PyTorch.
"""

from __future__ import annotations

import functools
from typing import Callable

STANCES = ("default", "force_eager", "eager_on_recompile", "fail_on_recompile")
_CURRENT = ["default"]


def _outside_compiled_code(where: str) -> None:
    # PyTorch refuses a stance change inside a compiled region (its "forbidden callable")
    from kiln.compiler.hooks import is_compiling    # hooks imports the tracer: on use
    if is_compiling():
        raise RuntimeError(f"torch.compiler.set_stance: {where} inside a compiled function; "
                           "the stance can only be changed outside torch.compile regions")


def current_stance() -> str:
    return _CURRENT[0]


class set_stance:
    """Set the compiler's stance now; as a context manager, until the block ends; as a
    decorator, only while the decorated function runs."""

    def __init__(self, stance: str = "default", *, skip_guard_eval_unsafe: bool = False,
                 force_backend: str | Callable | None = None) -> None:
        if stance not in STANCES:
            raise ValueError(f"set_stance: unknown stance {stance!r}; use one of {STANCES}")
        if force_backend is not None and stance != "default":
            raise RuntimeError("non-default stance cannot have force_backend set")
        # skip_guard_eval_unsafe and force_backend are accepted: kiln always checks its guards
        # and has one backend choice per compiled function
        _outside_compiled_code("called")
        self.stance = stance
        self.previous = _CURRENT[0]
        _CURRENT[0] = stance

    def __enter__(self) -> None:
        _CURRENT[0] = self.stance

    def __exit__(self, *exc) -> None:
        _CURRENT[0] = self.previous

    def __call__(self, fn: Callable) -> Callable:
        _CURRENT[0] = self.previous       # as a decorator it applies to fn's calls only

        @functools.wraps(fn)
        def with_stance(*args, **kwargs):
            _outside_compiled_code(f"{getattr(fn, '__name__', 'a function')} (decorated) "
                                   "called")
            before = _CURRENT[0]
            _CURRENT[0] = self.stance
            try:
                return fn(*args, **kwargs)
            finally:
                _CURRENT[0] = before
        return with_stance
