"""``python -m torchzo.datasets fetch`` end to end against a local HTTP server on 127.0.0.1.

The server serves files the tests make (small IDX files, a small archive laid out as the
official CIFAR-10 one), or the real data's copies where they are present; the tests pass the
fake files' sha256 through ``fetch``'s ``base_url`` and ``checksums``.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from data_marks import needs_cifar10, needs_mnist

from torchzo.datasets import DataError, data_root, fetch, load_cifar10_subset, load_mnist, read_idx
from torchzo.datasets.__main__ import main as datasets_main
from torchzo.datasets.cifar import SUBSET, TEST_IMAGES, TRAIN_PER_BATCH
from torchzo.datasets.download import download
from torchzo.datasets.files import verified
from torchzo.datasets.sources import SOURCES


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.files: dict[str, bytes] = {}
        self.drop: set[str] = set()  # names whose response stops half-way
        self.unsized: set[str] = set()  # names served without a Content-Length
        self.trickle: set[str] = set()  # names served a byte at a time, slowly
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:  # noqa: N802 (the http.server API)
        name = self.path.lstrip("/")
        self.server.requests.append(name)
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if name not in self.server.unsized:
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if name in self.server.trickle:
            for i in range(len(body)):
                try:
                    self.wfile.write(body[i:i + 1])
                    self.wfile.flush()
                except OSError:  # the client gave up
                    return
                time.sleep(0.02)
            return
        if name in self.server.drop:
            self.wfile.write(body[: len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server():
    srv = _Server()
    thread = threading.Thread(target=srv.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _idx(array: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
        f">{array.ndim}i", *array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def _fake_mnist() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    files = {}
    for prefix, n in (("train", 12), ("t10k", 5)):
        files[f"{prefix}-images-idx3-ubyte.gz"] = _idx(rng.integers(0, 256, (n, 28, 28)))
        files[f"{prefix}-labels-idx1-ubyte.gz"] = _idx(rng.integers(0, 10, n))
    return files


def _leftovers(root) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def test_fetch_mnist_downloads_verifies_and_keeps_what_is_there(server, tmp_path):
    server.files = _fake_mnist()
    sums = {f"mnist/{k}": _sha(v) for k, v in server.files.items()}
    out = io.StringIO()
    paths = fetch("mnist", tmp_path, base_url=server.url, checksums=sums, stream=out)
    assert [p.name for p in paths] == [s.filename for s in SOURCES["mnist"]]
    for p in paths:
        assert p.read_bytes() == server.files[p.name]
    assert read_idx(tmp_path / "mnist/t10k-images-idx3-ubyte.gz").shape == (5, 28, 28)
    assert _leftovers(tmp_path) == sorted(f"mnist/{k}" for k in server.files)  # no temporaries
    assert "downloaded, sha256 verified" in out.getvalue()
    served = len(server.requests)
    again = io.StringIO()
    fetch("mnist", tmp_path, base_url=server.url, checksums=sums, stream=again)
    assert len(server.requests) == served  # verified files are not downloaded again
    assert again.getvalue().count("already there, sha256 verified") == 4


def test_a_corrupt_download_is_refused_and_leaves_nothing(server, tmp_path):
    server.files = _fake_mnist()
    sums = {f"mnist/{k}": _sha(v) for k, v in server.files.items()}
    name = "t10k-labels-idx1-ubyte.gz"
    server.files[name] = server.files[name][:-1] + b"!"  # one byte changed on the way
    with pytest.raises(DataError, match=rf"(?s)could not download {name}; nothing was written.*"
                                        r"corrupt download refused: \d+ bytes with sha256"):
        fetch("mnist", tmp_path, base_url=server.url, checksums=sums, quiet=True)
    assert f"mnist/{name}" not in _leftovers(tmp_path)
    assert not [p for p in _leftovers(tmp_path) if ".part" in p]
    # A file already there that does not verify is replaced only by a verified download.
    old = tmp_path / "mnist" / name
    old.write_bytes(b"an older, damaged copy")
    with pytest.raises(DataError, match="corrupt download refused"):
        fetch("mnist", tmp_path, base_url=server.url, checksums=sums, quiet=True)
    assert old.read_bytes() == b"an older, damaged copy"


def test_a_dropped_connection_is_a_clear_error_and_leaves_nothing(server, tmp_path):
    body = bytes(range(256)) * 400
    server.files = {"big.bin": body}
    server.drop = {"big.bin"}
    dest = tmp_path / "d" / "big.bin"
    with pytest.raises(DataError, match=r"closed the connection after \d+ of 102400 bytes"):
        download([f"{server.url}/big.bin"], dest, _sha(body), timeout=10)
    assert _leftovers(tmp_path) == []
    server.drop = set()
    assert download([f"{server.url}/big.bin"], dest, _sha(body)).read_bytes() == body


@pytest.mark.parametrize("announced", [True, False])
def test_a_server_sending_more_than_the_file_is_cut_off(server, tmp_path, announced):
    body = bytes(range(256)) * 4000
    server.files = {"big.bin": body}
    if not announced:
        server.unsized = {"big.bin"}
    dest = tmp_path / "big.bin"
    match = "announces 1024000 bytes" if announced else "sent more than the file's 100000"
    with pytest.raises(DataError, match=match):
        download([f"{server.url}/big.bin"], dest, _sha(body), max_bytes=100_000, timeout=10)
    assert _leftovers(tmp_path) == []
    assert download([f"{server.url}/big.bin"], dest, _sha(body),
                    max_bytes=len(body)).read_bytes() == body


def test_a_trickling_server_meets_the_deadline(server, tmp_path):
    server.files = {"slow.bin": b"x" * 1000}  # 20 s at a byte per 20 ms
    server.trickle = {"slow.bin"}
    start = time.monotonic()
    with pytest.raises(DataError, match="deadline for the whole file"):
        download([f"{server.url}/slow.bin"], tmp_path / "slow.bin", _sha(b"x" * 1000),
                 timeout=5, deadline=0.5)
    assert time.monotonic() - start < 3
    assert _leftovers(tmp_path) == []


def test_fetch_caps_a_known_file_at_its_known_size(server, tmp_path):
    source = SOURCES["mnist"][0]  # the first fetched: train-images, 9912422 bytes
    server.files = {source.filename: b"\0" * (source.size + 10_000)}
    server.unsized = {source.filename}
    with pytest.raises(DataError, match=f"more than the file's {source.size} bytes"):
        fetch("mnist", tmp_path, base_url=server.url, quiet=True)
    assert _leftovers(tmp_path) == []


def _archive_of(name: str, payload: bytes) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.mark.parametrize("payload, match", [
    (b"\0" * (65 << 20), "unpacks to 68157440 bytes"),  # a bomb: 65 MiB of zeros, 64 KiB packed
    (b"not a pickle at all", "is not a batch: UnpicklingError"),
    (pickle.dumps([1, 2, 3], protocol=2), "is not a batch"),
    (pickle.dumps({b"data": [1], b"labels": [0]}, protocol=2), "is not a batch"),
], ids=["gzip bomb", "not a pickle", "a list", "data not an array"])
def test_an_archive_whose_batches_are_not_batches_is_a_data_error(tmp_path, payload, match):
    archive = _archive_of("data_batch_1", payload)
    path = tmp_path / "a.tar.gz"
    path.write_bytes(archive)
    with pytest.raises(DataError, match=match):
        fetch("cifar10", tmp_path / "root", archive=path, checksums={
            "cifar10/cifar-10-python.tar.gz": _sha(archive)}, quiet=True)


def test_an_archive_that_is_no_archive_is_a_data_error(tmp_path):
    path = tmp_path / "a.tar.gz"
    path.write_bytes(gzip.compress(b"plain text, not a tar"))
    with pytest.raises(DataError, match="not a readable CIFAR-10 archive"):
        fetch("cifar10", tmp_path / "root", archive=path, checksums={
            "cifar10/cifar-10-python.tar.gz": _sha(path.read_bytes())}, quiet=True)


def test_download_tries_each_address_and_names_every_failure(server, tmp_path):
    server.files = {"f.bin": b"payload"}
    dest = tmp_path / "f.bin"
    assert download([f"{server.url}/gone.bin", f"{server.url}/f.bin"], dest,
                    _sha(b"payload")).read_bytes() == b"payload"
    dead = "http://127.0.0.1:9/f.bin"  # the discard port: nothing listens there
    with pytest.raises(DataError, match=r"(?s)gone\.bin: HTTP 404.*127\.0\.0\.1:9/f\.bin: "
                                        "could not connect"):
        download([f"{server.url}/gone.bin", dead], tmp_path / "g.bin", _sha(b"payload"),
                 timeout=5)
    assert _leftovers(tmp_path) == ["f.bin"]


def _py2_pickle(batch: dict) -> bytes:
    """A batch pickled the way the official archive's are (protocol 2, numpy.core names)."""
    return pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray",
                                                   b"numpy.core.multiarray")


