"""kiln.vision.datasets on small files in torchvision's formats that the tests write: idx files
for MNIST, pickled batches for CIFAR, PNG trees for ImageFolder; batched by kiln's DataLoader."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import kiln
import kiln.vision.transforms as T
from kiln.utils.data import DataLoader
from kiln.vision import datasets
from kiln.vision.datasets.cifar import load_pickle
from kiln.vision.datasets.mnist import read_idx

from tests.vision.files import idx_bytes, write_cifar10, write_image_folder, write_mnist


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32,
                                   np.float64])
def test_read_idx_all_types(tmp_path, dtype):
    array = (np.arange(24).reshape(2, 3, 4) * 7 - 50).astype(dtype)
    path = tmp_path / "x-idx3"
    path.write_bytes(idx_bytes(array))
    out = read_idx(str(path))
    assert out.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(out, array)


def test_read_idx_refuses_bad_files(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(RuntimeError, match="not an idx file"):
        read_idx(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(idx_bytes(np.zeros(10, np.uint8))[:-3])
    with pytest.raises(RuntimeError, match="truncated"):
        read_idx(str(tmp_path / "short"))


@pytest.mark.parametrize("cls,gz", [(datasets.MNIST, False), (datasets.FashionMNIST, True),
                                    (datasets.KMNIST, False)])
def test_mnist_family_items_and_tensors(tmp_path, cls, gz):
    written = write_mnist(tmp_path, name=cls.__name__, gz=gz)
    train = cls(str(tmp_path), train=True, download=True)     # files present: no download
    test = cls(tmp_path, train=False)
    assert len(train) == 40 and len(test) == 16
    images, labels = written["train"]
    assert train.data.dtype == kiln.uint8 and tuple(train.data.shape) == (40, 28, 28)
    assert train.targets.dtype == kiln.int64
    np.testing.assert_array_equal(train.data.numpy(), images)
    np.testing.assert_array_equal(test.targets.numpy(), written["t10k"][1])
    img, target = train[3]
    assert isinstance(img, Image.Image) and img.mode == "L" and img.size == (28, 28)
    assert type(target) is int and target == labels[3]
    np.testing.assert_array_equal(np.array(img), images[3])
    assert len(cls.classes) == 10 and train.class_to_idx[cls.classes[4]] == 4
    assert "Split: Train" in repr(train)


def test_mnist_transforms_and_missing_files(tmp_path):
    written = write_mnist(tmp_path)
    ds = datasets.MNIST(tmp_path, transform=T.Compose([T.ToTensor(),
                                                       T.Normalize((0.1307,), (0.3081,))]),
                        target_transform=lambda t: t + 100)
    x, y = ds[5]
    images, labels = written["train"]
    expected = (torch.from_numpy(images[5]).float().unsqueeze(0) / 255 - 0.1307) / 0.3081
    np.testing.assert_allclose(x.numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    assert y == labels[5] + 100
    with pytest.raises(RuntimeError, match="download=True"):
        datasets.MNIST(tmp_path / "elsewhere")


def test_dataloader_batches_mnist(tmp_path):
    written = write_mnist(tmp_path)
    ds = datasets.MNIST(tmp_path, transform=T.ToTensor())
    batches = list(DataLoader(ds, batch_size=16, shuffle=False))
    assert [tuple(b[0].shape) for b in batches] == [(16, 1, 28, 28)] * 2 + [(8, 1, 28, 28)]
    images, labels = written["train"]
    data, target = batches[1]
    assert data.dtype == kiln.float32 and target.dtype == kiln.int64
    np.testing.assert_array_equal(target.numpy(), labels[16:32])
    np.testing.assert_array_equal(data.numpy(), images[16:32, None].astype(np.float32) / 255)


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar10_batches(tmp_path, protocol):
    written, classes = write_cifar10(tmp_path, protocol=protocol)
    train = datasets.CIFAR10(tmp_path, train=True, download=True)
    test = datasets.CIFAR10(tmp_path, train=False)
    assert len(train) == 30 and len(test) == 6
    assert train.classes == classes and train.class_to_idx["cat"] == 3
    images = written["train"][0].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    np.testing.assert_array_equal(train.data, images)
    assert train.targets == written["train"][1]
    img, target = train[7]
    assert isinstance(img, Image.Image) and img.mode == "RGB" and img.size == (32, 32)
    np.testing.assert_array_equal(np.array(img), images[7])
    assert target == written["train"][1][7]
    loader = DataLoader(datasets.CIFAR10(tmp_path, train=False, transform=T.ToTensor()),
                        batch_size=4)
    x, y = next(iter(loader))
    test_images = written["test"][0].reshape(-1, 3, 32, 32)
    np.testing.assert_array_equal(x.numpy(), test_images[:4].astype(np.float32) / 255)
    np.testing.assert_array_equal(y.numpy(), written["test"][1][:4])


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    rng = np.random.default_rng(4)
    data = rng.integers(0, 256, (5, 3072), dtype=np.uint8)
    for name in ("train", "test"):
        entry = {"data": data, "fine_labels": [1, 99, 3, 4, 5], "coarse_labels": [0] * 5}
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
    (folder / "meta").write_bytes(pickle.dumps({"fine_label_names": [f"c{i}" for i in
                                                                     range(100)]}))
    ds = datasets.CIFAR100(tmp_path)
    assert ds.targets == [1, 99, 3, 4, 5] and ds.classes[99] == "c99" and len(ds) == 5


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_pickle_naming_another_callable_is_refused(tmp_path):
    write_cifar10(tmp_path)
    marker = tmp_path / "ran"
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(pickle.dumps({"data": _Exploit(marker), "labels": [1]}, protocol=2))
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (posix|nt).system"):
        datasets.CIFAR10(tmp_path)
    assert not marker.exists()
    # the same refusal for a builtin callable smuggled inside a numpy-looking payload
    (tmp_path / "evil").write_bytes(pickle.dumps(
        {"data": np.zeros(3), "hook": eval}, protocol=5))
    with pytest.raises(pickle.UnpicklingError, match="builtins.eval"):
        load_pickle(str(tmp_path / "evil"))


def test_image_folder(tmp_path):
    pixels = write_image_folder(tmp_path, {"dog": ["b.png", "a.PNG", "notes.txt"],
                                           "cat": ["z.png", "sub/y.png"], "empty_ok": []})
    with pytest.raises(FileNotFoundError, match="empty_ok"):
        datasets.ImageFolder(tmp_path)
    ds = datasets.ImageFolder(tmp_path, transform=T.ToTensor(), allow_empty=True)
    assert ds.classes == ["cat", "dog", "empty_ok"]
    assert ds.class_to_idx == {"cat": 0, "dog": 1, "empty_ok": 2}
    rel = [(str(Path(p).relative_to(tmp_path)), c) for p, c in ds.samples]
    # os.walk's folders in sorted order, each folder's files sorted (torchvision's order)
    assert rel == [("cat/z.png", 0), ("cat/sub/y.png", 0), ("dog/a.PNG", 1), ("dog/b.png", 1)]
    assert ds.targets == [0, 0, 1, 1] and ds.imgs is ds.samples
    x, y = ds[2]
    np.testing.assert_array_equal(x.numpy(), pixels[ds.samples[2][0]].transpose(2, 0, 1)
                                  .astype(np.float32) / 255)
    assert y == 1
    batch, targets = next(iter(DataLoader(ds, batch_size=4)))
    assert tuple(batch.shape) == (4, 3, 4, 5) and targets.tolist() == [0, 0, 1, 1]


def test_dataset_folder_with_loader_and_is_valid_file(tmp_path):
    for cls, n in (("a", 2), ("b", 1)):
        (tmp_path / cls).mkdir()
        for i in range(n):
            (tmp_path / cls / f"{i}.npy").write_bytes(b"")
            np.save(tmp_path / cls / f"{i}.npy", np.full(3, i + 10 * (cls == "b")))
    ds = datasets.DatasetFolder(tmp_path, loader=np.load, extensions=(".npy",))
    assert [s[1] for s in ds.samples] == [0, 0, 1]
    np.testing.assert_array_equal(ds[2][0], [10, 10, 10])
    only_zero = datasets.DatasetFolder(tmp_path, loader=np.load,
                                       is_valid_file=lambda p: p.endswith("0.npy"))
    assert len(only_zero) == 2
    with pytest.raises(ValueError, match="Both extensions and is_valid_file"):
        datasets.DatasetFolder(tmp_path, loader=np.load)
    with pytest.raises(FileNotFoundError, match="class folder"):
        datasets.ImageFolder(tmp_path / "a")


def test_fake_data_is_repeatable_and_keeps_the_rng():
    ds = datasets.FakeData(size=5, image_size=(3, 6, 7), num_classes=4,
                           transform=T.ToTensor())
    kiln.manual_seed(0)
    before = kiln.rand(3)
    kiln.manual_seed(0)
    first = ds[2]
    after = kiln.rand(3)
    np.testing.assert_array_equal(before.numpy(), after.numpy())    # generator untouched
    again = ds[2]
    np.testing.assert_array_equal(first[0].numpy(), again[0].numpy())
    assert first[1] == again[1] and 0 <= first[1] < 4
    kiln.manual_seed(2)
    noise = kiln.randn(3, 6, 7)
    expected = (noise.numpy() * 255).astype(np.uint8).astype(np.float32) / 255  # truncation
    inside = (noise.numpy() >= 0) & (noise.numpy() < 1)       # where the uint8 cast is exact
    assert inside.sum() > 30
    np.testing.assert_array_equal(first[0].numpy()[inside], expected[inside])
    assert tuple(first[0].shape) == (3, 6, 7) and len(ds) == 5
    with pytest.raises(IndexError):
        ds[5]


def _local_mnist(mirror_dir, resources):
    """An MNIST whose mirrors are a missing folder, then a local one (file:// URLs: no
    network), with the given resources' md5s."""
    class LocalMNIST(datasets.MNIST):
        mirrors = [(mirror_dir / "missing").as_uri() + "/", mirror_dir.as_uri() + "/"]
    LocalMNIST.resources = resources
    LocalMNIST.__name__ = "MNIST"            # the same raw folder name
    return LocalMNIST


