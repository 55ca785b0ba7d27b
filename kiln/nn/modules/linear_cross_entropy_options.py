"""`torch.nn.modules.linear_cross_entropy_options` import path: kiln's options class."""

from kiln.nn.linear_cross_entropy import LinearCrossEntropyOptions  # noqa: F401
