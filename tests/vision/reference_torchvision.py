"""A stand-in for torchvision under real torch in the script tests (torchvision cannot be
installed beside the CPU torch): MNIST read from the idx files with NumPy, and ToTensor,
Normalize and Compose written with torch ops, as torchvision computes them."""

import os
from types import SimpleNamespace

import numpy as np
import torch
from PIL import Image


def _idx(path):
    """The idx file's array (magic, big-endian sizes, uint8 values), read with NumPy."""
    data = open(path, "rb").read()
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


class MNIST(torch.utils.data.Dataset):
    def __init__(self, root, train=True, transform=None, target_transform=None,
                 download=False):
        raw = os.path.join(root, "MNIST", "raw")
        split = "train" if train else "t10k"
        self.data = torch.from_numpy(_idx(os.path.join(raw, f"{split}-images-idx3-ubyte"))
                                     .copy())
        self.targets = torch.from_numpy(
            _idx(os.path.join(raw, f"{split}-labels-idx1-ubyte")).astype(np.int64))
        self.transform = transform

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index].numpy(), mode="L")
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.targets[index])

    def __len__(self):
        return len(self.data)


class ToTensor:
    def __call__(self, img):
        array = np.array(img)
        if array.ndim == 2:
            array = array[:, :, None]
        return torch.from_numpy(array.copy()).permute(2, 0, 1).float() / 255


class Normalize:
    def __init__(self, mean, std):
        self.mean, self.std = torch.tensor(mean), torch.tensor(std)

    def __call__(self, x):
        return (x - self.mean.view(-1, 1, 1)) / self.std.view(-1, 1, 1)


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, x):
        for t in self.transforms:
            x = t(x)
        return x


datasets = SimpleNamespace(MNIST=MNIST)
transforms = SimpleNamespace(ToTensor=ToTensor, Normalize=Normalize, Compose=Compose)


def save_image(tensor, fp, nrow=8, padding=2, pad_value=0.0):
    """torchvision's save_image (without normalize), rebuilt with torch ops and Pillow."""
    b, c, h, w = tensor.shape
    if c == 1:
        tensor = torch.cat([tensor] * 3, 1)
    cols = min(nrow, b)
    rows = -(-b // cols)
    grid = torch.full((3, rows * (h + padding) + padding, cols * (w + padding) + padding),
                      float(pad_value))
    for k in range(b):
        y, x = divmod(k, cols)
        top, left = y * (h + padding) + padding, x * (w + padding) + padding
        grid[:, top:top + h, left:left + w] = tensor[k]
    array = grid.mul(255).add_(0.5).clamp_(0, 255).permute(1, 2, 0).to(torch.uint8).numpy()
    Image.fromarray(array).save(fp)


utils = SimpleNamespace(save_image=save_image)
