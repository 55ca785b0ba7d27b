"""`torchvision` for kiln: the transforms, datasets, image utilities and models that typical
training scripts use, returning kiln tensors (`import kiln.vision as torchvision`)."""

from kiln.vision import datasets, models, transforms, utils  # noqa: F401

__version__ = "0.28.0"
