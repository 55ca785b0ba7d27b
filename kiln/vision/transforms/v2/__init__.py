"""`torchvision.transforms.v2` for kiln, for image classification pipelines: the v1 transforms
that also take a whole sample (`transform(img, label)`, a tuple, a dict), plus ToImage, ToDtype
and ToPureTensor.

In a sample, the PIL images are transformed, or else the first tensor; everything else (labels,
other tensors) passes through unchanged, as in torchvision's v2. kiln has no tv_tensors
(bounding boxes, masks): a sample with more than one image is refused, since v2 would transform
them together with the same random parameters.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import kiln
from kiln.vision._imaging import is_pil_image
from kiln.vision.transforms.v2 import functional
from kiln.vision.transforms import transforms as v1
from kiln.vision.transforms.functional import InterpolationMode


def _flatten(sample: Any) -> tuple[list, Callable[[list], Any]]:
    """The leaves of nested tuples / lists / dicts, and a function rebuilding the structure."""
    if isinstance(sample, (tuple, list)):
        parts = [_flatten(item) for item in sample]
        sizes = [len(leaves) for leaves, _ in parts]

        def rebuild(leaves: list) -> Any:
            out, start = [], 0
            for (_, rebuild_part), size in zip(parts, sizes):
                out.append(rebuild_part(leaves[start:start + size]))
                start += size
            return type(sample)(out)
        return [leaf for leaves, _ in parts for leaf in leaves], rebuild
    if isinstance(sample, dict):
        keys = list(sample)
        flat, rebuild_values = _flatten([sample[k] for k in keys])
        return flat, lambda leaves: dict(zip(keys, rebuild_values(leaves)))
    return [sample], lambda leaves: leaves[0]


def _transform_sample(transform: Callable[[Any], Any], inputs: tuple) -> Any:
    sample = inputs if len(inputs) > 1 else inputs[0]
    leaves, rebuild = _flatten(sample)
    images = [i for i, leaf in enumerate(leaves) if is_pil_image(leaf)]
    if not images:
        images = [i for i, leaf in enumerate(leaves) if isinstance(leaf, kiln.Tensor)][:1]
    if len(images) > 1:
        raise NotImplementedError(f"transforms.v2: the sample holds {len(images)} PIL images; "
                                  f"kiln.vision transforms one image per sample (no tv_tensors)")
    if images:
        leaves = list(leaves)
        leaves[images[0]] = transform(leaves[images[0]])
    return rebuild(leaves)


class _Sample:
    """Mixin: the transform's `forward` takes one image or a whole sample."""

    def forward(self, *inputs: Any) -> Any:
        return _transform_sample(super().forward, inputs)


class Compose(v1.Compose):
    """Apply `transforms` in turn; several inputs are passed on as several inputs."""

    def __call__(self, *inputs: Any) -> Any:
        unpack = len(inputs) > 1
        outputs = inputs[0] if inputs else None
        for t in self.transforms:
            outputs = t(*inputs)
            inputs = outputs if unpack else (outputs,)
        return outputs


class Lambda(v1.Lambda):
    def __call__(self, *inputs: Any) -> Any:
        return _transform_sample(self.lambd, inputs)


class ToImage(v1.nn.Module):
    """A PIL image or an HWC ndarray as a CHW tensor of its own dtype (unscaled); a tensor is
    kept."""

    def forward(self, *inputs: Any) -> Any:
        return _transform_sample(functional.to_image, inputs)


class ToDtype(v1.nn.Module):
    """The image tensor in `dtype`; with `scale`, values rescaled between integer and float
    ranges (uint8 [0, 255] <-> float [0, 1])."""

    def __init__(self, dtype: Any, scale: bool = False) -> None:
        super().__init__()
        if isinstance(dtype, dict):
            raise NotImplementedError("ToDtype: a dict of dtypes needs tv_tensors, which "
                                      "kiln.vision does not have; pass one dtype")
        self.dtype = dtype
        self.scale = scale

    def forward(self, *inputs: Any) -> Any:
        def convert(img: kiln.Tensor) -> kiln.Tensor:
            if not isinstance(img, kiln.Tensor):
                raise TypeError(f"ToDtype: expected a tensor (apply ToImage first), got "
                                f"{type(img)}")
            return functional.to_dtype(img, self.dtype, self.scale)
        return _transform_sample(convert, inputs)


class ToPureTensor(v1.nn.Module):
    """Kept for signature parity: kiln.vision's images are plain tensors already."""

    def forward(self, *inputs: Any) -> Any:
        return inputs if len(inputs) > 1 else inputs[0]


def _v2(cls: type) -> type:
    return type(cls.__name__, (_Sample, cls), {"__doc__": cls.__doc__,
                                               "__module__": __name__})


Normalize = _v2(v1.Normalize)
Resize = _v2(v1.Resize)
CenterCrop = _v2(v1.CenterCrop)
Pad = _v2(v1.Pad)
RandomCrop = _v2(v1.RandomCrop)
RandomResizedCrop = _v2(v1.RandomResizedCrop)
RandomHorizontalFlip = _v2(v1.RandomHorizontalFlip)
RandomVerticalFlip = _v2(v1.RandomVerticalFlip)
Grayscale = _v2(v1.Grayscale)
RandomGrayscale = _v2(v1.RandomGrayscale)
ColorJitter = _v2(v1.ColorJitter)
RandomRotation = _v2(v1.RandomRotation)
GaussianBlur = _v2(v1.GaussianBlur)
RandomErasing = _v2(v1.RandomErasing)
RandomApply = _v2(v1.RandomApply)
ConvertImageDtype = _v2(v1.ConvertImageDtype)


class RandomChoice:
    """Apply one of `transforms`, chosen with probabilities `p` (uniform by default), drawn
    from kiln's generator (v2 draws with torch.multinomial)."""

    def __init__(self, transforms: Sequence[Callable], p: Sequence[float] | None = None):
        if p is None:
            p = [1.0] * len(transforms)
        elif len(p) != len(transforms):
            raise ValueError(f"RandomChoice: got {len(p)} probabilities for {len(transforms)} "
                             f"transforms")
        self.transforms = transforms
        total = sum(p)
        self.p = [w / total for w in p]

    def __call__(self, *inputs: Any) -> Any:
        index = int(kiln.multinomial(kiln.tensor(self.p), 1))
        return self.transforms[index](*inputs)


class RandomOrder:
    """Apply `transforms` in an order drawn with kiln.randperm."""

    def __init__(self, transforms: Sequence[Callable]) -> None:
        self.transforms = transforms

    def __call__(self, *inputs: Any) -> Any:
        sample = inputs if len(inputs) > 1 else inputs[0]
        for index in kiln.randperm(len(self.transforms)).tolist():
            sample = self.transforms[index](*sample) if len(inputs) > 1 \
                else self.transforms[index](sample)
        return sample


ToTensor = v1.ToTensor
PILToTensor = v1.PILToTensor
ToPILImage = v1.ToPILImage

__all__ = ["InterpolationMode", "Compose", "Lambda", "ToImage", "ToDtype", "ToPureTensor",
           "Normalize", "Resize", "CenterCrop", "Pad", "RandomCrop", "RandomResizedCrop",
           "RandomHorizontalFlip", "RandomVerticalFlip", "Grayscale", "RandomGrayscale",
           "ColorJitter", "RandomRotation", "GaussianBlur", "RandomErasing", "RandomApply",
           "ConvertImageDtype", "RandomChoice", "RandomOrder", "ToTensor", "PILToTensor",
           "ToPILImage", "functional"]
