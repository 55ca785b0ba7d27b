"""`torch.cuda.amp`: the older, deprecated spellings of autocast and GradScaler for "cuda".

Each warns (FutureWarning) as torch's does and then is `kiln.amp`'s with `device_type="cuda"`;
`kiln.amp` holds them beside its `torch.cpu.amp` counterparts.
"""

from kiln.amp import (_CudaAutocast as autocast, _CudaGradScaler as GradScaler,  # noqa: F401
                      _cuda_custom_bwd as custom_bwd, _cuda_custom_fwd as custom_fwd)

__all__ = ["autocast", "custom_bwd", "custom_fwd", "GradScaler"]
