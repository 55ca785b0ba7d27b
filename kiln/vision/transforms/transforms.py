"""The transform classes of `torchvision.transforms`: callables built from `functional`.

Random transforms draw from kiln's generator (`kiln.rand`, `kiln.randint`, `kiln.randperm`)
with torchvision's calls, so `kiln.manual_seed` makes an augmentation pipeline repeat
(RandomChoice and RandomOrder use Python's `random`, as torchvision's v1 does). As in
torchvision, the transforms that act on tensors are `nn.Module`s (they can sit in an
`nn.Sequential`); Compose, ToTensor, PILToTensor, ToPILImage and Lambda are plain callables.
"""

from __future__ import annotations

import math
import numbers
import random
from typing import Any, Callable, Sequence

import kiln
from kiln import nn
from kiln.vision.transforms import functional as F
from kiln.vision.transforms.functional import InterpolationMode


def _setup_size(size: Any, error: str) -> tuple[int, int]:
    if isinstance(size, numbers.Number):
        return int(size), int(size)
    if isinstance(size, Sequence) and len(size) == 1:
        return size[0], size[0]
    if not isinstance(size, Sequence) or len(size) != 2:
        raise ValueError(error)
    return size[0], size[1]


class Compose:
    """Apply `transforms` one after another."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        for t in self.transforms:
            img = t(img)
        return img

    def __repr__(self) -> str:
        lines = [self.__class__.__name__ + "("] + [f"    {t}" for t in self.transforms]
        return "\n".join(lines) + "\n)"


class ToTensor:
    """PIL image or HWC ndarray -> CHW float tensor in [0, 1] (uint8 input is divided by 255)."""

    def __call__(self, pic: Any) -> kiln.Tensor:
        return F.to_tensor(pic)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class PILToTensor:
    """PIL image -> CHW tensor of the image's own pixel type, unscaled."""

    def __call__(self, pic: Any) -> kiln.Tensor:
        return F.pil_to_tensor(pic)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class ToPILImage:
    """CHW tensor or HWC ndarray -> PIL image (float pixels scaled by 255)."""

    def __init__(self, mode: str | None = None) -> None:
        self.mode = mode

    def __call__(self, pic: Any) -> Any:
        return F.to_pil_image(pic, self.mode)

    def __repr__(self) -> str:
        mode = "" if self.mode is None else f"mode={self.mode}"
        return f"{self.__class__.__name__}({mode})"


class ConvertImageDtype(nn.Module):
    """Tensor image to `dtype`, values rescaled (uint8 [0, 255] <-> float [0, 1])."""

    def __init__(self, dtype: Any) -> None:
        super().__init__()
        self.dtype = dtype

    def forward(self, image: kiln.Tensor) -> kiln.Tensor:
        return F.convert_image_dtype(image, self.dtype)


class Lambda:
    """Apply a user function."""

    def __init__(self, lambd: Callable) -> None:
        if not callable(lambd):
            raise TypeError(f"Lambda: argument should be callable, got {type(lambd).__name__}")
        self.lambd = lambd

    def __call__(self, img: Any) -> Any:
        return self.lambd(img)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}()"


