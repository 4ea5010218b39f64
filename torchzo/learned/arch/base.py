"""What every learned architecture provides: the protocol that the learned step runs.

An architecture is a frozen dataclass of its own settings (what a weights file stores beside the
weights) with the functions of one step over its networks' weights:

- :meth:`~Architecture.build`: the networks (the modules :class:`~torchzo.learned.LearnedZO`
  holds and files store);
- :meth:`~Architecture.init_state`: a tensor's zero state, a dict of float32 tensors;
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
from typing import Any, ClassVar

from torch import Tensor, nn

__all__ = ["Architecture", "State", "Weights"]

#: A tensor's learned state: float32 tensors by name.
State = dict[str, Tensor]
#: The networks' weights by parameter name (``LearnedZO.weights()``).
Weights = Mapping[str, Tensor]


class Architecture(ABC):
    """A learned ZO step's settings and functions; subclasses are frozen dataclasses."""

    #: The name files store and :data:`torchzo.learned.arch.ARCHITECTURES` lists.
    kind: ClassVar[str]
    #: State entries that ``ZOLSTM(state_dtype=...)`` may store in a lower precision (the
    #: per-coordinate recurrent states; they are computed in float32 either way).
    compact_keys: ClassVar[tuple[str, ...]] = ()
    #: Settings of the flat stored form that this kind read once and has no more, with the
    #: value at which they did nothing (see :func:`torchzo.learned.arch.from_dict`).
    retired: ClassVar[dict[str, object]] = {}
    #: The query directions the optimizer is meant to run with (``ZOLSTM``'s
    #: ``directions_kind`` when not given; meta-training's populations use it too).
    directions_kind: str
    #: Hidden units of the recurrent networks.
    hidden: int

    @property
    def has_query(self) -> bool:
        """Whether there is a query network; without one, learned directions are standard
        Gaussian ones."""
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
    def init_state(self, p: Tensor, population: tuple[int, ...] = ()) -> State:
        """Zero state for the coordinates of ``p`` (a new problem never inherits old state);
        ``population``: leading dimensions of a population of weight sets, one state each."""

    @abstractmethod
    def query_outputs(self, weights: Weights, states: Sequence[State], in_place: bool = False
                      ) -> tuple[list[Tensor], list[State]]:
        """The query network's raw outputs for each tensor (flat) of a set that shares one
        estimate, and the new entries of their states (``in_place``: written over the old)."""

    @abstractmethod
    def raw_scale(self, outputs: Tensor) -> Tensor:
        """A tensor's per-coordinate standard deviations from its query outputs, before the
        normalisation over the tensors that share an estimate."""

    @abstractmethod
    def update(self, weights: Weights, estimates: Sequence[Tensor], states: Sequence[State],
               params: Sequence[Tensor], lr: float | Tensor, loss: Tensor | None, q: int,
               in_place: bool = False) -> tuple[list[Tensor], list[State]]:
        """A group's updates (flat float32 per tensor) from its flat float32 ``estimates``,
        and the new states. ``params``: the group's tensors; ``loss``: the objective at them
        as the oracle measured it (population-shaped, or ``None``); ``q``: directions per
        estimate; ``in_place``: recurrent states are overwritten (no autograd)."""

    def radius(self, state: Mapping[str, Tensor]) -> float | Tensor:
        """The factor on the user's ``mu`` that the next estimate of the tensor with
        ``state`` (its group's first) uses."""
        return 1.0
