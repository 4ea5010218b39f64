"""Stochastic binary classification with a non-convex least-squares loss (paper section 4.2).

Dataset ``k``: ``theta* ~ N(0, I_d)``, ``a_i ~ N(0, I_d)``, ``y_i = 1[theta* . a_i > 0]``
(2000 samples); loss ``mean_i (y_i - sigmoid(theta . a_i))^2`` over a minibatch of 64 per step.
100 datasets, each from its own seed: 80 for meta-training, 10 for validation, and the paper's
10 test datasets. The start point ``theta_0 ~ N(0, I_d)`` is part of the dataset.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property

import torch
from torch import Tensor

from .base import Problem, Task

__all__ = ["BinaryClassification", "BinaryClassificationProblem"]

_SPLIT_RANGES = {"train": range(0, 80), "val": range(80, 90), "test": range(90, 100)}


class BinaryClassificationProblem(Problem):
    """One dataset of the binary-classification task, generated from ``seed``."""

    def __init__(self, seed: int, dim: int = 100, samples: int = 2000, batch: int = 64) -> None:
        g = torch.Generator().manual_seed(seed)
        theta_star = torch.randn(dim, generator=g)
        self.features = torch.randn(samples, dim, generator=g)
        self.labels = (self.features @ theta_star > 0).float()
        self.x0 = torch.randn(dim, generator=g)
        self.batch_size = batch
        self.seed = seed

    def sample_batch(self, generator: torch.Generator) -> Tensor:
        return torch.randperm(self.labels.numel(), generator=generator)[: self.batch_size]

    def loss(self, X: Tensor, batch: Tensor | None = None) -> Tensor:
        a = self.features if batch is None else self.features[batch]
        y = self.labels if batch is None else self.labels[batch]
        a, y = a.to(X.dtype), y.to(X.dtype)
        return ((y - torch.sigmoid(X @ a.T)) ** 2).mean(-1)


class BinaryClassification(Task):
    """The paper's task: d = 100, 2000 samples, b = 64, q = 20, 500 steps, unroll 20."""

    def __init__(self, dim: int = 100, samples: int = 2000, batch: int = 64, q: int = 20,
                 horizon: int = 500, unroll: int = 20, seed: int = 0) -> None:
        super().__init__("binclass", q, horizon, unroll)
        self.dim, self.samples, self.batch, self.seed = dim, samples, batch, seed

    @cached_property
    def _cache(self) -> dict[int, BinaryClassificationProblem]:
        return {}

    def problems(self, split: str) -> Sequence[BinaryClassificationProblem]:
        self._check_split(split)
        out = []
        for k in _SPLIT_RANGES[split]:
            if k not in self._cache:
                self._cache[k] = BinaryClassificationProblem(
                    self.seed * 1000 + k, self.dim, self.samples, self.batch)
            out.append(self._cache[k])
        return out
