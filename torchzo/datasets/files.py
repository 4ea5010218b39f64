"""Where the data lives, and checking that a file is the one expected."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

__all__ = ["KNOWN_CONTENT_SHA256", "KNOWN_SHA256", "DataError", "array_sha256", "data_root",
           "file_sha256", "verified"]

# The published files' hashes (MNIST) and the project's CIFAR-10 subset.
KNOWN_SHA256 = {
    "mnist/train-images-idx3-ubyte.gz":
        "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "mnist/train-labels-idx1-ubyte.gz":
        "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "mnist/t10k-images-idx3-ubyte.gz":
        "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "mnist/t10k-labels-idx1-ubyte.gz":
        "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    "cifar10/cifar10_subset.npz":
        "f53fa32e9f4db0ddb28112f16a44508ae27ae91833939e8699d5cf1ef47858c2",
}

# The subset's arrays (see array_sha256): a rebuilt .npz holds the same arrays even where
# another zlib compresses them to other bytes than the shipped file's.
KNOWN_CONTENT_SHA256 = {
    "cifar10/cifar10_subset.npz":
        "32d5894b5b943e81d6f8eb1c0d7efa015d4ff7caa9605ae601597ccee1190746",
}

_FETCH = "python -m torchzo.datasets fetch"


class DataError(RuntimeError):
    """A data file is missing or is not the expected file."""


def data_root(root: str | Path | None = None) -> Path:
    """Where the data sets are: ``root``, else ``$TORCHZO_DATA``, else ``../shared/data``
    beside this repository's checkout where that folder exists, else the user cache,
    ``$TORCHZO_CACHE/data`` (default ``~/.cache/torchzo/data``), where
    ``python -m torchzo.datasets fetch`` puts them by default."""
    if root is not None:
        return Path(root)
    if os.environ.get("TORCHZO_DATA"):
        return Path(os.environ["TORCHZO_DATA"])
    beside = Path(__file__).resolve().parents[2].parent / "shared" / "data"
    if beside.is_dir():
        return beside
    cache = os.environ.get("TORCHZO_CACHE") or Path.home() / ".cache" / "torchzo"
    return Path(cache) / "data"


def file_sha256(path: Path) -> str:
    """The hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def array_sha256(arrays: Mapping[str, np.ndarray]) -> str:
    """A sha256 of named arrays: each name, dtype, shape and C-order bytes, in the given order."""
    h = hashlib.sha256()
    for name, array in arrays.items():
        h.update(f"{name} {array.dtype.str} {array.shape}\n".encode())
        h.update(np.ascontiguousarray(array).tobytes())
    return h.hexdigest()


def _npz_sha256(path: Path) -> str | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return array_sha256({k: npz[k] for k in npz.files})
    except (OSError, ValueError, EOFError):  # not a readable .npz
        return None


def _fetch_hint(root: Path, name: str) -> str:
    return f"'{_FETCH} {name.split('/')[0]} --root {root}'"


def verified(root: Path, name: str, expected: str | None = None) -> Path:
    """The path of ``root/name`` after checking it exists and has the expected sha256.

    Without ``expected``, the known hash of ``name`` (``KNOWN_SHA256``) is expected; a rebuilt
    CIFAR-10 subset whose bytes differ is accepted when its arrays match
    ``KNOWN_CONTENT_SHA256``.
    """
    path = root / name
    known = expected is None
    expected = expected or KNOWN_SHA256.get(name)
    if not path.is_file():
        raise DataError(f"missing data file {path} (expected sha256 {expected}): get it with "
                        f"{_fetch_hint(root, name)}, or set root= or TORCHZO_DATA to the folder "
                        "holding mnist/ and cifar10/")
    if expected is not None:
        digest = file_sha256(path)
        if digest != expected and not (
                known and name in KNOWN_CONTENT_SHA256
                and _npz_sha256(path) == KNOWN_CONTENT_SHA256[name]):
            raise DataError(f"{path} is corrupt or not the expected file: sha256 {digest}, "
                            f"expected {expected}; {_fetch_hint(root, name)} replaces it")
    return path
