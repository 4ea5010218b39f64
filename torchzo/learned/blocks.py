"""The building blocks of the learned architectures: coordinatewise LSTM cells and MLPs.

Every coordinate of the optimizee is one row of a batch: all coordinates share the weights and
each keeps its own state. Each block is a module (what meta-training trains and files store)
and a function of its weights, which may carry leading population dimensions.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor, nn

__all__ = ["CoordLSTM", "CoordMLP", "coord_lstm", "lstm", "mlp"]

_CHUNK = 16384  # coordinates per LSTM block when running without autograd


class CoordLSTM(nn.Module):
    """An LSTM cell applied to each coordinate independently, with a linear read-out."""

    def __init__(self, input_size: int, hidden: int = 10, outputs: int = 1,
                 out_scale: float = 0.1) -> None:
        super().__init__()
        self.hidden = hidden
        self.cell = nn.LSTMCell(input_size, hidden, bias=False)
        self.head = nn.Linear(hidden, outputs, bias=False)
        with torch.no_grad():
            self.head.weight.mul_(out_scale)

    def forward(self, inputs: Tensor, h: Tensor, c: Tensor,
                out: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """``inputs`` (n, input_size), states (n, hidden) -> (outputs (n, k), h, c).

        See :func:`coord_lstm`, which this runs with the module's weights.
        """
        return coord_lstm(self.cell.weight_ih, self.cell.weight_hh, self.head.weight, inputs,
                          h, c, out)


def coord_lstm(w_ih: Tensor, w_hh: Tensor, w_head: Tensor, inputs: Tensor, h: Tensor,
               c: Tensor, out: tuple[Tensor, Tensor] | None = None
               ) -> tuple[Tensor, Tensor, Tensor]:
    """:class:`CoordLSTM` as a function of its weights, for one weight set or a population.

    ``inputs`` (..., n, input_size) and states (..., n, hidden) -> (outputs (..., n, k), h, c),
    where ``...`` is empty for one weight set (weights as in ``nn.LSTMCell``) or the population
    dimensions that the weights carry in front. The cell computes in its weights' dtype; the
    new states keep the dtype of ``h`` and ``c`` (a lower-precision store, see
    ``ZOLSTM(state_dtype=...)``). ``out``: tensors to write the new ``(h, c)`` into, which may
    be ``(h, c)`` themselves (no autograd). One weight set gives the bits of ``nn.LSTMCell`` and
    ``nn.Linear``, and a population of one the same bits; in a larger population a member's
    outputs can differ in the last bit from its own run, since a batched matmul with few
    output columns rounds in another order (all tested).
    """
    weight = w_ih.dtype
    inputs = inputs.to(weight)
    n = inputs.shape[-2]
    if w_ih.dim() == 2 and n > _CHUNK and not torch.is_grad_enabled():
        return _blocks(w_ih, w_hh, w_head, inputs, h, c, out)
    # nn.LSTMCell's CPU formula, op for op, so that one weight set reproduces its bits.
    gates = torch.matmul(h.to(weight), w_hh.mT) + torch.matmul(inputs, w_ih.mT)
    i, f, g, o = gates.chunk(4, -1)
    c_new = f.sigmoid() * c.to(weight) + i.sigmoid() * g.tanh()
    h_new = o.sigmoid() * c_new.tanh()
    y = torch.matmul(h_new, w_head.mT)
    if out is None:
        return y, h_new.to(h.dtype), c_new.to(c.dtype)
    out[0].copy_(h_new)
    out[1].copy_(c_new)
    return y, out[0], out[1]


def _blocks(w_ih: Tensor, w_hh: Tensor, w_head: Tensor, inputs: Tensor, h: Tensor, c: Tensor,
            out: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor, Tensor]:
    """The cell in row blocks that stay in cache, with every transcendental contiguous.

    ``nn.LSTMCell`` over millions of rows is memory-bound, and its gate views are strided,
    so its sigmoid and tanh run unvectorised; and torch's float32 tanh costs about six
    sigmoids. Here one sigmoid covers all four gates (``tanh z = 2 sigmoid(2z) - 1``, with
    the cell-gate weights doubled once) and another gives ``tanh c``; equal to
    ``nn.LSTMCell`` up to float32 rounding (tested). What it saves in ZOLSTM's step time is
    measured in docs/benchmarks/overhead.md.
    """
    k = w_hh.shape[1]
    w_ih, w_hh = w_ih.detach().clone(), w_hh.detach().clone()
    w_ih[2 * k:3 * k] *= 2
    w_hh[2 * k:3 * k] *= 2
    w_ih, w_hh = w_ih.T.contiguous(), w_hh.T.contiguous()
    head = w_head.detach().T.contiguous()
    weight = w_ih.dtype
    n = inputs.shape[0]
    y = inputs.new_empty(n, head.shape[1])
    # Writing into the old states saves the page faults of fresh multi-megabyte buffers;
    # each block reads its rows of h and c before it overwrites them.
    h_new, c_new = out if out is not None else (torch.empty_like(h), torch.empty_like(c))
    # A low-precision state is converted a block at a time, never copied whole.
    native = h_new.dtype == weight and c_new.dtype == weight
    for s in range(0, n, _CHUNK):
        rows = slice(s, s + _CHUNK)
        hb, cb = h[rows].to(weight), c[rows].to(weight)
        gates = torch.mm(inputs[rows], w_ih).addmm_(hb, w_hh).sigmoid_()
        i, f, g, o = gates[:, :k], gates[:, k:2 * k], gates[:, 2 * k:3 * k], gates[:, 3 * k:]
        c_out = c_new[rows] if native else torch.empty_like(cb)
        torch.mul(f, cb, out=c_out).addcmul_(i, g, value=2).sub_(i)  # + i * (2 g - 1)
        h_out = h_new[rows] if native else torch.empty_like(hb)
        torch.mul(c_out, 2, out=h_out).sigmoid_().mul_(2).sub_(1).mul_(o)
        torch.mm(h_out, head, out=y[rows])
        if not native:
            c_new[rows], h_new[rows] = c_out, h_out
    return y, h_new, c_new


class CoordMLP(nn.Module):
    """A two-layer MLP applied to each coordinate, its read-out starting at zero."""

    def __init__(self, inputs: int, hidden: int, outputs: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(inputs, hidden)
        self.fc2 = nn.Linear(hidden, outputs, bias=False)
        with torch.no_grad():
            self.fc2.weight.zero_()


def lstm(weights: Mapping[str, Tensor], net: str, x: Tensor, h: Tensor, c: Tensor,
         in_place: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """The :class:`CoordLSTM` named ``net`` in ``weights``; ``in_place``: the new states
    overwrite ``(h, c)`` (no autograd)."""
    return coord_lstm(weights[f"{net}.cell.weight_ih"], weights[f"{net}.cell.weight_hh"],
                      weights[f"{net}.head.weight"], x, h, c, (h, c) if in_place else None)


def mlp(weights: Mapping[str, Tensor], net: str, x: Tensor) -> Tensor:
    """``fc2(tanh(fc1(x)))`` per coordinate; ``x`` (..., n, inputs)."""
    w1, b1, w2 = (weights[f"{net}.fc1.weight"], weights[f"{net}.fc1.bias"],
                  weights[f"{net}.fc2.weight"])
    hidden = torch.tanh(torch.matmul(x, w1.mT) + b1[..., None, :])
    return torch.matmul(hidden, w2.mT)
