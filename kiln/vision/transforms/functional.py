"""Image functions of `torchvision.transforms.functional`: conversions, resize, crops, flips,
padding, grayscale, rotation and color adjustments, on PIL images and on kiln tensors.

On a PIL image each function delegates to Pillow, as torchvision does, so the pixels are
Pillow's; on a kiln tensor of shape (..., C, H, W) it is a composition of kiln tensor ops.
"""

from __future__ import annotations

import enum
import math
import numbers
import sys
from typing import Any, Sequence

import numpy as np

import kiln
import kiln.nn.functional as KF
from kiln import Tensor
from kiln.vision._imaging import is_pil_image, pil_image


class InterpolationMode(enum.Enum):
    """How resizing and rotation sample pixels (torchvision's names and values)."""
    NEAREST = "nearest"
    NEAREST_EXACT = "nearest-exact"
    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    BOX = "box"
    HAMMING = "hamming"
    LANCZOS = "lanczos"


# Pillow's resampling filter numbers (Image.Resampling) for each mode
_PIL_FILTERS = {InterpolationMode.NEAREST: 0, InterpolationMode.NEAREST_EXACT: 0,
                InterpolationMode.BILINEAR: 2, InterpolationMode.BICUBIC: 3,
                InterpolationMode.BOX: 4, InterpolationMode.HAMMING: 5,
                InterpolationMode.LANCZOS: 1}
_FROM_PIL_FILTER = {0: InterpolationMode.NEAREST, 2: InterpolationMode.BILINEAR,
                    3: InterpolationMode.BICUBIC, 4: InterpolationMode.BOX,
                    5: InterpolationMode.HAMMING, 1: InterpolationMode.LANCZOS}


def _interpolation(mode: Any, op: str) -> InterpolationMode:
    """An InterpolationMode from the enum, its string value or a Pillow filter number."""
    if isinstance(mode, InterpolationMode):
        return mode
    if isinstance(mode, str):
        return InterpolationMode(mode)
    if isinstance(mode, int) and mode in _FROM_PIL_FILTER:
        return _FROM_PIL_FILTER[mode]
    raise TypeError(f"{op}: interpolation should be an InterpolationMode, got {mode!r}")


def _check_image(img: Any, op: str) -> None:
    if not (isinstance(img, Tensor) or is_pil_image(img)):
        raise TypeError(f"{op}: img should be a PIL Image or a kiln Tensor, got {type(img)}")


# ---------------------------------------------------------------- sizes and conversions

def get_dimensions(img: Any) -> list[int]:
    """[channels, height, width] of a PIL image or a (..., C, H, W) tensor."""
    if isinstance(img, Tensor):
        if img.ndim < 2:
            raise TypeError(f"get_dimensions: expected a tensor with at least 2 dims, got "
                            f"shape {tuple(img.shape)}")
        channels = 1 if img.ndim == 2 else int(img.shape[-3])
        return [channels, int(img.shape[-2]), int(img.shape[-1])]
    _check_image(img, "get_dimensions")
    return [len(img.getbands()), img.height, img.width]


def get_image_size(img: Any) -> list[int]:
    """[width, height] of the image."""
    _, height, width = get_dimensions(img)
    return [width, height]


def get_image_num_channels(img: Any) -> int:
    return get_dimensions(img)[0]


def to_tensor(pic: Any) -> Tensor:
    """A PIL image or an HWC ndarray as a CHW tensor; uint8 pixels become float32 in [0, 1],
    other pixel types (modes 'I', 'I;16', 'F', non-uint8 arrays) keep their values."""
    if is_pil_image(pic):
        if pic.mode == "I;16" and sys.byteorder == "little":
            array = np.array(pic, np.int16, copy=True)
        else:
            dtypes = {"I": np.int32, "F": np.float32}
            array = np.array(pic, dtypes.get(pic.mode, np.uint8), copy=True)
        if pic.mode == "1":
            array = 255 * array
        array = array.reshape(pic.height, pic.width, len(pic.getbands()))
    elif isinstance(pic, np.ndarray):
        if pic.ndim not in (2, 3):
            raise ValueError(f"to_tensor: pic should be 2 or 3 dimensional, got {pic.ndim} "
                             f"dimensions")
        array = pic[:, :, None] if pic.ndim == 2 else pic
    else:
        raise TypeError(f"to_tensor: pic should be a PIL Image or an ndarray, got {type(pic)}")
    chw = kiln.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))
    if chw.dtype == kiln.uint8:
        return chw.to(kiln.get_default_dtype()).div(255)
    return chw


def pil_to_tensor(pic: Any) -> Tensor:
    """A PIL image as a CHW tensor of its own pixel type, values unscaled."""
    if not is_pil_image(pic):
        raise TypeError(f"pil_to_tensor: pic should be a PIL Image, got {type(pic)}")
    array = np.array(pic, copy=True).reshape(pic.height, pic.width, len(pic.getbands()))
    return kiln.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)))


