"""Policies on small simulators: the generalist's black-box control objectives.

Every simulator runs every row of ``X`` (one policy each) in parallel, from a few fixed start
states drawn with the instance.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .base import Problem
from .synthetic import log_uniform, randint

__all__ = ["CartPole", "Pendulum", "PointMass"]


def _mlp_policy(X: Tensor, s: Tensor, inputs: int, hidden: int, outputs: int) -> Tensor:
    """A tanh MLP per row of ``X`` (B, d) applied to states ``s`` (B, S, inputs)."""
    B = X.shape[0]
    i = hidden * inputs
    w1 = X[:, :i].reshape(B, hidden, inputs)
    b1 = X[:, i:i + hidden]
    w2 = X[:, i + hidden:i + hidden + outputs * hidden].reshape(B, outputs, hidden)
    h = torch.tanh(torch.einsum("bhi,bsi->bsh", w1, s) + b1[:, None])
    return torch.einsum("boh,bsh->bso", w2, h)


def _policy_size(inputs: int, hidden: int, outputs: int) -> int:
    return hidden * inputs + hidden + outputs * hidden


class CartPole(Problem):
    """Balance a pole on a cart: loss = 1 - the fraction of ``steps`` survived, averaged over
    start states. Piecewise constant in the policy: a radius ``mu`` of ~0.1 is needed."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, steps: int = 60) -> None:
        self.hidden = randint(g, 2, 8)
        self.steps = steps
        self.starts = (torch.rand(4, 4, generator=g) - 0.5) * 0.1
        self.x0 = 0.5 * torch.randn(_policy_size(4, self.hidden, 1), generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        s = self.starts.expand(X.shape[0], -1, -1).clone()
        alive = torch.ones(s.shape[:2])
        survived = torch.zeros(s.shape[:2])
        gravity, cart, pole, length, dt = 9.8, 1.0, 0.1, 0.5, 0.02
        for _ in range(self.steps):
            force = 10 * torch.tanh(_mlp_policy(X, s, 4, self.hidden, 1)[..., 0])
            x, v, th, om = s.unbind(-1)
            cos, sin = th.cos(), th.sin()
            temp = (force + pole * length * om ** 2 * sin) / (cart + pole)
            acc_th = (gravity * sin - cos * temp) / (
                length * (4 / 3 - pole * cos ** 2 / (cart + pole)))
            acc_x = temp - pole * length * acc_th * cos / (cart + pole)
            s = torch.stack([x + dt * v, v + dt * acc_x, th + dt * om, om + dt * acc_th], -1)
            alive = alive * ((s[..., 0].abs() < 2.4) & (s[..., 2].abs() < 0.21)).float()
            survived = survived + alive
        return 1 - survived.mean(-1) / self.steps


class PointMass(Problem):
    """Drive a 2-D point mass to a target with an MLP feedback policy: the mean over a
    simulated episode of squared distance plus a small control cost (smooth)."""

    f_min = 0.0

    def __init__(self, g: torch.Generator, steps: int = 50) -> None:
        self.hidden = randint(g, 4, 16)
        self.steps = steps
        self.starts = torch.cat([torch.randn(4, 2, generator=g), torch.zeros(4, 2)], -1)
        self.drag = log_uniform(g, 0.01, 0.5)
        self.x0 = 0.3 * torch.randn(_policy_size(4, self.hidden, 2), generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        s = self.starts.expand(X.shape[0], -1, -1)
        cost = torch.zeros(s.shape[:2])
        dt = 0.1
        for _ in range(self.steps):
            u = torch.tanh(_mlp_policy(X, s, 4, self.hidden, 2))
            pos, vel = s[..., :2], s[..., 2:]
            vel = vel + dt * (u - self.drag * vel)
            pos = pos + dt * vel
            s = torch.cat([pos, vel], -1)
            cost = cost + (pos ** 2).sum(-1) + 0.01 * (u ** 2).sum(-1)
        return cost.mean(-1) / self.steps


class Pendulum(Problem):
    """Swing a pendulum up from where it hangs and balance it on top, with a torque too weak
    to lift it directly (it must pump energy): a long-horizon, non-convex control objective.

    A rod of mass ``m`` and length ``l`` on a pivot, angle ``theta`` from upright (0 on top),
    ``theta'' = 3 g / (2 l) sin(theta) + 3 u / (m l^2)``, the speed clipped to 8 rad/s, 100
    semi-implicit Euler steps of 0.05 s. The policy (an MLP, as in :class:`PointMass`) sees
    ``(cos theta, sin theta, omega / 8)`` and applies ``u = u_max tanh(.)``, ``u_max`` 0.3 to
    0.7 of the gravity torque ``m g l / 2`` at horizontal. The cost of a step is ``(1 -
    cos theta) / 2`` at the state it starts from plus ``0.01 (omega / 8)^2 + 0.001 (u /
    u_max)^2`` of its speed and torque, averaged over the episode and four start states
    (angles uniform around the circle, speeds in ``[-1, 1]``): the loss lies in ``[0,
    1.011]``, and ``f_min = 0`` bounds it (no policy attains it from these starts). A batch
    of 21 policies costs 7 to 10 ms on one core (the op overhead of the loop, as in the others).
    """

    f_min = 0.0
    max_speed = 8.0

    def __init__(self, g: torch.Generator, steps: int = 100) -> None:
        self.hidden = randint(g, 4, 16)
        self.steps = steps
        self.mass = log_uniform(g, 0.5, 2.0)
        self.length = log_uniform(g, 0.5, 1.5)
        self.max_torque = log_uniform(g, 0.3, 0.7) * self.mass * 9.8 * self.length / 2
        self.starts = torch.stack([math.pi * (2 * torch.rand(4, generator=g) - 1),
                                   2 * torch.rand(4, generator=g) - 1], -1)
        self.x0 = 0.3 * torch.randn(_policy_size(3, self.hidden, 1), generator=g)

    def loss(self, X: Tensor, batch: object = None) -> Tensor:
        theta, omega = self.starts.expand(X.shape[0], -1, -1).unbind(-1)
        upright = speed = effort = torch.zeros(theta.shape)
        dt, top = 0.05, self.max_speed
        gravity = 3 * 9.8 / (2 * self.length)
        drive = 3 * self.max_torque / (self.mass * self.length ** 2)
        for _ in range(self.steps):
            cos, sin = theta.cos(), theta.sin()
            s = torch.stack([cos, sin, omega / top], -1)
            push = torch.tanh(_mlp_policy(X, s, 3, self.hidden, 1)[..., 0])
            omega = (omega + dt * (gravity * sin + drive * push)).clamp(-top, top)
            theta = theta + dt * omega
            # Sums of the terms, the angle's at the state each step starts from: fewer ops in
            # a loop whose cost is its ops' overhead.
            upright = upright + cos
            speed = speed + omega * omega
            effort = effort + push * push
        cost = (self.steps - upright) / 2 + 0.01 * speed / top ** 2 + 0.001 * effort
        return cost.mean(-1) / self.steps
