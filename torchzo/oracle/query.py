"""The value every estimation path takes: which tensors, how, and along which directions.

A step is planned before anything is queried: each :class:`Part` (tensors perturbed together,
their scheme, radius and kind of directions) draws its seeds and becomes a :class:`Query`,
optionally with per-coordinate direction scales or a GuidedES subspace. The closure, batched,
sharded and population paths all take the same ``Query``, so they rebuild the same directions
from it, and nothing an estimate needs is passed loose.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .directions import Guide, check_kind, draw_seeds
from .schemes import Scheme

__all__ = ["Part", "Query", "check_at_x"]


@dataclass(frozen=True)
class Part:
    """Tensors (positions in the parameter list) perturbed together, with their estimator, radius
    and the kind of their directions (one of :data:`~torchzo.oracle.KINDS`)."""

    index: tuple[int, ...]
    scheme: Scheme
    mu: float
    kind: str = "gaussian"

    def __post_init__(self) -> None:
        check_kind(self.kind)

    def query(self, seeds: Sequence[int], scale: Sequence[Tensor] | None = None,
              guide: Guide | None = None) -> Query:
        """This part's query along the directions of ``seeds``."""
        return Query(self.index, self.scheme, self.mu, self.kind, tuple(seeds),
                     None if scale is None else tuple(scale), guide)

    def draw(self, generator: torch.Generator) -> Query:
        """This part's query along isotropic directions, its seeds drawn from ``generator``."""
        return self.query(draw_seeds(generator, self.scheme.directions))


@dataclass(frozen=True)
class Query:
    """One estimate's queries: the directions of ``seeds`` (of ``kind``; times ``scale``, per
    tensor of ``index`` and per coordinate, or guided into ``guide``'s subspace) queried at
    radius ``mu`` by ``scheme``.

    ``mu`` may be a tensor of one radius per member of a population
    (:func:`~torchzo.oracle.estimate_population`), whose ``scale`` is then one ``(P, d)`` tensor.
    """

    index: tuple[int, ...]
    scheme: Scheme
    mu: float | Tensor
    kind: str
    seeds: tuple[int, ...]
    scale: tuple[Tensor, ...] | None = None
    guide: Guide | None = None

    @property
    def queries(self) -> int:
        """Queries along its directions (f(x) not included)."""
        return len(self.seeds) * len(self.scheme.signs)

    def flat(self, dtype: torch.dtype) -> Query:
        """The same query over the concatenation of its tensors (the batched paths' view)."""
        scale = None if self.scale is None else (
            torch.cat([s.reshape(-1).to(dtype) for s in self.scale]),)
        guide = None if self.guide is None else self.guide.flat()
        return replace(self, index=(0,), scale=scale, guide=guide)


def check_at_x(queries: Sequence[Query], at_x: bool) -> None:
    """A ``ValueError`` where a step that does not query f(x) has a scheme that needs it."""
    if not at_x and any(q.scheme.name == "forward" for q in queries):
        raise ValueError("the forward estimator needs the loss at x: a step that does not "
                         "query it needs a two-sided estimator ('central' or 'antithetic')")
