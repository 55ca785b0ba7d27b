"""The evaluation presets pretrained weights name (`weights.transforms()`), as torchvision's
`transforms._presets`: resize, center crop, to float in [0, 1], normalize."""

from __future__ import annotations

from typing import Any, Sequence

import kiln
from kiln import Tensor, nn
from kiln.vision.transforms import functional as F
from kiln.vision.transforms.functional import InterpolationMode


class ImageClassification(nn.Module):
    """Resize the shorter side to `resize_size`, crop the center `crop_size` square, convert
    to float32 in [0, 1] and normalize with ImageNet's mean and std. Takes a PIL image or a
    (..., C, H, W) tensor (uint8 or float)."""

    def __init__(self, *, crop_size: int, resize_size: int = 256,
                 mean: Sequence[float] = (0.485, 0.456, 0.406),
                 std: Sequence[float] = (0.229, 0.224, 0.225),
                 interpolation: InterpolationMode = InterpolationMode.BILINEAR,
                 antialias: bool | None = True) -> None:
        super().__init__()
        self.crop_size = [crop_size]
        self.resize_size = [resize_size]
        self.mean = list(mean)
        self.std = list(std)
        self.interpolation = interpolation
        self.antialias = antialias

    def forward(self, img: Any) -> Tensor:
        img = F.resize(img, self.resize_size, interpolation=self.interpolation,
                       antialias=self.antialias)
        img = F.center_crop(img, self.crop_size)
        if not isinstance(img, Tensor):
            img = F.pil_to_tensor(img)
        img = F.convert_image_dtype(img, kiln.float32)
        return F.normalize(img, mean=self.mean, std=self.std)

    def __repr__(self) -> str:
        lines = [f"crop_size={self.crop_size}", f"resize_size={self.resize_size}",
                 f"mean={self.mean}", f"std={self.std}", f"interpolation={self.interpolation}"]
        return self.__class__.__name__ + "(\n    " + "\n    ".join(lines) + "\n)"

    def describe(self) -> str:
        return (f"Accepts PIL.Image, batched (B, C, H, W) and single (C, H, W) image tensors. "
                f"The images are resized to resize_size={self.resize_size} using "
                f"interpolation={self.interpolation}, followed by a central crop of "
                f"crop_size={self.crop_size}. Finally the values are first rescaled to "
                f"[0.0, 1.0] and then normalized using mean={self.mean} and std={self.std}.")
