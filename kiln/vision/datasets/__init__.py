"""`torchvision.datasets` for kiln: MNIST-style idx datasets, CIFAR, SVHN, image folders,
FakeData."""

from kiln.vision.datasets.cifar import CIFAR10, CIFAR100
from kiln.vision.datasets.fakedata import FakeData
from kiln.vision.datasets.folder import DatasetFolder, ImageFolder
from kiln.vision.datasets.mnist import KMNIST, MNIST, FashionMNIST
from kiln.vision.datasets.svhn import SVHN
from kiln.vision.datasets.vision import VisionDataset

__all__ = ["CIFAR10", "CIFAR100", "FakeData", "DatasetFolder", "ImageFolder", "KMNIST",
           "MNIST", "FashionMNIST", "SVHN", "VisionDataset"]
