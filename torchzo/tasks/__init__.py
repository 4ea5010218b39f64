"""Problem classes: built-in objectives for demos, tests, benchmarks and meta-training."""
from __future__ import annotations

from collections.abc import Callable
from functools import partial

from .attack import AttackProblem, AttackTask
from .base import SPLITS, Problem, Task
from .binclass import BinaryClassification, BinaryClassificationProblem
from .quadratic import Quadratic

__all__ = ["SPLITS", "AttackProblem", "AttackTask", "BinaryClassification",
           "BinaryClassificationProblem", "Problem", "Quadratic", "TASK_NAMES", "Task", "get_task"]

_REGISTRY: dict[str, Callable[..., Task]] = {
    "binclass": BinaryClassification,
    "mnist-attack": partial(AttackTask, "mnist"),
    "cifar-attack": partial(AttackTask, "cifar10"),
}


#: The names :func:`get_task` knows.
TASK_NAMES = tuple(sorted(_REGISTRY))


def get_task(name: str, **kwargs: object) -> Task:
    """A registered task by name: ``binclass``, ``mnist-attack``, ``cifar-attack``.

    The attack tasks need their trained target model (see :mod:`torchzo.tasks.targets`) and
    their data set, both loaded on first use.
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)
