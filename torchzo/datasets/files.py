"""Where the data lives, and checking that a file is the one expected."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["KNOWN_SHA256", "DataError", "data_root", "verified"]

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


class DataError(RuntimeError):
    """A data file is missing or is not the expected file."""


def data_root(root: str | Path | None = None) -> Path:
    """``root``, else ``$TORCHZO_DATA``, else ``../shared/data`` beside this repository."""
    if root is not None:
        return Path(root)
    if os.environ.get("TORCHZO_DATA"):
        return Path(os.environ["TORCHZO_DATA"])
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def verified(root: Path, name: str, expected: str | None = None) -> Path:
    """The path of ``root/name`` after checking it exists and has the expected sha256."""
    path = root / name
    expected = expected or KNOWN_SHA256.get(name)
    if not path.is_file():
        raise DataError(f"missing data file {path} (expected sha256 {expected}); set root= or "
                        "TORCHZO_DATA to the folder holding mnist/ and cifar10/")
    if expected is not None:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != expected:
            raise DataError(f"{path} is corrupt or not the expected file: sha256 {digest}, "
                            f"expected {expected}")
    return path
