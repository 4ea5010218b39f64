"""torchzo: zeroth-order optimization for PyTorch, hand-designed and learned."""
from . import cpu, learned, optim, oracle, pretrained, progress, tasks
from .attack import AttackResult, attack
from .optim import (
    ZOLSTM,
    ZOSGD,
    NonFiniteUpdateError,
    ZeroSignalWarning,
    ZOAdam,
    ZOOptimizer,
    ZOSignSGD,
)
from .oracle import Batched, ClosureError
from .plot import plot_recorders
from .recorder import Recorder

__version__ = "0.1.0"

__all__ = ["ZOLSTM", "ZOSGD", "AttackResult", "Batched", "ClosureError", "NonFiniteUpdateError",
           "Recorder", "ZOAdam", "ZOOptimizer", "ZOSignSGD", "ZeroSignalWarning", "__version__",
           "attack", "cpu", "learned", "oracle", "optim", "plot_recorders", "pretrained",
           "progress", "tasks"]
