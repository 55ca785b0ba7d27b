"""`kiln.signal` (torch.signal): window functions in `kiln.signal.windows`."""

from kiln.signal import windows  # noqa: F401
