"""torch.ao.quantization: eager-mode post-training quantization for kiln.

Dynamic (`quantize_dynamic`: Linear layers with int8 weights) and static (QuantStub /
DeQuantStub, `fuse_modules`, `prepare`, calibrate, `convert`) quantization, with observers,
qconfigs and FakeQuantize modules (for hand-built quantization-aware training; prepare_qat
is not there) as PyTorch names them, computing PyTorch's x86/fbgemm numbers. Submodules keep
torch's names (`observer`, `qconfig`, `quantize`, `stubs`, `fuse_modules`,
`quantization_mappings`), so `from kiln.ao.quantization.observer import MinMaxObserver` works.
"""

import sys as _sys

from kiln.ao.quantization.observer import *  # noqa: F401,F403
from kiln.ao.quantization.qconfig import *  # noqa: F401,F403
from kiln.ao.quantization.fake_quantize import *  # noqa: F401,F403
from kiln.ao.quantization.stubs import *  # noqa: F401,F403
from kiln.ao.quantization.quantize import *  # noqa: F401,F403
from kiln.ao.quantization.mappings import *  # noqa: F401,F403
from kiln.ao.quantization.fuse_modules import fuse_modules  # noqa: F401
from kiln.ao.quantization import mappings as quantization_mappings  # noqa: F401

# torch's module names for the files above
_sys.modules[__name__ + ".quantization_mappings"] = quantization_mappings
