"""Compiled kernels for the oracle's queries, built with the package; optional.

In torch ops, a Rademacher query unpacks its d signs into floats, perturbs the parameters with
them and adds them to the estimate: three passes over d floats, and a fourth for the torch
generator's bits. The kernels in ``kernels.c`` work on the packed signs instead:
:func:`sign_words` draws them (SplitMix64), :func:`sign_perturb` writes ``x + alpha u`` in one
pass, and :func:`sign_accumulate` adds up to :data:`GROUP` directions' ``c u`` to the estimate
in one pass over it. They give the bits of the torch ops they replace (every product they
form is ``+-alpha``, exact, and the terms are added in the same order), so whether they run
changes the time of a step, never its result. :func:`abs_max`, the largest
magnitude of a tensor in one read pass, serves the step's finiteness checks. :func:`gauss_fill`
draws Gaussian directions (a counter-based stream whose bits torch ops give too, at a tenth of
the speed: :mod:`torchzo.oracle.directions.counter`).

``pip install`` compiles ``kernels.c`` (see ``setup.py``) into one library beside this module,
holding a variant per instruction set (AVX-512, AVX2, plain) of which it runs the best the CPU
has, and a record of its sha256. The first use loads it with :mod:`ctypes` once the file
matches its record and holds every symbol; nothing is compiled then. Where that fails (no
compiler at install time, a truncated or replaced file), or with ``TORCHZO_KERNELS=0`` in the
environment, :func:`available` is false, :func:`reason` says why, and the oracle uses torch
ops, which give the same bits.

For development, :func:`build` (or ``TORCHZO_KERNELS=build``, at the first use) compiles
``kernels.c`` with ``$CC`` (else ``cc``) into ``$TORCHZO_CACHE/kernels`` (default
``~/.cache/torchzo/kernels``), a folder that must be the user's own (mode 0700), under a file
lock so that concurrent processes build once, and runs the new library in a child process
before this one loads it.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import json
import os
import platform
import stat
import struct
import sysconfig
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor

from . import kernel_build
from .kernel_build import Unavailable as _Unavailable

__all__ = ["GROUP", "abs_max", "available", "build", "disabled", "fits", "gauss_axpy",
           "gauss_fill", "info", "reason", "sign_accumulate", "sign_perturb", "sign_words"]

#: Directions one :func:`sign_accumulate` adds to an estimate in one pass (their packed signs are
#: held until then: d bytes in all).
GROUP = 8

_SOURCE = Path(__file__).with_name("kernels.c")
_INSTALLED = Path(__file__).with_name(
    "_kernels" + (sysconfig.get_config_var("EXT_SUFFIX") or ".so"))
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_enabled = [True]
_built: list[Path | None] = [None]  # the library build() made, used instead of the installed one


class _Loaded(NamedTuple):
    lib: ctypes.CDLL | None
    reason: str | None
    path: Path | None = None
    command: str | None = None


def _open(path: Path, private: bool = False) -> tuple[ctypes.CDLL, str | None]:
    """Load the library at ``path`` if it is the file its record describes, built from this
    ``kernels.c``, and holds every symbol. ``private``: also the user's own, writable by no one
    else (a developer build)."""
    try:
        record = json.loads(kernel_build.record_path(path).read_text())
        info = os.lstat(path)
    except FileNotFoundError:
        raise _Unavailable(f"not built: no {path.name} with its record beside it (install "
                           "torchzo where a C compiler works, or see kernels.build())") from None
    except (OSError, ValueError) as err:
        raise _Unavailable(f"unreadable build record of {path}: {err}") from None
    if not stat.S_ISREG(info.st_mode):
        raise _Unavailable(f"refused {path}: not a regular file")
    if info.st_mode & 0o002 or (private and (info.st_uid != os.getuid()
                                              or info.st_mode & 0o020)):
        raise _Unavailable(f"refused {path}: others may write it"
                           + ("" if info.st_uid == os.getuid() else " (not this user's own)"))
    if not isinstance(record, dict) or kernel_build.sha256(path) != record.get("sha256"):
        raise _Unavailable(f"refused {path}: it does not match its build record (truncated or "
                           "replaced?); reinstall torchzo")
    if _SOURCE.exists() and kernel_build.sha256(_SOURCE) != record.get("source_sha256"):
        raise _Unavailable(f"refused {path}: built from another kernels.c (rebuild: pip install "
                           "-e ., or kernels.build())")
    try:
        lib = ctypes.CDLL(str(path))
        _bind(lib)
    except (OSError, AttributeError) as err:
        raise _Unavailable(f"refused {path}: {err}") from None
    command = record.get("command")
    return lib, command if isinstance(command, str) else None


def _bind(lib: ctypes.CDLL) -> None:
    pointer, i64, f64, i32 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double, ctypes.c_int
    for suffix in _SUFFIX.values():
        query = getattr(lib, f"zo_sign_query_{suffix}")
        query.argtypes = [pointer, pointer, pointer, f64, pointer, pointer, pointer, i32, i32,
                          i64, i64]
        query.restype = None
    words = lib.zo_sign_bits
    words.argtypes, words.restype = [pointer, i64, ctypes.c_uint64], None
    gauss = lib.zo_gauss_fill
    gauss.argtypes, gauss.restype = [pointer, i64, i64, ctypes.c_uint64], None
    axpy = lib.zo_gauss_axpy
    axpy.argtypes, axpy.restype = [pointer, i64, i64, ctypes.c_uint64, ctypes.c_float, i32], None
    for suffix, word in (("f32", ctypes.c_uint32), ("f64", ctypes.c_uint64)):
        largest = getattr(lib, f"zo_abs_max_{suffix}")
        largest.argtypes, largest.restype = [pointer, i64], word
    lib.zo_variant_name.argtypes, lib.zo_variant_name.restype = [i32], ctypes.c_char_p
    for name in ("zo_variant_supported", "zo_select"):
        getattr(lib, name).argtypes, getattr(lib, name).restype = [i32], i32
    lib.zo_variant.argtypes, lib.zo_variant.restype = [], i32


@functools.cache
def _load() -> _Loaded:
    mode = os.environ.get("TORCHZO_KERNELS", "1")
    if mode == "0":
        return _Loaded(None, "disabled by TORCHZO_KERNELS=0")
    if mode not in ("1", "build"):
        return _Loaded(None, f"TORCHZO_KERNELS={mode!r} is none of 0, 1, build")
    try:
        path = _built[0] or (kernel_build.build(_SOURCE) if mode == "build" else _INSTALLED)
        lib, command = _open(path, private=path != _INSTALLED)
    except (_Unavailable, OSError) as err:  # whatever it is, a step runs on torch ops
        return _Loaded(None, str(err))
    return _Loaded(lib, None, path, command)


def build() -> Path:
    """Compile ``kernels.c`` now, for development, and use that library in this process.

    ``pip install`` builds the kernels; this is for working on ``kernels.c`` without reinstalling
    (``TORCHZO_KERNELS=build`` in the environment does the same at the first use). The library
    goes to ``$TORCHZO_CACHE/kernels`` (default ``~/.cache/torchzo/kernels``), which must be
    this user's own folder with mode 0700, under a lock there, and runs once in a child process
    before it is loaded. Returns its path; raises :class:`RuntimeError` saying why where it
    cannot (no compiler, a shared folder, a failed check)."""
    path = kernel_build.build(_SOURCE)
    _open(path, private=True)
    _built[0] = path
    _load.cache_clear()
    return path


def _flags() -> list[str]:
    """The kernels' compile flags, with ``-m`` flags for this CPU's vector instruction sets: what
    a prototype compiled beside the kernels is built with (the kernels pick theirs at run
    time)."""
    flags = [*kernel_build.CFLAGS, "-shared", "-fPIC"]
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


# -- the kernels --------------------------------------------------------------------------------


def available() -> bool:
    """Whether the kernels are built and enabled in this process."""
    return _enabled[0] and _load()[0] is not None


def reason() -> str | None:
    """Why :func:`available` is false (``None`` when it is true)."""
    if not _enabled[0]:
        return "disabled by torchzo.oracle.kernels.disabled()"
    return _load()[1]


def info() -> dict[str, Any]:
    """Whether the kernels run, why not, which library and variant, and the command that built
    it (for reports)."""
    loaded = _load()
    lib = loaded.lib
    return {"available": available(), "reason": reason(),
            "library": None if loaded.path is None else str(loaded.path),
            "command": loaded.command,
            "variant": None if lib is None else _name(lib, lib.zo_variant()),
            "variants": [] if lib is None else _variants(lib)}


def _name(lib: ctypes.CDLL, v: int) -> str:
    return lib.zo_variant_name(v).decode()


def _variants(lib: ctypes.CDLL) -> list[str]:
    """The variants of the library that this CPU runs, best last."""
    out, v = [], 0
    while lib.zo_variant_name(v) is not None:
        if lib.zo_variant_supported(v):
            out.append(_name(lib, v))
        v += 1
    return out


@contextlib.contextmanager
def _variant(name: str) -> Iterator[None]:
    """Run the kernels' ``name`` variant inside the block (to test each one this CPU runs)."""
    lib = _lib()
    before, v = lib.zo_variant(), 0
    while lib.zo_variant_name(v) is not None and _name(lib, v) != name:
        v += 1
    if lib.zo_select(v) != v:
        raise ValueError(f"this CPU does not run the {name!r} variant ({_variants(lib)} it does)")
    try:
        yield
    finally:
        lib.zo_select(before)


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


