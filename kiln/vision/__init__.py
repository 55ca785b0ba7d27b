"""`torchvision` for kiln: the transforms, datasets, image utilities and models that typical
training scripts use, returning kiln tensors (`import kiln.vision as torchvision`)."""

from kiln.vision import datasets, io, models, ops, transforms, utils

__version__ = "0.28.0"


def get_image_backend() -> str:
    """The package that loads images: always Pillow ("PIL") in kiln.vision."""
    return "PIL"


def set_image_backend(backend: str) -> None:
    """Choose the image loader; kiln.vision has only Pillow ("PIL")."""
    if backend != "PIL":
        raise ValueError(f"set_image_backend: kiln.vision loads images with Pillow only "
                         f"('PIL'), got {backend!r}")


__all__ = ["datasets", "io", "models", "transforms", "utils", "get_image_backend",
           "set_image_backend"]
