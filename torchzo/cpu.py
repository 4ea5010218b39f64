"""Process settings for fast batched queries on a CPU.

A batched step runs the forward pass of q + 1 inputs at once, and its activations (megabytes)
are freed at the end of every step. glibc's ``malloc`` may hand freed memory at the top of its
heap back to the operating system (whether it does depends on what else lives on the heap);
then the next step maps it again and takes a page fault on every 4 KiB page it touches
(measured in a plain MNIST-attack loop: docs/benchmarks/batched.md). :func:`keep_freed_memory`
tells ``malloc`` to keep it.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import sys

__all__ = ["keep_freed_memory"]

_M_TOP_PAD = -2  # glibc's mallopt parameter number (malloc.h)
_INT_MAX = 2**31 - 1


def keep_freed_memory(nbytes: int = 64 << 20) -> bool:
    """Let glibc's ``malloc`` keep up to ``nbytes`` of freed memory for reuse (``M_TOP_PAD``).

    Process-wide, for the rest of the process, like ``torch.set_num_threads``; call it once at
    start-up. It changes no result, only where memory comes from; the cost is up to ``nbytes``
    of address space held after a peak. Equivalent to starting Python with the environment
    variable ``MALLOC_TOP_PAD_=<nbytes>``. Preloading jemalloc or tcmalloc, as PyTorch's CPU
    tuning guide suggests, has a similar effect and needs no call.

    Returns ``True`` when the setting took effect, ``False`` where the C library is not glibc
    (macOS, Windows, musl), in which case nothing changes.

    Example::

        torchzo.cpu.keep_freed_memory()            # before the training loop
        loss = opt.step(torchzo.Batched(objective))
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, int):
        raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
    if not 0 <= nbytes <= _INT_MAX:
        raise ValueError(f"nbytes must be in [0, {_INT_MAX}], got {nbytes}")
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    # gnu_get_libc_version exists only in glibc; musl also has a mallopt that ignores this.
    if not hasattr(libc, "gnu_get_libc_version"):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_TOP_PAD, nbytes))
