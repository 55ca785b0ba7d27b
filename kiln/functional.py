"""`torch.functional`: the module where PyTorch defines its tensor functions written in Python
(einsum, meshgrid, split, norm, stft, ...). Scripts import it (`import torch.functional as F`);
its names are kiln's own functions, the same objects as `kiln.einsum` and the rest."""

from __future__ import annotations

import kiln

# torch.functional.__all__ (PyTorch 2.13), less pca_lowrank and svd_lowrank, which kiln lacks
__all__ = ["atleast_1d", "atleast_2d", "atleast_3d", "broadcast_shapes", "broadcast_tensors",
           "cartesian_prod", "block_diag", "cdist", "chain_matmul", "einsum", "istft", "lu",
           "norm", "meshgrid", "split", "stft", "tensordot", "unique", "unique_consecutive",
           "unravel_index"]

globals().update({name: getattr(kiln, name) for name in __all__})
