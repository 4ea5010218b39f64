"""A list of tensors seen as one flat vector per device, and the query directions drawn over it.

The direction of one query is drawn from that query's seed, split back into the tensors'
shapes, so a direction never has to be stored: anyone holding the seed (a later pass, a batched
evaluator, another rank) can rebuild it bit for bit. The same seed over a single flat tensor
gives the same numbers as over the list of tensors it concatenates.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from .. import kernels
from ..scratch import Scratch
from .blocks import Block
from .guided import Guide
from .kinds import kind_named
from .orthogonal import Frames
from .rademacher import Signs

__all__ = ["Direction", "Layout", "generation_dtype"]

# Stands in a list of a layout's tensors until each block's are in: a query's direction builds
# one such list, and a new empty tensor for it would cost as much as the rest of its Python.
_UNSET = torch.empty(0)

#: A query direction as the oracle holds it: tensors shaped like the layout's, or packed signs.
Direction = list[Tensor] | Signs


def generation_dtype(dtypes: Sequence[torch.dtype]) -> torch.dtype:
    """Directions and estimates are kept in float64 if any tensor is float64, else float32."""
    return torch.float64 if torch.float64 in dtypes else torch.float32


def _scaled(pieces: list[Tensor], scale: Sequence[Tensor], own: bool) -> list[Tensor]:
    """``pieces[i] * scale[i]`` (cast to the piece's dtype), in place unless autograd must see
    the product. ``own``: nothing else will write the pieces."""
    factors = [s.to(p.dtype) for p, s in zip(pieces, scale)]
    if torch.is_grad_enabled() and any(f.requires_grad for f in factors):
        # Autograd cannot scale in place, and keeps the pieces for the backward pass: a view
        # of the scratch buffer, which the next direction overwrites, needs its own copy.
        return [(p if own else p.clone()) * f for p, f in zip(pieces, factors)]
    torch._foreach_mul_(pieces, factors)
    return pieces


class Layout:
    """How a list of tensors is seen as one flat vector for drawing directions.

    ``kind``: the directions' distribution, one of :data:`~torchzo.oracle.KINDS`. The oracle
    asks for a step's directions with :meth:`direction` and :meth:`rows`, which know the step's
    seeds (any kind); :meth:`sample` and :meth:`sample_rows` draw directions that depend on their
    own seed alone (kinds in :data:`~torchzo.oracle.directions.INDEPENDENT_KINDS`). A direction
    as a list of tensors is views into a per-device scratch buffer that the next call
    overwrites, or into a cached orthogonal frame: read them, do not write them.
    """

    def __init__(self, tensors: Sequence[Tensor], kind: str = "gaussian") -> None:
        self._kind = kind_named(kind)
        self.kind = kind
        self.shapes = [t.shape for t in tensors]
        self.dtypes = [t.dtype for t in tensors]
        by_device: dict[torch.device, list[int]] = {}
        for i, t in enumerate(tensors):
            by_device.setdefault(t.device, []).append(i)
        self.blocks = [
            Block(dev, idx, [tensors[i].numel() for i in idx],
                  generation_dtype([tensors[i].dtype for i in idx]), pos)
            for pos, (dev, idx) in enumerate(by_device.items())
        ]
        self._on_cpu = all(b.device.type == "cpu" for b in self.blocks)
        self._scratch: list[tuple[Tensor, list[Tensor]] | None] = [None] * len(self.blocks)
        self._frames = Frames(self.blocks)
        self._framing: tuple[int, list[bool]] = (-1, [])

    @property
    def numel(self) -> int:
        return sum(b.numel for b in self.blocks)

    @property
    def group_size(self) -> int:
        """How many of a step's directions an orthogonal kind orthogonalises together."""
        return self._frames.size

    def dtype_of(self, i: int) -> torch.dtype:
        """Dtype in which tensor ``i``'s direction and estimate are held."""
        for b in self.blocks:
            if i in b.index:
                return b.dtype
        raise IndexError(i)

    def _views(self, k: int) -> tuple[Tensor, list[Tensor]]:
        """Block ``k``'s scratch buffer and its views shaped like the block's tensors."""
        cached = self._scratch[k]
        if cached is None:
            b = self.blocks[k]
            buf = torch.empty(b.numel, dtype=b.dtype, device=b.device)
            cached = self._scratch[k] = (
                buf, [v.view(self.shapes[i]) for v, i in zip(buf.split(b.numels), b.index)])
        return cached

    def _framed(self, q: int) -> list[bool]:
        """Per block, whether a step of ``q`` directions takes them from orthogonal frames."""
        if self._framing[0] != q:
            self._framing = (q, [self._kind.framed(b.numel, q) for b in self.blocks])
        return self._framing[1]

    def _independent(self, what: str) -> None:
        if not self._kind.independent:
            raise ValueError(f"{what} draws directions from their own seeds, which a "
                             f"{self.kind!r} direction is not: use direction() or rows(), "
                             f"which take the step's seeds")

    def _flat_block(self, what: str) -> Block:
        if len(self.shapes) != 1 or len(self.shapes[0]) != 1:
            raise ValueError(f"{what} needs a layout of one flat tensor")
        return self.blocks[0]

    def packed(self, scale: Sequence[Tensor] | None = None, guide: Guide | None = None) -> bool:
        """Whether :meth:`direction` gives :class:`Signs`: plain directions of a kind that packs
        (Rademacher) on CPU blocks, with the compiled kernels available."""
        return (self._kind.packs and scale is None and (guide is None or not guide.basis)
                and self._on_cpu and kernels.available())

    def sample(self, seed: int, scale: Sequence[Tensor] | None = None,
               guide: Guide | None = None) -> list[Tensor]:
        """The direction for ``seed``: ``z`` (of the layout's kind), ``scale * z``, or ``z``
        guided into a subspace. Independent kinds only."""
        self._independent("sample")
        return self._shaped((seed,), 0, scale, guide)

    def direction(self, seeds: Sequence[int], k: int, scale: Sequence[Tensor] | None = None,
                  guide: Guide | None = None) -> Direction:
        """Direction ``k`` of the step whose directions have ``seeds``, as :meth:`sample`
        gives it, or as :class:`Signs` where :meth:`packed`; any kind."""
        if self.packed(scale, guide):
            return Signs.draw(self.blocks, seeds[k])
        return self._shaped(seeds, k, scale, guide)

    def _shaped(self, seeds: Sequence[int], k: int, scale: Sequence[Tensor] | None,
                guide: Guide | None) -> list[Tensor]:
        framed = self._framed(len(seeds))
        out: list[Tensor] = [_UNSET] * len(self.shapes)
        if all(framed) and scale is None and (guide is None or not guide.basis):
            # Nothing to write: the frame's row itself, read-only, saves a pass over d.
            for j, b in enumerate(self.blocks):
                row = self._frames.row(j, seeds, k)
                for v, i in zip(row.split(b.numels), b.index):
                    out[i] = v.view(self.shapes[i])
            return out
        for j, b in enumerate(self.blocks):
            buf, views = self._views(j)
            if framed[j]:
                buf.copy_(self._frames.row(j, seeds, k))
            else:
                self._kind.fill(b, buf, seeds[k])
            if scale is not None:  # per block: one foreach call stays on one device
                views = _scaled(views, [scale[i] for i in b.index], own=False)
            for v, i in zip(views, b.index):
                out[i] = v
        if guide is not None and guide.basis:
            guide.apply(out, seeds[k])
        return out

    def sample_rows(self, seeds: Sequence[int], scale: Tensor | None = None,
                    guide: Guide | None = None) -> Tensor:
        """The directions of ``seeds`` as the rows of one new ``(len(seeds), numel)`` tensor:
        :meth:`rows` of a step of ``seeds``, for independent kinds only."""
        self._flat_block("sample_rows")
        self._independent("sample_rows")
        return self.rows(seeds, 0, len(seeds), scale, guide)

    def rows(self, seeds: Sequence[int], start: int, n: int, scale: Tensor | None = None,
             guide: Guide | None = None) -> Tensor:
        """Directions ``start`` to ``start + n`` of the step whose directions have ``seeds``,
        as the rows of a new tensor, for a layout of one flat tensor (``scale`` and ``guide``
        are over it too); any kind. Row ``k`` has the bits of ``direction(seeds, start + k)``,
        whatever the split of the step into calls. Drawn straight into the rows: at small
        ``numel`` the per-direction cost is Python, not arithmetic."""
        b = self._flat_block("rows")
        mine = seeds[start:start + n]
        if self._framed(len(seeds))[0]:
            U = self._frames.rows(0, seeds, start, n)
        else:
            U = b.rows(self._kind.fill, mine)
        if scale is not None:
            U = _scaled([U], [scale], own=True)[0]
        if guide is not None and guide.basis:
            # U[k], not unbind's rows (iterating U), which autograd would not let it write.
            for k, seed in enumerate(mine):
                guide.apply([U[k]], seed)
        return U

    def empty(self, scratch: Scratch | None = None) -> list[Tensor]:
        """An uninitialised buffer shaped like the layout, in the generation dtype (its memory
        from ``scratch`` where that has some)."""
        new: Callable[..., Tensor] = torch.empty if scratch is None else scratch.empty
        out: list[Tensor] = [_UNSET] * len(self.shapes)
        for b in self.blocks:
            for i in b.index:
                out[i] = new(self.shapes[i], dtype=b.dtype, device=b.device)
        return out

    def zeros(self, scratch: Scratch | None = None) -> list[Tensor]:
        """:meth:`empty`, zeroed."""
        out = self.empty(scratch)
        if out:
            torch._foreach_zero_(out)
        return out
