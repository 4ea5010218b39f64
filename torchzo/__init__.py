"""torchzo: zeroth-order optimization for PyTorch, hand-designed and learned."""
from . import cpu, learned, optim, oracle, pretrained, tasks
from .attack import AttackResult, attack
from .optim import ZOLSTM, ZOSGD, ZOAdam, ZOOptimizer, ZOSignSGD
from .oracle import Batched, ClosureError
from .recorder import Recorder

__version__ = "0.1.0"

__all__ = ["ZOLSTM", "ZOSGD", "AttackResult", "Batched", "ClosureError", "Recorder", "ZOAdam",
           "ZOOptimizer", "ZOSignSGD", "__version__", "attack", "cpu", "learned", "oracle", "optim",
           "pretrained", "tasks"]
