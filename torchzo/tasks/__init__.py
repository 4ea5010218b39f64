"""Problem classes: built-in objectives for demos, tests, benchmarks and meta-training."""
from __future__ import annotations

from .base import SPLITS, Problem, Task
from .binclass import BinaryClassification, BinaryClassificationProblem
from .quadratic import Quadratic

__all__ = ["SPLITS", "BinaryClassification", "BinaryClassificationProblem", "Problem",
           "Quadratic", "Task", "get_task"]

_REGISTRY = {"binclass": BinaryClassification}


def get_task(name: str, **kwargs: object) -> Task:
    """A registered task by name (``binclass``)."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown task {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name](**kwargs)  # type: ignore[arg-type]