class Normalize(nn.Module):
    """(x - mean) / std per channel of a float tensor image."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], inplace: bool = False):
        super().__init__()
        self.mean = mean
        self.std = std
        self.inplace = inplace

    def forward(self, tensor: kiln.Tensor) -> kiln.Tensor:
        return F.normalize(tensor, self.mean, self.std, self.inplace)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(mean={self.mean}, std={self.std})"


class Resize(nn.Module):
    """Resize to `size` ((h, w), or an int that the shorter side is matched to)."""

    def __init__(self, size: Any, interpolation: Any = InterpolationMode.BILINEAR,
                 max_size: int | None = None, antialias: bool | None = True) -> None:
        super().__init__()
        if not isinstance(size, (int, Sequence)) or (isinstance(size, Sequence)
                                                     and len(size) not in (1, 2)):
            raise ValueError(f"Resize: size should be an int or a sequence of one or two ints, "
                             f"got {size!r}")
        self.size = size
        self.max_size = max_size
        self.interpolation = F._interpolation(interpolation, "Resize")
        self.antialias = antialias

    def forward(self, img: Any) -> Any:
        return F.resize(img, self.size, self.interpolation, self.max_size, self.antialias)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(size={self.size}, "
                f"interpolation={self.interpolation.value}, max_size={self.max_size}, "
                f"antialias={self.antialias})")


class CenterCrop(nn.Module):
    """The centered `size` box (zero-padded when the image is smaller)."""

    def __init__(self, size: Any) -> None:
        super().__init__()
        self.size = _setup_size(size, "CenterCrop: size should be an int or a sequence of "
                                      "one or two ints")

    def forward(self, img: Any) -> Any:
        return F.center_crop(img, self.size)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={self.size})"


class Pad(nn.Module):
    """Pad the borders (see `functional.pad`)."""

    def __init__(self, padding: Any, fill: Any = 0, padding_mode: str = "constant") -> None:
        super().__init__()
        F._padding_ltrb(padding)
        if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
            raise ValueError(f"Pad: padding_mode should be constant, edge, reflect or "
                             f"symmetric, got {padding_mode!r}")
        self.padding = padding
        self.fill = fill
        self.padding_mode = padding_mode

    def forward(self, img: Any) -> Any:
        return F.pad(img, self.padding, self.fill, self.padding_mode)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(padding={self.padding}, fill={self.fill}, "
                f"padding_mode={self.padding_mode})")


class RandomCrop(nn.Module):
    """A `size` box at a random position, after optional padding (`pad_if_needed` pads an
    image smaller than `size` up to it)."""

    def __init__(self, size: Any, padding: Any = None, pad_if_needed: bool = False,
                 fill: Any = 0, padding_mode: str = "constant") -> None:
        super().__init__()
        self.size = _setup_size(size, "RandomCrop: size should be an int or a sequence of "
                                      "one or two ints")
        self.padding = padding
        self.pad_if_needed = pad_if_needed
        self.fill = fill
        self.padding_mode = padding_mode

    @staticmethod
    def get_params(img: Any, output_size: tuple[int, int]) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random crop of `output_size`."""
        _, h, w = F.get_dimensions(img)
        th, tw = output_size
        if h < th or w < tw:
            raise ValueError(f"RandomCrop: required crop size {(th, tw)} is larger than the "
                             f"input image size {(h, w)}")
        if w == tw and h == th:
            return 0, 0, h, w
        i = int(kiln.randint(0, h - th + 1, size=(1,)).item())
        j = int(kiln.randint(0, w - tw + 1, size=(1,)).item())
        return i, j, th, tw

    def forward(self, img: Any) -> Any:
        if self.padding is not None:
            img = F.pad(img, self.padding, self.fill, self.padding_mode)
        _, height, width = F.get_dimensions(img)
        if self.pad_if_needed and width < self.size[1]:
            img = F.pad(img, [self.size[1] - width, 0], self.fill, self.padding_mode)
        if self.pad_if_needed and height < self.size[0]:
            img = F.pad(img, [0, self.size[0] - height], self.fill, self.padding_mode)
        i, j, h, w = self.get_params(img, self.size)
        return F.crop(img, i, j, h, w)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(size={self.size}, padding={self.padding})"