def to_pil_image(pic: Any, mode: str | None = None) -> Any:
    """A CHW tensor or an HWC ndarray as a PIL image. Float pixels are scaled by 255 and cast
    to uint8 (truncating), unless `mode` is 'F'; the mode follows from channels and dtype."""
    if isinstance(pic, Tensor):
        if pic.ndim not in (2, 3):
            raise ValueError(f"to_pil_image: pic should be 2 or 3 dimensional, got {pic.ndim} "
                             f"dimensions")
        if pic.ndim == 2:
            pic = pic.unsqueeze(0)
        if pic.shape[-3] > 4:
            raise ValueError(f"to_pil_image: pic should not have > 4 channels, got "
                             f"{pic.shape[-3]} channels")
        if pic.is_floating_point() and mode != "F":
            pic = pic.mul(255).to(kiln.uint8)
        npimg = np.transpose(pic.detach().cpu().numpy(), (1, 2, 0))
    elif isinstance(pic, np.ndarray):
        if pic.ndim not in (2, 3):
            raise ValueError(f"to_pil_image: pic should be 2 or 3 dimensional, got {pic.ndim} "
                             f"dimensions")
        npimg = pic[:, :, None] if pic.ndim == 2 else pic
        if npimg.shape[-1] > 4:
            raise ValueError(f"to_pil_image: pic should not have > 4 channels, got "
                             f"{npimg.shape[-1]} channels")
        if np.issubdtype(npimg.dtype, np.floating) and mode != "F":
            npimg = (npimg * 255).astype(np.uint8)
    else:
        raise TypeError(f"to_pil_image: pic should be a Tensor or an ndarray, got {type(pic)}")

    channels = npimg.shape[2]
    if channels == 1:
        npimg = npimg[:, :, 0]
        expected = {np.dtype(np.uint8): "L", np.dtype(np.int16): "I;16",
                    np.dtype(np.uint16): "I;16", np.dtype(np.int32): "I",
                    np.dtype(np.float32): "F"}.get(npimg.dtype)
        if mode is not None and mode != expected:
            raise ValueError(f"to_pil_image: incorrect mode ({mode}) supplied for input type "
                             f"{npimg.dtype}; it should be {expected}")
        mode = expected
    else:
        permitted = {2: ["LA"], 3: ["RGB", "YCbCr", "HSV"], 4: ["RGBA", "CMYK", "RGBX"]}[channels]
        if mode is not None and mode not in permitted:
            raise ValueError(f"to_pil_image: only modes {permitted} are supported for "
                             f"{channels}-channel inputs, got {mode!r}")
        if mode is None and npimg.dtype == np.uint8:
            mode = permitted[0]
    if mode is None:
        raise TypeError(f"to_pil_image: input type {npimg.dtype} is not supported")
    Image = pil_image()
    if mode in ("L", "LA", "RGB", "RGBA", "F", "I"):
        image = Image.fromarray(np.ascontiguousarray(npimg))
        return image if image.mode == mode else image.convert(mode)
    if mode == "I;16":
        return Image.fromarray(np.ascontiguousarray(npimg.astype(np.uint16)))
    # YCbCr, HSV, CMYK, RGBX: the raw bytes in that mode
    return Image.frombytes(mode, (npimg.shape[1], npimg.shape[0]),
                           np.ascontiguousarray(npimg.astype(np.uint8)).tobytes())


def normalize(tensor: Tensor, mean: Sequence[float], std: Sequence[float],
              inplace: bool = False) -> Tensor:
    """(tensor - mean) / std per channel of a float (..., C, H, W) tensor."""
    if not isinstance(tensor, Tensor):
        raise TypeError(f"normalize: input should be a kiln Tensor, got {type(tensor)} (apply "
                        f"ToTensor first)")
    if not tensor.is_floating_point():
        raise TypeError(f"normalize: input should be a float tensor, got {tensor.dtype}")
    if tensor.ndim < 3:
        raise ValueError(f"normalize: expected a tensor image of size (..., C, H, W), got "
                         f"shape {tuple(tensor.shape)}")
    if not inplace:
        tensor = tensor.clone()
    if isinstance(std, Tensor):
        has_zero = bool((std.to(tensor.dtype) == 0).any())
    else:
        # numbers are checked in NumPy: no tensor read, so a compiled caller does not break
        # (bfloat16 has float32's exponent range, so the same values underflow to zero)
        like = {"float16": np.float16, "float64": np.float64}.get(tensor.dtype.name, np.float32)
        has_zero = bool((np.asarray(std, dtype=np.float64).astype(like) == 0).any())
    mean = kiln.as_tensor(mean, dtype=tensor.dtype, device=tensor.device)
    std = kiln.as_tensor(std, dtype=tensor.dtype, device=tensor.device)
    if has_zero:
        raise ValueError(f"normalize: std evaluated to zero after conversion to {tensor.dtype}, "
                         f"leading to division by zero")
    if mean.ndim == 1:
        mean = mean.view(-1, 1, 1)
    if std.ndim == 1:
        std = std.view(-1, 1, 1)
    return tensor.sub_(mean).div_(std)


