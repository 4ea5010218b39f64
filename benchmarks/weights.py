"""Learned weights named on a benchmark's command line: a shipped name, a file, an ES run
folder (its best weights so far) or one of its validation checks."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torchzo
from torchzo.learned import LearnedZO

__all__ = ["learned", "resolve"]


def resolve(name: str | None) -> Any:
    """What ``ZOLSTM(pretrained=...)`` takes for ``name``: an ES run folder's best weights,
    a check's (``RUN/checks/ITERATION.pt``), or the name itself (a shipped name, a file,
    ``None`` for the default)."""
    if name and Path(name).is_dir():
        from torchzo.meta.es import load_best

        return load_best(Path(name))
    if name and Path(name).parent.name == "checks" and Path(name).is_file():
        from torchzo.meta.es import load_check

        return load_check(Path(name))
    return name


def learned(name: Any) -> LearnedZO:
    """The networks ``name`` (anything :func:`resolve` takes, or what it returns) stands for."""
    weights = name if isinstance(name, LearnedZO) else resolve(name)
    if isinstance(weights, LearnedZO):
        return weights
    if weights is None or weights in torchzo.pretrained.available():
        return torchzo.pretrained.load(weights)
    return torchzo.pretrained.load_file(weights)
