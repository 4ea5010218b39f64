"""The learned networks of ZO-LSTM and the functional step shared by ZOLSTM and meta-training."""
from . import core
from .nets import ARCH_KINDS, Arch, CoordLSTM, LearnedZO

__all__ = ["ARCH_KINDS", "Arch", "CoordLSTM", "LearnedZO", "core"]
