"""torch.ao.nn.quantized: quantized modules (static in `modules`, dynamic in `dynamic`)."""

from kiln.ao.nn.quantized.modules import (  # noqa: F401
    Conv2d, DeQuantize, FloatFunctional, Linear, QFunctional, Quantize)
from kiln.ao.nn.quantized import dynamic  # noqa: F401
