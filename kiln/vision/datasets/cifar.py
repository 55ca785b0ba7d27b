"""CIFAR10 and CIFAR100: 32x32 color images from the "python version" batches, which are
pickles; they are read with an unpickler that admits only the NumPy array pieces and builtin
types those files hold, so a corrupt or malicious batch is refused instead of run."""

from __future__ import annotations

import io
import os
import pickle
from typing import Any, Callable

import numpy as np

from kiln.vision._imaging import pil_image
from kiln.vision.datasets.utils import check_integrity, download_and_extract_archive
from kiln.vision.datasets.vision import VisionDataset

# every global a CIFAR batch (pickled by Python 2 or 3, NumPy 1 or 2) may name: the pieces that
# rebuild an ndarray, and the latin-1 bytes codec Python 2 strings arrive through
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode"),
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: a CIFAR batch holds only NumPy arrays, "
                f"lists, dicts, strings and numbers (the file is corrupt or not a CIFAR batch)")
        return super().find_class(module, name)


def load_pickle(path: str) -> Any:
    """The object in a CIFAR-format pickle at `path`; pickle.UnpicklingError, naming the file,
    when it names any callable other than the NumPy array constructors."""
    with open(path, "rb") as f:
        payload = f.read()
    try:
        return _RestrictedUnpickler(io.BytesIO(payload), encoding="latin1").load()
    except pickle.UnpicklingError as error:
        raise pickle.UnpicklingError(f"{path}: {error}") from None


class CIFAR10(VisionDataset):
    """CIFAR-10: items are (PIL RGB image, int label); `.data` is a uint8 (N, 32, 32, 3) NumPy
    array and `.targets` a list of ints, as in torchvision."""

    base_folder = "cifar-10-batches-py"
    url = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
    filename = "cifar-10-python.tar.gz"
    tgz_md5 = "c58f30108f718f92721af3b95e74349a"
    train_list = [["data_batch_1", "c99cafc152244af753f735de768cd75f"],
                  ["data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"],
                  ["data_batch_3", "54ebc095f3ab1f0389bbae665268c751"],
                  ["data_batch_4", "634d18415352ddfa80567beed471001a"],
                  ["data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb"]]
    test_list = [["test_batch", "40351d587109b95175f43aff81a1287e"]]
    meta = {"filename": "batches.meta", "key": "label_names",
            "md5": "5ff9c542aee3614f3951f8cda6e48888"}

    def __init__(self, root: Any, train: bool = True, transform: Callable | None = None,
                 target_transform: Callable | None = None, download: bool = False) -> None:
        super().__init__(root, transform=transform, target_transform=target_transform)
        self.train = train
        if download:
            self.download()
        if not self._check_exists():
            raise RuntimeError(f"Dataset not found in {os.path.join(self.root, self.base_folder)}"
                               f". You can use download=True to download it")
        data, self.targets = [], []
        for name, _ in self.train_list if train else self.test_list:
            entry = load_pickle(os.path.join(self.root, self.base_folder, name))
            data.append(np.asarray(entry["data"], dtype=np.uint8))
            self.targets.extend(int(t) for t in entry.get("labels", entry.get("fine_labels")))
        self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
        self._load_meta()

    def _check_exists(self) -> bool:
        # the files' presence: their md5s are checked when they are downloaded (the
        # published md5s would refuse any other file in this format)
        folder = os.path.join(self.root, self.base_folder)
        return all(check_integrity(os.path.join(folder, name))
                   for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        path = os.path.join(self.root, self.base_folder, self.meta["filename"])
        if not check_integrity(path):
            raise RuntimeError(f"Dataset metadata file {path} not found. You can use "
                               f"download=True to download it")
        self.classes = list(load_pickle(path)[self.meta["key"]])
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}

    def download(self) -> None:
        """Fetch and extract the archive (md5-checked) unless the batches are already there."""
        if self._check_exists():
            return
        download_and_extract_archive(self.url, self.root, filename=self.filename,
                                     md5=self.tgz_md5)

    def __getitem__(self, index: int) -> tuple[Any, Any]:
        img, target = self.data[index], self.targets[index]
        img = pil_image().fromarray(img)
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target

    def __len__(self) -> int:
        return len(self.data)

    def extra_repr(self) -> str:
        return f"Split: {'Train' if self.train is True else 'Test'}"


class CIFAR100(CIFAR10):
    """CIFAR-100 with its 100 fine labels."""

    base_folder = "cifar-100-python"
    url = "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz"
    filename = "cifar-100-python.tar.gz"
    tgz_md5 = "eb9058c3a382ffc7106e4002c42a8d85"
    train_list = [["train", "16019d7e3df5f24257cddd939b257f8d"]]
    test_list = [["test", "f0ef6b0ae62326f3e7ffdfab6717acfc"]]
    meta = {"filename": "meta", "key": "fine_label_names",
            "md5": "7973b15100ade9c7d40fb424638fde48"}
