"""Estimation at inference memory: parameters perturbed in place, directions rebuilt from seeds.

The closure path of :mod:`torchzo.oracle.gradient` keeps an exact copy of the parameters and
a d-sized estimate. Here neither exists (MeZO's scheme, Malladi et al. 2023, for any estimator
and ``q``): each query moves the parameters in place along its direction, regenerated piece by
piece (:data:`CHUNK` entries at a time) from its seed, and moves them back the same way, so a
query costs two passes over the parameters but no memory beyond a chunk. The estimate is held as
the step's seeds and one coefficient per direction (:class:`SeededEstimate`); an update
rebuilds it chunk by chunk (:meth:`SeededDirections.combine`).

Moving back by subtracting what was added restores the parameters up to rounding, not bit for
bit: ``(x + mu u) - mu u`` may differ from ``x`` in the last place. Directions must be of a
seekable kind (a counter-based stream, :data:`~torchzo.oracle.directions.SEEKABLE_KINDS`),
unscaled and unguided.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from . import kernels
from .backup import Places
from .closure import call_closure, mean_loss
from .directions import Layout, kind_named
from .directions.blocks import Block
from .directions.kinds import SEEKABLE_KINDS
from .directions.rademacher import signs_range
from .distributed import Ranks, agreed, fingerprint
from .query import Query, check_at_x

__all__ = ["CHUNK", "Piece", "SeededDirections", "SeededEstimate", "estimate_seeded"]

#: Entries of a tensor regenerated at once: a chunk's direction and estimate (256 KiB each in
#: float32) stay in the CPU's cache while a pass reads and writes the parameters.
CHUNK = 1 << 16


@dataclass(frozen=True)
class Piece:
    """Entries ``a`` to ``b`` of tensor ``tensor`` (a position in the directions' tensors),
    which are entries ``start`` onwards of ``block``'s piece of each direction."""

    tensor: int
    block: Block
    start: int
    a: int
    b: int
    #: Whether the tensor is read whole (not contiguous: it has no flat view to slice).
    whole: bool

    def of(self, t: Tensor) -> Tensor:
        """This piece of ``t`` (a tensor shaped like the piece's tensor), as a view."""
        return t if self.whole else t.view(-1)[self.a:self.b]


class SeededDirections:
    """The directions of a query over ``tensors``, drawn piece by piece where they are used.

    Entry for entry, the directions that :class:`~torchzo.oracle.directions.Layout` draws over
    the same tensors with the same seeds.
    """

    def __init__(self, tensors: Sequence[Tensor], kind: str, chunk: int | None = None) -> None:
        if kind not in SEEKABLE_KINDS:
            raise ValueError(f"memory='inference' draws directions piece by piece, which "
                             f"{kind!r} directions cannot be: use one of {SEEKABLE_KINDS}")
        self.tensors = list(tensors)
        self._kind = kind_named(kind)
        #: The largest magnitude of an entry of a direction.
        self.largest = self._kind.largest
        self._packs = self._kind.packs and kernels.available()
        # Gaussian pieces are added by the compiled kernel, which draws them into the L1 cache
        # a tile at a time: same bits as drawing into a buffer and adding with torch.
        self._fused = kind == "gaussian" and kernels.available()
        self.pieces: list[Piece] = []
        for block in Layout(self.tensors, kind).blocks:
            offset = 0
            for i, n in zip(block.index, block.numels):
                whole = not self.tensors[i].is_contiguous()
                step = max(n, 1) if whole else chunk or CHUNK
                for a in range(0, n, step):
                    b = min(a + step, n)
                    self.pieces.append(Piece(i, block, offset + a, a, b, whole))
                offset += n
        self._buffers: dict[int, Tensor] = {}

    def _buffer(self, piece: Piece) -> Tensor:
        """A flat scratch tensor of the piece's size in its block's dtype (one per block)."""
        n = piece.b - piece.a
        buf = self._buffers.get(piece.block.position)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=piece.block.dtype, device=piece.block.device)
            self._buffers[piece.block.position] = buf
        return buf[:n]

    def scratch(self, piece: Piece) -> Tensor:
        """A second flat scratch tensor of the piece's size in its block's dtype (one per
        block, apart from the one :meth:`draw` fills): where a caller rebuilds estimates."""
        n = piece.b - piece.a
        key = -1 - piece.block.position
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < n:
            buf = torch.empty(n, dtype=piece.block.dtype, device=piece.block.device)
            self._buffers[key] = buf
        return buf[:n]

    def _fuses(self, piece: Piece, t: Tensor) -> bool:
        """Whether the kernel adds the piece's Gaussian directions to ``t`` (float32 only)."""
        return (self._fused and piece.block.dtype is torch.float32
                and kernels.fits(t, torch.float32))

    def draw(self, piece: Piece, seed: int) -> Tensor:
        """The piece of the direction of ``seed``, flat, in a buffer the next call reuses."""
        out = self._buffer(piece)
        self._kind.fill_range(piece.block, out, seed, piece.start)
        return out

    @torch.no_grad()
    def perturb(self, seed: int, alpha: float) -> None:
        """``t += alpha * u`` in place for every tensor ``t``, ``u`` the direction of ``seed``."""
        for piece in self.pieces:
            x = piece.of(self.tensors[piece.tensor])
            if self._packs and kernels.fits(x, piece.block.dtype):
                bits, offset = signs_range(piece.block, seed, piece.start, x.numel())
                kernels.sign_perturb(x.numel(), offset, x, x, bits, alpha)
            elif self._fuses(piece, x):
                kernels.gauss_axpy(x, piece.start, piece.block.seed_for(seed), alpha)
            else:
                x.add_(self.draw(piece, seed).view(x.shape), alpha=alpha)

    def combine(self, piece: Piece, seeds: Sequence[int], coeffs: Sequence[float],
                out: Tensor) -> Tensor:
        """``out = sum_k coeffs[k] u_k`` over the piece, added in order (``out``: flat, of the
        piece's size, in its block's dtype)."""
        if self._packs and kernels.fits(out, piece.block.dtype):
            n = out.numel()
            for start in range(0, max(len(seeds), 1), kernels.GROUP):
                group = range(start, min(start + kernels.GROUP, len(seeds)))
                found = [signs_range(piece.block, seeds[k], piece.start, n) for k in group]
                offset = found[0][1] if found else 0
                kernels.sign_accumulate(n, offset, out, [bits for bits, _ in found],
                                        [coeffs[k] for k in group], init=start == 0)
            return out
        if self._fuses(piece, out):
            if not seeds:
                out.zero_()
            for k, (seed, c) in enumerate(zip(seeds, coeffs)):
                kernels.gauss_axpy(out, piece.start, piece.block.seed_for(seed), c, init=k == 0)
            return out
        out.zero_()
        for seed, c in zip(seeds, coeffs):
            out.add_(self.draw(piece, seed), alpha=c)
        return out


