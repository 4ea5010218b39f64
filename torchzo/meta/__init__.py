"""Meta-training of learned ZO optimizers: train a ZO-LSTM for your own problem class.

``meta_train(task, MetaConfig(...))`` returns trained :class:`~torchzo.learned.LearnedZO`
weights; ``python -m torchzo.meta train --task NAME --out FILE`` does the same from the shell.
Two gradient estimators, :class:`TruncatedGradient` (backprop through truncated rollouts, the
paper's) and :class:`~torchzo.meta.es_gradient.ESGradient` (evolution strategies over whole
runs, :mod:`torchzo.meta.es`), run under one outer loop, :class:`MetaLoop`.
"""
from .fdgrad import fd_loss
from .loop import Estimate, LoopConfig, MetaLoop, Validation
from .rollout import Rollout, RolloutConfig
from .run import run_optimizer
from .tbptt import TruncatedGradient
from .trainer import MetaConfig, StageConfig, evaluate, meta_train

__all__ = ["Estimate", "LoopConfig", "MetaConfig", "MetaLoop", "Rollout", "RolloutConfig",
           "StageConfig", "TruncatedGradient", "Validation", "evaluate", "fd_loss",
           "meta_train", "run_optimizer"]
