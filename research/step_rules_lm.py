"""Two measured step sizes on the fine-tuning benchmark's LM (validation split), prototypes in
plain torch on the flattened parameters: a Newton step along one direction, and a step set by
curvature and a measured signal-to-noise ratio (research/log.md, session 21).

- ``newton``: per step f(x), f(x + mu u), f(x - mu u) on one batch; ``a`` and
  ``h = (f+ + f- - 2 f0) / mu^2``; ``x -= c * a u / hbar``, hbar a running mean of h (decay 0.9).
- ``snr``: forward differences along q = 4 directions plus f(x - mu u_0) (curvature along
  u_0), u_0 carried over from the last step's second direction, so that each step has two
  batches' derivatives along one direction; ``snr`` = running mean of their product over the
  running mean square of a difference (a prior of 0.05 worth ten steps, clipped to [0.01, 1]);
  ``x -= c * (q snr / hbar) * mean_k(a_k u_k)``.

    python -m research.step_rules_lm [--seeds 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from benchmarks._common import finish, machine
from benchmarks._report import md_table
from benchmarks.finetune import quality as Q
from benchmarks.perf.finetune import TinyLM

from .newton_start_lm import start_model

ARCH, BUDGET, MU = (128, 2), 1500, 1e-3


def _loss_at(model: TinyLM, task: Q.Task, batch: Any):
    params = list(model.parameters())

    def f(v: torch.Tensor) -> float:
        vector_to_parameters(v, params)
        return float(task.loss(model, batch))
    return f


def newton(model: TinyLM, task: Q.Task, seed: int, c: float) -> dict[str, float]:
    g, gu = torch.Generator().manual_seed(1000 + seed), torch.Generator().manual_seed(seed)
    x = parameters_to_vector(model.parameters()).detach().clone()
    hbar = weight = 0.0
    hs, evals = [], 0
    with torch.no_grad():
        while evals + 3 <= BUDGET:
            f = _loss_at(model, task, task.batch(g))
            u = torch.randn(x.numel(), generator=gu)
            f0, fp, fm = f(x), f(x + MU * u), f(x - MU * u)
            evals += 3
            a, h = (fp - fm) / (2 * MU), (fp + fm - 2 * f0) / MU ** 2
            hs.append(h)
            hbar, weight = 0.9 * hbar + 0.1 * h, 0.9 * weight + 0.1
            x -= c * a / max(hbar / weight, 1e-8) * u
    vector_to_parameters(x, list(model.parameters()))
    h_t = torch.tensor(hs)
    return {"h_mean": float(h_t.mean()), "h_std": float(h_t.std())}


def snr_rule(model: TinyLM, task: Q.Task, seed: int, c: float, q: int = 4,
             beta: float = 0.95, prior: float = 0.05) -> dict[str, float]:
    g, gu = torch.Generator().manual_seed(1000 + seed), torch.Generator().manual_seed(seed)
    x = parameters_to_vector(model.parameters()).detach().clone()
    s_aa = s_a2 = s_h = weight = 0.0
    evals, carried, etas, snrs = 0, None, [], []
    with torch.no_grad():
        while evals + q + 2 <= BUDGET:
            f = _loss_at(model, task, task.batch(g))
            f0 = f(x)
            us = [carried[0] if carried is not None else torch.randn(x.numel(), generator=gu)]
            us += [torch.randn(x.numel(), generator=gu) for _ in range(q - 1)]
            fp0, fm0 = f(x + MU * us[0]), f(x - MU * us[0])
            a = [(fp0 - fm0) / (2 * MU)] + [(f(x + MU * u) - f0) / MU for u in us[1:]]
            h = (fp0 + fm0 - 2 * f0) / MU ** 2
            evals += q + 2
            s_a2 = beta * s_a2 + (1 - beta) * sum(v * v for v in a) / q
            s_h = beta * s_h + (1 - beta) * h
            if carried is not None:
                s_aa = beta * s_aa + (1 - beta) * a[0] * carried[1]
            weight = beta * weight + (1 - beta)
            n = weight / (1 - beta)  # steps seen, as the running means weigh them
            snr = (s_aa / weight * n + prior * 10 * s_a2 / weight) / (n + 10) / max(
                s_a2 / weight, 1e-30)
            snr = min(max(snr, 0.01), 1.0)
            eta = c * q * snr / max(s_h / weight, 1e-8)
            x -= eta * sum(ak * u for ak, u in zip(a, us)) / q
            carried = (us[1], a[1])
            etas.append(eta)
            snrs.append(snr)
    vector_to_parameters(x, list(model.parameters()))
    return {"eta_median": sorted(etas)[len(etas) // 2], "snr_median": sorted(snrs)[len(snrs) // 2]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--task", default="text")
    ap.add_argument("--out", default="research/results", help="'' to write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = Q.corpus()
    weights = Q.pretrained(data, 1500, ARCH)
    task = Q.Task(args.task, data)
    rules = {**{f"newton c = {c}": (newton, c) for c in (0.5, 1.0)},
             **{f"snr c = {c}": (snr_rule, c) for c in (0.5, 1.0, 2.0)}}
    out: dict[str, Any] = {"command": " ".join(["python -m research.step_rules_lm",
                                                *(sys.argv[1:] if argv is None else argv)]),
                           "machine": machine(), "task": args.task, "rows": {}}
    for label, (rule, c) in rules.items():
        out["rows"][label] = []
        for seed in range(args.seeds):
            model = start_model(weights, seed)
            info = rule(model, task, seed, c)
            out["rows"][label].append({"val": task.score(model, "val"), **info})
        print(label, [round(r["val"], 5) for r in out["rows"][label]], flush=True)
    out["seconds"] = round(time.perf_counter() - start)
    return finish(out, start, "step-rules-lm", args.out, render)


def render(data: dict[str, Any]) -> str:
    """Validation loss per rule, one column per seed."""
    table = [[label, *(f"{r['val']:.5f}" for r in runs)] for label, runs in data["rows"].items()]
    return "\n".join([
        f"# Measured step sizes on the fine-tuning LM ({data['task']}, validation loss)", "",
        f"`{data['command'].strip()}`", "",
        md_table(["rule", *(f"seed {i}" for i in range(len(table[0]) - 1))], table)])


if __name__ == "__main__":
    main()
