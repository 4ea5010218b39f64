"""Orthogonal directions: a step's Gaussian draws orthogonalised in groups, and the "auto" rule.

A group holds at most ``numel`` of a step's directions: their Gaussian draws orthogonalised (a
Haar-random orthonormal frame, QR with the signs of ``R``'s diagonal made positive) and scaled
to norm ``sqrt(numel)``. With ``q`` comparable to ``d`` the estimate's variance is lower than
with independent directions (Choromanski et al., 2018, "Structured evolution with compact
architectures"); the price is that a direction depends on its whole group, so a step holds its
group's directions (``min(q, numel)`` of them) at once. A layout over several devices
orthogonalises each device's piece, in groups of the smallest piece's size, so that the whole
directions of a group are orthogonal too.

``"auto"`` orthogonalises where a step's ``q`` directions are many for the dimension they live
in (``numel < 16 q``) and draws plain Gaussian directions (the same bits) where they are not.
At ``numel >= 16 q`` independent Gaussian draws are nearly orthogonal already: orthogonalising
would cut the forward estimate's error by ``(q + 1) / (d + 1)``, at most 6.5% at q = 20, while
it costs a step its group's ``q x numel`` floats and their orthogonalisation (at d = 1e6 more
than a Gaussian ZO-SGD step's whole overhead: ``docs/benchmarks/overhead.md``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from .blocks import Block
from .gaussian import GAUSSIAN

__all__ = ["AUTO", "ORTHOGONAL", "Auto", "Frames", "Orthogonal"]


#: Coordinates per direction of a group from which it counts as tall: orthogonalised by
#: Cholesky QR, not Householder, or (kind ``"auto"``) not at all.
_TALL = 16


def _orthonormal_rows(Z: Tensor) -> Tensor:
    """The rows of the Gaussian ``Z`` (m x n) orthonormalised in order (in place where it
    can): Gram-Schmidt's result, ``Z = L Q`` with ``L`` lower triangular of positive
    diagonal, so that ``Q`` is Haar-distributed (not biased by a factorisation's sign
    convention)."""
    m, n = Z.shape
    if n >= _TALL * m:
        # A tall Gaussian block is near-orthogonal already (condition ~ 1 + 2 sqrt(m / n)),
        # where Cholesky QR twice is as accurate as Householder and runs as BLAS-3 on Z's own
        # memory: an order of magnitude faster at n = 1e6, where Householder's panel is
        # memory-bound. Each pass keeps Gram-Schmidt's result, so the fallback may start
        # from either.
        for _ in range(2):
            L, info = torch.linalg.cholesky_ex(Z @ Z.T)
            if info.item():
                break
            # Z <- L^-1 Z, solved as Z^T L^-T on the column-major view Z^T.
            if Z.device.type == "cpu":
                torch.linalg.solve_triangular(L.T, Z.T, upper=True, left=False, out=Z.T)
            else:
                Z = torch.linalg.solve_triangular(L.T, Z.T, upper=True, left=False).T
        else:
            return Z.contiguous()  # rows are viewed as directions
    Q, R = torch.linalg.qr(Z.T)
    signs = torch.where(torch.diagonal(R) < 0, -1.0, 1.0).to(Q.dtype)
    return (Q * signs).T.contiguous()


class Orthogonal:
    """A step's Gaussian draws, orthogonalised in groups (:class:`Frames`)."""

    independent = False
    packs = False
    seekable = False
    largest = math.inf

    def fill_range(self, block: Block, out: Tensor, seed: int, start: int) -> None:
        raise ValueError("orthogonal directions depend on the whole step's draws: they cannot "
                         "be drawn piece by piece")

    def fill(self, block: Block, out: Tensor, seed: int) -> None:
        """The Gaussian draw of ``seed``, which a frame orthogonalises with its group's."""
        GAUSSIAN.fill(block, out, seed)

    def framed(self, numel: int, q: int) -> bool:
        return True


class Auto(Orthogonal):
    """Orthogonal where a step's directions are many for their block, else Gaussian."""

    def framed(self, numel: int, q: int) -> bool:
        # Judged on the step's q, not the group's length, so that a step is orthogonalised
        # as a whole or not at all (a short last group would otherwise be left out).
        return numel < _TALL * q


ORTHOGONAL = Orthogonal()
AUTO = Auto()


class Frames:
    """A layout's orthogonal frames, one per group of a step's directions and device block.

    Group ``g`` of a step holds its directions ``g m`` to ``g m + m - 1``, ``m`` being
    :attr:`size`; a frame is a pure function of its group's seeds, so each block keeps its last
    one and a step draws each group once.
    """

    def __init__(self, blocks: Sequence[Block]) -> None:
        self.blocks = list(blocks)
        #: Directions orthogonalised together: the smallest block's size.
        self.size = max(1, min(b.numel for b in self.blocks)) if self.blocks else 1
        self._kept: list[tuple[tuple[int, ...], Tensor] | None] = [None] * len(self.blocks)

    def __getitem__(self, k: int) -> tuple[tuple[int, ...], Tensor] | None:
        """Block ``k``'s kept frame and its seeds, if it drew one."""
        return self._kept[k]

    def frame(self, k: int, seeds: Sequence[int], group: int) -> Tensor:
        """Block ``k``'s rows for group ``group`` of the step's ``seeds``: their Gaussian draws
        orthogonalised and scaled to norm ``sqrt(numel)`` (read them, do not write them)."""
        b, m = self.blocks[k], self.size
        chunk = tuple(seeds[group * m:(group + 1) * m])
        kept = self._kept[k]
        if kept is not None and kept[0] == chunk:
            return kept[1]
        Z = b.rows(GAUSSIAN.fill, chunk)
        if b.numel:
            Z = _orthonormal_rows(Z).mul_(math.sqrt(b.numel))
        self._kept[k] = (chunk, Z)
        return Z

    def row(self, k: int, seeds: Sequence[int], j: int) -> Tensor:
        """Block ``k``'s piece of the step's direction ``j`` (read it, do not write it)."""
        return self.frame(k, seeds, j // self.size)[j % self.size]

    def rows(self, k: int, seeds: Sequence[int], start: int, n: int) -> Tensor:
        """Block ``k``'s pieces of the step's directions ``start`` to ``start + n``, as the rows
        of a new tensor (the kept frame stays as drawn)."""
        b, m = self.blocks[k], self.size
        pieces, j = [torch.empty(0, b.numel, dtype=b.dtype, device=b.device)], start
        while j < start + n:
            group = j // m
            stop = min(start + n, (group + 1) * m)
            pieces.append(self.frame(k, seeds, group)[j - group * m:stop - group * m])
            j = stop
        return torch.cat(pieces)
