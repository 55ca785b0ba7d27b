"""`torch.nn.modules.transformer` import path: kiln's classes under PyTorch's file name."""

from kiln.nn.transformer import TransformerEncoder, TransformerEncoderLayer  # noqa: F401
from kiln.nn.transformer_decoder import (  # noqa: F401
    _generate_square_subsequent_mask, Transformer, TransformerDecoder, TransformerDecoderLayer)
