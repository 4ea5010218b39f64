"""Do hand-set step-size schedules help tuned ZO-Adam on binary classification?

A learned optimizer that knows the fraction of the horizon done could implement a schedule;
this checks first whether any simple schedule beats a constant step on the task. ZO-Adam with
the tuned betas (0.6, 0.999) and lr 0.056 (``docs/benchmarks/binclass.md``), on training
datasets, with constant, cosine, linear-decay and linear-ramp schedules; ZO-SGD with and
without momentum for reference. Mean full-data loss at steps 250 and 500.

    python -m benchmarks.paper.schedules --out docs/benchmarks
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch

from torchzo.optim import ZOSGD, ZOAdam, ZOOptimizer
from torchzo.oracle import Batched
from torchzo.progress import Progress
from torchzo.tasks import BinaryClassification

from .._common import finish, machine
from .._report import md_table, section

Schedule = Callable[[int], float]


def _runs(steps: int) -> dict[str, tuple[Callable[[list[torch.Tensor], int], ZOOptimizer],
                                          Schedule]]:
    def adam(lr: float) -> Callable[[list[torch.Tensor], int], ZOOptimizer]:
        return lambda p, s: ZOAdam(p, lr=lr, betas=(0.6, 0.999), q=20, seed=s)

    def sgd(lr: float, momentum: float = 0.0) -> Callable[[list[torch.Tensor], int], ZOOptimizer]:
        return lambda p, s: ZOSGD(p, lr=lr, momentum=momentum, q=20, seed=s)

    def cosine(t: int) -> float:
        return 0.5 * (1 + math.cos(math.pi * t / steps))

    def linear(t: int) -> float:
        return 1 - t / steps

    runs: dict[str, tuple[Callable[[list[torch.Tensor], int], ZOOptimizer], Schedule]] = {
        "ZO-Adam lr 0.056, constant": (adam(0.056), lambda t: 1.0)}
    for lr in (0.1, 0.2, 0.4):
        runs[f"ZO-Adam lr {lr}, cosine decay"] = (adam(lr), cosine)
        runs[f"ZO-Adam lr {lr}, linear decay"] = (adam(lr), linear)
    for r in (2, 4):
        runs[f"ZO-Adam lr 0.056, linear ramp to x{r}"] = (
            adam(0.056), lambda t, r=r: 1 + (r - 1) * t / steps)  # type: ignore[misc]
    runs["ZO-SGD lr 3.16, constant"] = (sgd(3.16), lambda t: 1.0)
    runs["ZO-SGD lr 1, momentum 0.7"] = (sgd(1.0, 0.7), lambda t: 1.0)
    return runs


def run(make: Callable[[list[torch.Tensor], int], ZOOptimizer], schedule: Schedule,
        problems: list[Any], steps: int) -> torch.Tensor:
    """Mean full-data loss curve over ``problems`` (``steps + 1`` points)."""
    curves = []
    for k, problem in enumerate(problems):
        x = problem.x0.clone()
        opt = make([x], k)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
        data = torch.Generator().manual_seed(k)
        losses = [float(problem.objective(x))]
        for _ in range(steps):
            batch = problem.sample_batch(data)
            opt.step(Batched(lambda X, b=batch, pr=problem: pr.loss(X, b)))  # type: ignore[misc]
            sched.step()
            losses.append(float(problem.objective(x)))
        curves.append(losses)
    return torch.tensor(curves).mean(0)


def render(data: dict[str, Any]) -> str:
    rows = [[name, f"{r['mid']:.4f}", f"{r['final']:.4f}"] for name, r in data["runs"].items()]
    return "\n".join(section(
        "Step-size schedules for ZO-Adam (binary classification)",
        (__doc__ or "").split("\n\n    python")[0],
        f"Datasets: the first {data['datasets']} training datasets, one run each, "
        f"{data['steps']} steps, q = 20. Machine: {data['machine']}. "
        f"Command: `{data['command']}` ({data['elapsed_s']:.0f} s).",
        md_table(["run", f"loss at step {data['steps'] // 2}", f"loss at step {data['steps']}"],
                 rows), level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper.schedules")
    ap.add_argument("--datasets", type=int, default=6)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=None)
    ap.add_argument("--quick", action="store_true", help="2 datasets, 20 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.datasets, args.steps = 2, 20
    torch.set_num_threads(1)
    start = time.perf_counter()
    problems = list(BinaryClassification().problems("train"))[: args.datasets]
    data: dict[str, Any] = {"machine": machine(), "datasets": args.datasets,
                            "steps": args.steps, "runs": {},
                            "command": "python -m benchmarks.paper.schedules"
                                       + (" --quick" if args.quick else "")}
    runs = _runs(args.steps)
    with Progress(total=len(runs), desc="schedules", unit="schedule") as progress:
        for name, (make, schedule) in runs.items():
            curve = run(make, schedule, problems, args.steps)
            data["runs"][name] = {"mid": float(curve[args.steps // 2]),
                                  "final": float(curve[-1])}
            progress.update(last=name)
    return finish(data, start, "schedules", args.out, render)


if __name__ == "__main__":
    main()
