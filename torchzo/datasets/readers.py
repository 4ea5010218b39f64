"""Readers: MNIST's IDX format and the CIFAR-10 subset's ``.npz``."""
from __future__ import annotations

import gzip
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .files import DataError, data_root, verified

__all__ = ["load_cifar10_subset", "load_mnist", "read_idx"]

_IDX_TYPES: dict[int, Any] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (optionally gzip-compressed) as an array of its declared type and shape."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in _IDX_TYPES:
        raise DataError(f"{path} is not an IDX file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}i", data[4:4 + 4 * ndim])
    body = np.frombuffer(data, dtype=_IDX_TYPES[data[2]], offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise DataError(f"{path}: header says {shape}, body holds {body.size} values")
    return body.reshape(shape)


def load_mnist(split: str = "train", root: str | Path | None = None) -> tuple[Tensor, Tensor]:
    """MNIST images as float32 in [0, 1], shape (N, 1, 28, 28), and int64 labels."""
    prefix = {"train": "train", "test": "t10k"}.get(split)
    if prefix is None:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    base = data_root(root)
    images = read_idx(verified(base, f"mnist/{prefix}-images-idx3-ubyte.gz"))
    labels = read_idx(verified(base, f"mnist/{prefix}-labels-idx1-ubyte.gz"))
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    return x, torch.from_numpy(labels.astype(np.int64))


def load_cifar10_subset(split: str = "train", root: str | Path | None = None
                        ) -> tuple[Tensor, Tensor]:
    """The CIFAR-10 subset as float32 in [0, 1], shape (N, 3, 32, 32), and int64 labels."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    path = verified(data_root(root), "cifar10/cifar10_subset.npz")
    with np.load(path, allow_pickle=False) as npz:
        x, y = npz[f"{split}_x"], npz[f"{split}_y"]
    return torch.from_numpy(x.astype(np.float32) / 255.0), torch.from_numpy(y.astype(np.int64))
