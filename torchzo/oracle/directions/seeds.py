"""Query seeds: one per direction of a step, drawn from the optimizer's generator."""
from __future__ import annotations

import torch

__all__ = ["SEED_MAX", "draw_seeds"]

#: Seeds lie in ``[0, SEED_MAX)``: a torch generator's seed range, less one bit.
SEED_MAX = 2**63 - 1


def draw_seeds(generator: torch.Generator, n: int) -> list[int]:
    """``n`` query seeds from ``generator`` (which advances exactly once per call)."""
    if n == 0:
        return []
    draws = torch.randint(0, SEED_MAX, (n,), generator=generator, dtype=torch.int64,
                          device=generator.device)
    return [int(s) for s in draws.tolist()]
