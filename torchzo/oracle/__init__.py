"""The zeroth-order gradient oracle shared by every torchzo optimizer and by meta-training."""
from .closure import ClosureError, ParameterBackup, call_closure, loss_value
from .directions import Guide, Layout, default_mu, draw_seeds, generation_dtype
from .distributed import RankFailedError
from .estimator import Batched, estimate_batched, estimate_closure
from .module import module_objective
from .schemes import SCHEMES, Scheme

__all__ = [
    "SCHEMES", "Batched", "ClosureError", "Guide", "Layout", "ParameterBackup", "RankFailedError",
    "Scheme", "call_closure", "default_mu", "draw_seeds", "estimate_batched", "estimate_closure",
    "generation_dtype", "loss_value", "module_objective",
]
