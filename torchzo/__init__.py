"""torchzo: zeroth-order optimization for PyTorch, hand-designed and learned."""
from . import learned, optim, oracle, pretrained, tasks
from .optim import ZOLSTM, ZOSGD, ZOAdam, ZOOptimizer, ZOSignSGD
from .oracle import Batched, ClosureError
from .recorder import Recorder

__version__ = "0.1.0"

__all__ = ["ZOLSTM", "ZOSGD", "Batched", "ClosureError", "Recorder", "ZOAdam", "ZOOptimizer",
           "ZOSignSGD", "__version__", "learned", "oracle", "optim", "pretrained", "tasks"]
