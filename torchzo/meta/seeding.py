"""Building modules whose initial weights come from an explicit generator.

``torch.nn`` modules draw their initial weights from the global generator; meta-training
draws every random number from generators derived from the run's seed, so that a run
neither depends on nor disturbs the caller's random state. A fresh ``torch.Generator`` seeded
with ``s`` gives the numbers ``torch.manual_seed(s)`` would, so the weights are the ones a
global seed gave.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch.overrides import TorchFunctionMode

__all__ = ["build_seeded"]

M = TypeVar("M")


class _Generated(TorchFunctionMode):
    """Hands ``generator`` to every torch function that takes one and was given none
    (``nn.init``'s functions, which module constructors call)."""

    def __init__(self, generator: torch.Generator) -> None:
        super().__init__()
        self.generator = generator

    def __torch_function__(self, func: Callable[..., Any], types: Any, args: Any = (),
                           kwargs: Any = None) -> Any:
        kwargs = dict(kwargs or {})
        try:
            takes = "generator" in inspect.signature(func).parameters
        except (TypeError, ValueError):  # a builtin: it takes ``generator`` if it draws
            takes = False
        if takes and kwargs.get("generator") is None:
            kwargs["generator"] = self.generator
        return func(*args, **kwargs)


def build_seeded(factory: Callable[[], M], generator: torch.Generator) -> M:
    """``factory()`` with its initial weights drawn from ``generator``.

    Raises ``RuntimeError`` if the factory drew from the global generator all the same (a
    draw no ``nn.init`` function made), rather than let it change the caller's stream.
    """
    before = torch.get_rng_state()
    with _Generated(generator):
        built = factory()
    if not torch.equal(before, torch.get_rng_state()):
        torch.set_rng_state(before)
        raise RuntimeError("building the module drew from the global generator")
    return built
