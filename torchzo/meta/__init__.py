"""Meta-training of learned ZO optimizers: train a ZO-LSTM for your own problem class.

``meta_train(task, MetaConfig(...))`` returns trained :class:`~torchzo.learned.LearnedZO`
weights; ``python -m torchzo.meta train --task NAME --out FILE`` does the same from the shell.
"""
from .fdgrad import fd_loss
from .rollout import Rollout, RolloutConfig
from .run import run_optimizer
from .trainer import MetaConfig, StageConfig, evaluate, meta_train

__all__ = ["MetaConfig", "Rollout", "RolloutConfig", "StageConfig", "evaluate", "fd_loss",
           "meta_train", "run_optimizer"]
