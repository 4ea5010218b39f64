"""The problem-class API: a task yields optimizee instances, split into train/val/test.

A :class:`Problem` is one optimizee: a start point, a batched loss ``loss(X, batch)`` over flat
parameter vectors ``X`` of shape ``(B, d)``, an optional minibatch sampler (a stochastic problem
fixes one minibatch per optimizer step, for all of that step's queries), and the full objective
used to report and to meta-train. Losses are differentiable torch functions; an objective with
no gradients at all is meta-trained with ``grad_mode="fd"`` (see ``torchzo.meta``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["SPLITS", "Problem", "Task"]

SPLITS = ("train", "val", "test")


class Problem:
    """One optimizee instance. Subclasses set ``x0`` and implement :meth:`loss`."""

    x0: Tensor
    #: A lower bound of the loss (the optimum where known): normalises losses across instances.
    f_min: float = 0.0
    #: The smoothing radius this problem needs (piecewise-constant objectives), else ``None``:
    #: the optimizers' default.
    mu: float | None = None

    @property
    def dim(self) -> int:
        return self.x0.numel()

    def loss(self, X: Tensor, batch: Any = None) -> Tensor:
        """Losses of the rows of ``X`` (B, d) on ``batch`` (all data when ``None``): shape (B,)."""
        raise NotImplementedError

    def sample_batch(self, generator: torch.Generator) -> Any:
        """The minibatch for one optimizer step; ``None`` for a deterministic problem."""
        return None

    def objective(self, x: Tensor) -> Tensor:
        """The full (reported) loss at the flat point ``x``: a 0-dim tensor."""
        return self.loss(x.unsqueeze(0), None)[0]


@dataclass
class Task:
    """A problem class with the paper's per-task settings.

    Attributes:
        name: registry name (``python -m torchzo.meta train --task NAME``).
        q: queries per step; horizon: optimizer steps per problem; unroll: truncation length.
        mu: the smoothing radius meta-training and the benchmarks use on this task (``None``:
            the optimizers' default for the dtype).
    """

    name: str
    q: int
    horizon: int
    unroll: int
    mu: float | None = None

    def problems(self, split: str) -> Sequence[Problem]:
        """The problems of ``split`` (``train``, ``val`` or ``test``), the same on every call."""
        raise NotImplementedError

    def _check_split(self, split: str) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
