"""`torch._inductor` import path: `utils.fresh_inductor_cache()`, which scripts that time cold
compiles wrap around the first call (kiln's kernels are its own, built by kiln.compile; there
is no inductor to configure)."""

from kiln._inductor import utils  # noqa: F401
