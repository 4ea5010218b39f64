"""The coordinatewise LSTMs of ZO-LSTM: the UpdateRNN and the QueryRNN, and their architectures.

Every coordinate of the optimizee is one row of a batch: all coordinates share the weights and
each keeps its own ``(h, c)``. Two architectures (:class:`Arch`):

- ``paper``: the paper's networks. One layer, 10 hidden units, no biases, a 10 -> 1 linear
  read-out without bias whose initial weights are scaled by 0.1. The UpdateRNN reads the raw
  estimate and its output is the update; the QueryRNN reads the previous estimate and update.
- ``adam``: the same cells over features that contain ZO-Adam as a special case (the estimate
  and momenta at several time scales, normalised by the running RMS of the estimate, and the
  fraction of the horizon done). The UpdateRNN outputs a direction correction ``d`` and a
  log step-size correction ``s``; the step is ``-exp(log_lr + s) * (m_base + d)``, with the
  read-out initialised to zero so that an untrained network is exactly ZO-Adam with step size
  ``exp(log_lr)``. The QueryRNN reads magnitudes (|normalised estimate|, |normalised momentum|,
  the coordinate's log RMS relative to the mean, the horizon fraction) and predicts
  ``s = exp(o)``.
- ``general``: scale-free networks for any problem (:mod:`torchzo.learned.general`): a
  per-coordinate MLP corrects ZO-Adam's normalised direction, a per-group recurrent
  controller sets the step size from scale-free signals, a per-coordinate MLP shapes the
  query covariance.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..oracle.directions import check_kind

__all__ = ["ARCH_KINDS", "Arch", "CoordLSTM", "CoordMLP", "LearnedZO", "coord_lstm"]

ARCH_KINDS = ("paper", "adam", "general")
_CHUNK = 16384  # coordinates per LSTM block when running without autograd


@dataclass(frozen=True)
class Arch:
    """The architecture of a learned ZO optimizer (saved with its weights)."""

    kind: str = "paper"
    hidden: int = 10
    horizon: int = 500
    momenta: tuple[float, ...] = (0.5, 0.9, 0.99)
    base: int = 2
    beta2: float = 0.999
    eps: float = 1e-8
    init_lr: float = 0.03
    #: ``general`` only: hidden units of the per-coordinate MLPs, the absolute floor of the
    #: starting step size, and the initial gain of the step-size rule.
    coord_hidden: int = 8
    floor: float = 1e-3
    gain: float = 0.15
    #: ``general`` only: the controller also reads how consistent the estimate is (the mean
    #: square of the RMS-normalised fast and base momenta: near 1 for a steady gradient,
    #: near (1 - beta) / (1 + beta) for noise).
    noise_inputs: bool = False
    #: ``general`` only: ``False`` drops the query net; learned directions are then standard
    #: Gaussian ones (the query net's ablation measured no gain: docs/generalist.md).
    query_net: bool = True
    #: ``general`` only: the step also mixes in ZO-SGD's direction (the base momentum over
    #: the group's RMS, not each coordinate's), by a weight in [0, 1] that the controller
    #: sets each step; at zero weight (as initialised) the step is the one without it.
    sgd_mix: bool = False
    #: ``sgd_mix`` only: the gain of the hand-set rule that moves the mix weight along its
    #: hypergradient each step (0: the weight is the learned constant plus the controller's).
    mix_gain: float = 0.0
    #: ``general`` only: when positive, sigma is kept at most ``max_step`` times the RMS of
    #: the parameters (or the absolute floor, if larger): a step cannot outgrow the point.
    max_step: float = 0.0
    #: ``general`` only: the factor on each step's change of log sigma (the hand rule plus
    #: the controller's read-out, clipped to [-1, 1] before it). Below 1, sigma moves more
    #: slowly and wanders less under noisy estimates (research/log.md).
    sigma_rate: float = 1.0
    #: The query directions the optimizer is meant to run with (``ZOLSTM``'s
    #: ``directions_kind`` when not given; meta-training's populations use it too): one of
    #: :data:`torchzo.oracle.KINDS`.
    directions_kind: str = "gaussian"

    def __post_init__(self) -> None:
        if self.kind not in ARCH_KINDS:
            raise ValueError(f"arch kind must be one of {ARCH_KINDS}, got {self.kind!r}")
        if not 0 <= self.base < len(self.momenta):
            raise ValueError("base must index one of the momenta")
        if not 0 < self.sigma_rate <= 1:
            raise ValueError(f"sigma_rate must be in (0, 1], got {self.sigma_rate}")
        check_kind(self.directions_kind, "directions_kind")

    @property
    def update_inputs(self) -> int:
        if self.kind == "general":
            return 1 + len(self.momenta)
        return 1 if self.kind == "paper" else 2 + len(self.momenta)

    @property
    def query_inputs(self) -> int:
        return {"paper": 2, "adam": 4, "general": 3}[self.kind]

    def to_dict(self) -> dict[str, Any]:
        """Plain values, as stored next to weights."""
        d = asdict(self)
        d["momenta"] = list(self.momenta)
        return d

    @staticmethod
    def from_dict(d: dict[str, Any] | None) -> Arch:
        """The inverse of :meth:`to_dict`; ``None`` (old files) is the paper's architecture."""
        if not d:
            return Arch()
        d = dict(d)
        if "momenta" in d:
            d["momenta"] = tuple(d["momenta"])
        return Arch(**d)


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


