"""What every learned architecture provides: the protocol that the learned step runs.

An architecture is a frozen dataclass of its own settings (what a weights file stores beside the
weights) with the functions of one step over its networks' weights:

- :meth:`~Architecture.build`: the networks (the modules :class:`~torchzo.learned.LearnedZO`
  holds and files store);
- :meth:`~Architecture.init_state` and :meth:`~Architecture.init_group_state`: the zero state
  of a tensor (its :attr:`~Architecture.state_type`, a ``NamedTuple`` of the architecture's own,
  as optax's ``ScaleByAdamState``) and of a param group (its
  :attr:`~Architecture.group_state_type`, held once per group; ``None`` for an architecture
  without group-level state);
- :meth:`~Architecture.query_outputs` and :meth:`~Architecture.raw_scale`: what the query
  network reads from the states and the per-coordinate standard deviation it gives (the step
  normalises it so that trace(Sigma) = d);
- :meth:`~Architecture.update`: the update of a group's tensors from their estimates;
- :meth:`~Architecture.radius`: the factor on the user's ``mu`` the next estimate uses.

The functions never modify their inputs unless told to (``in_place``) and keep autograd intact,
so meta-training can backpropagate through them. The weights (:data:`Weights`) may carry leading
population dimensions; states and estimates then carry the same ones.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from typing import Any, ClassVar, Generic, Protocol, TypeVar, cast

import torch
from torch import Tensor, nn

from ...oracle import default_mu

__all__ = ["Architecture", "HistoryState", "TensorState", "Weights", "detached", "replace"]


class TensorState(Protocol):
    """What the learned step reads of any architecture's per-tensor state: a ``NamedTuple`` of
    tensors per coordinate, behind any population dimensions (float32, but for the
    :attr:`~Architecture.compact_keys` that ``ZOLSTM`` may store in a lower precision)."""

    @property
    def coordinates(self) -> torch.Size:
        """``(*population, n)``: the shape of the tensor's flat estimate."""

    @property
    def query_out(self) -> Tensor | None:
        """The query network's outputs for the next step, computed ahead at the end of an
        optimizer step (``None``: the next step computes them)."""

    def _asdict(self) -> dict[str, Any]: ...


class HistoryState(TensorState, Protocol):
    """The state of an architecture that keeps the last estimate and update per coordinate
    (:attr:`Architecture.has_history`): what the guided covariance and the no-update
    ablation read and write."""

    @property
    def prev_estimate(self) -> Tensor:
        """The last estimate (with the last update, the span that the guided covariance
        draws towards)."""

    @property
    def prev_update(self) -> Tensor:
        """The last update."""


#: The networks' weights by parameter name (``LearnedZO.weights()``).
Weights = Mapping[str, Tensor]

S = TypeVar("S", bound=TensorState)
G = TypeVar("G")
T = TypeVar("T")


def replace(state: T, **changes: Tensor | None) -> T:
    """``state`` (a ``NamedTuple``) with ``changes``: its ``_replace``, for any state type."""
    return cast(Any, state)._replace(**changes)


def detached(state: T) -> T:
    """``state`` (a ``NamedTuple`` of tensors or ``None``) cut from the autograd graph."""
    return type(state)(*(None if v is None else v.detach()  # type: ignore[call-arg]
                         for v in cast(Any, state)))


