"""Meta-train a ZO-LSTM for your own problem class, then use it like any optimizer.

The problem class: noisy linear regression with a robust (Huber) loss, 30 parameters, each
problem with its own data. The script meta-trains the paper's ZO-LSTM on 16 training
problems, picks the checkpoint on 4 validation problems, and compares it on 4 held-out test
problems with ZO-Adam whose lr is chosen on the same validation problems. Run:

    python examples/meta_train.py          # under a minute on one CPU core
    python examples/meta_train.py --quick  # a smoke run
"""
from __future__ import annotations

import argparse

import torch

import torchzo
from torchzo.meta import MetaConfig, StageConfig, meta_train, run_optimizer
from torchzo.tasks import Problem, Task


class RobustRegression(Problem):
    def __init__(self, seed: int, dim: int = 30, samples: int = 200) -> None:
        g = torch.Generator().manual_seed(seed)
        self.features = torch.randn(samples, dim, generator=g)
        truth = torch.randn(dim, generator=g)
        self.targets = self.features @ truth + 0.5 * torch.randn(samples, generator=g)
        self.x0 = torch.zeros(dim)

    def loss(self, X: torch.Tensor, batch: object = None) -> torch.Tensor:
        residual = X @ self.features.T - self.targets  # (B, samples)
        return torch.nn.functional.huber_loss(
            residual, torch.zeros_like(residual), reduction="none").mean(-1)


class RobustRegressionTask(Task):
    def __init__(self, horizon: int) -> None:
        super().__init__("robust-regression", q=10, horizon=horizon, unroll=20)
        self.splits = {"train": range(0, 16), "val": range(100, 104), "test": range(200, 204)}

    def problems(self, split: str) -> list[RobustRegression]:
        self._check_split(split)
        return [RobustRegression(seed) for seed in self.splits[split]]


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)  # the coordinatewise LSTMs are small

    horizon = 20 if args.quick else 100
    epochs = (1, 1) if args.quick else (10, 5)
    task = RobustRegressionTask(horizon)
    cfg = MetaConfig(q=task.q, val_problems=2 if args.quick else 4,
                     update_stage=StageConfig(epochs[0], 2 if args.quick else 8, 1e-3),
                     query_stage=StageConfig(epochs[1], 2 if args.quick else 8, 5e-3))
    nets, history = meta_train(task, cfg)
    print(f"best validation loss: {history['query_best_val']:.4f}")

    def mean_final(make, split: str) -> float:
        finals = [float(run_optimizer(problem, make, horizon)[-1])
                  for problem in task.problems(split)]
        return sum(finals) / len(finals)

    def adam(lr: float):
        return lambda p: torchzo.ZOAdam(p, lr=lr, q=task.q, seed=0)

    best_lr = min((0.03, 0.1, 0.3, 1.0), key=lambda lr: mean_final(adam(lr), "val"))
    results = {
        "ZOLSTM (meta-trained here)": mean_final(
            lambda p: torchzo.ZOLSTM(p, pretrained=nets, q=task.q, seed=0), "test"),
        f"ZOAdam (lr {best_lr}, tuned)": mean_final(adam(best_lr), "test"),
    }
    for name, value in results.items():
        print(f"{name:28s} mean final test loss {value:.4f}")
    return results


if __name__ == "__main__":
    main()
