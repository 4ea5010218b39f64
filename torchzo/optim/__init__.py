"""torch.optim-style optimizers over the ZO oracle, and their functional update kernels."""
from ._guard import NonFiniteUpdateError, ZeroSignalWarning
from .base import ZOOptimizer
from .zoadam import ZOAdam, zo_adam
from .zolstm import ZOLSTM
from .zosgd import ZOSGD, zo_sgd
from .zosignsgd import ZOSignSGD, zo_signsgd

__all__ = ["ZOLSTM", "ZOSGD", "NonFiniteUpdateError", "ZOAdam", "ZOOptimizer", "ZOSignSGD",
           "ZeroSignalWarning", "zo_adam", "zo_sgd", "zo_signsgd"]
