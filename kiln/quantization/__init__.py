"""torch.quantization: the older name of torch.ao.quantization (everything re-exported)."""

from kiln.ao.quantization import *  # noqa: F401,F403
from kiln.ao.quantization import (  # noqa: F401
    fake_quantize, fuse_modules, observer, qconfig, quantize, stubs, quantization_mappings)
