"""Downloading one file atomically: into a temporary file beside it, renamed once verified."""
from __future__ import annotations

import hashlib
import http.client
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from ..progress import Progress
from .files import DataError

__all__ = ["download"]

_CHUNK = 1 << 16


class _Failed(Exception):
    """This address did not give the file; the next one may."""


def _fetch_to(url: str, tmp: Path, sha256: str, timeout: float, desc: str,
              stream: IO[str] | None) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "torchzo (python urllib)"})
    got, h = 0, hashlib.sha256()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, \
                open(tmp, "xb") as out:
            length = response.headers.get("Content-Length")
            size = int(length) if length and length.isdigit() else None
            with Progress(total=size, desc=desc, unit="B", unit_scale=True, stream=stream,
                          disable=stream is None) as progress:
                while chunk := response.read(_CHUNK):
                    out.write(chunk)
                    h.update(chunk)
                    got += len(chunk)
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
             stream: IO[str] | None = None) -> Path:
    """Download ``dest`` from the first of ``urls`` that serves it with the given sha256.

    Each try writes a hidden temporary file beside ``dest`` and renames it to ``dest`` only once
    the whole file arrived with the right hash, so ``dest`` is either absent, as before, or
    complete; a failed try removes its temporary file. ``stream`` shows the progress (``None``:
    silent). Raises :class:`DataError` naming every address and why it failed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for url in urls:
        tmp = dest.with_name(f".{dest.name}.part-{secrets.token_hex(4)}")
        try:
            _fetch_to(url, tmp, sha256, timeout, f"downloading {dest.name}", stream)
            os.replace(tmp, dest)
            return dest
        except _Failed as e:
            failures.append(f"{url}: {e}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {dest.name}; nothing was written to {dest}:\n  "
                    + "\n  ".join(failures))
