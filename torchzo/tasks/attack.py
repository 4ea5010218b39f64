"""The black-box adversarial attack as a task (paper section 4.1).

The variable is a perturbation ``delta`` of one image; the attacked image is
``clamp(x0 + delta, 0, 1)``. The loss (untargeted, on the model's log-probabilities) is

    max(log p_y(x) - max_{j != y} log p_j(x), -kappa) + c * ||delta||_1

(``norm="l2"``: the squared l2 norm), with kappa = 0 and c = 0.1 by default; it reaches its
floor once the image is misclassified and then only trades distortion. ``delta`` starts at
``1e-4 * N(0, I)``. The q + 1 queries of a step are one forward pass of the model.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import cached_property
from pathlib import Path

import torch
from torch import Tensor, nn

from .base import SPLITS, Problem, Task

# The start |delta| ~ 1e-4 is below float32's default mu = 1e-3, where the l1 term has a kink:
# each query's difference then carries ~ c * mu * sum_i |u_i| from it, which at d = 3072
# swamps the margin's change and stalls every ZO method (research/log.md). MNIST keeps
# the default, with which its results and shipped optimizer were measured.
DEFAULT_MU: dict[str, float | None] = {"mnist": None, "cifar10": 1e-5}

__all__ = ["AttackProblem", "AttackTask", "attack_loss"]

Model = Callable[[Tensor], Tensor]


def attack_loss(model: Model, image: Tensor, label: int, delta: Tensor, c: float = 0.1,
                kappa: float = 0.0, norm: str = "l1") -> Tensor:
    """The attack loss of each row of ``delta`` (B, numel) against ``image`` (C, H, W)."""
    x = (image.reshape(1, -1) + delta).clamp(0, 1).view(-1, *image.shape)
    logp = torch.log_softmax(model(x), -1)  # idempotent when the model gives log-probs
    true = logp[:, label]
    others = logp.clone()
    others[:, label] = float("-inf")
    margin = (true - others.max(-1).values).clamp(min=-kappa)
    size = delta.abs().sum(-1) if norm == "l1" else (delta**2).sum(-1)
    return margin + c * size


def _check_norm(norm: str) -> None:
    if norm not in ("l1", "l2"):
        raise ValueError(f"norm must be 'l1' or 'l2', got {norm!r}")


class AttackProblem(Problem):
    """Attacking one correctly classified image; ``seed`` draws the starting perturbation."""

    def __init__(self, model: Model, image: Tensor, label: int, seed: int = 0, c: float = 0.1,
                 kappa: float = 0.0, norm: str = "l1") -> None:
        _check_norm(norm)
        self.model, self.image, self.label, self.seed = model, image, int(label), seed
        self.batch_size = None  # deterministic: every query sees the same image
        self.c, self.kappa, self.norm = c, kappa, norm
        g = torch.Generator().manual_seed(seed)
        self.x0 = 1e-4 * torch.randn(image.numel(), generator=g, dtype=image.dtype)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        return attack_loss(self.model, self.image, self.label, X, self.c, self.kappa, self.norm)

    def adversarial(self, delta: Tensor) -> Tensor:
        """The attacked image for the flat perturbation ``delta``, clamped to [0, 1]."""
        return (self.image.reshape(-1) + delta).clamp(0, 1).view_as(self.image)

    def distortion(self, delta: Tensor) -> float:
        """The norm of the actual change (after clamping to the unit box)."""
        change = self.adversarial(delta).reshape(-1) - self.image.reshape(-1)
        return float(change.abs().sum() if self.norm == "l1" else change.norm())

    @torch.no_grad()
    def success(self, delta: Tensor) -> bool:
        """Whether the model's prediction on the attacked image differs from the label."""
        x = self.adversarial(delta).unsqueeze(0)
        return int(self.model(x).argmax(-1)) != self.label


class AttackTask(Task):
    """Attacks on images the target classifies correctly, in disjoint splits of the test set.

    The first ``sizes["train"]`` correctly classified test images are for meta-training, the
    next ``sizes["val"]`` for validation, the next ``sizes["test"]`` for testing. Building the
    task only checks the arguments: the target (``model``, default the trained one of
    :mod:`torchzo.tasks.targets`) and the test set under ``root`` (see
    :func:`torchzo.datasets.data_root`) are loaded on first use, so that a registry or a
    command line can make the task before the data is needed.
    """

    def __init__(self, data: str = "mnist", model: nn.Module | None = None,
                 root: str | Path | None = None, sizes: dict[str, int] | None = None,
                 q: int | None = None, horizon: int = 200, unroll: int = 20, c: float = 0.1,
                 norm: str = "l1", mu: float | None = None) -> None:
        if data not in DEFAULT_MU:
            raise ValueError(f"data must be one of {sorted(DEFAULT_MU)}, got {data!r}")
        _check_norm(norm)
        sizes = sizes or {"train": 100, "val": 50, "test": 100}
        if set(sizes) != set(SPLITS) or any(
                isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in sizes.values()):
            raise ValueError(f"sizes must map each of {SPLITS} to an int >= 0, got {sizes!r}")
        super().__init__(f"{data}-attack", q or (20 if data == "mnist" else 50), horizon, unroll,
                         mu if mu is not None else DEFAULT_MU[data])
        self.data, self.root, self._given_model = data, root, model
        self.sizes, self.c, self.norm = sizes, c, norm

    @cached_property
    def model(self) -> nn.Module:
        """The target classifier, frozen; loaded on first access when none was given."""
        from .targets import load_target

        model = self._given_model if self._given_model is not None else load_target(self.data)
        for p in model.parameters():
            p.requires_grad_(False)
        return model

    @cached_property
    def _correct(self) -> tuple[Tensor, Tensor]:
        from ..datasets import load_cifar10_subset, load_mnist

        x, y = (load_mnist if self.data == "mnist" else load_cifar10_subset)("test", self.root)
        with torch.no_grad():
            right = torch.cat([self.model(x[i:i + 1000]).argmax(-1) == y[i:i + 1000]
                               for i in range(0, len(x), 1000)])
        return x[right], y[right]

    @property
    def images(self) -> Tensor:
        """The correctly classified test images, in test-set order."""
        return self._correct[0]

    @property
    def labels(self) -> Tensor:
        """The labels of :attr:`images`."""
        return self._correct[1]

    def problems(self, split: str) -> Sequence[AttackProblem]:
        self._check_split(split)
        start = sum(self.sizes[s] for s in SPLITS[:SPLITS.index(split)])
        stop = start + self.sizes[split]
        if stop > len(self.images):
            raise ValueError(f"only {len(self.images)} correctly classified images")
        return [AttackProblem(self.model, self.images[i], int(self.labels[i]), seed=i,
                              c=self.c, norm=self.norm) for i in range(start, stop)]
