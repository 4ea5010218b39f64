"""Shared helpers of the torchzo test suite (imported by the test modules, not collected)."""
from __future__ import annotations

import copy
import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from hypothesis import settings
from torch import Tensor

import torchzo
from torchzo.learned import ARCHITECTURES, LearnedZO

# Small, fast property runs: every property test uses this (<= 25 examples, no deadline, and no
# example database written into the working tree).
FAST = settings(max_examples=20, deadline=None, database=None)
FEW = settings(max_examples=10, deadline=None, database=None)

OPTIMIZERS = {"ZOAdam": torchzo.ZOAdam, "ZOSGD": torchzo.ZOSGD, "ZOSignSGD": torchzo.ZOSignSGD}
ESTIMATORS = ("forward", "central", "antithetic")
# The closure path (q+1 one-row evaluations) against the batched path (one (q+1)-row call) in
# float64: f may differ in the last bit between the two (SIMD code paths differ by shape and
# by CPU), and (f(x + mu u) - f(x)) / mu amplifies that about 1/mu times per step.
PATHS_TOL = dict(rtol=1e-7, atol=1e-9)

_INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32,
             torch.bfloat16: torch.int16, torch.float16: torch.int16}


def bits(t: Tensor) -> Tensor:
    """The raw bits of a floating tensor as integers (so -0.0 != 0.0 and NaN payloads count)."""
    return t.detach().view(_INT_VIEW[t.dtype]).clone()


def same_bits(a: Tensor, b: Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and torch.equal(bits(a), bits(b)))


def snapshot(params: Sequence[Tensor]) -> list[Tensor]:
    """Bit-exact copies of ``params``."""
    return [p.detach().clone() for p in params]


def all_same_bits(a: Sequence[Tensor], b: Sequence[Tensor]) -> bool:
    return len(a) == len(b) and all(same_bits(x, y) for x, y in zip(a, b))


def state_copy(opt: torch.optim.Optimizer) -> dict[str, Any]:
    """A deep copy of ``opt.state_dict()`` (which otherwise aliases the live state tensors)."""
    return copy.deepcopy(opt.state_dict())


def resume_round_trip(make: Callable[[Tensor, bool], torch.optim.Optimizer], x0: Tensor,
                      step: Callable[[torch.optim.Optimizer], Any], before: int = 9,
                      after: int = 6,
                      loaded: Callable[[torch.optim.Optimizer, Tensor], None] | None = None
                      ) -> None:
    """Check that a saved state dict resumes bit-exactly: ``before`` steps, save, ``after``
    more; then an optimizer built as a stranger (``make(x, True)``: other nets, other seed;
    ``make(x, False)``: the original) loads the save at the same point and takes ``after``
    steps. Both must end with the same parameters and state dict. ``loaded(opt, x)`` checks
    the stranger right after it loads, and ``step(opt)`` checks what the run kept live."""
    xa = x0.clone()
    full = make(xa, False)
    for _ in range(before):
        step(full)
    buffer = io.BytesIO()
    torch.save(full.state_dict(), buffer)
    saved_x = xa.clone()
    for _ in range(after):
        step(full)
    xb = saved_x.clone()
    buffer.seek(0)
    resumed = make(xb, True)
    resumed.load_state_dict(torch.load(buffer, weights_only=True))
    if loaded is not None:
        loaded(resumed, xb)
    for _ in range(after):
        step(resumed)
    assert not torch.equal(xa, saved_x), "the steps after the save moved nothing"
    assert torch.equal(xa, xb)
    assert deep_equal(full.state_dict(), resumed.state_dict())


def deep_equal(a: Any, b: Any) -> bool:
    """Structural equality; floating tensors are compared bit for bit."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        if not (isinstance(a, Tensor) and isinstance(b, Tensor)):
            return False
        if a.is_floating_point() and a.dtype in _INT_VIEW:
            return same_bits(a, b)
        return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    if isinstance(a, dict):
        return (isinstance(b, dict) and a.keys() == b.keys()
                and all(deep_equal(a[k], b[k]) for k in a))
    if isinstance(a, (list, tuple)):
        return (type(a) is type(b) and len(a) == len(b)
                and all(deep_equal(x, y) for x, y in zip(a, b)))
    return type(a) is type(b) and a == b


class Objective:
    """A smooth, non-quadratic objective over several tensors of given shapes.

    ``f(params) = sum_k sum w_k (p_k - t_k)^2 + 0.1 sum sin(p_k)``, always computed in float64,
    callable on the live parameters (closure path) or on a flat batch ``X`` (batched path).
    """

    def __init__(self, shapes: Sequence[tuple[int, ...]], seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.shapes = [torch.Size(s) for s in shapes]
        self.numels = [s.numel() for s in self.shapes]
        self.target = torch.randn(sum(self.numels), generator=g, dtype=torch.float64)
        self.weight = torch.rand(sum(self.numels), generator=g, dtype=torch.float64) + 0.5
        self.start = [torch.randn(s, generator=g, dtype=torch.float64) for s in self.shapes]

    def batched(self, X: Tensor) -> Tensor:
        X = X.to(torch.float64)
        return (self.weight * (X - self.target) ** 2).sum(-1) + 0.1 * torch.sin(X).sum(-1)

    def __call__(self, params: Sequence[Tensor]) -> Tensor:
        flat = torch.cat([p.detach().reshape(-1).to(torch.float64) for p in params])
        return self.batched(flat.unsqueeze(0))[0]

    def params(self, dtypes: Sequence[torch.dtype] | torch.dtype = torch.float64,
               device: str = "cpu") -> list[Tensor]:
        if isinstance(dtypes, torch.dtype):
            dtypes = [dtypes] * len(self.shapes)
        return [s.to(dtype=dt, device=device, copy=True).requires_grad_(True)
                for s, dt in zip(self.start, dtypes)]


class CountingClosure:
    """A closure over ``objective(params)`` that records every call and every returned loss."""

    def __init__(self, objective: Objective, params: Sequence[Tensor]) -> None:
        self.objective = objective
        self.params = list(params)
        self.calls = 0
        self.returned: list[Tensor] = []

    def __call__(self) -> Tensor:
        self.calls += 1
        loss = self.objective(self.params)
        self.returned.append(loss)
        return loss


def random_nets(seed: int = 1, gain: float = 5.0, kind: str = "paper") -> LearnedZO:
    """Random ZO-LSTM nets whose outputs are large enough that a wrong step would show."""
    torch.manual_seed(seed)
    nets = LearnedZO(arch=ARCHITECTURES[kind]())
    with torch.no_grad():
        for p in nets.parameters():
            if p.dim() and not p.any():  # the general arch's zero-initialised read-outs
                p.normal_(0, 0.05)
            p.mul_(gain if p.dim() else 1.0)
    return nets
