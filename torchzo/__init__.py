"""torchzo: zeroth-order optimization for PyTorch, hand-designed and learned."""
from . import learned, optim, oracle, pretrained, tasks
from .optim import ZOLSTM, ZOSGD, ZOAdam, ZOOptimizer, ZOSignSGD
from .oracle import Batched, ClosureError

__version__ = "0.1.0"

__all__ = ["ZOLSTM", "ZOSGD", "Batched", "ClosureError", "ZOAdam", "ZOOptimizer", "ZOSignSGD",
           "__version__", "learned", "oracle", "optim", "pretrained", "tasks"]
