"""Choosing a learned optimizer's output scale on validation problems.

ZOLSTM with one weights file at several ``lr`` (the paper's alpha) against ZO-Adam at given
hyperparameters, on the first problems of a task's validation split, one run each (ZOLSTM
seed 1, data seed = problem index). Reported per lr: the mean loss at half the horizon, at the
end, averaged over steps 1..horizon, and the first step at which the mean curve reaches
ZO-Adam's final loss. This is how the output scale baked into the shipped ``mnist-attack``
was chosen (``docs/pretrained.md``); no test problem is touched.

    python -m benchmarks.paper.lr_scan --task mnist-attack --weights FILE --lr 0.3 0.5
        --adam-lr 0.00717 --adam-betas 0.2 0.999 [--problems 50] [--out docs/benchmarks]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch

from torchzo.meta import run_optimizer
from torchzo.optim import ZOLSTM, ZOAdam
from torchzo.progress import Progress
from torchzo.tasks import get_task

from .._common import finish, machine
from .._report import md_table, section


def curves(task: Any, problems: list[Any], make: Any, progress: Progress | None = None,
           label: str = "") -> torch.Tensor:
    """One run per problem: (problems, horizon + 1) losses."""
    out = []
    for i, p in enumerate(problems):
        out.append(run_optimizer(p, make, task.horizon, data_seed=i))
        if progress is not None:
            progress.update(run=label)
    return torch.stack(out)


def summary(c: torch.Tensor, target: float) -> dict[str, Any]:
    mean = c.mean(0)
    reached = (mean <= target).nonzero()
    horizon = len(mean) - 1
    return {"half": float(mean[horizon // 2]), "final": float(mean[-1]),
            "curve_mean": float(mean[1:].mean()),
            "reaches_adam_final": int(reached[0]) if len(reached) else None}


def render(data: dict[str, Any]) -> str:
    half = data["horizon"] // 2
    rows = [[name, f"{r['half']:.4f}", f"{r['final']:.4f}", f"{r['curve_mean']:.4f}",
             r["reaches_adam_final"] if r["reaches_adam_final"] is not None else "never"]
            for name, r in data["runs"].items()]
    return "\n".join(section(
        f"Output-scale scan: {data['weights']} on {data['task']}",
        (__doc__ or "").split("\n\n    python")[0],
        f"Problems: the first {data['problems']} of the validation split, "
        f"horizon {data['horizon']}, q = {data['q']}. Machine: {data['machine']['cpu']}. "
        f"Command: `{data['command']}` ({data['elapsed_s']:.0f} s).",
        md_table(["run", f"loss at step {half}", f"loss at step {data['horizon']}",
                  "mean over steps", "reaches ZO-Adam's final at"], rows), level=1))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.paper.lr_scan",
                                 description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--task", required=True)
    ap.add_argument("--weights", required=True, help="a weights file or a shipped name")
    ap.add_argument("--lr", type=float, nargs="+", required=True)
    ap.add_argument("--adam-lr", type=float, required=True)
    ap.add_argument("--adam-betas", type=float, nargs=2, required=True)
    ap.add_argument("--problems", type=int, default=None, help="default: the whole split")
    ap.add_argument("--name", default=None, help="output file stem (default: lr-scan-TASK)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    task = get_task(args.task)
    problems = list(task.problems("val"))[: args.problems]
    betas = tuple(args.adam_betas)
    progress = Progress(total=(1 + len(args.lr)) * len(problems), desc="lr scan", unit="run")
    adam = curves(task, problems, lambda ps: ZOAdam(ps, lr=args.adam_lr, betas=betas,
                                                    q=task.q, mu=task.mu, seed=1),
                  progress, "ZO-Adam")
    target = float(adam[:, -1].mean())
    runs = {f"ZO-Adam lr {args.adam_lr}, betas {betas}": summary(adam, target)}
    for lr in args.lr:
        c = curves(task, problems, lambda ps, lr=lr: ZOLSTM(ps, pretrained=args.weights, lr=lr,
                                                            q=task.q, mu=task.mu, seed=1),
                   progress, f"ZOLSTM lr {lr}")
        runs[f"ZOLSTM lr {lr}"] = summary(c, target)
    progress.close()
    data: dict[str, Any] = {
        "machine": machine(), "task": args.task, "weights": args.weights,
        "problems": len(problems), "horizon": task.horizon, "q": task.q, "runs": runs,
        "command": "python -m benchmarks.paper.lr_scan "
                   + " ".join(sys.argv[1:] if argv is None else argv)}
    return finish(data, start, args.name or f"lr-scan-{args.task}", args.out, render)


if __name__ == "__main__":
    main()
