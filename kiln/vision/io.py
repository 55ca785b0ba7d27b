"""`torchvision.io`'s image functions for kiln, through Pillow: read/decode an image file into
a uint8 (C, H, W) tensor, and write one as PNG or JPEG."""

from __future__ import annotations

import enum
import io
from typing import Any

import numpy as np

import kiln
from kiln.vision._imaging import pil_image


class ImageReadMode(enum.Enum):
    """The channels to decode into (torchvision's names)."""
    UNCHANGED = 0
    GRAY = 1
    GRAY_ALPHA = 2
    RGB = 3
    RGB_ALPHA = 4


_PIL_MODES = {ImageReadMode.GRAY: "L", ImageReadMode.GRAY_ALPHA: "LA",
              ImageReadMode.RGB: "RGB", ImageReadMode.RGB_ALPHA: "RGBA"}


def _mode(mode: Any) -> ImageReadMode:
    if isinstance(mode, str):
        return ImageReadMode[mode.upper()]
    return ImageReadMode(mode)


def _to_tensor(img: Any, mode: ImageReadMode) -> kiln.Tensor:
    if mode != ImageReadMode.UNCHANGED:
        img = img.convert(_PIL_MODES[mode])
    elif img.mode not in ("L", "LA", "RGB", "RGBA", "I;16", "I"):
        img = img.convert("RGBA" if "A" in img.getbands() else "RGB")
    array = np.array(img)
    if array.ndim == 2:
        array = array[:, :, None]
    return kiln.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def decode_image(input: Any, mode: Any = ImageReadMode.UNCHANGED,
                 apply_exif_orientation: bool = False) -> kiln.Tensor:
    """The image in `input` (a path, or a 1-D uint8 tensor of the file's bytes) as a (C, H, W)
    uint8 tensor with the channels `mode` asks for."""
    if isinstance(input, kiln.Tensor):
        if input.dtype != kiln.uint8 or input.ndim != 1:
            raise ValueError(f"decode_image: expected a 1-D uint8 tensor of file bytes, got "
                             f"{input.dtype} of shape {tuple(input.shape)}")
        source: Any = io.BytesIO(input.numpy().tobytes())
    else:
        source = input
    with pil_image().open(source) as img:
        if apply_exif_orientation:
            from PIL import ImageOps
            img = ImageOps.exif_transpose(img)
        return _to_tensor(img, _mode(mode))


def read_file(path: str) -> kiln.Tensor:
    """The bytes of the file at `path` as a 1-D uint8 tensor."""
    with open(path, "rb") as f:
        return kiln.from_numpy(np.frombuffer(f.read(), dtype=np.uint8).copy())


def read_image(path: str, mode: Any = ImageReadMode.UNCHANGED,
               apply_exif_orientation: bool = False) -> kiln.Tensor:
    """The image file at `path` as a (C, H, W) uint8 tensor."""
    return decode_image(str(path), mode, apply_exif_orientation)


def _to_pil(input: kiln.Tensor, op: str) -> Any:
    if not isinstance(input, kiln.Tensor) or input.dtype != kiln.uint8 or input.ndim != 3 \
            or input.shape[0] not in (1, 3):
        raise ValueError(f"{op}: expected a (1 or 3, H, W) uint8 tensor, got "
                         f"{getattr(input, 'dtype', type(input))} of shape "
                         f"{tuple(getattr(input, 'shape', ()))}")
    array = input.detach().cpu().numpy().transpose(1, 2, 0)
    return pil_image().fromarray(np.ascontiguousarray(array[:, :, 0] if array.shape[2] == 1
                                                      else array))


def write_png(input: kiln.Tensor, filename: str, compression_level: int = 6) -> None:
    """Save a (1 or 3, H, W) uint8 tensor as a PNG file."""
    _to_pil(input, "write_png").save(filename, format="PNG", compress_level=compression_level)


def write_jpeg(input: kiln.Tensor, filename: str, quality: int = 75) -> None:
    """Save a (1 or 3, H, W) uint8 tensor as a JPEG file."""
    _to_pil(input, "write_jpeg").save(filename, format="JPEG", quality=quality)


__all__ = ["ImageReadMode", "decode_image", "read_file", "read_image", "write_png",
           "write_jpeg"]