def convert_image_dtype(image: Tensor, dtype: Any = None) -> Tensor:
    """A tensor image in another dtype, values rescaled: uint8 [0, 255] <-> float [0, 1]."""
    dtype = kiln.float32 if dtype is None else dtype
    if not isinstance(image, Tensor):
        raise TypeError(f"convert_image_dtype: input should be a kiln Tensor, got {type(image)}")
    if image.dtype == dtype:
        return image
    to_float = kiln.empty(0, dtype=dtype).is_floating_point()
    if image.is_floating_point() and to_float:
        return image.to(dtype)
    if image.is_floating_point():
        if dtype != kiln.uint8:
            raise NotImplementedError(f"convert_image_dtype: float to {dtype} is not supported")
        eps = 1e-3
        return image.mul(255 + 1.0 - eps).to(kiln.uint8)
    if image.dtype != kiln.uint8:
        raise NotImplementedError(f"convert_image_dtype: from {image.dtype} is not supported")
    if to_float:
        return image.to(dtype).div(255)
    return image.to(dtype)


# ---------------------------------------------------------------- geometry

def _output_size(height: int, width: int, size: Any, max_size: int | None) -> list[int]:
    """[h, w] after resizing to `size`: an int (or a 1-sequence) matches the shorter side and
    keeps the aspect ratio (truncating the longer side), a pair is (h, w)."""
    if isinstance(size, numbers.Number):
        size = [int(size)]
    size = list(size)
    if len(size) == 1:
        short, long = (width, height) if width <= height else (height, width)
        new_short, new_long = size[0], int(size[0] * long / short)
        if max_size is not None:
            if max_size <= size[0]:
                raise ValueError(f"resize: max_size = {max_size} must be strictly greater than "
                                 f"the requested size for the smaller edge size = {size}")
            if new_long > max_size:
                new_short, new_long = int(max_size * new_short / new_long), max_size
        return [new_long, new_short] if width <= height else [new_short, new_long]
    if len(size) != 2:
        raise ValueError(f"resize: size should be an int or a sequence of one or two ints, "
                         f"got {size}")
    if max_size is not None:
        raise ValueError("resize: max_size is only supported when size is an int (the smaller "
                         "edge)")
    return [int(size[0]), int(size[1])]


def _filter_triangle(x: np.ndarray) -> np.ndarray:
    return np.maximum(1.0 - np.abs(x), 0.0)


def _filter_cubic(x: np.ndarray) -> np.ndarray:
    a = -0.5            # the antialiased bicubic kernel's coefficient (Pillow's and torch's)
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


def _antialias_matrix(in_size: int, out_size: int, cubic: bool) -> np.ndarray:
    """(out, in) weights of an antialiased resize along one axis: the interpolation kernel is
    widened by the downscale factor, so every input pixel contributes (PIL's resampling, which
    torch's `interpolate(antialias=True)` also follows)."""
    scale = in_size / out_size
    half_width = 2.0 if cubic else 1.0
    support = half_width * scale if scale >= 1.0 else half_width
    invscale = 1.0 / scale if scale >= 1.0 else 1.0
    kernel = _filter_cubic if cubic else _filter_triangle
    weights = np.zeros((out_size, in_size))
    for i in range(out_size):
        center = scale * (i + 0.5)
        low = max(int(center - support + 0.5), 0)
        high = min(int(center + support + 0.5), in_size)
        w = kernel((np.arange(low, high) - center + 0.5) * invscale)
        total = w.sum()
        weights[i, low:high] = w / total if total != 0 else w
    return weights


def _resize_tensor(img: Tensor, size: list[int], mode: InterpolationMode,
                   antialias: bool) -> Tensor:
    if mode not in (InterpolationMode.NEAREST, InterpolationMode.NEAREST_EXACT,
                    InterpolationMode.BILINEAR, InterpolationMode.BICUBIC):
        raise ValueError(f"resize: tensors support only nearest, nearest-exact, bilinear and "
                         f"bicubic interpolation, got {mode.value}")
    lead = tuple(img.shape[:-2])
    x = img.reshape(-1, 1, img.shape[-2], img.shape[-1])
    out_dtype = x.dtype
    if not x.is_floating_point():
        x = x.to(kiln.float32)
    smooth = mode in (InterpolationMode.BILINEAR, InterpolationMode.BICUBIC)
    if smooth and antialias:
        cubic = mode == InterpolationMode.BICUBIC
        rows = kiln.as_tensor(_antialias_matrix(x.shape[-2], size[0], cubic), dtype=x.dtype,
                              device=x.device)
        cols = kiln.as_tensor(_antialias_matrix(x.shape[-1], size[1], cubic), dtype=x.dtype,
                              device=x.device)
        x = kiln.matmul(kiln.matmul(rows, x), cols.t())
    else:
        x = KF.interpolate(x, size=size, mode=mode.value,
                           align_corners=False if smooth else None)
    if out_dtype != x.dtype:
        if mode == InterpolationMode.BICUBIC and out_dtype == kiln.uint8:
            x = x.clamp(0, 255)
        x = x.round().to(out_dtype)
    return x.reshape(*lead, size[0], size[1])


