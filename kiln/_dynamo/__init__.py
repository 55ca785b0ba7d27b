"""`torch._dynamo` import path: the calls of it that training scripts make. kiln traces by
running the function, not by reading bytecode, so it has no dynamo of its own: `reset`,
`explain`, `config` (kiln._dynamo.config), `disable`, `graph_break`, `is_compiling`,
`allow_in_graph`, `mark_dynamic` & co. (kiln specializes on shapes: accepted, no effect),
`optimize` (PyTorch's older spelling of compile) and `list_backends`; `compiled_autograd`
(an eager backward as one compiled program), `utils.counters` (what was compiled) and
`backends.common.aot_autograd` / `backends.debugging.get_nop_func`."""

from __future__ import annotations

import warnings

from kiln._dynamo import config  # noqa: F401
from kiln.compiler import (allow_in_graph, assume_constant_result, disable,  # noqa: F401
                           is_compiling, list_backends)
from kiln.compiler import reset as _reset_compiled
from kiln._dynamo import backends, compiled_autograd, utils  # noqa: F401
from kiln.compiler import explain_report as _explain_report
from kiln.compiler import compile as _compile
from kiln.tracer.tensor import STATE


def reset() -> None:
    """Forget what every compiled function traced and every backward compiled autograd
    captured (torch._dynamo.reset): each traces again on its next call."""
    _reset_compiled()
    compiled_autograd.reset()


def explain(fn, *extra_args, **extra_kwargs):
    """`explain(fn)(*args, **kwargs)`: kiln.compiler.explain's report of `fn` on those
    arguments, returned without printing (graphs, breaks; `graph_count`, `graph_break_count`,
    `break_reasons`, `ops_per_graph`, `out_guards`). `explain(fn, *args)`, PyTorch's
    deprecated form, warns as PyTorch does and returns the report at once."""
    if extra_args or extra_kwargs:
        warnings.warn("explain(f, *args, **kwargs) is deprecated, use explain(f)(*args, **kwargs) "
                      "instead", FutureWarning, stacklevel=2)
        return _explain_report(fn, extra_args, extra_kwargs)
    return lambda *args, **kwargs: _explain_report(fn, args, kwargs)


def graph_break(msg: str = "") -> None:
    """A graph break here (torch._dynamo.graph_break): a compiled function that reaches it
    runs eagerly, and explain() shows this line. Outside a compile, nothing."""
    if STATE.tracer is not None:
        STATE.tracer.graph_break("torch._dynamo.graph_break()" + (f": {msg}" if msg else ""))


def mark_dynamic(t, index, *, min=None, max=None, specialize_on=None) -> None:
    """Accepted, no effect: kiln compiles one entry per input shape (up to the recompile
    limit), so a dimension that changes retraces instead of being symbolic."""
    _check_dims("mark_dynamic", t, index)


def maybe_mark_dynamic(t, index) -> None:
    _check_dims("maybe_mark_dynamic", t, index)


def mark_static(t, index=None) -> None:
    """Accepted, no effect: every dimension is static in kiln."""
    if index is not None:
        _check_dims("mark_static", t, index)


def _check_dims(what: str, t, index) -> None:
    dims = [index] if isinstance(index, int) else list(index)
    for d in dims:
        if not -t.ndim <= d < max(t.ndim, 1):
            raise IndexError(f"{what}: dimension {d} is out of range for a tensor of "
                             f"{t.ndim} dimension(s)")


def optimize(backend="inductor", *, nopython: bool = False, guard_export_fn=None,
             guard_fail_fn=None, disable: bool = False, dynamic=None):
    """PyTorch's older spelling of compile: `optimize("inductor")(fn)`."""
    return lambda fn: _compile(fn, backend=backend, fullgraph=nopython, disable=disable)
