"""torch.ao: PyTorch's eager-mode quantization workflow (observers, qconfigs, prepare/convert,
quantize_dynamic) and the quantized modules it swaps in. See README "Quantization"."""

from kiln.ao import nn, quantization  # noqa: F401
