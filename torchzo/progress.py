"""Progress of long loops: a tqdm bar on a terminal, plain text lines everywhere else.

One small object for every long command (target training, meta-training, the benchmarks,
downloads) and for your own loops::

    from torchzo.progress import Progress

    with Progress(total=len(batches), desc="epoch 1", unit="batch") as progress:
        for batch in batches:
            loss = train_on(batch)
            progress.update(loss=float(loss))   # advance by one, show the latest loss

On a terminal with tqdm installed (the ``progress`` extra: ``pip install 'torchzo[progress]'``)
it draws a tqdm bar. Otherwise (no tqdm, or the stream is a file, a pipe or a CI log) it writes
one line at most every ``interval`` seconds (and each time the count grows by ``every``, if
given), then a last line on :meth:`Progress.close`::

    epoch 1: 120/469 batch (26%), 3.9 batch/s, 31 s, about 1.5 min left, loss=0.231

``torchzo.Recorder(opt, progress=True)`` shows an optimizer's steps, queries, loss and queries
per second this way.
"""
from __future__ import annotations

import sys
import time
from typing import IO, Any

__all__ = ["Progress"]


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _scaled(x: float) -> str:
    for prefix, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(x) >= size:
            return f"{x / size:.1f}{prefix}"
    return f"{x:.0f}"


def _field(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed file
        return False


class Progress:
    """Progress of a loop of ``total`` updates (``None``: unknown), written to ``stream``.

    - ``update(n=1, **fields)`` advances by ``n`` and shows ``fields`` (latest values, e.g.
      ``loss=0.23``; floats with 4 significant digits); ``update(0, **fields)`` only changes them.
    - ``write(text)`` prints a line without breaking the bar; ``close()`` ends it (a context
      manager closes it on exit). Plain text mode writes a last line on close when anything
      was counted.
    - ``stream``: default ``sys.stderr``. ``bar``: ``None`` draws a tqdm bar when tqdm is
      installed and ``stream`` is a terminal; ``False`` always writes plain lines; ``True``
      draws a bar wherever tqdm is installed. ``interval``: seconds between plain lines
      (``None``: never by time); ``every``: also a line each time the count has grown by that
      much since the last line.
      ``unit_scale``: counts with k/M/G prefixes (bytes). ``disable``: writes nothing.
    """

    def __init__(self, total: int | None = None, desc: str = "", unit: str = "step",
                 stream: IO[str] | None = None, *, interval: float | None = 10.0,
                 every: int | None = None, bar: bool | None = None, unit_scale: bool = False,
                 disable: bool = False) -> None:
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.every, self.disabled = interval, every, disable
        self.n = 0
        self.fields: dict[str, Any] = {}
        self.start = self._last_time = time.monotonic()
        self._last_n = 0
        self._closed = disable
        self._tqdm: Any = None
        if not disable and (bar if bar is not None else _is_terminal(self.stream)):
            try:
                from tqdm import tqdm
            except ImportError:  # the optional extra is missing: plain lines
                pass
            else:
                self._tqdm = tqdm(total=total, desc=desc or None, unit=unit, file=self.stream,
                                  unit_scale=unit_scale, dynamic_ncols=True)

    @property
    def elapsed(self) -> float:
        """Seconds since the progress was created."""
        return time.monotonic() - self.start

    def update(self, n: int = 1, **fields: Any) -> None:
        """Advance by ``n`` and set the shown ``fields`` to these latest values."""
        if self._closed:
            return
        self.n += n
        self.fields.update(fields)
        if self._tqdm is not None:
            if self.fields:
                self._tqdm.set_postfix_str(self._fields(), refresh=False)
            self._tqdm.update(n)
            return
        now = time.monotonic()
        by_count = self.every is not None and self.n - self._last_n >= self.every
        by_time = self.interval is not None and now - self._last_time >= self.interval
        if n and (by_count or by_time):
            self._line(now)

    def write(self, text: str) -> None:
        """Print ``text`` as a line of its own (above the bar when there is one)."""
        if self._tqdm is not None:
            self._tqdm.write(text, file=self.stream)
        elif not self.disabled:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        """End the progress: close the bar, or write the last plain line."""
        if self._closed:
            return
        self._closed = True
        if self._tqdm is not None:
            self._tqdm.close()
        elif self.n:
            self._line(time.monotonic(), final=True)

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _count(self, x: float) -> str:
        if self.unit_scale:
            return _scaled(x)
        return str(int(x)) if float(x).is_integer() else f"{x:g}"

    def _rate(self, x: float) -> str:
        return _scaled(x) if self.unit_scale else f"{x:.3g}" if x < 1000 else f"{x:.0f}"

    def _fields(self) -> str:
        return " ".join(f"{k}={_field(v)}" for k, v in self.fields.items())

    def _line(self, now: float, final: bool = False) -> None:
        self._last_time, self._last_n = now, self.n
        elapsed = now - self.start
        done = f"{self._count(self.n)}/{self._count(self.total)}" if self.total else \
            self._count(self.n)
        parts = [f"{done} {self.unit}"
                 + (f" ({100 * self.n / self.total:.0f}%)" if self.total else "")]
        if elapsed > 0:
            parts.append(f"{self._rate(self.n / elapsed)} {self.unit}/s")
        parts.append(_duration(elapsed) + (" in all" if final else ""))
        if self.total and not final and self.n and elapsed > 0 and self.n < self.total:
            parts.append(f"about {_duration((self.total - self.n) * elapsed / self.n)} left")
        if self.fields:
            parts.append(self._fields())
        prefix = f"{self.desc}: " if self.desc else ""
        self.stream.write(prefix + ", ".join(parts) + "\n")
        self.stream.flush()
