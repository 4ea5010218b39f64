"""Direction or step size? The generalist's step with its size held fixed, on binary classification.

    python -m benchmarks.paper.step_size [--sizes 0.003,0.01,0.02,0.03,0.05,0.1] [--datasets 10]
                                   [--trials 2] [--weights NAME_OR_PATH] [--also A,B]
                                   [--out docs/benchmarks]

The paper's binary classification (d = 100, minibatch 64, q = 20, 500 steps), on its
*training* datasets: the test datasets, on which the generalist is judged, are not looked at here.
Methods, on the same datasets, direction seeds and minibatches:

- the generalist (``--weights``, default the shipped ``generalist``) at lr 1, as it ships;
- the same weights with the step-size controller silenced (its hand-rule gain and its read-out
  at zero), so that sigma stays at its start, set to each of ``--sizes`` times the RMS of
  the start point (``silenced``). The direction (the update net over the momenta) is unchanged;
- ZO-Adam at the settings tuned on these datasets (``docs/benchmarks/binclass.json``);
- ``--also``: other weights files, at lr 1 as they are.

Also recorded: the generalist's sigma over its runs, relative to the start point's RMS.
Outputs ``step-size-binclass.json`` and ``.md`` under ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch

import torchzo
from torchzo.learned import LearnedZO
from torchzo.tasks.binclass import BinaryClassification

from .._common import OUT, finish, machine
from .._report import md_table, paragraphs, section

_CHECKPOINTS = (50, 100, 200, 300, 400, 500)


def silenced(nets: LearnedZO, size: float) -> LearnedZO:
    """``nets`` whose step size starts at ``size * rms(x0)`` (its own start rule, with the
    start coefficient set and the absolute floor out of the way) and never moves: the
    controller's hand-rule gain and read-out are zero."""
    quiet = LearnedZO(arch=nets.arch)
    weights = {k: v.detach().clone() for k, v in nets.state_dict().items()}
    weights["gain"].zero_()
    weights["control.head.weight"].zero_()
    weights["log_lr"].fill_(math.log(size))
    weights["log_floor"].fill_(math.log(1e-30))
    quiet.load_state_dict(weights)
    return quiet


def run(problem: Any, make: Any, steps: int, trial: int, track: bool = False
        ) -> tuple[float, list[float]]:
    """Final full loss, and (``track``) sigma over the start RMS at the checkpoints."""
    x = problem.x0.detach().clone().float()
    rms0 = float(x.pow(2).mean().sqrt())
    opt = make([x], trial)
    data = torch.Generator().manual_seed(1000 * problem.seed + trial)
    sigmas = []
    for t in range(1, steps + 1):
        batch = problem.sample_batch(data)

        def fn(X: torch.Tensor, b: Any = batch) -> torch.Tensor:
            return problem.loss(X, b)
        opt.step(torchzo.Batched(fn))
        if track and t in _CHECKPOINTS:
            sigmas.append(float(opt.state[x]["group.log_sigma"].exp()) / rms0)
    return float(problem.loss(x)), sigmas


def _deciles(values: list[float]) -> list[float]:
    """The 10%, 50% and 90% quantiles (a single run: its value thrice)."""
    if len(values) < 2:
        return values * 3
    q = statistics.quantiles(values, n=10)
    return [q[0], q[4], q[8]]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--weights", default="generalist")
    ap.add_argument("--sizes", default="0.003,0.01,0.02,0.03,0.05,0.1")
    ap.add_argument("--also", default="", help="comma-separated weights files run as they are")
    ap.add_argument("--datasets", type=int, default=10, help="the first N training datasets")
    ap.add_argument("--trials", type=int, default=2)
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--name", default="step-size-binclass")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    torch.set_num_threads(1)
    def load(name: str) -> LearnedZO:
        return torchzo.pretrained.load(name) if name in torchzo.pretrained.available() \
            else torchzo.pretrained.load_file(name)
    nets = load(args.weights)
    others = {name: load(name) for name in args.also.split(",") if name}
    tuned = json.loads((OUT / "binclass.json").read_text())["tuning"]["best"]["zoadam"]
    problems = list(BinaryClassification().problems("train"))[:args.datasets]
    sizes = [float(s) for s in args.sizes.split(",")]

    def optimizer(name: str) -> Callable[[list[torch.Tensor], int], Any]:
        def make(params: list[torch.Tensor], seed: int) -> Any:
            if name == args.weights:
                return torchzo.ZOLSTM(params, pretrained=nets, seed=seed)
            if name in others:
                return torchzo.ZOLSTM(params, pretrained=others[name], seed=seed)
            if name == "ZOAdam tuned":
                return torchzo.ZOAdam(params, lr=tuned["lr"], betas=tuple(tuned["betas"]),
                                      seed=seed)
            return torchzo.ZOLSTM(params, pretrained=held[name], seed=seed)
        return make

    held = {f"sigma {c:g} x rms(x0)": silenced(nets, c) for c in sizes}
    names = [args.weights, "ZOAdam tuned", *others, *held]
    finals: dict[str, list[float]] = {name: [] for name in names}
    sigmas: list[list[float]] = []
    for p in problems:
        for trial in range(args.trials):
            for name in names:
                loss, track = run(p, optimizer(name), args.steps, trial,
                                  track=name == args.weights)
                finals[name].append(loss)
                if track:
                    sigmas.append(track)
    data: dict[str, Any] = {
        "command": "python -m benchmarks.paper.step_size " + " ".join(
            sys.argv[1:] if argv is None else argv),
        "machine": machine(), "config": vars(args), "tuned_adam": tuned,
        "datasets": [p.seed for p in problems], "finals": finals,
        "mean_final": {k: statistics.fmean(v) for k, v in finals.items()},
        "generalist_sigma_over_rms0": {
            "steps": list(_CHECKPOINTS),
            "quantiles_10_50_90": [_deciles(list(col)) for col in zip(*sigmas)]},
    }
    return finish(data, start, args.name, args.out, render)


def render(data: dict[str, Any]) -> str:
    cfg, tuned, sig = data["config"], data["tuned_adam"], data["generalist_sigma_over_rms0"]
    adam = data["mean_final"]["ZOAdam tuned"]
    rows = [[name, f"{m:.4f}", f"{m / adam:.2f}"] for name, m in data["mean_final"].items()]
    sigmas = [[t, *(f"{v:.2g}" for v in q)]
              for t, q in zip(sig["steps"], sig["quantiles_10_50_90"])]
    return "\n".join([
        *section(
            "Direction or step size: the generalist with its step size held fixed",
            f"`{data['command']}`. Binary classification (the paper's task), the first "
            f"{cfg['datasets']} *training* datasets x {cfg['trials']} trials, {cfg['steps']} "
            f"steps, q = 20; weights `{cfg['weights']}`. Machine: {data['machine']['cpu']}, one "
            "torch thread. *sigma c x rms(x0)*: the same weights with the step-size controller "
            "silenced (gain and read-out zero), sigma held at c times the start point's RMS. "
            f"ZO-Adam: lr {tuned['lr']:.4g}, betas {tuple(tuned['betas'])}, tuned on these "
            "datasets (`binclass.json`).", level=1),
        md_table(["method", "mean final loss", "ratio to tuned ZO-Adam"], rows),
        *paragraphs(f"The sigma of `{cfg['weights']}` over the start point's RMS along its runs "
                    "(10%, 50%, 90% quantiles over runs):"),
        md_table(["step", "10%", "median", "90%"], sigmas)])


if __name__ == "__main__":
    main()
