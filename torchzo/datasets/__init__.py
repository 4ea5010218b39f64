"""Small readers for the data sets of the paper's attack experiments (MNIST, CIFAR-10).

Nothing is downloaded: point ``root`` (or the ``TORCHZO_DATA`` environment variable) at a
folder holding ``mnist/`` (the original IDX ``.gz`` files) and/or ``cifar10/cifar10_subset.npz``.
Every file is checked against its known sha256 before it is read.
"""
from .files import DataError, data_root, verified
from .readers import load_cifar10_subset, load_mnist, read_idx

__all__ = ["DataError", "data_root", "load_cifar10_subset", "load_mnist", "read_idx", "verified"]
