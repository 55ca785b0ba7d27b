"""`torch._dynamo` import path: `reset()` and `explain(fn)(*args)`, the calls of it that
training scripts make (kiln traces by running the function, not by reading bytecode, so it has
no dynamo of its own)."""

from kiln.compiler import explain as _explain
from kiln.compiler import reset  # noqa: F401


def explain(fn):
    """`explain(fn)(*args, **kwargs)`: kiln.compiler.explain's report of `fn` on those
    arguments (graphs, breaks and their reasons; `graph_count`, `graph_break_count`)."""
    return lambda *args, **kwargs: _explain(fn, *args, **kwargs)
