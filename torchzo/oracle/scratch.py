"""A memory pool for the copies a step makes, kept from one step to the next."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = ["Scratch"]


class Scratch:
    """The memory of one step's copies (of the parameters, and of the state it may undo), kept
    for the next step's.

    A new tensor's pages are mapped on its first write, one page fault per 4 KiB. glibc hands
    large blocks back to the system when they are freed (always beyond its 32 MiB mmap
    threshold, and at smaller sizes too, depending on the heap's state), so a copy made afresh
    every step can pay those faults every step: on a virtual machine as much time as several
    passes over the parameters (``docs/benchmarks/overhead.md``). An optimizer keeps one
    ``Scratch``; between steps it holds one copy's worth of memory.
    """

    def __init__(self) -> None:
        self._kept: dict[tuple[Any, ...], list[Tensor]] = {}

    @staticmethod
    def _key(t: Tensor) -> tuple[Any, ...]:
        return (t.shape, t.stride(), t.dtype, t.device)

    def take(self, like: Sequence[Tensor]) -> list[Tensor]:
        """Uninitialised tensors as ``torch.empty_like`` gives (shape, strides, dtype, device),
        from what was kept where one matches."""
        out = []
        for t in like:
            found = self._kept.get(self._key(t))
            out.append(found.pop() if found else torch.empty_like(t))
        return out

    def empty(self, shape: Sequence[int], dtype: torch.dtype, device: torch.device) -> Tensor:
        """An uninitialised contiguous tensor, as ``torch.empty`` gives, from what was kept
        where one matches."""
        shape = torch.Size(shape)
        stride, step = [], 1
        for n in reversed(shape):
            stride.append(step)
            step *= max(n, 1)
        found = self._kept.get((shape, tuple(reversed(stride)), dtype, torch.device(device)))
        return found.pop() if found else torch.empty(shape, dtype=dtype, device=device)

    def keep(self, tensors: Sequence[Tensor]) -> None:
        """Hold ``tensors`` (which nothing else may use any more) for the next step's
        :meth:`take`, and nothing else."""
        self._kept = {}
        for t in tensors:
            self._kept.setdefault(self._key(t), []).append(t)

    def nbytes(self) -> int:
        """The bytes held between steps."""
        return sum(t.nbytes for ts in self._kept.values() for t in ts)
