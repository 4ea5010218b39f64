"""The probe-measured start (research/newton_start.py) on the fine-tuning benchmark's language
model: validation loss after 1500 forward passes, against MeZO's algorithm and ZO-SGD.

The 128x2 byte LM of ``benchmarks.finetune.quality`` (pretrained once, cached), its two tasks,
validation split only (the benchmark's test split is for its committed table). The untrained
lean rule at inference memory, q = 4, runs with ``lr = C * s_N / s0`` (the probe's 2q + 1
forward passes counted in the budget); MeZO (central, q = 1, ``loss_at_x=False``) and ZO-SGD
(forward, q = 4) at the rates the benchmark tuned for them.

    python -m research.newton_start_lm [--seeds 2] [--c 0.05,0.1,0.15] [--out DIR]
"""
from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable
from typing import Any

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

import torchzo
from benchmarks._common import finish, machine
from benchmarks._report import md_table
from benchmarks.finetune import quality as Q
from benchmarks.perf.finetune import TinyLM
from torchzo.learned.arch import LeanConfig
from torchzo.learned.nets import LearnedZO

ARCH = (128, 2)
BUDGET = 1500
#: The benchmark's tuned rates (docs/benchmarks/finetune-quality.md): MeZO's best and the one
#: its validation picked; ZO-SGD's.
BASELINES: dict[str, dict[str, Callable[..., Any]]] = {
    task: {
        **{f"MeZO lr {lr:g}": (lambda p, s, lr=lr: torchzo.ZOSGD(
            p, lr=lr, q=1, mu=1e-3, estimator="central", seed=s, memory="inference",
            loss_at_x=False)) for lr in ((1.58e-4, 3.16e-4) if task == "text" else (3.16e-4,))},
        f"ZO-SGD q = 4 lr {sgd:g}": (lambda p, s, sgd=sgd: torchzo.ZOSGD(
            p, lr=sgd, q=4, mu=1e-3, seed=s, memory="inference")),
    } for task, sgd in (("text", 3.16e-4), ("kind", 1e-3))}


def probe(model: TinyLM, task: Q.Task, batch: Any, seed: int, q: int = 4
          ) -> tuple[float, float]:
    """``(s_N, s0)`` as research/newton_start.py measures them, on the model's parameters."""
    params = list(model.parameters())
    x = parameters_to_vector(params).detach().clone()
    cfg = LeanConfig()
    s0 = max(cfg.init_lr * float(x.pow(2).mean().sqrt()), cfg.floor)
    mu = s0
    u = torch.randn(q, x.numel(), generator=torch.Generator().manual_seed(10_000 + seed))

    def f(v: torch.Tensor) -> float:
        vector_to_parameters(v, params)
        return float(task.loss(model, batch))
    with torch.no_grad():
        f0 = f(x)
        fp = torch.tensor([f(x + mu * uk) for uk in u], dtype=torch.float64)
        fm = torch.tensor([f(x - mu * uk) for uk in u], dtype=torch.float64)
        vector_to_parameters(x, params)
    a, h = (fp - fm) / (2 * mu), (fp + fm - 2 * f0) / mu ** 2
    return math.sqrt(x.numel()) * float(a.pow(2).mean().sqrt()) / float(h.mean()), s0


def start_model(weights: dict[str, Any], seed: int) -> TinyLM:
    """The pretrained LM as every run starts it: seeded, loaded, in eval mode."""
    torch.manual_seed(seed)
    model = Q.lm(ARCH)
    model.load_state_dict(weights)
    return model.eval()


def fine_tune(task: Q.Task, weights: dict[str, Any], seed: int,
              make: Callable[..., Any] | None, c: float | None = None) -> dict[str, float]:
    model = start_model(weights, seed)
    g = torch.Generator().manual_seed(1000 + seed)
    used, info = 0, {}
    if make is None:  # the lean rule, its start measured when c is given
        lr = 1.0
        if c is not None:
            s_n, s0 = probe(model, task, task.batch(g), seed)
            used, lr = 9, c * s_n / s0
            info = {"s_N": s_n, "lr": lr}
        nets = LearnedZO(arch=LeanConfig())
        opt = torchzo.ZOLSTM(list(model.parameters()), pretrained=nets, lr=lr, q=4, seed=seed,
                             memory="inference")
    else:
        opt = make(list(model.parameters()), seed)
    while used + opt.queries + opt.queries // max(opt.steps, 1) <= BUDGET:
        batch = task.batch(g)

        def closure(batch: Any = batch) -> torch.Tensor:
            return task.loss(model, batch)
        opt.step(closure)
    return {"val": task.score(model, "val"), **info}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--c", default="0.05,0.1,0.15")
    ap.add_argument("--out", default="research/results", help="'' to write nothing")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    start = time.perf_counter()
    data = Q.corpus()
    weights = Q.pretrained(data, 1500, ARCH)
    out: dict[str, Any] = {"command": "python -m research.newton_start_lm " + " ".join(
        argv or []), "machine": machine(), "budget": BUDGET, "tasks": {}}
    for name in ("text", "kind"):
        task = Q.Task(name, data)
        rows: dict[str, Any] = {"pretrained": task.score(start_model(weights, 0), "val")}
        runs: dict[str, tuple[Callable[..., Any] | None, float | None]] = {
            **{k: (m, None) for k, m in BASELINES[name].items()},
            "lean, default start": (None, None),
            **{f"lean, probe start C = {c}": (None, float(c)) for c in args.c.split(",")}}
        for label, (make, c) in runs.items():
            rows[label] = [fine_tune(task, weights, s, make, c) for s in range(args.seeds)]
            print(name, label, [round(r["val"], 5) for r in rows[label]], flush=True)
        out["tasks"][name] = rows
    out["seconds"] = round(time.perf_counter() - start)
    return finish(out, start, "newton-start-lm", args.out, render)


def render(data: dict[str, Any]) -> str:
    """Validation loss per method and task, one column per seed."""
    parts = ["# The probe-measured start on the fine-tuning LM (validation loss)", "",
             f"`{data['command'].strip()}`; budget {data['budget']} forward passes.", ""]
    for name, rows in data["tasks"].items():
        table = [[label, *(f"{r['val']:.5f}" for r in runs)]
                 for label, runs in rows.items() if label != "pretrained"]
        parts += [f"## {name} (pretrained {rows['pretrained']:.5f})", "",
                  md_table(["method", *(f"seed {i}" for i in range(len(table[0]) - 1))],
                           table)]
    return "\n".join(parts)


if __name__ == "__main__":
    main()
