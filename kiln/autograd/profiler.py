"""`torch.autograd.profiler` as an importable module: kiln.profiler.legacy's `profile` and
`record_function` (`import kiln.autograd.profiler as profiler`)."""

from kiln.profiler.legacy import *  # noqa: F401,F403
from kiln.profiler.legacy import profile, record_function  # noqa: F401
