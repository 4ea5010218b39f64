"""Where each data set comes from: the canonical download addresses and the files' sha256.

Every file is checked against its sha256 after the download, so a mirror can only ever serve
the same bytes; the list of addresses is tried in order.
"""
from __future__ import annotations

from dataclasses import dataclass

from .files import KNOWN_SHA256

__all__ = ["CIFAR10_ARCHIVE", "SOURCES", "Source"]


@dataclass(frozen=True)
class Source:
    """One downloadable file: its path under the data root, addresses, sha256 and size."""

    name: str
    urls: tuple[str, ...]
    sha256: str
    size: int | None = None

    @property
    def filename(self) -> str:
        return self.name.rsplit("/", 1)[-1]


# Yann LeCun's page is MNIST's home, but it often refuses downloads; the PyTorch project's
# mirror serves the byte-identical files (same sha256).
_MNIST_URLS = ("https://yann.lecun.com/exdb/mnist/", "https://ossci-datasets.s3.amazonaws.com/mnist/")
_MNIST_SIZES = {"train-images-idx3-ubyte.gz": 9912422, "train-labels-idx1-ubyte.gz": 28881,
                "t10k-images-idx3-ubyte.gz": 1648877, "t10k-labels-idx1-ubyte.gz": 4542}

# The official "CIFAR-10 python version" from its authors' page (Krizhevsky, Toronto).
CIFAR10_ARCHIVE = Source(
    "cifar10/cifar-10-python.tar.gz", ("https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",),
    "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce", 170498071)

SOURCES: dict[str, tuple[Source, ...]] = {
    "mnist": tuple(Source(f"mnist/{f}", tuple(u + f for u in _MNIST_URLS),
                          KNOWN_SHA256[f"mnist/{f}"], size) for f, size in _MNIST_SIZES.items()),
    "cifar10": (CIFAR10_ARCHIVE,),
}
