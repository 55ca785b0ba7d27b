"""torch.ao.nn.quantized: quantized modules (static in `modules`, dynamic in `dynamic`)."""

from kiln.ao.nn.quantized.modules import DeQuantize, Linear, Quantize  # noqa: F401
from kiln.ao.nn.quantized import dynamic  # noqa: F401