class RandomResizedCrop(nn.Module):
    """A random box of random area (`scale` of the image) and aspect ratio (`ratio`, drawn
    log-uniformly), resized to `size`; after 10 misses, the centered box of the closest ratio."""

    def __init__(self, size: Any, scale: tuple[float, float] = (0.08, 1.0),
                 ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                 interpolation: Any = InterpolationMode.BILINEAR,
                 antialias: bool | None = True) -> None:
        super().__init__()
        self.size = _setup_size(size, "RandomResizedCrop: size should be an int or a sequence "
                                      "of one or two ints")
        if not isinstance(scale, Sequence) or not isinstance(ratio, Sequence):
            raise TypeError("RandomResizedCrop: scale and ratio should be sequences")
        self.interpolation = F._interpolation(interpolation, "RandomResizedCrop")
        self.antialias = antialias
        self.scale = scale
        self.ratio = ratio

    @staticmethod
    def get_params(img: Any, scale: Sequence[float],
                   ratio: Sequence[float]) -> tuple[int, int, int, int]:
        """(top, left, height, width) of a random box."""
        _, height, width = F.get_dimensions(img)
        area = height * width
        log_ratio = kiln.log(kiln.tensor(ratio)).tolist()     # in float32, as torchvision
        for _ in range(10):
            target_area = area * kiln.empty(1).uniform_(scale[0], scale[1]).item()
            aspect_ratio = kiln.exp(kiln.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            w = int(round(math.sqrt(target_area * aspect_ratio)))
            h = int(round(math.sqrt(target_area / aspect_ratio)))
            if 0 < w <= width and 0 < h <= height:
                i = int(kiln.randint(0, height - h + 1, size=(1,)).item())
                j = int(kiln.randint(0, width - w + 1, size=(1,)).item())
                return i, j, h, w
        in_ratio = float(width) / float(height)
        if in_ratio < min(ratio):
            w = width
            h = int(round(w / min(ratio)))
        elif in_ratio > max(ratio):
            h = height
            w = int(round(h * max(ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def forward(self, img: Any) -> Any:
        i, j, h, w = self.get_params(img, self.scale, self.ratio)
        return F.resized_crop(img, i, j, h, w, self.size, self.interpolation,
                              antialias=self.antialias)

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(size={self.size}, scale={self.scale}, "
                f"ratio={self.ratio}, interpolation={self.interpolation.value})")


class RandomHorizontalFlip(nn.Module):
    """Mirror left-right with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, img: Any) -> Any:
        if bool(kiln.rand(1) < self.p):
            return F.hflip(img)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p})"


class RandomVerticalFlip(nn.Module):
    """Mirror top-bottom with probability `p`."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = p

    def forward(self, img: Any) -> Any:
        if bool(kiln.rand(1) < self.p):
            return F.vflip(img)
        return img

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(p={self.p})"


class Grayscale(nn.Module):
    """Convert to grayscale with 1 or 3 output channels."""

    def __init__(self, num_output_channels: int = 1) -> None:
        super().__init__()
        self.num_output_channels = num_output_channels

    def forward(self, img: Any) -> Any:
        return F.rgb_to_grayscale(img, num_output_channels=self.num_output_channels)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(num_output_channels={self.num_output_channels})"


class RandomGrayscale(nn.Module):
    """Grayscale (keeping the channel count) with probability `p`."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = p

    def forward(self, img: Any) -> Any:
        channels, _, _ = F.get_dimensions(img)
        if bool(kiln.rand(1) < self.p):
            return F.rgb_to_grayscale(img, num_output_channels=channels)
        return img


class RandomApply(nn.Module):
    """Apply `transforms` in order, all or none, with probability `p`."""

    def __init__(self, transforms: Sequence[Callable], p: float = 0.5) -> None:
        super().__init__()
        self.transforms = transforms
        self.p = p

    def forward(self, img: Any) -> Any:
        if bool(self.p < kiln.rand(1)):
            return img
        for t in self.transforms:
            img = t(img)
        return img


class RandomChoice:
    """Apply one of `transforms`, chosen with weights `p` (uniform by default). As in
    torchvision's v1, the choice comes from Python's `random` module (`random.seed`)."""

    def __init__(self, transforms: Sequence[Callable], p: Sequence[float] | None = None):
        if p is not None and not isinstance(p, Sequence):
            raise TypeError("RandomChoice: p should be a sequence")
        self.transforms = transforms
        self.p = p

    def __call__(self, *args: Any) -> Any:
        return random.choices(self.transforms, weights=self.p)[0](*args)


class RandomOrder:
    """Apply `transforms` in a random order (Python's `random.shuffle`, as torchvision's v1)."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, img: Any) -> Any:
        order = list(range(len(self.transforms)))
        random.shuffle(order)
        for i in order:
            img = self.transforms[i](img)
        return img


def _check_range(value: Any, name: str, center: float = 1.0,
                 bound: tuple[float, float] = (0.0, float("inf")),
                 clip_first_on_zero: bool = True) -> list[float] | None:
    """ColorJitter's [low, high] factor range from a number (center -/+ it) or a pair; None
    when the range is the single identity value."""
    if isinstance(value, numbers.Number):
        if value < 0:
            raise ValueError(f"ColorJitter: if {name} is a single number, it must be "
                             f"non-negative, got {value}")
        value = [center - float(value), center + float(value)]
        if clip_first_on_zero:
            value[0] = max(value[0], 0.0)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        value = [float(value[0]), float(value[1])]
    else:
        raise TypeError(f"ColorJitter: {name} should be a single number or a list/tuple of "
                        f"length 2, got {value!r}")
    if not bound[0] <= value[0] <= value[1] <= bound[1]:
        raise ValueError(f"ColorJitter: {name} values should be between {bound}, got {value}")
    if value[0] == value[1] == center:
        return None
    return value


class ColorJitter(nn.Module):
    """Random brightness, contrast, saturation and hue changes, applied in a random order."""

    def __init__(self, brightness: Any = 0, contrast: Any = 0, saturation: Any = 0,
                 hue: Any = 0) -> None:
        super().__init__()
        self.brightness = _check_range(brightness, "brightness")
        self.contrast = _check_range(contrast, "contrast")
        self.saturation = _check_range(saturation, "saturation")
        self.hue = _check_range(hue, "hue", center=0, bound=(-0.5, 0.5),
                                clip_first_on_zero=False)

    @staticmethod
    def get_params(brightness, contrast, saturation, hue):
        """(order, brightness, contrast, saturation, hue factors), a factor None when unused."""
        order = kiln.randperm(4)

        def draw(r):
            return None if r is None else float(kiln.empty(1).uniform_(r[0], r[1]).item())
        return order, draw(brightness), draw(contrast), draw(saturation), draw(hue)

    def forward(self, img: Any) -> Any:
        order, b, c, s, h = self.get_params(self.brightness, self.contrast, self.saturation,
                                            self.hue)
        for fn_id in order.tolist():
            if fn_id == 0 and b is not None:
                img = F.adjust_brightness(img, b)
            elif fn_id == 1 and c is not None:
                img = F.adjust_contrast(img, c)
            elif fn_id == 2 and s is not None:
                img = F.adjust_saturation(img, s)
            elif fn_id == 3 and h is not None:
                img = F.adjust_hue(img, h)
        return img

    def __repr__(self) -> str:
        return (f"{self.__class__.__name__}(brightness={self.brightness}, "
                f"contrast={self.contrast}, saturation={self.saturation}, hue={self.hue})")


class RandomRotation(nn.Module):
    """Rotate by an angle drawn uniformly from `degrees` ((-d, d) for a number)."""

    def __init__(self, degrees: Any, interpolation: Any = InterpolationMode.NEAREST,
                 expand: bool = False, center: Sequence[int] | None = None,
                 fill: Any = 0) -> None:
        super().__init__()
        if isinstance(degrees, numbers.Number):
            if degrees < 0:
                raise ValueError(f"RandomRotation: if degrees is a single number, it must be "
                                 f"positive, got {degrees}")
            degrees = [-float(degrees), float(degrees)]
        elif not isinstance(degrees, Sequence) or len(degrees) != 2:
            raise ValueError(f"RandomRotation: degrees should be a number or a sequence of "
                             f"length 2, got {degrees!r}")
        self.degrees = [float(d) for d in degrees]
        self.interpolation = F._interpolation(interpolation, "RandomRotation")
        self.expand = expand
        self.center = center
        self.fill = fill

    @staticmethod
    def get_params(degrees: Sequence[float]) -> float:
        return float(kiln.empty(1).uniform_(float(degrees[0]), float(degrees[1])).item())

    def forward(self, img: Any) -> Any:
        fill = self.fill
        if isinstance(img, kiln.Tensor):
            channels = F.get_dimensions(img)[0]
            fill = [float(fill)] * channels if isinstance(fill, (int, float)) \
                else [float(f) for f in fill]
        angle = self.get_params(self.degrees)
        return F.rotate(img, angle, self.interpolation, self.expand, self.center, fill)

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(degrees={self.degrees})"


class GaussianBlur(nn.Module):
    """Gaussian blur with `kernel_size` and a sigma drawn uniformly from `sigma` (a range, or
    one number for a fixed sigma)."""

    def __init__(self, kernel_size: Any, sigma: Any = (0.1, 2.0)) -> None:
        super().__init__()
        self.kernel_size = _setup_size(kernel_size, "GaussianBlur: kernel size should be an "
                                                    "int or a sequence of two ints")
        if any(k <= 0 or k % 2 == 0 for k in self.kernel_size):
            raise ValueError(f"GaussianBlur: kernel size should be odd and positive, got "
                             f"{self.kernel_size}")
        if isinstance(sigma, numbers.Number):
            if sigma <= 0:
                raise ValueError(f"GaussianBlur: sigma should be positive, got {sigma}")
            sigma = (sigma, sigma)
        elif isinstance(sigma, Sequence) and len(sigma) == 2:
            if not 0.0 < sigma[0] <= sigma[1]:
                raise ValueError(f"GaussianBlur: sigma values should be positive and of the "
                                 f"form (min, max), got {sigma}")
        else:
            raise ValueError(f"GaussianBlur: sigma should be a number or a (min, max) pair, "
                             f"got {sigma!r}")
        self.sigma = sigma

    @staticmethod
    def get_params(sigma_min: float, sigma_max: float) -> float:
        return float(kiln.empty(1).uniform_(sigma_min, sigma_max).item())

    def forward(self, img: Any) -> Any:
        sigma = self.get_params(self.sigma[0], self.sigma[1])
        return F.gaussian_blur(img, self.kernel_size, [sigma, sigma])

    def __repr__(self) -> str:
        return f"{self.__class__.__name__}(kernel_size={self.kernel_size}, sigma={self.sigma})"


class RandomErasing(nn.Module):
    """With probability `p`, replace a random box of a tensor image (area a `scale` fraction,
    aspect ratio log-uniform in `ratio`) by `value`: a number, a per-channel tuple, or
    "random" for normal noise. After 10 boxes that do not fit, the image is returned."""

    def __init__(self, p: float = 0.5, scale: tuple[float, float] = (0.02, 0.33),
                 ratio: tuple[float, float] = (0.3, 3.3), value: Any = 0,
                 inplace: bool = False) -> None:
        super().__init__()
        if not isinstance(value, (numbers.Number, str, tuple, list)):
            raise TypeError("RandomErasing: value should be a number, a tuple, a list or "
                            "'random'")
        if isinstance(value, str) and value != "random":
            raise ValueError(f"RandomErasing: the only string value is 'random', got {value!r}")
        if scale[0] > scale[1] or ratio[0] > ratio[1]:
            raise ValueError("RandomErasing: scale and ratio should be of the form (min, max)")
        if scale[0] < 0 or scale[1] > 1:
            raise ValueError("RandomErasing: scale should be within [0, 1]")
        if p < 0 or p > 1:
            raise ValueError("RandomErasing: p should be within [0, 1]")
        self.p = p
        self.scale = scale
        self.ratio = ratio
        self.value = value
        self.inplace = inplace

    @staticmethod
    def get_params(img: kiln.Tensor, scale: Sequence[float], ratio: Sequence[float],
                   value: list[float] | None = None) -> tuple:
        """(i, j, h, w, v): the box and what fills it; the whole image and itself on a miss."""
        channels, height, width = img.shape[-3], img.shape[-2], img.shape[-1]
        area = height * width
        log_ratio = kiln.log(kiln.tensor(ratio)).tolist()     # in float32, as torchvision
        for _ in range(10):
            erase_area = area * kiln.empty(1).uniform_(scale[0], scale[1]).item()
            aspect_ratio = kiln.exp(kiln.empty(1).uniform_(log_ratio[0], log_ratio[1])).item()
            h = int(round(math.sqrt(erase_area * aspect_ratio)))
            w = int(round(math.sqrt(erase_area / aspect_ratio)))
            if not (h < height and w < width):
                continue
            if value is None:
                v = kiln.empty(channels, h, w, dtype=kiln.float32).normal_()
            else:
                v = kiln.tensor(value)[:, None, None]
            i = int(kiln.randint(0, height - h + 1, size=(1,)).item())
            j = int(kiln.randint(0, width - w + 1, size=(1,)).item())
            return i, j, h, w, v
        return 0, 0, height, width, img

    def forward(self, img: kiln.Tensor) -> kiln.Tensor:
        if bool(kiln.rand(1) < self.p):
            if isinstance(self.value, numbers.Number):
                value = [float(self.value)]
            elif isinstance(self.value, str):
                value = None
            else:
                value = [float(v) for v in self.value]
            if value is not None and len(value) not in (1, img.shape[-3]):
                raise ValueError(f"RandomErasing: if value is a sequence, it should have 1 or "
                                 f"{img.shape[-3]} (the channels) elements, got {len(value)}")
            i, j, h, w, v = self.get_params(img, self.scale, self.ratio, value)
            return F.erase(img, i, j, h, w, v.to(img.dtype), self.inplace)
        return img
