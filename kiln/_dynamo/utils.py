"""torch._dynamo.utils' `counters`: what kiln.compile compiled (kiln.compiler.counters)."""

from kiln.compiler.counters import counters  # noqa: F401
