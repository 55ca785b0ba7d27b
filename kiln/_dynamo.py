"""`torch._dynamo` import path: `reset()`, the one call of it that training scripts make
(kiln traces by running the function, not by reading bytecode, so it has no dynamo of its own)."""

from kiln.compiler import reset  # noqa: F401