def _fake_cifar(extra: int = 3) -> tuple[bytes, dict[str, np.ndarray]]:
    """A small archive laid out as the official one: batches a few images longer than the
    subset takes from each; and the subset's arrays as its definition says."""
    rng = np.random.default_rng(1)
    buf, train = io.BytesIO(), []
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
            n = (TEST_IMAGES if name == "test_batch" else TRAIN_PER_BATCH) + extra
            # Each image one value per channel, told apart by its index: compresses fast.
            data = ((np.arange(n)[:, None] * 7 + len(train) * 31
                     + np.arange(3072)[None, :] // 1024 * 80) % 256).astype(np.uint8)
            labels = [int(v) for v in rng.integers(0, 10, n)]
            payload = _py2_pickle({b"batch_label": name.encode(), b"labels": labels,
                                   b"data": data, b"filenames": [b"x.png"] * n})
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
            train.append((data.reshape(n, 3, 32, 32), np.array(labels, np.int64)))
    (tx, ty) = train.pop()
    k = TRAIN_PER_BATCH
    arrays = {"train_x": np.concatenate([x[:k] for x, _ in train]),
              "train_y": np.concatenate([y[:k] for _, y in train]),
              "test_x": tx[:TEST_IMAGES], "test_y": ty[:TEST_IMAGES]}
    return buf.getvalue(), arrays


def _npz_sha(arrays: dict[str, np.ndarray]) -> str:
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return _sha(buf.getvalue())


def test_fetch_cifar10_downloads_the_archive_and_builds_the_subset(server, tmp_path):
    archive, arrays = _fake_cifar()
    server.files = {"cifar-10-python.tar.gz": archive}
    sums = {"cifar10/cifar-10-python.tar.gz": _sha(archive), SUBSET: _npz_sha(arrays)}
    out = io.StringIO()
    (subset,) = fetch("cifar10", tmp_path, base_url=server.url, checksums=sums, stream=out)
    assert subset == tmp_path / SUBSET and "built from the archive" in out.getvalue()
    with np.load(subset, allow_pickle=False) as npz:
        assert npz.files == list(arrays)
        for k, v in arrays.items():
            assert npz[k].dtype == v.dtype and np.array_equal(npz[k], v)
    assert npz_shapes(subset) == {"train_x": (4660, 3, 32, 32), "train_y": (4660,),
                                  "test_x": (846, 3, 32, 32), "test_y": (846,)}
    assert _leftovers(tmp_path) == ["cifar10/cifar-10-python.tar.gz", SUBSET]
    # A copy of the archive you already have serves as well, checked against its hash.
    other = tmp_path / "elsewhere"
    fetch("cifar10", other, archive=tmp_path / "cifar10/cifar-10-python.tar.gz",
          checksums=sums, quiet=True)
    assert (other / SUBSET).read_bytes() == subset.read_bytes()
    with pytest.raises(DataError, match="not the official CIFAR-10 python archive"):
        fetch("cifar10", other, archive=subset, checksums=sums, quiet=True)


def npz_shapes(path) -> dict[str, tuple]:
    with np.load(path, allow_pickle=False) as npz:
        return {k: npz[k].shape for k in npz.files}


def test_a_subset_that_does_not_match_is_refused_and_not_written(server, tmp_path):
    archive, _ = _fake_cifar()
    server.files = {"cifar-10-python.tar.gz": archive}
    sums = {"cifar10/cifar-10-python.tar.gz": _sha(archive), SUBSET: "0" * 64}
    with pytest.raises(DataError, match="subset built from .* does not match"):
        fetch("cifar10", tmp_path, base_url=server.url, checksums=sums, quiet=True)
    assert _leftovers(tmp_path) == ["cifar10/cifar-10-python.tar.gz"]
    # Without an override the known subset's hash is expected: a fake archive never passes.
    with pytest.raises(DataError, match="does not match"):
        fetch("cifar10", tmp_path, checksums={"cifar10/cifar-10-python.tar.gz": _sha(archive)},
              quiet=True)


def test_the_archive_may_hold_only_plain_data(tmp_path):
    class Boom:
        def __reduce__(self):
            return (print, ("never called",))

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        payload = pickle.dumps({b"data": Boom()}, protocol=2)
        info = tarfile.TarInfo("cifar-10-batches-py/data_batch_1")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    path = tmp_path / "a.tar.gz"
    path.write_bytes(buf.getvalue())
    with pytest.raises(DataError, match=r"unexpected object \w*\.print"):
        fetch("cifar10", tmp_path / "root", archive=path, checksums={
            "cifar10/cifar-10-python.tar.gz": _sha(buf.getvalue())}, quiet=True)


def test_the_command_line_reports_a_failed_download_without_a_traceback(server, tmp_path,
                                                                         capsys):
    assert datasets_main(["fetch", "mnist", "--root", str(tmp_path), "--base-url", server.url,
                          "--timeout", "5"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not download train-images-idx3-ubyte.gz")
    assert "HTTP 404" in err and "Traceback" not in err
    assert _leftovers(tmp_path) == []
    assert datasets_main(["check", "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "cifar10/cifar10_subset.npz: missing" in out
    assert f"python -m torchzo.datasets fetch all --root {tmp_path}" in out


def test_missing_data_errors_name_the_fetch_command(tmp_path):
    with pytest.raises(DataError, match=f"python -m torchzo.datasets fetch mnist --root "
                                        f"{tmp_path}"):
        load_mnist("test", root=tmp_path)
    with pytest.raises(DataError, match="python -m torchzo.datasets fetch cifar10"):
        load_cifar10_subset("train", root=tmp_path)


def test_the_default_data_folder_is_the_cache_without_a_shared_folder(monkeypatch, tmp_path):
    import torchzo.datasets.files as files

    monkeypatch.delenv("TORCHZO_DATA", raising=False)
    monkeypatch.setenv("TORCHZO_CACHE", str(tmp_path))
    monkeypatch.setattr(files, "__file__", str(tmp_path / "a" / "b" / "c" / "files.py"))
    assert data_root() == tmp_path / "data"


@needs_mnist
def test_the_command_line_fetches_the_real_mnist_from_a_mirror(server, tmp_path):
    """The real files, served locally: fetched with their known hashes, read by the readers."""
    server.files = {s.filename: (data_root() / s.name).read_bytes() for s in SOURCES["mnist"]}
    assert datasets_main(["fetch", "mnist", "--root", str(tmp_path),
                          "--base-url", server.url]) == 0
    x, y = load_mnist("test", root=tmp_path)
    assert x.shape == (10000, 1, 28, 28) and y[:3].tolist() == [7, 2, 1]
    assert datasets_main(["check", "--root", str(tmp_path)]) == 1  # no CIFAR-10 there


@needs_cifar10
def test_a_rebuilt_subset_with_other_bytes_but_the_same_arrays_is_accepted(tmp_path):
    with np.load(data_root() / SUBSET, allow_pickle=False) as npz:
        arrays = {k: npz[k] for k in npz.files}
    (tmp_path / "cifar10").mkdir()
    np.savez(tmp_path / SUBSET, **arrays)  # uncompressed: other bytes, same arrays
    assert verified(tmp_path, SUBSET) == tmp_path / SUBSET
    arrays["test_y"] = arrays["test_y"].copy()
    arrays["test_y"][0] += 1
    np.savez(tmp_path / SUBSET, **arrays)
    with pytest.raises(DataError, match="corrupt or not the expected file"):
        verified(tmp_path, SUBSET)
