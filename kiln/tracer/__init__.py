"""Define-by-run front end: Tensor, the op dispatcher, autograd and tracing."""

from kiln.tracer import dispatch as _dispatch  # noqa: F401  (installs P.dispatch: ops run)
from kiln.tracer import methods as _methods  # noqa: F401  (binds ops onto Tensor)
