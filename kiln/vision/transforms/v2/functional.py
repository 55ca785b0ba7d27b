"""`torchvision.transforms.v2.functional` for kiln: the v1 functions, plus to_image and
to_dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

import kiln
from kiln.vision._imaging import is_pil_image
from kiln.vision.transforms.functional import *  # noqa: F401,F403 - the same functions
from kiln.vision.transforms.functional import __all__ as _v1_names
from kiln.vision.transforms.functional import convert_image_dtype, pil_to_tensor


def to_image(inpt: Any) -> kiln.Tensor:
    """A PIL image or an HWC ndarray as a CHW tensor of its own dtype; a tensor is kept."""
    if isinstance(inpt, kiln.Tensor):
        return inpt
    if is_pil_image(inpt):
        return pil_to_tensor(inpt)
    if isinstance(inpt, np.ndarray):
        array = inpt[:, :, None] if inpt.ndim == 2 else inpt
        return kiln.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    raise TypeError(f"to_image: expected a PIL image, an ndarray or a tensor, got {type(inpt)}")


def to_dtype(inpt: kiln.Tensor, dtype: Any = None, scale: bool = False) -> kiln.Tensor:
    """`inpt` in `dtype`; with `scale`, values rescaled (uint8 [0, 255] <-> float [0, 1])."""
    dtype = kiln.float32 if dtype is None else dtype
    return convert_image_dtype(inpt, dtype) if scale else inpt.to(dtype)


__all__ = list(_v1_names) + ["to_image", "to_dtype"]