def gauss_fill(out: Tensor, start: int, key: int) -> None:
    """Entries ``start`` to ``start + out.numel()`` of the Gaussian direction of ``key`` (a
    uint64) into ``out`` (contiguous CPU float32): the bits of
    :func:`torchzo.oracle.directions.counter.gaussian_range`."""
    if not fits(out, torch.float32) or start < 0:
        raise ValueError("gauss_fill needs a contiguous CPU float32 tensor and start >= 0")
    _lib().zo_gauss_fill(out.data_ptr(), start, out.numel(), key % 2**64)


def gauss_axpy(out: Tensor, start: int, key: int, alpha: float, init: bool = False) -> None:
    """``out += alpha u`` (``out = alpha u`` with ``init``) for ``u`` the entries ``start`` to
    ``start + out.numel()`` of the Gaussian direction of ``key``, drawn as :func:`gauss_fill`
    draws them but never written to memory. The bits of ``out.add_(u, alpha=alpha)`` (after
    ``out.zero_()`` with ``init``) on CPUs with FMA: one rounding, ``alpha`` rounded to float32
    first. ``out``: contiguous CPU float32."""
    if not fits(out, torch.float32) or start < 0:
        raise ValueError("gauss_axpy needs a contiguous CPU float32 tensor and start >= 0")
    _lib().zo_gauss_axpy(out.data_ptr(), start, out.numel(), key % 2**64, alpha, int(init))