def resize(img: Any, size: Any, interpolation: Any = InterpolationMode.BILINEAR,
           max_size: int | None = None, antialias: bool | None = True) -> Any:
    """Resize to `size` ((h, w), or an int for the shorter side). PIL images go through
    Pillow's resize (always antialiased); tensors are interpolated, antialiased when
    `antialias` and the mode is bilinear or bicubic, as torchvision does."""
    _check_image(img, "resize")
    mode = _interpolation(interpolation, "resize")
    _, height, width = get_dimensions(img)
    out = _output_size(height, width, size, max_size)
    if [height, width] == out:
        return img
    if is_pil_image(img):
        return img.resize((out[1], out[0]), _PIL_FILTERS[mode])
    return _resize_tensor(img, out, mode, bool(antialias))


def crop(img: Any, top: int, left: int, height: int, width: int) -> Any:
    """The box of `height` x `width` at (top, left); parts outside the image are zero."""
    _check_image(img, "crop")
    if is_pil_image(img):
        return img.crop((left, top, left + width, top + height))
    _, h, w = get_dimensions(img)
    right, bottom = left + width, top + height
    if left < 0 or top < 0 or right > w or bottom > h:
        padding = [max(-left + min(0, right), 0), max(-top + min(0, bottom), 0),
                   max(right - max(w, left), 0), max(bottom - max(h, top), 0)]
        return pad(img[..., max(top, 0):bottom, max(left, 0):right], padding, fill=0)
    return img[..., top:bottom, left:right]


