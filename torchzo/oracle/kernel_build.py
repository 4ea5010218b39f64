"""The developer build of the compiled kernels: ``kernels.c`` compiled at run time, safely.

``pip install`` builds the kernels beside :mod:`torchzo.oracle.kernels` (see ``setup.py``);
this module is what :func:`torchzo.oracle.kernels.build` (or ``TORCHZO_KERNELS=build``) uses
to compile them instead, for work on ``kernels.c``. The library goes to
``$TORCHZO_CACHE/kernels`` (default ``~/.cache/torchzo/kernels``), a folder that must be the
user's own with mode 0700 (a library there gets loaded: another user's could be anything),
under a file lock there, so that concurrent processes (``torchrun``'s ranks) build it once. A
new library runs in a child process before any process loads it: whatever goes wrong then (a
bad file's SIGBUS, an instruction the CPU lacks), only the child dies. Its record (its sha256,
its source's, the command) is what the loader checks the file against.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

# setup.py's CFLAGS (tests/oracle/test_kernels.py checks that they agree): see there.
CFLAGS = ["-O3", "-funroll-loops", "-std=c11", "-ffp-contract=off", "-fno-math-errno"]
#: What the library exports; the loader binds each, the check looks each up.
SYMBOLS = ("zo_sign_bits", "zo_sign_query_f32", "zo_sign_query_f64", "zo_abs_max_f32",
           "zo_abs_max_f64", "zo_variant_name", "zo_variant_supported", "zo_select",
           "zo_variant")


class Unavailable(RuntimeError):
    """Why the kernels cannot be built or loaded."""


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def record_path(library: Path) -> Path:
    """Where the record of ``library`` lies (setup.py writes the installed one's)."""
    return library.with_suffix(".json")


def cache_dir() -> Path:
    root = os.environ.get("TORCHZO_CACHE") or os.path.join(Path.home(), ".cache", "torchzo")
    return Path(root) / "kernels"


def private_dir(path: Path) -> Path:
    """``path``, created if need be, once it is a folder of this user's that no one else may
    read or write."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = os.lstat(path)
    except OSError as err:
        raise Unavailable(f"cannot create {path}: {err}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise Unavailable(f"refused {path}: not a folder (a link?)")
    if info.st_uid != os.getuid():
        raise Unavailable(f"refused {path}: it belongs to uid {info.st_uid}, not this user")
    if info.st_mode & 0o077:
        raise Unavailable(f"refused {path}: mode {stat.S_IMODE(info.st_mode):o}, where only "
                          f"its owner may use it (chmod 700 {path})")
    return path


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` (created) inside the block."""
    try:
        import fcntl
    except ImportError:
        raise Unavailable("the developer build needs a POSIX system (fcntl)") from None
    fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


# The child's program: every symbol, and a call of each variant the CPU runs.
_CHECK = """
import ctypes, struct, sys
lib = ctypes.CDLL(sys.argv[1])
for name in sys.argv[3:]:
    getattr(lib, name)
lib.zo_variant_name.restype = ctypes.c_char_p
lib.zo_abs_max_f64.restype = ctypes.c_uint64
v = 0
while lib.zo_variant_name(v) is not None:
    if lib.zo_variant_supported(v):
        assert lib.zo_select(v) == v
        words = (ctypes.c_uint64 * 2)()
        lib.zo_sign_bits(words, ctypes.c_int64(2), ctypes.c_uint64(0))
        assert " ".join(map(str, words)) == sys.argv[2], list(words)
        x = (ctypes.c_double * 3)(1.5, -3.0, 2.0)
        assert struct.pack("=Q", lib.zo_abs_max_f64(x, ctypes.c_int64(3))) == struct.pack("=d", 3)
    v += 1
print("ok")
"""


def _mix64(z: int) -> int:
    mask = 2**64 - 1
    z = ((z ^ (z >> 30)) * 0xbf58476d1ce4e5b9) & mask
    z = ((z ^ (z >> 27)) * 0x94d049bb133111eb) & mask
    return z ^ (z >> 31)


def check(library: Path) -> None:
    """Load ``library`` and run it in a child process; raise :class:`Unavailable` unless that
    went well."""
    expected = " ".join(str(_mix64(k * 0x9e3779b97f4a7c15 % 2**64)) for k in (1, 2))
    try:
        done = subprocess.run([sys.executable, "-I", "-c", _CHECK, str(library), expected,
                               *SYMBOLS], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as err:
        raise Unavailable(f"could not check the built kernels: {err}") from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        how = f"signal {-done.returncode}" if done.returncode < 0 else done.stderr.strip()[-500:]
        raise Unavailable(f"{library.name} failed its check: {how}")


def build(source: Path) -> Path:
    """Compile ``source`` with ``$CC`` (else ``cc``) into the private cache folder, check it
    and record it, unless a library built from the same source and command is there; return
    its path."""
    cc = shlex.split(os.environ.get("CC", "cc")) or ["cc"]
    if shutil.which(cc[0]) is None:
        raise Unavailable(f"no C compiler ({cc[0]!r} not found; set CC)")
    command = [*cc, *CFLAGS, "-shared", "-fPIC"]
    key = hashlib.sha256(b"\0".join([source.read_bytes(), *(a.encode() for a in command)]))
    root = private_dir(cache_dir())
    target = root / f"signs-{key.hexdigest()[:16]}.so"
    record = record_path(target)
    with locked(root / "build.lock"):  # concurrent processes: one builds, the others wait
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            if json.loads(record.read_text())["sha256"] == sha256(target):
                return target
        fd, tmp = tempfile.mkstemp(dir=root, suffix=".so.tmp")
        os.close(fd)
        try:
            done = subprocess.run([*command, "-o", tmp, str(source), "-lm"],
                                  capture_output=True, text=True, timeout=300)
            if done.returncode != 0:
                raise Unavailable(f"could not build the kernels: {cc[0]} failed: "
                                  f"{done.stderr.strip()[-500:]}")
            os.chmod(tmp, 0o700)  # the loader refuses a file that others may write
            check(Path(tmp))
            entry = {"sha256": sha256(Path(tmp)), "source_sha256": sha256(source),
                     "command": " ".join([*command, "-o", target.name, source.name])}
            record.write_text(json.dumps(entry, indent=1) + "\n")
            os.replace(tmp, target)  # atomic: a reader sees the old file or the new one
        except (OSError, subprocess.SubprocessError) as err:
            raise Unavailable(f"could not build the kernels: {err}") from None
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return target
