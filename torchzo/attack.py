"""``torchzo.attack``: a black-box adversarial attack on a model you can only query."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from . import optim
from .oracle import Batched
from .tasks.attack import AttackProblem

__all__ = ["AttackResult", "attack"]


@dataclass
class AttackResult:
    adversarial: Tensor  # the attacked image, same shape as the input image, in [0, 1]
    success: bool  # the model's prediction on ``adversarial`` differs from the label
    distortion: float  # l1 (or l2) norm of ``adversarial - image``
    queries: int  # model evaluations (images) spent, the final check excluded
    losses: list[float] = field(default_factory=list)  # attack loss before each step, then final


def attack(model_fn: Callable[[Tensor], Tensor], image: Tensor, label: int,
           optimizer: str | Callable[..., optim.ZOOptimizer] = "ZOAdam", steps: int = 200,
           q: int = 20, c: float = 0.1, kappa: float = 0.0, norm: str = "l1", seed: int = 0,
           **optimizer_kwargs: Any) -> AttackResult:
    """Find a small perturbation of ``image`` that ``model_fn`` misclassifies, from queries only.

    Args:
        model_fn: maps a batch of images ``(B, *image.shape)`` in [0, 1] to class scores
            (logits or log-probabilities); only its outputs are used, never its gradients.
        image: one image with values in [0, 1]; label: its true class.
        optimizer: a torchzo optimizer class name (``"ZOAdam"``, ``"ZOLSTM"``, ...) or a
            callable ``(params, **kwargs) -> optimizer``; ``optimizer_kwargs`` go to it
            (default for ZOAdam: ``lr=0.01``, not tuned for your model). With the l1 norm on a
            large image, pass ``mu`` below the start perturbation (about 1e-4), e.g. ``1e-5``:
            at float32's default 1e-3 the norm's kink swamps the margin's signal (CIFAR-10).
        steps, q: optimizer steps and queries per step (each step costs q + 1 images).
        c, kappa, norm: the loss ``max(margin, -kappa) + c * ||delta||`` (``"l1"`` or
            ``"l2"``, squared), see :mod:`torchzo.tasks.attack`.
        seed: seeds the starting perturbation and the query directions.
    """
    factory = getattr(optim, optimizer) if isinstance(optimizer, str) else optimizer
    if factory is optim.ZOAdam:
        optimizer_kwargs.setdefault("lr", 0.01)
    with torch.no_grad():
        problem = AttackProblem(model_fn, image.detach(), int(label), seed=seed, c=c,
                                kappa=kappa, norm=norm)
        delta = problem.x0.clone()
        opt = factory([delta], q=q, seed=seed, **optimizer_kwargs)
        objective = Batched(problem.loss)
        losses = [float(opt.step(objective)) for _ in range(steps)]
        losses.append(float(problem.loss(delta.unsqueeze(0))[0]))
        return AttackResult(problem.adversarial(delta), problem.success(delta),
                            problem.distortion(delta), opt.queries, losses)
