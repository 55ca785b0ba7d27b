"""MNIST, FashionMNIST and KMNIST: 28x28 grayscale digits (or clothes, or characters) from
torchvision's folder layout, `root/<Name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte`
(or the same names with `.gz`), in the idx format."""

from __future__ import annotations

import gzip
import os
import urllib.error
from typing import Any, Callable

import numpy as np

import kiln
from kiln.vision._imaging import pil_image
from kiln.vision.datasets.utils import check_integrity, download_and_extract_archive
from kiln.vision.datasets.vision import VisionDataset

# idx type codes -> big-endian NumPy dtypes
_IDX_DTYPES = {8: ">u1", 9: ">i1", 11: ">i2", 12: ">i4", 13: ">f4", 14: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """The array in an idx file (`.gz` files are decompressed): a 4-byte magic (0, 0, type,
    ndim), ndim big-endian sizes, then the values."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES \
            or not 1 <= data[3] <= 4:
        raise RuntimeError(f"{path} is not an idx file (magic bytes {data[:4]!r}); expected "
                           f"two zero bytes, a type code in {sorted(_IDX_DTYPES)}, and 1-4 dims")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(s) for s in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(shape))
    if len(data) - header < count * dtype.itemsize:
        raise RuntimeError(f"{path}: the header declares shape {shape} but the file holds only "
                           f"{(len(data) - header) // dtype.itemsize} values; it is truncated")
    values = np.frombuffer(data, dtype, count=count, offset=header)
    return values.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


def read_image_file(path: str) -> kiln.Tensor:
    x = read_idx(path)
    if x.dtype != np.uint8 or x.ndim != 3:
        raise RuntimeError(f"{path}: expected uint8 images of 3 dims, got {x.dtype} with "
                           f"{x.ndim} dims")
    return kiln.from_numpy(x)


def read_label_file(path: str) -> kiln.Tensor:
    x = read_idx(path)
    if x.dtype != np.uint8 or x.ndim != 1:
        raise RuntimeError(f"{path}: expected uint8 labels of 1 dim, got {x.dtype} with "
                           f"{x.ndim} dims")
    return kiln.from_numpy(x.astype(np.int64))


class MNIST(VisionDataset):
    """The MNIST digits: items are (PIL image of mode 'L', int label); `.data` is a uint8
    (N, 28, 28) tensor and `.targets` an int64 (N,) tensor."""

    mirrors = ["https://ossci-datasets.s3.amazonaws.com/mnist/",
               "http://yann.lecun.com/exdb/mnist/"]
    resources = [("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
                 ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
                 ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
                 ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c")]
    classes = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five",
               "6 - six", "7 - seven", "8 - eight", "9 - nine"]

    def __init__(self, root: Any, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_exists():
            raise RuntimeError(f"Dataset not found in {self.raw_folder}. You can use "
                               f"download=True to download it")
        self.data, self.targets = self._load_data()

    @property
    def raw_folder(self) -> str:
        return os.path.join(self.root, type(self).__name__, "raw")

    @property
    def processed_folder(self) -> str:
        return os.path.join(self.root, type(self).__name__, "processed")

    @property
    def class_to_idx(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def _file(self, stem: str) -> str | None:
        """The raw file `stem`, extracted or still gzipped; None when neither is there."""
        for name in (stem, stem + ".gz"):
            path = os.path.join(self.raw_folder, name)
            if check_integrity(path):
                return path
        return None

    def _check_exists(self) -> bool:
        return all(self._file(os.path.splitext(name)[0]) is not None
                   for name, _ in self.resources)

    def _load_data(self) -> tuple[kiln.Tensor, kiln.Tensor]:
        split = "train" if self.train else "t10k"
        data = read_image_file(self._file(f"{split}-images-idx3-ubyte"))
        targets = read_label_file(self._file(f"{split}-labels-idx1-ubyte"))
        if data.shape[0] != targets.shape[0]:
            raise RuntimeError(f"{self.raw_folder}: {data.shape[0]} images but "
                               f"{targets.shape[0]} labels for the {split} split")
        return data, targets

    def download(self) -> None:
        """Fetch the files that are missing from the mirrors (md5-checked) and extract them."""
        if self._check_exists():
            return
        os.makedirs(self.raw_folder, exist_ok=True)
        for filename, md5 in self.resources:
            if self._file(os.path.splitext(filename)[0]) is not None:
                continue
            errors = []
            for mirror in self.mirrors:
                url = f"{mirror}{filename}"
                try:
                    print(f"Downloading {url}")
                    download_and_extract_archive(url, download_root=self.raw_folder,
                                                 filename=filename, md5=md5)
                    break
                except (urllib.error.URLError, OSError) as error:
                    errors.append(f"{url}: {error}")
            else:
                raise RuntimeError(f"Error downloading {filename}; tried " + "; ".join(errors))

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self.data[index], int(self.targets[index])
        img = pil_image().fromarray(img.numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return len(self.data)

    def extra_repr(self) -> str:
        return f"Split: {'Train' if self.train is True else 'Test'}"


class FashionMNIST(MNIST):
    """Zalando's Fashion-MNIST: 28x28 grayscale clothes in MNIST's format."""

    mirrors = ["http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"]
    resources = [("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
                 ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe"),
                 ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79"),
                 ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310")]
    classes = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot"]


class KMNIST(MNIST):
    """Kuzushiji-MNIST: 28x28 grayscale cursive Japanese characters in MNIST's format."""

    mirrors = ["http://codh.rois.ac.jp/kmnist/dataset/kmnist/"]
    resources = [("train-images-idx3-ubyte.gz", "bdb82020997e1d708af4cf47b453dcf7"),
                 ("train-labels-idx1-ubyte.gz", "e144d726b3acfaa3e44228e80efcd344"),
                 ("t10k-images-idx3-ubyte.gz", "5c965bf0a639b31b8f53240b1b52f4d7"),
                 ("t10k-labels-idx1-ubyte.gz", "7320c461ea6c1c855c0b718fb2a4b134")]
    classes = ["o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"]