class Architecture(ABC, Generic[S, G]):
    """A learned ZO step's settings and functions; subclasses are frozen dataclasses over
    their per-tensor state type ``S`` and group state type ``G`` (``None`` if they keep none)."""

    #: The name files store and :data:`torchzo.learned.arch.ARCHITECTURES` lists.
    kind: ClassVar[str]
    #: The per-tensor state's ``NamedTuple`` (its field ``query_out`` may be ``None``).
    state_type: ClassVar[type]
    #: The per-group state's ``NamedTuple``, or ``None``.
    group_state_type: ClassVar[type | None] = None
    #: State fields that ``ZOLSTM(state_dtype=...)`` may store in a lower precision (the
    #: per-coordinate recurrent states; they are computed in float32 either way).
    compact_keys: ClassVar[tuple[str, ...]] = ()
    #: State fields (per tensor or per group) that hold no negative value: a loaded state
    #: dict's are checked.
    nonnegative_fields: ClassVar[tuple[str, ...]] = ()
    #: Settings of the flat stored form that this kind read once and has no more, with the
    #: value at which they did nothing (see :func:`torchzo.learned.arch.from_dict`).
    retired: ClassVar[dict[str, object]] = {}
    #: The query directions the optimizer is meant to run with (``ZOLSTM``'s
    #: ``directions_kind`` when not given; meta-training's populations use it too).
    directions_kind: str
    #: Hidden units of the recurrent networks.
    hidden: int

    @property
    def coordinate_width(self) -> int:
        """The widest per-coordinate state or layer: a step allocates a small multiple of this
        many floats for each coordinate of the parameters."""
        return self.hidden

    @property
    def has_query(self) -> bool:
        """Whether there is a query network; without one, learned directions are standard
        Gaussian ones."""
        return True

    @property
    def has_history(self) -> bool:
        """Whether the tensor states are :class:`HistoryState` s (the guided covariance and
        the no-update ablation need them)."""
        return True

    def to_dict(self) -> dict[str, Any]:
        """``{"kind": ..., "config": {...}}`` in plain values, as stored next to weights."""
        config = asdict(self)  # type: ignore[call-overload]
        return {"kind": self.kind,
                "config": {k: list(v) if isinstance(v, tuple) else v for k, v in config.items()}}

    @abstractmethod
    def build(self) -> nn.Module:
        """The networks, in a module whose children and parameters ``LearnedZO`` adopts."""

    def update_parameters(self, nets: nn.Module) -> list[nn.Parameter]:
        """What meta-training's first stage trains (default: every weight)."""
        return list(nets.parameters())

    @abstractmethod
    def init_state(self, p: Tensor, population: tuple[int, ...] = ()) -> S:
        """Zero state for the coordinates of ``p`` (a new problem never inherits old state);
        ``population``: leading dimensions of a population of weight sets, one state each."""

    def init_group_state(self, p: Tensor, population: tuple[int, ...] = ()) -> G:
        """Zero state of a param group whose first tensor is ``p`` (on its device)."""
        return cast(G, None)

    @abstractmethod
    def query_outputs(self, weights: Weights, states: Sequence[S], group: G,
                      in_place: bool = False) -> tuple[list[Tensor], list[S]]:
        """The query network's raw outputs for each tensor (flat) of a set that shares one
        estimate, and their new states (``in_place``: written over the old). ``group``: the
        state of the group of the set's first tensor."""

    @abstractmethod
    def raw_scale(self, outputs: Tensor) -> Tensor:
        """A tensor's per-coordinate standard deviations from its query outputs, before the
        normalisation over the tensors that share an estimate."""

    @abstractmethod
    def update(self, weights: Weights, estimates: Sequence[Tensor], states: Sequence[S],
               group: G, params: Sequence[Tensor], lr: float | Tensor, loss: Tensor | None,
               q: int, in_place: bool = False) -> tuple[list[Tensor], list[S], G]:
        """A group's updates (flat float32 per tensor) from its flat float32 ``estimates``,
        the new states of its tensors and the group's new state. ``group``: its state;
        ``params``: the group's tensors; ``loss``: the objective at them as the oracle measured
        it (population-shaped, or ``None``); ``q``: directions per estimate; ``in_place``:
        recurrent states are overwritten (no autograd)."""

    def radius(self, weights: Weights, group: G, mu: float | None,
               params: Sequence[Tensor]) -> float | Tensor:
        """The radius of the next estimate of a group with state ``group`` and tensors
        ``params``, from the user's ``mu`` (``None``: none given). Default: ``mu``, or the
        oracle's default for the parameters' dtype."""
        return default_mu(params[0].dtype) if mu is None else mu

    @property
    def chunked(self) -> bool:
        """Whether the update runs a piece of a tensor at a time (``torchzo.learned.seeded``):
        what ``ZOLSTM(memory="inference")`` needs."""
        return False

    @property
    def owns_radius(self) -> bool:
        """Whether the architecture sets the radius itself when the user gives none
        (meta-training then ignores a problem family's radius)."""
        return False
