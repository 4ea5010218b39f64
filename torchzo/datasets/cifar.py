"""Building the CIFAR-10 subset the benchmarks use from the official python archive.

The subset (``cifar10/cifar10_subset.npz``) holds, as ``numpy.savez_compressed`` writes them in
this order: ``train_x`` (4660, 3, 32, 32) uint8 and ``train_y`` (4660,) int64, the first 932
images of each of the five training batches ``data_batch_1`` to ``data_batch_5`` in turn;
``test_x`` (846, 3, 32, 32) uint8 and ``test_y`` (846,) int64, the first 846 images of
``test_batch``. That is how the data folder the benchmarks ran on describes the file, and
what is known of it: saving its arrays again with ``numpy.savez_compressed`` (numpy 2.4.6,
zlib 1.2.13) reproduces its bytes exactly, and its first labels are CIFAR-10's first training
and test labels. The build itself could not be run here against the official archive (no
internet), so the check after building is what confirms the subset: the file's sha256
(``KNOWN_SHA256``), or, where another zlib compresses the same arrays to other bytes, the
arrays' digest (``KNOWN_CONTENT_SHA256``), which the readers accept too. A mismatch is refused.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
import secrets
import tarfile
from pathlib import Path

import numpy as np

from .files import KNOWN_CONTENT_SHA256, KNOWN_SHA256, DataError, array_sha256, file_sha256

__all__ = ["SUBSET", "TEST_IMAGES", "TRAIN_PER_BATCH", "build_cifar10_subset"]

SUBSET = "cifar10/cifar10_subset.npz"
TRAIN_PER_BATCH, TEST_IMAGES = 932, 846
_FOLDER = "cifar-10-batches-py"
_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
# A batch's pickle: 10,000 images of 3,072 bytes, their labels and file names (31 MB), with room.
_MAX_BATCH_BYTES = 64 << 20

try:  # numpy >= 2 moved it; the archive's pickles name the old module
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

# The batches are pickled dicts of a numpy array and lists: nothing else may be built from them.
# ``_codecs.encode`` is how Python 3 writes bytes at pickle protocol 2 (the tests' batches).
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
            ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
            ("_codecs", "encode"): codecs.encode}


class _BatchUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _ALLOWED:
            raise DataError(f"the CIFAR-10 archive holds an unexpected object {module}.{name}")
        return _ALLOWED[module, name]


def _batch(archive: tarfile.TarFile, name: str, count: int) -> tuple[np.ndarray, np.ndarray]:
    try:
        info = archive.getmember(f"{_FOLDER}/{name}")
        member = archive.extractfile(info)
    except KeyError:
        member = None
    if member is None:
        raise DataError(f"the CIFAR-10 archive has no {_FOLDER}/{name}")
    if info.size > _MAX_BATCH_BYTES:  # a small archive can unpack to gigabytes
        raise DataError(f"{name} in the CIFAR-10 archive unpacks to {info.size} bytes, more "
                        f"than a batch of 10,000 images takes ({_MAX_BATCH_BYTES})")
    try:
        batch = _BatchUnpickler(io.BytesIO(member.read(_MAX_BATCH_BYTES)),
                                encoding="bytes").load()
        data, labels = batch[b"data"], np.asarray(batch[b"labels"], dtype=np.int64)
    except DataError:
        raise
    except Exception as err:  # noqa: BLE001 - whatever the bytes are, they are no batch
        raise DataError(f"{name} in the CIFAR-10 archive is not a batch: "
                        f"{type(err).__name__}: {err}") from err
    if not isinstance(data, np.ndarray):
        raise DataError(f"{name} in the CIFAR-10 archive is not a batch: its data is a "
                        f"{type(data).__name__}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 \
            or len(labels) != len(data) or len(data) < count:
        raise DataError(f"{name} in the CIFAR-10 archive is not a batch of at least {count} "
                        f"images: data {data.dtype} {data.shape}, {len(labels)} labels")
    # Each row is 1024 red, then green, then blue values, each 32 x 32 in row-major order.
    return data[:count].reshape(count, 3, 32, 32), labels[:count]


def build_cifar10_subset(archive: Path, out: Path, expected: str | None = None) -> Path:
    """Write the subset to ``out`` from the official archive and check it; returns ``out``.

    ``expected``: the sha256 the file must have (default: the known subset's, or its arrays'
    ``KNOWN_CONTENT_SHA256``). Written to a temporary file renamed once checked: a subset that
    does not match is refused and ``out`` is left as it was.
    """
    try:
        with tarfile.open(archive, "r:gz") as tar:
            train = [_batch(tar, name, TRAIN_PER_BATCH) for name in _BATCHES]
            test_x, test_y = _batch(tar, "test_batch", TEST_IMAGES)
    except (tarfile.TarError, EOFError, OSError) as err:  # gzip's errors are OSErrors
        raise DataError(f"{archive} is not a readable CIFAR-10 archive: {err}") from err
    arrays = {"train_x": np.concatenate([x for x, _ in train]),
              "train_y": np.concatenate([y for _, y in train]), "test_x": test_x, "test_y": test_y}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.part-{secrets.token_hex(4)}")
    try:
        with open(tmp, "xb") as f:
            np.savez_compressed(f, **arrays)  # type: ignore[arg-type]
        digest = file_sha256(tmp)
        if expected is not None:
            ok = digest == expected
        else:
            ok = digest == KNOWN_SHA256[SUBSET] or \
                array_sha256(arrays) == KNOWN_CONTENT_SHA256[SUBSET]
        if not ok:
            raise DataError(f"the CIFAR-10 subset built from {archive} does not match: sha256 "
                            f"{digest}, arrays {array_sha256(arrays)}; expected "
                            f"{expected or KNOWN_SHA256[SUBSET]}; {out} was not written")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out