class LearnedZO(nn.Module):
    """The learned part of ZO-LSTM: one UpdateRNN and one QueryRNN of architecture ``arch``
    (for ``general``: the update and query MLPs and the step-size controller)."""

    update: nn.Module
    query: nn.Module | None

    def __init__(self, hidden: int | None = None, arch: Arch | None = None) -> None:
        super().__init__()
        arch = arch or Arch()
        if hidden is not None and hidden != arch.hidden:
            arch = Arch(**{**arch.to_dict(), "hidden": hidden, "momenta": arch.momenta})
        self.arch = arch
        if arch.kind == "general":
            self._build_general(arch)
            return
        paper = arch.kind == "paper"
        self.update = CoordLSTM(arch.update_inputs, arch.hidden, 1 if paper else 2,
                                0.1 if paper else 0.0)
        self.query = CoordLSTM(arch.query_inputs, arch.hidden, 1, 0.1 if paper else 0.0)
        if paper:
            self.register_parameter("log_lr", None)
        else:
            self.log_lr = nn.Parameter(torch.tensor(math.log(arch.init_lr)))

    def _build_general(self, arch: Arch) -> None:
        from .general import control_inputs

        self.update = CoordMLP(arch.update_inputs, arch.coord_hidden, 2)
        self.query = CoordMLP(arch.query_inputs, arch.coord_hidden, 1) if arch.query_net else None
        self.control = CoordLSTM(control_inputs(arch), arch.hidden, 2 if arch.sgd_mix else 1, 0.0)
        self.log_lr = nn.Parameter(torch.tensor(math.log(arch.init_lr)))
        self.log_floor = nn.Parameter(torch.tensor(math.log(arch.floor)))
        self.gain = nn.Parameter(torch.tensor(float(arch.gain)))
        if arch.sgd_mix:
            self.mix = nn.Parameter(torch.tensor(0.0))

    def update_parameters(self) -> list[nn.Parameter]:
        """What meta-training's first stage trains: the UpdateRNN and the step size."""
        if self.arch.kind == "general":
            return list(self.parameters())
        extra = [] if self.log_lr is None else [self.log_lr]
        return [*self.update.parameters(), *extra]

    @property
    def hidden(self) -> tuple[int, int]:
        if self.arch.kind == "general":
            return self.arch.coord_hidden, self.arch.hidden
        return self.arch.hidden, self.arch.hidden

    def weights(self) -> dict[str, Tensor]:
        """The weights by name, as :mod:`torchzo.learned.core` takes them (no copies)."""
        return dict(self.named_parameters())
