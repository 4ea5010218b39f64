"""Compiled kernels for the oracle's Rademacher queries, built on first use; optional.

In torch ops, a Rademacher query unpacks its d signs into floats, perturbs the parameters with
them and adds them to the estimate: three passes over d floats, and a fourth for the torch
generator's bits. The kernels in ``signs.c`` work on the packed signs instead:
:func:`sign_words` draws them (SplitMix64), and
:func:`sign_query` writes ``x + alpha u`` in one pass, or adds up to :data:`GROUP` directions'
``c u`` to the estimate in one pass over it. They give the bits of the torch ops they replace
(every product they form is ``+-alpha``, exact, and the terms are added in the same order), so
whether they run changes the time of a step, never its result. :func:`abs_max`, the largest
magnitude of a tensor in one read pass, serves the step's finiteness checks.

The first use compiles ``signs.c`` with the system's C compiler (``$CC``, else ``cc``) into
``$TORCHZO_CACHE/kernels`` (default ``~/.cache/torchzo/kernels``), keyed by the source, the
compiler and its flags, and loads it with :mod:`ctypes`. Where that fails (no
compiler, an unwritable cache), or with ``TORCHZO_KERNELS=0`` in the environment,
:func:`available` is false, :func:`reason` says why, and the oracle uses torch ops.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import hashlib
import os
import platform
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

__all__ = ["GROUP", "abs_max", "available", "disabled", "fits", "info", "reason", "sign_query",
           "sign_words"]

#: Directions one :func:`sign_query` adds to an estimate in one pass (their packed signs are
#: held until then: d bytes in all).
GROUP = 8

_SOURCE = Path(__file__).with_name("signs.c")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_enabled = [True]


def _flags() -> list[str]:
    # -ffp-contract=off keeps the compiler from fusing what the source keeps apart (the
    # kernels' products are exact, so this is belt and braces); AVX2 and AVX-512 where the CPU
    # has them, judged per run, so that a cache shared between machines never hands one the
    # other's (the flags are part of the file's key).
    flags = ["-O3", "-funroll-loops", "-std=c11", "-ffp-contract=off", "-shared", "-fPIC"]
    if platform.machine().lower() in ("x86_64", "amd64"):
        cpu = _cpu_flags()
        flags += [f"-m{f}" for f in ("avx2", "avx512f") if f in cpu]
    return flags


def _cpu_flags() -> set[str]:
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return next((set(line.split(":", 1)[1].split()) for line in info.splitlines()
                 if line.startswith("flags")), set())


def _cache_dir() -> Path:
    root = os.environ.get("TORCHZO_CACHE") or os.path.join(Path.home(), ".cache", "torchzo")
    return Path(root) / "kernels"


class _Unavailable(Exception):
    pass


def _compile(cc: str, flags: list[str], target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".so.tmp")
    os.close(fd)
    try:
        done = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE)], capture_output=True,
                              text=True, timeout=120)
        if done.returncode != 0:
            raise _Unavailable(f"{cc} failed: {done.stderr.strip()[-500:]}")
        os.replace(tmp, target)  # atomic: a concurrent process sees the old file or the new one
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@functools.cache
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    if os.environ.get("TORCHZO_KERNELS", "1") == "0":
        return None, "disabled by TORCHZO_KERNELS=0"
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        return None, f"no C compiler ({cc!r} not found; set CC)"
    flags = _flags()
    key = hashlib.sha256("\0".join([_SOURCE.read_text(), cc, *flags]).encode()).hexdigest()
    target = _cache_dir() / f"signs-{key[:16]}.so"
    try:
        if not target.exists():
            _compile(cc, flags, target)
        lib = ctypes.CDLL(str(target))
    except (_Unavailable, OSError, subprocess.SubprocessError) as err:
        return None, f"could not build the kernels: {err}"
    pointer, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for suffix in _SUFFIX.values():
        query = getattr(lib, f"zo_sign_query_{suffix}")
        query.argtypes = [pointer, pointer, pointer, f64, pointer, pointer, pointer, i32, i32,
                          i64, i64]
        query.restype = None
    words = lib.zo_sign_bits
    words.argtypes, words.restype = [pointer, i64, ctypes.c_uint64], None
    for suffix, word in (("f32", ctypes.c_uint32), ("f64", ctypes.c_uint64)):
        largest = getattr(lib, f"zo_abs_max_{suffix}")
        largest.argtypes, largest.restype = [pointer, i64], word
    return lib, None


def available() -> bool:
    """Whether the kernels are built and enabled in this process."""
    return _enabled[0] and _load()[0] is not None


def reason() -> str | None:
    """Why :func:`available` is false (``None`` when it is true)."""
    if not _enabled[0]:
        return "disabled by torchzo.oracle.kernels.disabled()"
    return _load()[1]


def info() -> dict[str, Any]:
    """Whether the kernels run, why not, and the command that builds them (for reports)."""
    cc = os.environ.get("CC", "cc")
    return {"available": available(), "reason": reason(),
            "command": " ".join([cc, *_flags(), "-o", "signs.so", "signs.c"])}


@contextlib.contextmanager
def disabled() -> Iterator[None]:
    """Run the oracle on torch ops alone inside the block (to compare the two, or time them)."""
    before = _enabled[0]
    _enabled[0] = False
    try:
        yield
    finally:
        _enabled[0] = before


def fits(t: Tensor, dtype: torch.dtype) -> bool:
    """Whether the kernels can write ``t`` for a direction held in ``dtype``."""
    return t.dtype is dtype and t.is_cpu and t.is_contiguous() and dtype in _SUFFIX


def _lib() -> ctypes.CDLL:
    lib = _load()[0]
    if lib is None or not _enabled[0]:
        raise RuntimeError(f"torchzo kernels unavailable: {reason()}")
    return lib


def sign_words(words: Tensor, key: int) -> None:
    """``words[i] = mix64(key + (i + 1) * golden)`` (SplitMix64, as uint64 in an int64 tensor):
    the sign bits of a Rademacher direction."""
    if words.dtype is not torch.int64 or not words.is_cpu or not words.is_contiguous():
        raise ValueError("sign_words needs a contiguous CPU int64 tensor")
    _lib().zo_sign_bits(words.data_ptr(), words.numel(), key)


def sign_query(n: int, offset: int, *, out: Tensor | None = None, base: Tensor | None = None,
               bits: Tensor | None = None, alpha: float = 0.0, g: Tensor | None = None,
               terms: Sequence[Tensor] = (), coeffs: Sequence[float] = (),
               init: bool = False) -> None:
    """Entries ``offset`` to ``offset + n`` of a query's two passes, in one: ``out = base +
    alpha u`` (``u``: the packed signs ``bits``), if ``out`` is given; and ``g += c_k u_k`` for
    each ``(u_k, c_k)`` of ``zip(terms, coeffs)`` in order, if ``g`` is given (from zeros, its
    contents unread, with ``init``). Tensors: contiguous, on the CPU, of ``n`` elements of one
    float dtype (``out``, ``base``, ``g``) and of at least ``(offset + n) / 8`` bytes
    (``bits``, ``terms``: uint8); ``out`` overlaps neither ``base`` nor ``g``. At most
    :data:`GROUP` terms."""
    lib = _lib()
    lead = out if out is not None else g
    if (out is None) != (base is None) or (out is None) != (bits is None) or lead is None:
        raise ValueError("sign_query needs out, base and bits together, or g, or both")
    dtype = lead.dtype
    # The kernels write through raw pointers: nothing unchecked reaches them. (Written out
    # rather than looped: this runs once or twice a query, and a query's Python is its cost
    # at small d.)
    if not (fits(lead, dtype) and lead.numel() == n
            and (base is None or (fits(base, dtype) and base.numel() == n))
            and (g is None or g is lead or (fits(g, dtype) and g.numel() == n))):
        raise ValueError("sign_query needs contiguous CPU float32/float64 tensors of n "
                         "elements and one dtype")
    m = len(terms)
    if len(coeffs) != m or m > GROUP:
        raise ValueError(f"sign_query takes 0 to {GROUP} (bits, coefficient) terms")
    need = -(-(offset + n) // 8)
    for b in (*terms, bits) if bits is not None else terms:
        if b.dtype is not torch.uint8 or not b.is_cpu or not b.is_contiguous() \
                or b.numel() < need or offset < 0:
            raise ValueError(f"sign bits must be contiguous CPU uint8 tensors of at least "
                             f"{need} bytes")
    pointers = (ctypes.c_void_p * m)(*[b.data_ptr() for b in terms]) if m else None
    values = (ctypes.c_double * m)(*coeffs) if m else None
    getattr(lib, _QUERY[dtype])(
        None if out is None else out.data_ptr(), None if base is None else base.data_ptr(),
        None if bits is None else bits.data_ptr(), alpha,
        None if g is None else g.data_ptr(), pointers, values, m, init, offset, n)
    if out is not None:  # as torch's in-place ops do (g is the oracle's own buffer)
        torch.autograd.graph.increment_version(out)


def abs_max(t: Tensor) -> float:
    """The largest ``|x|`` over the elements of ``t`` (a NaN if one is NaN; 0 if none), exactly
    as ``t.abs().max()`` gives it, in one read pass of integer compares. ``t``: contiguous, on
    the CPU, float32 or float64 (see :func:`fits`)."""
    if not fits(t, t.dtype):
        raise ValueError("abs_max needs a contiguous CPU float32/float64 tensor")
    suffix, word, real = _ABS[t.dtype]
    bits = getattr(_lib(), f"zo_abs_max_{suffix}")(t.data_ptr(), t.numel())
    return struct.unpack(real, struct.pack(word, bits))[0]


# The kernel's suffix, and struct's codes for the unsigned word and the float of its bits.
_ABS = {torch.float32: ("f32", "=I", "=f"), torch.float64: ("f64", "=Q", "=d")}
_QUERY = {dtype: f"zo_sign_query_{suffix}" for dtype, suffix in _SUFFIX.items()}