def center_crop(img: Any, output_size: Any) -> Any:
    """The centered box of `output_size` ((h, w) or an int); a smaller image is zero-padded."""
    if isinstance(output_size, numbers.Number):
        output_size = (int(output_size), int(output_size))
    elif isinstance(output_size, (tuple, list)) and len(output_size) == 1:
        output_size = (output_size[0], output_size[0])
    _, image_height, image_width = get_dimensions(img)
    crop_height, crop_width = output_size
    if crop_width > image_width or crop_height > image_height:
        padding = [(crop_width - image_width) // 2 if crop_width > image_width else 0,
                   (crop_height - image_height) // 2 if crop_height > image_height else 0,
                   (crop_width - image_width + 1) // 2 if crop_width > image_width else 0,
                   (crop_height - image_height + 1) // 2 if crop_height > image_height else 0]
        img = pad(img, padding, fill=0)
        _, image_height, image_width = get_dimensions(img)
        if crop_width == image_width and crop_height == image_height:
            return img
    top = int(round((image_height - crop_height) / 2.0))
    left = int(round((image_width - crop_width) / 2.0))
    return crop(img, top, left, crop_height, crop_width)


def resized_crop(img: Any, top: int, left: int, height: int, width: int, size: Any,
                 interpolation: Any = InterpolationMode.BILINEAR,
                 antialias: bool | None = True) -> Any:
    """crop, then resize to `size`."""
    return resize(crop(img, top, left, height, width), size, interpolation,
                  antialias=antialias)


def hflip(img: Any) -> Any:
    """Mirror left-right."""
    _check_image(img, "hflip")
    if is_pil_image(img):
        return img.transpose(pil_image().Transpose.FLIP_LEFT_RIGHT)
    return img.flip(-1)


def vflip(img: Any) -> Any:
    """Mirror top-bottom."""
    _check_image(img, "vflip")
    if is_pil_image(img):
        return img.transpose(pil_image().Transpose.FLIP_TOP_BOTTOM)
    return img.flip(-2)


def _padding_ltrb(padding: Any) -> list[int]:
    """[left, top, right, bottom] from an int, a 1-, 2- (left/right, top/bottom) or 4-sequence."""
    if isinstance(padding, numbers.Number):
        return [int(padding)] * 4
    if not isinstance(padding, (tuple, list)) or len(padding) not in (1, 2, 4):
        raise ValueError(f"pad: padding must be an int or a 1, 2 or 4 element sequence, got "
                         f"{padding!r}")
    padding = [int(p) for p in padding]
    if len(padding) == 1:
        return padding * 4
    if len(padding) == 2:
        return [padding[0], padding[1], padding[0], padding[1]]
    return padding


def _pil_fill(fill: Any, img: Any) -> Any:
    """A fill value in the form Pillow takes for `img`'s bands."""
    bands = len(img.getbands())
    if fill is None:
        fill = 0
    if isinstance(fill, (int, float)) and bands > 1:
        return tuple([fill] * bands)
    if isinstance(fill, (list, tuple)):
        if len(fill) == 1:
            fill = fill * bands
        if len(fill) != bands:
            raise ValueError(f"pad: the fill has {len(fill)} values but the image has {bands} "
                             f"bands")
        return tuple(fill)
    return fill


def pad(img: Any, padding: Any, fill: Any = 0, padding_mode: str = "constant") -> Any:
    """Pad each border (`padding` as int, (lr, tb) or (l, t, r, b)); `padding_mode` is
    constant (with `fill`), edge, reflect or symmetric. Negative padding crops."""
    _check_image(img, "pad")
    if padding_mode not in ("constant", "edge", "reflect", "symmetric"):
        raise ValueError(f"pad: padding_mode should be constant, edge, reflect or symmetric, "
                         f"got {padding_mode!r}")
    left, top, right, bottom = _padding_ltrb(padding)
    if is_pil_image(img):
        if padding_mode == "constant":
            from PIL import ImageOps
            palette = img.getpalette() if img.mode == "P" else None
            out = ImageOps.expand(img, border=(left, top, right, bottom),
                                  fill=_pil_fill(fill, img))
            if palette is not None:
                out.putpalette(palette)
            return out
        crop_ltrb = [max(-p, 0) for p in (left, top, right, bottom)]
        if any(crop_ltrb):
            img = img.crop((crop_ltrb[0], crop_ltrb[1], img.width - crop_ltrb[2],
                            img.height - crop_ltrb[3]))
        left, top, right, bottom = (max(p, 0) for p in (left, top, right, bottom))
        array = np.asarray(img)
        widths = [(top, bottom), (left, right)] + [(0, 0)] * (array.ndim - 2)
        return pil_image().fromarray(np.pad(array, widths, padding_mode))
    if padding_mode == "constant":
        return KF.pad(img, [left, right, top, bottom], value=float(fill or 0))
    if padding_mode == "symmetric":
        return _pad_symmetric(img, left, top, right, bottom)
    squeeze = 4 - img.ndim if img.ndim < 4 else 0
    x = img.reshape(*([1] * squeeze), *img.shape) if squeeze else img
    out_dtype = x.dtype
    if not x.is_floating_point():
        x = x.to(kiln.float32)
    mode = {"edge": "replicate", "reflect": "reflect"}[padding_mode]
    x = KF.pad(x, [left, right, top, bottom], mode=mode).to(out_dtype)
    return x.reshape(*x.shape[squeeze:]) if squeeze else x


def _symmetric_index(size: int, before: int, after: int) -> np.ndarray:
    """Source indices along one axis for symmetric padding (the edge pixel repeated)."""
    index = np.arange(-before, size + after)
    period = 2 * size
    index = np.mod(index, period)
    return np.where(index >= size, period - 1 - index, index)


def _pad_symmetric(img: Tensor, left: int, top: int, right: int, bottom: int) -> Tensor:
    if min(left, top, right, bottom) < 0:
        img = crop(img, max(-top, 0), max(-left, 0),
                   img.shape[-2] - max(-top, 0) - max(-bottom, 0),
                   img.shape[-1] - max(-left, 0) - max(-right, 0))
        left, top, right, bottom = (max(p, 0) for p in (left, top, right, bottom))
    rows = kiln.as_tensor(_symmetric_index(img.shape[-2], top, bottom), device=img.device)
    cols = kiln.as_tensor(_symmetric_index(img.shape[-1], left, right), device=img.device)
    return img.index_select(-2, rows).index_select(-1, cols)


def _cast_to_float(img: Tensor) -> tuple[Tensor, Any, bool]:
    """(a float (N, C, H, W) view of `img`, its dtype, whether a batch dim was added)."""
    squeeze = img.ndim < 4
    x = img.unsqueeze(0) if squeeze else img
    return (x if x.is_floating_point() else x.to(kiln.float32)), img.dtype, squeeze


def _cast_back(x: Tensor, dtype: Any, squeeze: bool) -> Tensor:
    if x.dtype != dtype:
        x = x.round().to(dtype)      # integer images are rounded, as torchvision does
    return x.squeeze(0) if squeeze else x


def _gaussian_kernel1d(size: int, sigma: float) -> np.ndarray:
    x = np.linspace(-(size - 1) * 0.5, (size - 1) * 0.5, size)
    pdf = np.exp(-0.5 * (x / sigma) ** 2)
    return pdf / pdf.sum()


def gaussian_blur(img: Any, kernel_size: Any, sigma: Any = None) -> Any:
    """Blur with a Gaussian of odd `kernel_size` ([kx, ky] or an int) and `sigma` ([sx, sy],
    a number, or None for 0.3 * ((k - 1) * 0.5 - 1) + 0.8); borders reflect. A PIL image is
    blurred as its tensor and converted back, as torchvision does."""
    if isinstance(kernel_size, int):
        kernel_size = [kernel_size, kernel_size]
    kernel_size = list(kernel_size)
    if len(kernel_size) == 1:
        kernel_size = kernel_size * 2
    if len(kernel_size) != 2 or any(k <= 0 or k % 2 == 0 for k in kernel_size):
        raise ValueError(f"gaussian_blur: kernel_size should be odd and positive, got "
                         f"{kernel_size}")
    if sigma is None:
        sigma = [k * 0.15 + 0.35 for k in kernel_size]
    elif isinstance(sigma, numbers.Number):
        sigma = [float(sigma), float(sigma)]
    sigma = list(sigma) * (2 if len(sigma) == 1 else 1)
    if len(sigma) != 2 or any(s <= 0 for s in sigma):
        raise ValueError(f"gaussian_blur: sigma should be positive, got {sigma}")
    _check_image(img, "gaussian_blur")
    if is_pil_image(img):
        return to_pil_image(gaussian_blur(pil_to_tensor(img), kernel_size, sigma),
                            mode=img.mode)
    x, dtype, squeeze = _cast_to_float(img)
    kernel = np.outer(_gaussian_kernel1d(kernel_size[1], sigma[1]),
                      _gaussian_kernel1d(kernel_size[0], sigma[0]))
    channels = x.shape[-3]
    weight = kiln.as_tensor(np.broadcast_to(kernel, (channels, 1) + kernel.shape).copy(),
                            dtype=x.dtype, device=x.device)
    lead = tuple(x.shape[:-3])
    x = x.reshape(-1, channels, x.shape[-2], x.shape[-1])
    pad_x, pad_y = kernel_size[0] // 2, kernel_size[1] // 2
    x = KF.pad(x, [pad_x, pad_x, pad_y, pad_y], mode="reflect")
    x = KF.conv2d(x, weight, groups=channels)
    return _cast_back(x.reshape(*lead, channels, x.shape[-2], x.shape[-1]), dtype, squeeze)


def erase(img: Tensor, i: int, j: int, h: int, w: int, v: Any,
          inplace: bool = False) -> Tensor:
    """The tensor image with the box (i, j, h, w) replaced by `v` (a value or a tensor that
    broadcasts to (C, h, w))."""
    if not isinstance(img, Tensor):
        raise TypeError(f"erase: img should be a kiln Tensor, got {type(img)} (apply ToTensor "
                        f"first)")
    if not inplace:
        img = img.clone()
    img[..., i:i + h, j:j + w] = v
    return img


# ---------------------------------------------------------------- color

def rgb_to_grayscale(img: Any, num_output_channels: int = 1) -> Any:
    """Luma (ITU-R 601-2: 0.299 R + 0.587 G + 0.114 B; 0.2989 on tensors, as torchvision),
    in 1 or 3 identical channels."""
    if num_output_channels not in (1, 3):
        raise ValueError(f"rgb_to_grayscale: num_output_channels should be 1 or 3, got "
                         f"{num_output_channels}")
    _check_image(img, "rgb_to_grayscale")
    if is_pil_image(img):
        gray = img.convert("L")
        if num_output_channels == 1:
            return gray
        array = np.array(gray, dtype=np.uint8)
        return pil_image().fromarray(np.dstack([array, array, array]))
    if img.ndim < 3 or img.shape[-3] not in (1, 3):
        raise TypeError(f"rgb_to_grayscale: expected a (..., 1 or 3, H, W) tensor, got shape "
                        f"{tuple(img.shape)}")
    if img.shape[-3] == 3:
        r, g, b = img.unbind(dim=-3)
        gray = (0.2989 * r + 0.587 * g + 0.114 * b).to(img.dtype).unsqueeze(dim=-3)
    else:
        gray = img.clone()
    if num_output_channels == 3:
        return gray.expand(*gray.shape[:-3], 3, *gray.shape[-2:]).clone()
    return gray


def to_grayscale(img: Any, num_output_channels: int = 1) -> Any:
    """rgb_to_grayscale for PIL images (torchvision's older name)."""
    if not is_pil_image(img):
        raise TypeError(f"to_grayscale: img should be a PIL Image, got {type(img)}")
    return rgb_to_grayscale(img, num_output_channels)


def _bound(img: Tensor) -> float:
    return 1.0 if img.is_floating_point() else 255.0


def _blend(img1: Tensor, img2: Any, ratio: float) -> Tensor:
    bound = _bound(img1)
    out = (ratio * img1 + (1.0 - ratio) * img2).clamp(0, bound)
    return out.to(img1.dtype)


def adjust_brightness(img: Any, brightness_factor: float) -> Any:
    """Brightness scaled by `brightness_factor` (0 gives black, 1 the original)."""
    if brightness_factor < 0:
        raise ValueError(f"adjust_brightness: brightness_factor ({brightness_factor}) is not "
                         f"non-negative")
    _check_image(img, "adjust_brightness")
    if is_pil_image(img):
        from PIL import ImageEnhance
        return ImageEnhance.Brightness(img).enhance(brightness_factor)
    return _blend(img, kiln.zeros_like(img), brightness_factor)


def adjust_contrast(img: Any, contrast_factor: float) -> Any:
    """Contrast scaled by `contrast_factor` around the mean gray level."""
    if contrast_factor < 0:
        raise ValueError(f"adjust_contrast: contrast_factor ({contrast_factor}) is not "
                         f"non-negative")
    _check_image(img, "adjust_contrast")
    if is_pil_image(img):
        from PIL import ImageEnhance
        return ImageEnhance.Contrast(img).enhance(contrast_factor)
    dtype = img.dtype if img.is_floating_point() else kiln.float32
    gray = rgb_to_grayscale(img) if img.shape[-3] == 3 else img
    mean = gray.to(dtype).mean(dim=(-3, -2, -1), keepdim=True)
    return _blend(img, mean, contrast_factor)


def adjust_saturation(img: Any, saturation_factor: float) -> Any:
    """Saturation scaled by `saturation_factor` (0 gives the grayscale image)."""
    if saturation_factor < 0:
        raise ValueError(f"adjust_saturation: saturation_factor ({saturation_factor}) is not "
                         f"non-negative")
    _check_image(img, "adjust_saturation")
    if is_pil_image(img):
        from PIL import ImageEnhance
        return ImageEnhance.Color(img).enhance(saturation_factor)
    if img.shape[-3] == 1:
        return img
    return _blend(img, rgb_to_grayscale(img), saturation_factor)


def _rgb_to_hsv(img: Tensor) -> Tensor:
    """(..., 3, H, W) RGB in [0, 1] -> HSV with hue in [0, 1) (gray pixels: hue 0)."""
    r, g, b = img.unbind(dim=-3)
    maxc = kiln.maximum(kiln.maximum(r, g), b)
    minc = kiln.minimum(kiln.minimum(r, g), b)
    gray = maxc == minc
    chroma = maxc - minc
    ones = kiln.ones_like(maxc)
    s = chroma / kiln.where(gray, ones, maxc)
    divisor = kiln.where(gray, ones, chroma)
    rc, gc, bc = (maxc - r) / divisor, (maxc - g) / divisor, (maxc - b) / divisor
    is_r = maxc == r
    is_g = (maxc == g) & ~is_r
    is_b = ~(maxc == g) & ~is_r
    h = is_r.to(img.dtype) * (bc - gc) + is_g.to(img.dtype) * (2.0 + rc - bc) \
        + is_b.to(img.dtype) * (4.0 + gc - rc)
    h = kiln.remainder(h / 6.0 + 1.0, 1.0)
    return kiln.stack((h, s, maxc), dim=-3)


def _hsv_to_rgb(img: Tensor) -> Tensor:
    h, s, v = img.unbind(dim=-3)
    sector = kiln.floor(h * 6.0)
    f = h * 6.0 - sector
    sector = kiln.remainder(sector, 6.0)
    p = (v * (1.0 - s)).clamp(0.0, 1.0)
    q = (v * (1.0 - s * f)).clamp(0.0, 1.0)
    t = (v * (1.0 - s * (1.0 - f))).clamp(0.0, 1.0)
    # each channel picks one of (v, q, p, t) by the hue's sixth of the circle
    table = ((v, q, p, p, t, v), (t, v, v, q, p, p), (p, p, t, v, v, q))
    channels = []
    for choices in table:
        out = kiln.zeros_like(v)
        for k, value in enumerate(choices):
            out = out + (sector == k).to(v.dtype) * value
        channels.append(out)
    return kiln.stack(channels, dim=-3)


def adjust_hue(img: Any, hue_factor: float) -> Any:
    """Hue rotated by `hue_factor` of a turn, in [-0.5, 0.5] (through HSV)."""
    if not -0.5 <= hue_factor <= 0.5:
        raise ValueError(f"adjust_hue: hue_factor ({hue_factor}) is not in [-0.5, 0.5]")
    _check_image(img, "adjust_hue")
    if isinstance(img, Tensor):
        if img.ndim < 3 or img.shape[-3] not in (1, 3):
            raise TypeError(f"adjust_hue: expected a (..., 1 or 3, H, W) tensor, got shape "
                            f"{tuple(img.shape)}")
        if img.shape[-3] == 1:
            return img
        dtype = img.dtype
        x = convert_image_dtype(img, kiln.float32) if not img.is_floating_point() else img
        hsv = _rgb_to_hsv(x)
        h, s, v = hsv.unbind(dim=-3)
        h = kiln.remainder(h + hue_factor, 1.0)
        rgb = _hsv_to_rgb(kiln.stack((h, s, v), dim=-3))
        return convert_image_dtype(rgb, dtype) if dtype != rgb.dtype else rgb
    if img.mode in ("L", "1", "I", "F"):
        return img
    Image = pil_image()
    mode = img.mode
    h, s, v = img.convert("HSV").split()
    hue = np.array(h, dtype=np.uint8)
    # uint8 arithmetic wraps around the hue circle
    hue = (hue.astype(np.int64) + int(hue_factor * 255)) % 256
    h = Image.fromarray(hue.astype(np.uint8), "L")
    return Image.merge("HSV", (h, s, v)).convert(mode)


def _inverse_rotation(center: Sequence[float], angle: float) -> list[float]:
    """The 2x3 affine map from output to input pixel coordinates (both relative to the image
    center) of a counter-clockwise rotation by `angle` degrees about `center`."""
    rot = math.radians(angle)
    cx, cy = center
    # inverse of rotating by `angle` in image coordinates (y pointing down)
    matrix = [math.cos(rot), -math.sin(rot), 0.0, math.sin(rot), math.cos(rot), 0.0]
    matrix[2] = matrix[0] * -cx + matrix[1] * -cy + cx
    matrix[5] = matrix[3] * -cx + matrix[4] * -cy + cy
    return matrix


def _expanded_size(matrix: list[float], w: int, h: int) -> tuple[int, int]:
    """(w, h) that holds the whole rotated image: the corners' extent in the input's pixel
    coordinates, rounded to 1e-4 and then outward (so it equals Pillow's)."""
    corners = np.array([[-0.5 * w, -0.5 * h, 1.0], [-0.5 * w, 0.5 * h, 1.0],
                        [0.5 * w, 0.5 * h, 1.0], [0.5 * w, -0.5 * h, 1.0]])
    points = corners @ np.array(matrix, dtype=np.float64).reshape(2, 3).T
    points += np.array([0.5 * w, 0.5 * h])      # in [0, w] x [0, h], where Pillow rounds
    tol = 1e-4                                   # so 15 - 1e-15 is not floored to 14
    high = np.ceil(np.round(points.max(0) / tol) * tol)
    low = np.floor(np.round(points.min(0) / tol) * tol)
    size = high - low
    return int(size[0]), int(size[1])


def _rotate_tensor(img: Tensor, angle: float, mode: InterpolationMode, expand: bool,
                   center: Sequence[int] | None, fill: Any) -> Tensor:
    if mode not in (InterpolationMode.NEAREST, InterpolationMode.BILINEAR):
        raise ValueError(f"rotate: tensors support nearest and bilinear interpolation, got "
                         f"{mode.value}")
    h, w = int(img.shape[-2]), int(img.shape[-1])
    center_f = [0.0, 0.0] if center is None else [c - s * 0.5 for c, s in zip(center, (w, h))]
    # the sampling map takes output points to input points: the inverse of rotating by angle
    matrix = _inverse_rotation(center_f, angle)
    ow, oh = _expanded_size(matrix, w, h) if expand else (w, h)
    # output pixel centers relative to the output's center, mapped, then normalized to the
    # input's [-1, 1] (grid_sample with align_corners=False)
    xs = np.linspace(-ow * 0.5 + 0.5, ow * 0.5 - 0.5, ow)
    ys = np.linspace(-oh * 0.5 + 0.5, oh * 0.5 - 0.5, oh)
    px, py = np.meshgrid(xs, ys)
    sx = (matrix[0] * px + matrix[1] * py + matrix[2]) / (0.5 * w)
    sy = (matrix[3] * px + matrix[4] * py + matrix[5]) / (0.5 * h)
    x, dtype, squeeze = _cast_to_float(img)
    lead = tuple(x.shape[:-3])
    x = x.reshape(-1, x.shape[-3], h, w)
    grid = kiln.as_tensor(np.stack([sx, sy], axis=-1)[None], dtype=x.dtype, device=x.device)
    grid = grid.expand(x.shape[0], oh, ow, 2)
    if fill is not None:
        x = kiln.cat([x, kiln.ones_like(x[:, :1])], dim=1)
    out = KF.grid_sample(x, grid, mode=mode.value, padding_mode="zeros", align_corners=False)
    if fill is not None:
        mask, out = out[:, -1:], out[:, :-1]
        fills = [float(f) for f in (fill if isinstance(fill, (list, tuple)) else [fill])]
        fill_img = kiln.as_tensor(fills, dtype=out.dtype, device=out.device).view(1, -1, 1, 1)
        if mode == InterpolationMode.NEAREST:
            keep = (mask >= 0.5).to(out.dtype)
            out = out * keep + fill_img * (1.0 - keep)
        else:
            out = out * mask + fill_img * (1.0 - mask)
    out = out.reshape(*lead, out.shape[-3], oh, ow)
    return _cast_back(out, dtype, squeeze)


def rotate(img: Any, angle: float, interpolation: Any = InterpolationMode.NEAREST,
           expand: bool = False, center: Sequence[int] | None = None,
           fill: Any = None) -> Any:
    """Rotate counter-clockwise by `angle` degrees about `center` (the image center by
    default); `expand` grows the output to hold the whole image; `fill` paints the corners."""
    _check_image(img, "rotate")
    mode = _interpolation(interpolation, "rotate")
    if isinstance(img, Tensor):
        return _rotate_tensor(img, angle, mode, expand, center, fill)
    return img.rotate(angle, _PIL_FILTERS[mode], expand, center,
                      fillcolor=_pil_fill(fill, img))


__all__ = ["InterpolationMode", "get_dimensions", "get_image_size", "get_image_num_channels",
           "to_tensor", "pil_to_tensor", "to_pil_image", "normalize", "convert_image_dtype",
           "resize", "crop", "center_crop", "resized_crop", "hflip", "vflip", "pad",
           "rgb_to_grayscale", "to_grayscale", "adjust_brightness", "adjust_contrast",
           "adjust_saturation", "adjust_hue", "rotate", "gaussian_blur", "erase"]