def test_mnist_download_checks_md5_and_skips_present_files(tmp_path, capsys):
    import gzip
    import hashlib
    written = write_mnist(tmp_path / "source")
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    resources = []
    for path in sorted((tmp_path / "source" / "MNIST" / "raw").iterdir()):
        gz = mirror / (path.name + ".gz")
        gz.write_bytes(gzip.compress(path.read_bytes()))
        resources.append((gz.name, hashlib.md5(gz.read_bytes()).hexdigest()))
    ds = _local_mnist(mirror, resources)(tmp_path / "root", download=True)
    np.testing.assert_array_equal(ds.data.numpy(), written["train"][0])
    assert (tmp_path / "root" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").is_file()
    assert "Downloading file://" in capsys.readouterr().out
    # present files are not fetched again, even from mirrors that do not exist
    missing = _local_mnist(tmp_path / "nowhere", resources)
    assert len(missing(tmp_path / "root", download=True, train=False)) == 16
    assert "Downloading" not in capsys.readouterr().out
    bad = [(name, "0" * 32) for name, _ in resources]
    with pytest.raises(RuntimeError, match="md5"):
        _local_mnist(mirror, bad)(tmp_path / "other", download=True)


def test_cifar_download_extracts_the_archive(tmp_path):
    import hashlib
    import tarfile
    written, _ = write_cifar10(tmp_path / "source")
    archive = tmp_path / "mirror" / "cifar-10-python.tar.gz"
    archive.parent.mkdir()
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py", arcname="cifar-10-batches-py")

    class LocalCIFAR10(datasets.CIFAR10):
        url = archive.as_uri()
        tgz_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    ds = LocalCIFAR10(tmp_path / "root", train=False, download=True)
    assert ds.targets == written["test"][1]
    # an archive member that escapes the folder is refused
    evil = tmp_path / "mirror" / "evil.tar.gz"
    with tarfile.open(evil, "w:gz") as tar:
        tar.add(tmp_path / "source" / "cifar-10-batches-py" / "test_batch", arcname="../escape")
    from kiln.vision.datasets.utils import extract_archive
    with pytest.raises(RuntimeError, match="outside"):
        extract_archive(str(evil), str(tmp_path / "out"))
    assert not (tmp_path / "escape").exists()


def test_vision_dataset_transforms_and_repr(tmp_path):
    from kiln.vision.datasets.vision import StandardTransform, VisionDataset
    joint = StandardTransform(lambda x: x * 2, lambda y: y + 1)
    assert joint(3, 4) == (6, 5)
    ds = VisionDataset(str(tmp_path), transform=T.ToTensor())
    assert isinstance(ds.transforms, StandardTransform) and ds.transforms.transform is \
        ds.transform
    with pytest.raises(ValueError, match="Only transforms or transform"):
        VisionDataset(str(tmp_path), transforms=joint, transform=T.ToTensor())
    write_mnist(tmp_path)
    text = repr(datasets.MNIST(tmp_path, train=False, transform=T.ToTensor()))
    assert text.splitlines()[:3] == ["Dataset MNIST", "    Number of datapoints: 16",
                                     f"    Root location: {tmp_path}"]
    assert "Split: Test" in text and "ToTensor()" in text


def test_svhn_mat_file(tmp_path):
    import scipy.io
    rng = np.random.default_rng(8)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)         # N, H, W, C
    labels = np.array([[10], [1], [2], [10], [9]], dtype=np.uint8)
    # the files hold X as (H, W, C, N) and y as (N, 1), with 10 for the digit 0
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": images.transpose(1, 2, 3, 0),
                                                    "y": labels})
    ds = datasets.SVHN(tmp_path, split="test", download=True)            # present: no fetch
    assert len(ds) == 5 and ds.labels.tolist() == [0, 1, 2, 0, 9]
    assert ds.data.shape == (5, 3, 32, 32)
    img, target = ds[3]
    assert img.mode == "RGB" and target == 0
    np.testing.assert_array_equal(np.array(img), images[3])
    with pytest.raises(ValueError, match="split"):
        datasets.SVHN(tmp_path, split="valid")
    with pytest.raises(RuntimeError, match="download=True"):
        datasets.SVHN(tmp_path, split="train")
