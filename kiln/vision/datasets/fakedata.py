"""FakeData: random images and labels, the same for an index on every access."""

from __future__ import annotations

from typing import Any, Callable

import kiln
from kiln.vision.datasets.vision import VisionDataset
from kiln.vision.transforms import functional as F


class FakeData(VisionDataset):
    """`size` PIL images of `image_size` (C, H, W) from a normal draw seeded by the index
    (plus `random_offset`), with an int label below `num_classes`. The global generator's
    state is restored after each item."""

    def __init__(self, size: int = 1000, image_size: tuple[int, ...] = (3, 224, 224),
                 num_classes: int = 10, transform: Callable | None = None,
                 target_transform: Callable | None = None, random_offset: int = 0) -> None:
        super().__init__(None, transform=transform, target_transform=target_transform)
        self.size = size
        self.num_classes = num_classes
        self.image_size = image_size
        self.random_offset = random_offset

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        if index >= len(self):
            raise IndexError(f"{type(self).__name__} index out of range: {index} >= {len(self)}")
        state = kiln.get_rng_state()
        kiln.manual_seed(index + self.random_offset)
        img = kiln.randn(*self.image_size)
        target = kiln.randint(0, self.num_classes, size=(1,), dtype=kiln.long)[0]
        kiln.set_rng_state(state)
        img = F.to_pil_image(img)
        if self.transform is not None:
            img = self.transform(img)
        target = int(target.item())
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return self.size
