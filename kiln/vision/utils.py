"""`torchvision.utils` for kiln: tile a batch of images into one grid, and save it as a PNG."""

from __future__ import annotations

import math
from typing import Any

import kiln
from kiln import Tensor
from kiln.vision._imaging import pil_image


def _normalize_to_unit(img: Tensor, low: float, high: float) -> None:
    """Clamp `img` to [low, high] and map that range to [0, 1], in place."""
    img.clamp_(min=low, max=high)
    img.sub_(low).div_(max(high - low, 1e-5))


@kiln.no_grad()
def make_grid(tensor: Tensor | list[Tensor], nrow: int = 8, padding: int = 2,
              normalize: bool = False, value_range: tuple[float, float] | None = None,
              scale_each: bool = False, pad_value: float = 0.0) -> Tensor:
    """Tile a (B, C, H, W) batch (or a list of (C, H, W) images) into one (C, H', W') image
    with `nrow` images per row and `padding` pixels of `pad_value` around each. One-channel
    images become three-channel. With `normalize`, values are mapped from `value_range`
    (default: the min and max, of each image when `scale_each`) to [0, 1]."""
    if isinstance(tensor, (list, tuple)):
        if not all(isinstance(t, Tensor) for t in tensor):
            raise TypeError("make_grid: expected a tensor or a list of tensors, got a list with "
                            f"{sorted({type(t).__name__ for t in tensor})}")
        tensor = kiln.stack(list(tensor), dim=0)
    if not isinstance(tensor, Tensor):
        raise TypeError(f"make_grid: expected a tensor or a list of tensors, got {type(tensor)}")
    if tensor.dim() == 2:
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 3:
        if tensor.size(0) == 1:
            tensor = kiln.cat((tensor, tensor, tensor), 0)
        tensor = tensor.unsqueeze(0)
    if tensor.dim() == 4 and tensor.size(1) == 1:
        tensor = kiln.cat((tensor, tensor, tensor), 1)
    if tensor.dim() != 4:
        raise ValueError(f"make_grid: expected images of 2 to 4 dims, got shape "
                         f"{tuple(tensor.shape)}")
    if normalize:
        tensor = tensor.clone()
        if value_range is not None and not isinstance(value_range, tuple):
            raise TypeError("make_grid: value_range has to be a tuple (min, max) if specified")

        def normalize_range(t: Tensor) -> None:
            if value_range is not None:
                _normalize_to_unit(t, value_range[0], value_range[1])
            else:
                _normalize_to_unit(t, float(t.min()), float(t.max()))

        if scale_each:
            for t in tensor:        # views into the clone: normalized in place
                normalize_range(t)
        else:
            normalize_range(tensor)
    if tensor.size(0) == 1:
        return tensor.squeeze(0)
    nmaps = tensor.size(0)
    xmaps = min(nrow, nmaps)
    ymaps = int(math.ceil(float(nmaps) / xmaps))
    height, width = int(tensor.size(2) + padding), int(tensor.size(3) + padding)
    channels = tensor.size(1)
    grid = tensor.new_full((channels, height * ymaps + padding, width * xmaps + padding),
                           pad_value)
    k = 0
    for y in range(ymaps):
        for x in range(xmaps):
            if k >= nmaps:
                break
            grid.narrow(1, y * height + padding, height - padding).narrow(
                2, x * width + padding, width - padding).copy_(tensor[k])
            k += 1
    return grid


@kiln.no_grad()
def save_image(tensor: Tensor | list[Tensor], fp: Any, format: str | None = None,
               **kwargs: Any) -> None:
    """make_grid(tensor, **kwargs), scaled from [0, 1] to [0, 255] (rounded), saved with
    Pillow to a path or file object (`format` as Pillow names it; from the name if None)."""
    grid = make_grid(tensor, **kwargs)
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to("cpu", kiln.uint8).numpy()
    pil_image().fromarray(array).save(fp, format=format)
