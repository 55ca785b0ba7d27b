"""torch.ao.nn: quantized (`quantized`, `quantized.dynamic`) and fused (`intrinsic`) modules."""

from kiln.ao.nn import intrinsic, quantized  # noqa: F401
