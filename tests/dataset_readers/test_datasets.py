"""Data readers: IDX parsing, checksums, clear errors; the real files where they are present."""
from __future__ import annotations

import gzip
import hashlib
import struct

import numpy as np
import pytest
from data_marks import needs

from torchzo.datasets import DataError, data_root, load_cifar10_subset, load_mnist, read_idx
from torchzo.datasets.files import verified

needs_data = needs("mnist", "cifar10")


def _write_idx(path, array, code=0x08):
    header = struct.pack(">BBBB", 0, 0, code, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1" if code == 0x08 else ">i4").tobytes())


def test_read_idx_round_trips_shape_and_values(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", array)
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    _write_idx(tmp_path / "b.gz", np.array([5, -7, 2**20]), code=0x0C)
    assert read_idx(tmp_path / "b.gz").tolist() == [5, -7, 2**20]


def test_read_idx_rejects_other_files_and_truncation(tmp_path):
    (tmp_path / "x.gz").write_bytes(gzip.compress(b"not an idx file"))
    with pytest.raises(DataError, match="not an IDX"):
        read_idx(tmp_path / "x.gz")
    _write_idx(tmp_path / "t.gz", np.zeros((4, 4), np.uint8))
    data = gzip.decompress((tmp_path / "t.gz").read_bytes())[:-3]
    (tmp_path / "t.gz").write_bytes(gzip.compress(data))
    with pytest.raises(DataError, match="header says"):
        read_idx(tmp_path / "t.gz")


def test_missing_and_corrupt_files_name_the_path_and_the_expected_hash(tmp_path):
    with pytest.raises(DataError, match="missing data file .*mnist/t10k-images.*expected sha256 "
                                        "8d422c7b"):
        load_mnist("test", root=tmp_path)
    (tmp_path / "f.bin").write_bytes(b"abc")
    good = hashlib.sha256(b"abc").hexdigest()
    assert verified(tmp_path, "f.bin", good) == tmp_path / "f.bin"
    with pytest.raises(DataError, match="corrupt.*expected 00"):
        verified(tmp_path, "f.bin", "00" * 32)


def test_data_root_prefers_argument_then_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHZO_DATA", str(tmp_path / "env"))
    assert data_root(tmp_path) == tmp_path
    assert data_root() == tmp_path / "env"


@needs_data
def test_real_mnist_and_cifar_subset():
    x, y = load_mnist("test")
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    assert y[:5].tolist() == [7, 2, 1, 0, 4]
    x, y = load_cifar10_subset("train")
    assert x.shape == (4660, 3, 32, 32) and set(y.tolist()) == set(range(10))
