"""The coordinatewise LSTMs of ZO-LSTM: the UpdateRNN and the QueryRNN.

Every coordinate of the optimizee is one row of a batch: all coordinates share the weights and
each keeps its own ``(h, c)``. Paper sizes: one layer, 10 hidden units, no biases, then a
10 -> 1 linear layer without bias whose initial weights are scaled by 0.1.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["CoordLSTM", "LearnedZO", "QueryRNN", "UpdateRNN"]


class CoordLSTM(nn.Module):
    """An LSTM cell applied to each coordinate independently, with a linear read-out."""

    def __init__(self, input_size: int, hidden: int = 10, out_scale: float = 0.1) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(input_size, hidden, bias=False)
        self.head = nn.Linear(hidden, 1, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(out_scale)

    def forward(self, inputs: Tensor, h: Tensor, c: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``inputs`` (n, input_size), states (n, hidden) -> (output (n,), h, c)."""
        weight = self.cell.weight_ih.dtype
        h, c = self.cell(inputs.to(weight), (h.to(weight), c.to(weight)))
        return self.head(h).squeeze(-1), h, c


class UpdateRNN(CoordLSTM):
    """Turns the ZO gradient estimate of a coordinate into its parameter update.

    Input: the raw estimate (no preprocessing). Output: the update, added to the parameter.
    """

    def __init__(self, hidden: int = 10) -> None:
        super().__init__(1, hidden)


class QueryRNN(CoordLSTM):
    """Predicts a coordinate's query standard deviation from its recent history.

    Input: the previous estimate and the previous update. Output ``o``: the deviation of the
    standard deviation from 1 (``s = 1 + o``, normalised afterwards so trace(Sigma) = d).
    """

    def __init__(self, hidden: int = 10) -> None:
        super().__init__(2, hidden)


class LearnedZO(nn.Module):
    """The learned part of ZO-LSTM: one UpdateRNN and one QueryRNN."""

    def __init__(self, hidden: int = 10) -> None:
        super().__init__()
        self.update = UpdateRNN(hidden)
        self.query = QueryRNN(hidden)

    @property
    def hidden(self) -> tuple[int, int]:
        return self.update.hidden, self.query.hidden
