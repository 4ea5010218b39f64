"""One optimizee run under meta-training: ZO-LSTM unrolled with autograd, truncated BPTT.

Every step is :func:`torchzo.learned.plan`, the oracle's entry point and
:func:`torchzo.learned.update`, as in
:class:`torchzo.ZOLSTM`, with a generator seeded like the optimizer's, so a rollout and an
optimizer run with the same seeds take the same steps.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..learned import Group, init, plan, update
from ..learned.nets import LearnedZO
from ..oracle import Batched, Part, Scheme, default_mu, estimate_gradient
from ..tasks import Problem
from .fdgrad import fd_loss

__all__ = ["Rollout", "RolloutConfig"]


@dataclass
class RolloutConfig:
    """How the optimizer is unrolled and differentiated.

    Attributes:
        use_query: run the QueryRNN (stage 2); otherwise standard Gaussian directions.
        query_grad: ``"full"`` lets the meta-gradient reach the QueryRNN through the queried
            values f(x + mu u) and through the u factor of the estimate; ``"u"`` keeps the
            reference code's behaviour (values constant, only the u factor).
        grad_mode: ``"true"`` differentiates the optimizee; ``"fd"`` uses paper eq. 5.
        reg: lambda of the QueryRNN regulariser lambda * sum(o^2).
    """

    q: int = 20
    mu: float | None = None
    estimator: str = "forward"
    lr: float = 1.0
    use_query: bool = False
    query_grad: str = "full"
    grad_mode: str = "true"
    fd_mu: float = 1e-3
    reg: float = 0.005

    def __post_init__(self) -> None:
        if self.query_grad not in ("full", "u"):
            raise ValueError(f"query_grad must be 'full' or 'u', got {self.query_grad!r}")
        if self.grad_mode not in ("true", "fd"):
            raise ValueError(f"grad_mode must be 'true' or 'fd', got {self.grad_mode!r}")


class Rollout:
    """The evolving point, LSTM states and random streams of one optimizee."""

    def __init__(self, problem: Problem, nets: LearnedZO, cfg: RolloutConfig, seed: int,
                 data_seed: int) -> None:
        self.problem, self.nets, self.cfg = problem, nets, cfg
        self.x = problem.x0.clone().float()
        mu = cfg.mu if cfg.mu is not None else default_mu(self.x.dtype)
        self.part = Part((0,), Scheme(cfg.estimator, cfg.q), mu)
        self.weights = nets.weights()
        covariance = "learned" if cfg.use_query else "identity"
        self.groups = [Group((0,), cfg.lr, covariance=covariance, query_prob=1.0,
                             q=self.part.scheme.directions)]
        self.state = init(nets.arch, [self.x], self.groups)
        self.generator = torch.Generator().manual_seed(seed)
        self.data = torch.Generator().manual_seed(data_seed)
        self.t = 0

    def _objective(self, X: Tensor) -> Tensor:
        fn = self.problem.loss
        return fd_loss(fn, self.cfg.fd_mu)(X) if self.cfg.grad_mode == "fd" else fn(X)

    def step(self) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns (objective after the step, regulariser) with graphs."""
        cfg = self.cfg
        batch = self.problem.sample_batch(self.data)

        def batch_loss(X: Tensor) -> Tensor:
            return self.problem.loss(X, batch)

        def queried(X: Tensor) -> Tensor:
            if not (cfg.use_query and cfg.query_grad == "full"):
                with torch.no_grad():
                    return batch_loss(X)
            return fd_loss(batch_loss, cfg.fd_mu)(X) if cfg.grad_mode == "fd" else batch_loss(X)

        arch = self.nets.arch
        planned = plan(self.weights, arch, [self.x], self.state, self.groups, [self.part],
                       self.generator)
        found = estimate_gradient(Batched(queried), [self.x], planned.queries)
        result = update(self.weights, arch, [self.x], self.state, self.groups, found.grads,
                        found.loss, planned)
        (self.x,), self.state = result.params, result.state
        out = planned.query_outputs[0]
        reg = self.x.new_zeros(()) if out is None else cfg.reg * (out ** 2).sum()
        self.t += 1
        return self._objective(self.x.unsqueeze(0))[0], reg

    def detach(self) -> None:
        """Cut the graph at a truncation boundary; values carry on."""
        self.x = self.x.detach()
        self.state = self.state.detached()
