"""The IR vocabulary: dtypes, the primitive ops (shape, dtype and gradient rules) and graphs."""

# every primitive is registered once kiln.ir is imported: the core set, then the library calls
# (ops_extra imports ops, never the other way)
from kiln.ir import ops, ops_extra, ops_complex  # noqa: E402,F401
from kiln.ir import ops_special  # noqa: E402,F401