def sign_perturb(n: int, offset: int, out: Tensor, base: Tensor, bits: Tensor,
                 alpha: float) -> None:
    """Entries ``offset`` to ``offset + n`` of a query's point in one pass: ``out = base +
    alpha u`` (``u``: the packed signs ``bits``). Tensors: contiguous, on the CPU, ``out`` and
    ``base`` of ``n`` elements of one float dtype, not overlapping; ``bits`` uint8 of at least
    ``(offset + n) / 8`` bytes."""
    _sign_query(n, offset, (out, base, bits, alpha), None)


def sign_accumulate(n: int, offset: int, g: Tensor, terms: Sequence[Tensor],
                    coeffs: Sequence[float], init: bool = False,
                    perturb: tuple[Tensor, Tensor, Tensor, float] | None = None) -> None:
    """``g += c_k u_k`` for each ``(u_k, c_k)`` of ``zip(terms, coeffs)`` in order over entries
    ``offset`` to ``offset + n``, in one pass over ``g`` (from zeros, its contents unread, with
    ``init``); at most :data:`GROUP` terms, tensors as for :func:`sign_perturb`. ``perturb``:
    ``(out, base, bits, alpha)`` of :func:`sign_perturb` done in the same pass (``out``
    overlapping neither ``base`` nor ``g``)."""
    _sign_query(n, offset, perturb, (g, terms, coeffs, init))


def _sign_query(n: int, offset: int, perturb: tuple[Tensor, Tensor, Tensor, float] | None,
                accumulate: tuple[Tensor, Sequence[Tensor], Sequence[float], bool] | None
                ) -> None:
    """The checks, then the kernel doing ``perturb`` and ``accumulate`` in one pass."""
    lib = _lib()
    out, base, bits, alpha = perturb if perturb is not None else (None, None, None, 0.0)
    g, terms, coeffs, init = accumulate if accumulate is not None else (None, (), (), False)
    lead = out if out is not None else g
    assert lead is not None
    dtype = lead.dtype
    # The kernels write through raw pointers: nothing unchecked reaches them. (Written out
    # rather than looped: this runs once or twice a query, and a query's Python is its cost
    # at small d.)
    if not (fits(lead, dtype) and lead.numel() == n
            and (base is None or (fits(base, dtype) and base.numel() == n))
            and (g is None or g is lead or (fits(g, dtype) and g.numel() == n))):
        raise ValueError("the sign kernels need contiguous CPU float32/float64 tensors of n "
                         "elements and one dtype")
    m = len(terms)
    if len(coeffs) != m or m > GROUP:
        raise ValueError(f"sign_accumulate takes 0 to {GROUP} (bits, coefficient) terms")
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
