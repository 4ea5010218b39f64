"""The zeroth-order gradient oracle shared by every torchzo optimizer and by meta-training."""
from . import kernels
from .backup import ParameterBackup
from .closure import ClosureError, call_closure, loss_value
from .directions import KINDS, Guide, Layout, Signs, draw_seeds, generation_dtype
from .distributed import RankFailedError
from .estimator import Batched, estimate_batched, estimate_closure
from .gradient import Estimate, estimate_gradient
from .module import module_objective
from .population import estimate_population
from .query import Part, Query
from .schemes import SCHEMES, Scheme, default_mu

__all__ = [
    "KINDS", "SCHEMES", "Batched", "ClosureError", "Estimate", "Guide", "Layout",
    "ParameterBackup", "Part", "Query", "RankFailedError", "Scheme", "Signs", "call_closure",
    "default_mu", "draw_seeds", "estimate_batched", "estimate_closure", "estimate_gradient",
    "estimate_population", "generation_dtype", "kernels", "loss_value", "module_objective",
]
