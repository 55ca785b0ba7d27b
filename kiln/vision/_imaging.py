"""Pillow, imported on first use, with a message that says how to install it when missing."""

from __future__ import annotations

from typing import Any


def pil_image() -> Any:
    """The `PIL.Image` module; ImportError naming the `vision` extra when Pillow is missing."""
    try:
        from PIL import Image
    except ImportError as error:  # pragma: no cover - pillow is in the test extra
        raise ImportError("kiln.vision needs Pillow for images: pip install pillow "
                          "(or pip install 'kiln[vision]')") from error
    return Image


def is_pil_image(img: Any) -> bool:
    """Whether `img` is a PIL image (False, without importing Pillow, when Pillow is absent)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        return False
    return isinstance(img, Image.Image)
