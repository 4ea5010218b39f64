"""The data sets of the paper's attack experiments (MNIST, CIFAR-10): readers, and a command
that gets them.

The readers never download: they read ``root`` (or ``$TORCHZO_DATA``, or the default folder,
see :func:`data_root`), which holds ``mnist/`` (the original IDX ``.gz`` files) and/or
``cifar10/cifar10_subset.npz``, and check every file against its known sha256.
``python -m torchzo.datasets fetch mnist`` (or ``cifar10``, ``all``; ``--root DIR``) downloads
them from their canonical sources (:func:`fetch`).
"""
from .fetch import fetch
from .files import DataError, data_root, verified
from .readers import load_cifar10_subset, load_mnist, read_idx

__all__ = ["DataError", "data_root", "fetch", "load_cifar10_subset", "load_mnist", "read_idx",
           "verified"]
