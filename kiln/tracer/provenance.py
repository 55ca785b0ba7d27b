"""Provenance scopes: which composite (or which forward node's gradient) a traced node is from.

A composite tensor function (`gelu`, `layer_norm`, `cross_entropy`: several primitives) is
marked `@composite`; while a trace is active, the nodes it records carry its name in their
`scope` (nested composites give nested scopes), and listings print them under a header
`# gelu @ model.py:12`. The backward engine opens `grad of %7 mul` around each gradient rule it
traces (inside `grad of gelu` when %7 came from gelu), located at the forward node's line
(`kiln.tracer.autograd`). Outside a trace a composite costs one check (about 0.1 us).
"""

from __future__ import annotations

import functools

from kiln.tracer.tensor import STATE, TRACING


def composite(fn=None, *, name: str | None = None):
    """Mark `fn` as a composite: the nodes it traces are in scope `name` (its own name by
    default). Use as `@composite` or `@composite(name="...")`."""
    def mark(fn):
        label = name or fn.__name__

        @functools.wraps(fn)
        def traced_in_scope(*args, **kwargs):
            tracer = STATE.tracer if TRACING[0] else None
            if tracer is None:
                return fn(*args, **kwargs)
            with tracer.scope(label):
                return fn(*args, **kwargs)
        traced_in_scope.composite = label
        return traced_in_scope
    return mark if fn is None else mark(fn)


def scope(name: str, loc: str | None = None):
    """A context in which traced nodes are in provenance scope `name` (`loc`: the source line
    they point at); does nothing outside a trace."""
    tracer = STATE.tracer if TRACING[0] else None
    return tracer.scope(name, loc) if tracer is not None else _NOTHING


class _Nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc) -> bool:
        return False


_NOTHING = _Nothing()
