"""torchzo: zeroth-order optimization for PyTorch, hand-designed and learned."""
from . import optim, oracle
from .optim import ZOSGD, ZOAdam, ZOOptimizer, ZOSignSGD
from .oracle import Batched, ClosureError

__version__ = "0.1.0"

__all__ = ["ZOSGD", "Batched", "ClosureError", "ZOAdam", "ZOOptimizer", "ZOSignSGD",
           "__version__", "oracle", "optim"]
