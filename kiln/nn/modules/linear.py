"""`torch.nn.modules.linear` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.lazy import LazyLinear  # noqa: F401
from kiln.nn.linear import Identity, Linear, Bilinear  # noqa: F401
from kiln.nn.transformer import NonDynamicallyQuantizableLinear  # noqa: F401
