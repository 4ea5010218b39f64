"""The research prototypes' measuring parts (their runs are scripts; research/log.md)."""
from __future__ import annotations

import math

import pytest
import torch

from research.newton_start import newton_distance
from torchzo.tasks import Problem


@pytest.mark.parametrize("d", [3, 50, 2000])
def test_newton_distance_probe_is_the_distance_to_the_minimum_of_an_isotropic_quadratic(d):
    # The research probe's s_N on L/2 |x - x*|^2 is |x - x*| / sqrt(d) for any L and any
    # directions: each central difference is exact, a_k = L (x - x*) . u_k and h_k = L |u_k|^2,
    # so only the directions' norms against the projections' spread remain (sqrt(d) rms(a) /
    # mean(h) is exact in expectation; at q = 4 it scatters, so a band, not equality).
    g = torch.Generator().manual_seed(d)

    class Sphere(Problem):
        def __init__(self, scale: float, distance: float) -> None:
            self.scale, self.x_star = scale, torch.randn(d, generator=g)
            self.x0 = self.x_star + distance * torch.randn(d, generator=g)

        def loss(self, X, batch=None):
            return 0.5 * self.scale * ((X.double() - self.x_star.double()) ** 2).sum(-1)

    ratios = []
    for k in range(40):
        problem = Sphere(scale=10.0 ** (k % 5 - 2), distance=10.0 ** (k % 3 - 2))
        s_n, s0 = newton_distance(problem, seed=k)
        ratios.append(s_n / float((problem.x0 - problem.x_star).pow(2).mean().sqrt()))
    ratios_t = torch.tensor(ratios)
    assert 0.8 < float(ratios_t.median()) < 1.25 and float(ratios_t.min()) > 0.2
    assert s0 > 0


def test_newton_start_tiny_run_writes_its_table(tmp_path):
    from research import newton_start

    data = newton_start.main(["--families", "quartic,near-optimum", "--instances", "1",
                              "--steps", "5", "--c", "0.1", "--out", str(tmp_path)])
    for family in ("quartic", "near-optimum"):
        summary = data["families"][family]["summary"]
        assert set(summary) == {"default", "C=0.1"}
        assert all(math.isfinite(s["mean"]) for s in summary.values())
    text = (tmp_path / "newton-start.md").read_text()
    assert "| quartic |" in text and "| family | default | C=0.1 |" in text
