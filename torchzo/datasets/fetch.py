"""``fetch``: download a data set from its canonical source, verify it, and build what the
readers read; only ever run when asked (the readers never download)."""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import IO

from .cifar import SUBSET, build_cifar10_subset
from .download import download
from .files import DataError, data_root, file_sha256, verified
from .sources import CIFAR10_ARCHIVE, SOURCES

__all__ = ["DATASETS", "fetch", "needed_files"]

DATASETS = tuple(SOURCES)


def needed_files(dataset: str) -> list[str]:
    """The files (paths under the data root) that the readers of ``dataset`` read."""
    _check_name(dataset)
    return [SUBSET] if dataset == "cifar10" else [s.name for s in SOURCES[dataset]]


def _check_name(dataset: str) -> None:
    if dataset not in SOURCES:
        raise ValueError(f"unknown data set {dataset!r}: choose from {list(DATASETS)}")


def fetch(dataset: str, root: str | Path | None = None, *, base_url: str | None = None,
          checksums: Mapping[str, str] | None = None, archive: str | Path | None = None,
          timeout: float = 60.0, deadline: float = 3600.0, stream: IO[str] | None = None,
          quiet: bool = False) -> list[Path]:
    """Download ``dataset`` ("mnist" or "cifar10") into ``root`` and return the files the
    readers read, each checked against its sha256.

    ``root``: default :func:`torchzo.datasets.data_root`. MNIST: the four original IDX
    ``.gz`` files. CIFAR-10: the official ``cifar-10-python.tar.gz`` (kept as
    ``cifar10/cifar-10-python.tar.gz``, 163 MiB, so that the subset can be rebuilt without
    downloading again), from which ``cifar10/cifar10_subset.npz`` is built
    (:func:`torchzo.datasets.cifar.build_cifar10_subset`); ``archive`` uses a copy you already
    have instead of downloading it. Files already present with the right hash are kept; a
    corrupt one is downloaded again. Every download is atomic (see
    :func:`torchzo.datasets.download.download`).

    ``base_url`` fetches every file from ``base_url/<file name>`` instead of the canonical
    addresses (a mirror); ``checksums`` maps paths under the root (``"mnist/..."``,
    ``"cifar10/cifar-10-python.tar.gz"``, ``"cifar10/cifar10_subset.npz"``) to the sha256 to
    expect instead of the known one. A download fails after ``timeout`` seconds without data,
    after ``deadline`` seconds in all, and when the server sends more bytes than the file has
    (the known size, for the known hash; with another, see
    :func:`torchzo.datasets.download.download`). ``stream`` gets the progress and what was
    done (default ``sys.stderr``; ``quiet=True``: nothing). Raises
    :class:`torchzo.datasets.DataError` when a file cannot be had.
    """
    _check_name(dataset)
    stream = None if quiet else (stream if stream is not None else sys.stderr)
    base, checksums = data_root(root), dict(checksums or {})

    def say(text: str) -> None:
        if stream is not None:
            print(text, file=stream, flush=True)

    for source in SOURCES[dataset]:
        sha256 = checksums.get(source.name, source.sha256)
        dest = base / source.name
        if source is CIFAR10_ARCHIVE and archive is not None:
            if file_sha256(Path(archive)) != sha256:
                raise DataError(f"{archive} is not the official CIFAR-10 python archive "
                                f"(expected sha256 {sha256})")
            continue
        if dest.is_file():
            if file_sha256(dest) == sha256:
                say(f"{dest}: already there, sha256 verified")
                continue
            say(f"{dest}: not the expected file (sha256 differs), downloading it again")
        urls = (f"{base_url.rstrip('/')}/{source.filename}",) if base_url else source.urls
        size = source.size if sha256 == source.sha256 else None  # another file: any size
        download(urls, dest, sha256, timeout=timeout, deadline=deadline, max_bytes=size,
                 stream=stream)
        say(f"{dest}: downloaded, sha256 verified")
    if dataset == "cifar10":
        out = base / SUBSET
        expected = checksums.get(SUBSET)
        if out.is_file() and _subset_ok(base, out, expected):
            say(f"{out}: already there, sha256 verified")
        else:
            build_cifar10_subset(Path(archive) if archive else base / CIFAR10_ARCHIVE.name, out,
                                 expected)
            say(f"{out}: built from the archive, verified")
    files = [base / name for name in needed_files(dataset)]
    elsewhere = base.resolve() != data_root().resolve()
    say(f"{dataset} is ready in {base}" + (
        f" (set TORCHZO_DATA={base}, or pass root=, for the readers to find it there)"
        if elsewhere else ""))
    return files


def _subset_ok(base: Path, out: Path, expected: str | None) -> bool:
    if expected is not None:
        return file_sha256(out) == expected
    try:
        verified(base, SUBSET)
    except DataError:
        return False
    return True