@dataclass(frozen=True)
class SeededEstimate:
    """A step's estimate held by its seeds: for each query of the ``plan``, its directions and
    one coefficient per direction (the estimate is ``sum_k coeffs[k] u_k``); the loss at x as
    the closure returned it, and the queries spent."""

    loss: Any
    plan: list[Query]
    directions: list[SeededDirections]
    coeffs: list[tuple[float, ...]]
    queries: int


@torch.no_grad()
def estimate_seeded(closure: Callable[[], Any], params: Sequence[Tensor],
                    queries: Sequence[Query], ranks: Ranks | None = None,
                    at_x: bool = True) -> SeededEstimate:
    """Query ``closure`` along each query's directions with ``params`` perturbed in place;
    every parameter is moved back (to rounding) before this returns or raises.

    With ``ranks``, this rank evaluates its share of the queries and the ranks exchange the
    values (:meth:`~torchzo.oracle.distributed.Ranks.exchange`), but every rank makes every
    move out and back: so the parameters round the same way on every rank, and as in one
    process, and stay bit-identical to them. Without ``at_x`` (two-sided schemes), f(x) is not
    queried and the loss is the mean of the queried ones.
    """
    params = list(params)
    check_at_x(queries, at_x)
    for query in queries:
        if query.scale is not None or query.guide is not None:
            raise ValueError("memory='inference' takes unscaled, unguided directions")
    flat = [(j, k, sign) for j, q in enumerate(queries) for k in range(len(q.seeds))
            for sign in q.scheme.signs]
    mine = range(len(flat)) if ranks is None else ranks.share(len(flat))
    values = torch.zeros(len(flat), dtype=torch.float64)
    directions = [SeededDirections([params[i] for i in q.index], q.kind) for q in queries]
    places = Places(params)
    loss: Any = None
    f0 = 0.0
    failure: Exception | None = None
    try:
        if at_x:
            loss, f0 = call_closure(closure, params, "f(x)")
        for n, (j, k, sign) in enumerate(flat):
            seed, mu = queries[j].seeds[k], float(queries[j].mu)
            # Out and straight back for each sign (not MeZO's +mu, -2 mu, +mu): a move back
            # from x + mu u lands on x itself unless the rounding of the move out crossed a
            # power of two, while one from x - mu u reached via x + mu u also carries that
            # first rounding (docs/benchmarks/restore-drift.md).
            directions[j].perturb(seed, sign * mu)
            try:
                if n in mine:
                    where = f"direction {k + 1} ({'+' if sign > 0 else '-'}mu)"
                    values[n] = call_closure(closure, params, where)[1]
            except BaseException:
                places.restore()  # the move back goes to the memory the move out went to
                raise
            finally:
                directions[j].perturb(seed, -sign * mu)
    except Exception as err:
        if ranks is None:
            raise
        failure = err
    if ranks is not None:
        seeds = [s for q in queries for s in q.seeds]
        values = ranks.exchange(values, [fingerprint(seeds), agreed(params, f0, at_x)], failure,
                                ["the query seeds", "f(x)" if at_x else "the parameters"])
    found = values.tolist()
    if not at_x:
        loss = mean_loss(found)
    coeffs, offset = [], 0
    for q in queries:
        n = len(q.scheme.signs)
        coeffs.append(tuple(q.scheme.coefficient(f0, tuple(found[offset + k * n:
                                                             offset + (k + 1) * n]), q.mu)
                            for k in range(len(q.seeds))))
        offset += q.queries
    return SeededEstimate(loss, list(queries), directions, coeffs,
                          int(at_x) + sum(q.queries for q in queries))
