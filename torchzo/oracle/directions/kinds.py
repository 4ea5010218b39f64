"""The kinds of query direction, each an object behind one small protocol, by public name."""
from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .blocks import Block
from .gaussian import GAUSSIAN
from .orthogonal import AUTO, ORTHOGONAL
from .rademacher import RADEMACHER

__all__ = ["INDEPENDENT_KINDS", "KINDS", "SEEKABLE_KINDS", "Kind", "check_kind", "kind_named"]


class Kind(Protocol):
    """How the directions of one kind are drawn over a layout's device blocks."""

    #: Whether a direction depends on its own seed alone (not on the step's other seeds).
    independent: bool
    #: Whether its directions can be held as packed signs (:class:`~.rademacher.Signs`).
    packs: bool

    #: Whether any piece of a direction can be drawn alone, in any order (a counter-based
    #: stream): what perturbing in place and updating from seeds needs
    #: (:mod:`torchzo.oracle.seeded`).
    seekable: bool

    #: The largest magnitude an entry of a direction can have (``inf``: no bound), which lets
    #: an update from coefficients bound its estimate before drawing it.
    largest: float

    def fill(self, block: Block, out: Tensor, seed: int) -> None:
        """Draw ``block``'s piece of the direction of ``seed`` into the flat ``out``: the
        direction itself for an independent kind, else the draw a frame starts from."""

    def fill_range(self, block: Block, out: Tensor, seed: int, start: int) -> None:
        """Entries ``start`` to ``start + out.numel()`` of :meth:`fill`'s draw, into the flat
        ``out``; seekable kinds only."""

    def framed(self, numel: int, q: int) -> bool:
        """Whether a block of ``numel`` coordinates takes its directions of a step of ``q``
        from orthogonal frames (:class:`~.orthogonal.Frames`) rather than from :meth:`fill`."""


_REGISTRY: dict[str, Kind] = {
    "gaussian": GAUSSIAN, "rademacher": RADEMACHER, "orthogonal": ORTHOGONAL, "auto": AUTO,
}

#: The kinds of query direction: standard Gaussian, independent random signs, a step's
#: Gaussian draws orthogonalised, or orthogonalised only where that pays.
KINDS = tuple(_REGISTRY)
#: The kinds whose directions each depend on their own seed alone.
INDEPENDENT_KINDS = tuple(name for name, kind in _REGISTRY.items() if kind.independent)
#: The kinds whose directions can be drawn piece by piece (see :attr:`Kind.seekable`).
SEEKABLE_KINDS = tuple(name for name, kind in _REGISTRY.items() if kind.seekable)


def check_kind(kind: object, name: str = "kind") -> str:
    """``kind`` if it is one of :data:`KINDS`, else a ``ValueError`` naming ``name``."""
    if not isinstance(kind, str) or kind not in _REGISTRY:
        raise ValueError(f"{name} must be one of {KINDS}, got {kind!r}")
    return kind


def kind_named(name: str) -> Kind:
    """The kind of direction called ``name`` (one of :data:`KINDS`)."""
    return _REGISTRY[check_kind(name)]
