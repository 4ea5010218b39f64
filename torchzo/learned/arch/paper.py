"""The paper's architecture (Ruan et al., ICLR 2020): an UpdateRNN and a QueryRNN.

Two coordinatewise LSTMs: one layer, ``hidden`` units (10), no biases, a linear read-out
without bias whose initial weights are scaled by 0.1. The UpdateRNN reads the raw estimate and
its output, times ``lr``, is the update; the QueryRNN reads the previous estimate and update and
its output ``o`` gives the coordinate's query standard deviation ``1 + o``.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ...oracle.directions import check_kind
from ..blocks import CoordLSTM, lstm
from .base import Architecture, Weights

__all__ = ["PaperConfig", "PaperState"]


class PaperState(NamedTuple):
    """A tensor's state under the paper's networks: per coordinate, float32."""

    #: The UpdateRNN's LSTM state, ``(*population, n, hidden)``.
    update_h: Tensor
    update_c: Tensor
    #: The QueryRNN's LSTM state, ``(*population, n, hidden)``.
    query_h: Tensor
    query_c: Tensor
    #: The last estimate and update, ``(*population, n)``: the QueryRNN's inputs.
    prev_estimate: Tensor
    prev_update: Tensor
    #: The QueryRNN's outputs for the next step, computed ahead by an optimizer step.
    query_out: Tensor | None = None

    @property
    def coordinates(self) -> torch.Size:
        """``(*population, n)``."""
        return self.prev_estimate.shape


class _Nets(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.update = CoordLSTM(1, hidden, 1, 0.1)
        self.query = CoordLSTM(2, hidden, 1, 0.1)


@dataclass(frozen=True)
class PaperConfig(Architecture[PaperState, None]):
    """The paper's networks (saved with their weights)."""

    kind: ClassVar[str] = "paper"
    state_type: ClassVar[type] = PaperState
    compact_keys: ClassVar[tuple[str, ...]] = ("update_h", "update_c", "query_h", "query_c")

    hidden: int = 10
    directions_kind: str = "gaussian"

    def __post_init__(self) -> None:
        check_kind(self.directions_kind, "directions_kind")

    def build(self) -> nn.Module:
        return _Nets(self.hidden)

    def update_parameters(self, nets: nn.Module) -> list[nn.Parameter]:
        """The UpdateRNN (the QueryRNN is the second stage's)."""
        return list(nets.update.parameters())  # type: ignore[union-attr, operator]

    def init_state(self, p: Tensor, population: tuple[int, ...] = ()) -> PaperState:
        n, k = p.numel(), self.hidden

        def zeros(*shape: int) -> Tensor:
            return torch.zeros((*population, *shape), device=p.device, dtype=torch.float32)

        return PaperState(zeros(n, k), zeros(n, k), zeros(n, k), zeros(n, k), zeros(n), zeros(n))

    def query_outputs(self, weights: Weights, states: Sequence[PaperState], group: None,
                      in_place: bool = False) -> tuple[list[Tensor], list[PaperState]]:
        outs, new = [], []
        for st in states:
            x = torch.stack([st.prev_estimate.detach(), st.prev_update.detach()], -1)
            o, h, c = lstm(weights, "query", x, st.query_h, st.query_c, in_place)
            outs.append(o[..., 0])
            new.append(st._replace(query_h=h, query_c=c))
        return outs, new

    def raw_scale(self, outputs: Tensor) -> Tensor:
        return 1 + outputs

    def update(self, weights: Weights, estimates: Sequence[Tensor], states: Sequence[PaperState],
               group: None, params: Sequence[Tensor], lr: float | Tensor, loss: Tensor | None,
               q: int, in_place: bool = False) -> tuple[list[Tensor], list[PaperState], None]:
        updates, new = [], []
        for g, st in zip(estimates, states):
            out, h, c = lstm(weights, "update", g[..., None], st.update_h, st.update_c, in_place)
            step = lr * out[..., 0]
            updates.append(step)
            new.append(st._replace(update_h=h, update_c=c, prev_estimate=g, prev_update=step))
        return updates, new, None
