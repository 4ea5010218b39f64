"""Zeroth-order fine-tuning inside Lightning: manual optimisation, one torchzo step per batch.

Lightning calls ``backward()`` for you in automatic optimisation; a ZO step never does. With
``automatic_optimization = False`` the ``training_step`` calls ``opt.step(closure)`` itself,
and the closure returns the batch's loss. Lightning's precision plugin wraps that closure, so
its ``on_before_optimizer_step`` hooks run after every query of a step, not once. The model is
put in eval mode for the step (dropout off: every query of a step must see the same function).
Run (needs ``pip install lightning``):

    python examples/lightning_finetune.py
    python examples/lightning_finetune.py --steps 5      # a smoke run
"""
from __future__ import annotations

import argparse

import lightning as L
import torch
from torch import nn

import torchzo


class ZOFineTune(L.LightningModule):
    """A small regression model fine-tuned by ZO-SGD at inference memory (MeZO's step)."""

    def __init__(self, lr: float = 1e-3, q: int = 4) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.net = nn.Sequential(nn.Linear(16, 64), nn.Tanh(), nn.Dropout(0.1), nn.Linear(64, 1))
        self.lr, self.q = lr, q

    def configure_optimizers(self) -> torchzo.ZOSGD:
        return torchzo.ZOSGD(self.parameters(), lr=self.lr, q=self.q, estimator="central",
                             memory="inference", seed=0)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self.net.eval()
        loss = self.optimizers().step(lambda: nn.functional.mse_loss(self.net(x), y))
        self.log("train_loss", float(loss), prog_bar=True)
        self.log("zo_queries", float(self.optimizers().optimizer.queries))


def data(n: int = 512, seed: int = 0) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    return torch.utils.data.TensorDataset(x, torch.sin(x[:, :4].sum(1, keepdim=True)))


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    module = ZOFineTune()
    loader = torch.utils.data.DataLoader(data(), batch_size=64, shuffle=True)
    x, y = data(256, seed=1).tensors
    with torch.no_grad():
        first = float(nn.functional.mse_loss(module.net.eval()(x), y))
    module.train()
    trainer = L.Trainer(max_steps=args.steps, accelerator="cpu", logger=False,
                        enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(module, loader)
    with torch.no_grad():
        last = float(nn.functional.mse_loss(module.net.eval()(x), y))
    print(f"held-out MSE {first:.4f} -> {last:.4f} after {args.steps} ZO steps "
          f"({module.optimizers().optimizer.queries} queries)")
    return {"first": first, "last": last}


if __name__ == "__main__":
    main()
