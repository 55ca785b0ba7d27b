"""SVHN: 32x32 color house-number digits from the `<split>_32x32.mat` files (read with SciPy,
a kiln dependency); the label 10 that the files give the digit 0 becomes 0, as in torchvision."""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from kiln.vision._imaging import pil_image
from kiln.vision.datasets.utils import check_integrity, download_url
from kiln.vision.datasets.vision import VisionDataset


class SVHN(VisionDataset):
    """Street View House Numbers: items are (PIL RGB image, int label); `.data` is a uint8
    (N, 3, 32, 32) NumPy array and `.labels` an int64 array."""

    split_list = {
        "train": ["http://ufldl.stanford.edu/housenumbers/train_32x32.mat", "train_32x32.mat",
                  "e26dedcc434d2e4c54c9b2d4a06d8373"],
        "test": ["http://ufldl.stanford.edu/housenumbers/test_32x32.mat", "test_32x32.mat",
                 "eb5a983be6a315427106f1b164d9cef3"],
        "extra": ["http://ufldl.stanford.edu/housenumbers/extra_32x32.mat", "extra_32x32.mat",
                  "a93ce644f1a588dc4d68dda5feec44a7"],
    }

    def __init__(self, root: Any, split: str = "train", transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        if split not in self.split_list:
            raise ValueError(f"Unknown value '{split}' for argument split. Valid values are "
                             f"{{{', '.join(repr(s) for s in self.split_list)}}}.")
        self.split = split
        self.url, self.filename, self.file_md5 = self.split_list[split]
        if download:
            self.download()
        path = os.path.join(self.root, self.filename)
        # the file's presence: its md5 is checked when it is downloaded
        if not check_integrity(path):
            raise RuntimeError(f"Dataset not found at {path}. You can use download=True to "
                               f"download it")
        import scipy.io
        loaded = scipy.io.loadmat(path)
        self.labels = loaded["y"].astype(np.int64).squeeze(-1)
        np.place(self.labels, self.labels == 10, 0)
        self.data = np.transpose(loaded["X"], (3, 2, 0, 1))

    def download(self) -> None:
        """Fetch the split's .mat file (md5-checked) unless it is already there."""
        if check_integrity(os.path.join(self.root, self.filename)):
            return
        download_url(self.url, self.root, self.filename, self.file_md5)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self.data[index], int(self.labels[index])
        img = pil_image().fromarray(np.ascontiguousarray(np.transpose(img, (1, 2, 0))))
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return len(self.data)

    def extra_repr(self) -> str:
        return f"Split: {self.split}"
