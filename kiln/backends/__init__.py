"""`kiln.backends`: the flags scripts set or probe on torch.backends (cudnn, cuda, mps, openmp,
mha).

kiln has no cuDNN, MPS or TF32 paths, so the flags are stored for scripts that set and read
them back and change nothing in kiln's kernels; the `is_available()` probes answer truthfully.
"""

from __future__ import annotations

import sys
import types

from kiln.runtime.device import cuda_is_available as _cuda_is_available


def _flags(doc: str, name: str | None = None, **values):
    """A namespace of flags; with `name`, a module `kiln.backends.<name>` that scripts import
    (`import torch.backends.cudnn as cudnn`)."""
    if name is None:
        ns = types.SimpleNamespace(**values)
        ns.__doc__ = doc
        return ns
    module = types.ModuleType(f"{__name__}.{name}", doc)
    vars(module).update(values)
    sys.modules[module.__name__] = module
    return module


def _cuda_available() -> bool:
    return _cuda_is_available()


cudnn = _flags("cuDNN flags (stored; kiln's GPU path uses Triton and cuBLAS, not cuDNN)",
               "cudnn", enabled=True, benchmark=False, deterministic=False, allow_tf32=True,
               is_available=lambda: False, version=lambda: None)
mps = _flags("Apple MPS: kiln has no MPS backend", "mps", is_available=lambda: False,
             is_built=lambda: False)
openmp = _flags("OpenMP: kiln's compiled C kernels use it", "openmp", is_available=lambda: True)
mkldnn = _flags("oneDNN: not used by kiln", "mkldnn", enabled=False, is_available=lambda: False)
cuda = _flags("CUDA matmul flags (stored; kiln does not switch precision)", "cuda",
              matmul=_flags("matmul flags", allow_tf32=False,
                            allow_fp16_reduced_precision_reduction=True,
                            allow_bf16_reduced_precision_reduction=True),
              is_built=_cuda_available)

# torch.backends.mha: whether nn.TransformerEncoder may take PyTorch's inference fast path
# (kiln/nn/transformer.py: the padded positions of its output are zeros there)
_MHA = types.SimpleNamespace(fastpath=True)


def _get_fastpath_enabled() -> bool:
    # read while tracing, the flag is guarded: a replay after set_fastpath_enabled(False) would
    # keep the traced choice (its identity: True and False are one object each)
    from kiln.compiler import is_compiling, note_python_read
    if is_compiling():
        note_python_read(_MHA, "fastpath", _MHA.fastpath)
    return _MHA.fastpath


def _set_fastpath_enabled(value: bool) -> None:
    _MHA.fastpath = bool(value)


mha = _flags("multi-head attention's inference fast path", "mha",
             get_fastpath_enabled=_get_fastpath_enabled,
             set_fastpath_enabled=_set_fastpath_enabled)

# scaled_dot_product_attention's backend flags, all allowed at first as in torch. kiln has one
# implementation, the math one: F.scaled_dot_product_attention refuses to run with "math"
# turned off; the fused backends' flags are stored for scripts and `kiln.nn.attention`.
_sdp_enabled = {"flash": True, "mem_efficient": True, "math": True, "cudnn": True,
                "overrideable": True}


def _sdp_flag(name: str):
    def enable(enabled: bool) -> None:
        _sdp_enabled[name] = bool(enabled)

    def is_enabled() -> bool:
        return _sdp_enabled[name]
    return enable, is_enabled


for _name in ("flash", "mem_efficient", "math", "cudnn"):
    _enable, _is_enabled = _sdp_flag(_name)
    setattr(cuda, f"enable_{_name}_sdp", _enable)
    setattr(cuda, f"{_name}_sdp_enabled", _is_enabled)
del _name, _enable, _is_enabled


class _QuantizedBackend(types.ModuleType):
    """torch.backends.quantized: the engine quantized kernels run as. kiln's kernels reproduce
    'x86' (the default) and 'fbgemm'; the others can be chosen, and kiln's quantized ops then
    refuse to run rather than give another engine's numbers."""

    supported_engines = ["qnnpack", "onednn", "x86", "fbgemm"]
    _engine = "x86"

    @property
    def engine(self) -> str:
        return self._engine

    @engine.setter
    def engine(self, name: str) -> None:
        if name not in self.supported_engines:
            raise RuntimeError(f"quantized engine {name} is not supported (choose one of "
                               f"{self.supported_engines})")
        type(self)._engine = name


quantized = _QuantizedBackend(f"{__name__}.quantized", _QuantizedBackend.__doc__)
sys.modules[quantized.__name__] = quantized
