"""Small dataset files in torchvision's formats, written by the tests (never downloaded)."""

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np
from PIL import Image


def idx_bytes(array: np.ndarray) -> bytes:
    """`array` in the idx format: magic (0, 0, type, ndim), big-endian sizes, values."""
    codes = {np.dtype(np.uint8): 8, np.dtype(np.int8): 9, np.dtype(np.int16): 11,
             np.dtype(np.int32): 12, np.dtype(np.float32): 13, np.dtype(np.float64): 14}
    header = bytes([0, 0, codes[array.dtype], array.ndim])
    sizes = struct.pack(f">{array.ndim}I", *array.shape)
    return header + sizes + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_mnist(root, name="MNIST", n_train=40, n_test=16, size=28, seed=0, gz=False):
    """root/<name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz] of random digits;
    returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    raw = Path(root) / name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, size, size), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            data = idx_bytes(array)
            path = raw / f"{split}-{kind}-ubyte"
            if gz:
                path = path.with_name(path.name + ".gz")
                data = gzip.compress(data)
            path.write_bytes(data)
        out[split] = (images, labels)
    return out


def write_cifar10(root, n_per_batch=6, seed=0, protocol=2):
    """root/cifar-10-batches-py/ with five train batches, a test batch and batches.meta, in the
    python-version format (dicts of numpy arrays and lists, pickled)."""
    rng = np.random.default_rng(seed)
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    out = {"train": ([], []), "test": ([], [])}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for name in names:
        data = rng.integers(0, 256, (n_per_batch, 3 * 32 * 32), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n_per_batch)]
        entry = {"batch_label": f"batch {name}", "labels": labels, "data": data,
                 "filenames": [f"img{i}.png" for i in range(n_per_batch)]}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=protocol))
        split = "test" if name == "test_batch" else "train"
        out[split][0].append(data)
        out[split][1].extend(labels)
    classes = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
               "truck"]
    meta = {"num_cases_per_batch": n_per_batch, "label_names": classes, "num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=protocol))
    return {k: (np.vstack(v[0]), v[1]) for k, v in out.items()}, classes


def write_image_folder(root, layout, size=(5, 4), seed=0):
    """root/<class>/<file> PNGs (and other files as given) from {class: [file names]}."""
    rng = np.random.default_rng(seed)
    pixels = {}
    for cls, files in layout.items():
        folder = Path(root) / cls
        folder.mkdir(parents=True, exist_ok=True)
        for name in files:
            path = folder / name
            path.parent.mkdir(parents=True, exist_ok=True)
            if name.lower().endswith(".png"):
                array = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(array).save(path)
                pixels[str(path)] = array
            else:
                path.write_text("not an image")
    return pixels
