"""`torch.ops.profiler` (as `kiln.ops.profiler`): a `record_function` range opened and closed
by two calls instead of a `with` block, for code that cannot hold a context manager open, such
as a graph that torch.fx traced with the range as two nodes."""

from __future__ import annotations

from kiln.profiler.recorder import record_function


def _record_function_enter(name: str, args: str | None = None) -> record_function:
    """Open a range named `name`; the handle returned closes it."""
    return record_function(name, args).__enter__()


_record_function_enter_new = _record_function_enter


def _record_function_exit(handle: record_function) -> None:
    if not isinstance(handle, record_function):
        raise TypeError(f"_record_function_exit: expected the handle _record_function_enter "
                        f"returned, got {type(handle).__name__}")
    handle.__exit__(None, None, None)
