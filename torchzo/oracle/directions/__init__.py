"""Query directions regenerated from per-query seeds.

A list of parameter tensors is treated as one flat vector per device (:class:`Layout`); the
direction of one query is rebuilt from its seed, so a direction never has to be stored. The
kinds of direction (:data:`KINDS`), each an object behind one protocol (:class:`Kind`):

- ``"gaussian"`` (the default): standard normal entries from a counter-based stream of
  torchzo's own, so that any piece of a direction can be drawn alone (:mod:`.gaussian`,
  :mod:`.counter`);
- ``"rademacher"``: independent signs, +1 or -1 with probability 1/2 each, from packed
  SplitMix64 bits that the compiled kernels perturb and accumulate with (:mod:`.rademacher`);
- ``"orthogonal"``: the Gaussian draws of a step's directions, orthogonalised in groups of at
  most ``numel`` and scaled to norm ``sqrt(numel)`` (:mod:`.orthogonal`);
- ``"auto"``: ``"orthogonal"`` where a step's ``q`` directions are many for the dimension
  they live in (``numel < 16 q``), ``"gaussian"`` (the same bits) where they are not.

All have zero mean and unit variance per coordinate (``E[u u^T] = I``), so the estimator's
scaling is the same for each; a Rademacher or orthogonal direction's norm is exactly
``sqrt(numel)``. A :class:`Guide` turns any of them into GuidedES directions.
"""
from .gaussian import Gaussian
from .guided import Guide
from .kinds import INDEPENDENT_KINDS, KINDS, SEEKABLE_KINDS, Kind, check_kind, kind_named
from .layout import Direction, Layout, generation_dtype
from .orthogonal import _TALL as _TALL  # private, reached by the tests
from .orthogonal import _orthonormal_rows as _orthonormal_rows
from .rademacher import Signs
from .rademacher import _draw_signs as _draw_signs
from .rademacher import _unpack as _unpack
from .seeds import draw_seeds

__all__ = ["INDEPENDENT_KINDS", "KINDS", "SEEKABLE_KINDS", "Direction", "Gaussian", "Guide",
           "Kind", "Layout", "Signs", "check_kind", "draw_seeds", "generation_dtype", "kind_named"]
