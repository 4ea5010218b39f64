"""Downloading one file atomically: into a temporary file beside it, renamed once verified."""
from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..progress import Progress
from .files import DataError

__all__ = ["MAX_BYTES", "download"]

_CHUNK = 1 << 16
#: The most a download of a file of unknown size may write (the largest data file, CIFAR-10's
#: archive, is 163 MiB).
MAX_BYTES = 1 << 30


class _Failed(Exception):
    """This address did not give the file; the next one may."""


def _fetch_to(url: str, tmp: Path, sha256: str, timeout: float, desc: str,
              stream: IO[str] | None, max_bytes: int, deadline: float) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "torchzo (python urllib)"})
    got, h = 0, hashlib.sha256()
    end = time.monotonic() + deadline
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, \
                open(tmp, "xb") as out:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            if size is not None and size > max_bytes:
                raise _Failed(f"the server announces {size} bytes, more than the file's "
                              f"{max_bytes}")
            with Progress(total=size, desc=desc, unit="B", unit_scale=True, stream=stream,
                          disable=stream is None) as progress:
                # read1: what has arrived, so that a trickling server meets the deadline.
                while chunk := response.read1(_CHUNK):
                    got += len(chunk)
                    if got > max_bytes:
                        raise _Failed(f"the server sent more than the file's {max_bytes} "
                                      "bytes")
                    if time.monotonic() > end:
                        raise _Failed(f"{got} bytes in {deadline:g} s, the deadline for the "
                                      "whole file")
                    out.write(chunk)
                    h.update(chunk)
                    progress.update(len(chunk))
    except urllib.error.HTTPError as e:
        raise _Failed(f"HTTP {e.code} {e.reason}") from e
    except http.client.IncompleteRead as e:
        raise _Failed(f"the server closed the connection after {got + len(e.partial)} bytes"
                      + (f" of {got + len(e.partial) + e.expected}" if e.expected else "")) from e
    except urllib.error.URLError as e:
        raise _Failed(f"could not connect ({e.reason})") from e
    except (http.client.HTTPException, OSError) as e:  # resets, timeouts, bad responses
        raise _Failed(f"the connection failed after {got} bytes ({type(e).__name__}: {e})") from e
    if size is not None and got != size:
        raise _Failed(f"the server closed the connection after {got} of {size} bytes")
    if h.hexdigest() != sha256:
        raise _Failed(f"corrupt download refused: {got} bytes with sha256 {h.hexdigest()}, "
                      f"expected {sha256}")


def download(urls: Sequence[str], dest: Path, sha256: str, *, timeout: float = 60.0,
             deadline: float = 3600.0, max_bytes: int | None = None,
             stream: IO[str] | None = None) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves it with the given sha256.

    Each try writes a hidden temporary file beside ``dest`` and renames it to ``dest`` only once
    the whole file arrived with the right hash, so ``dest`` is either absent, as before, or
    complete; a failed try removes its temporary file. A try fails after ``timeout`` seconds
    without data, after ``deadline`` seconds in all, and as soon as the server announces or
    sends more than ``max_bytes`` (default :data:`MAX_BYTES`), so a hostile or broken server
    can neither fill the disk nor hold the call. ``stream`` shows the progress (``None``:
    silent). Raises :class:`DataError` naming every address and why it failed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        try:
            _fetch_to(url, tmp, sha256, timeout, f"downloading {dest.name}", stream,
                      MAX_BYTES if max_bytes is None else max_bytes, deadline)
            os.replace(tmp, dest)
            return dest
        except _Failed as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}; nothing was written to {dest}:\n  "
                    + "\n  ".join(failures))
