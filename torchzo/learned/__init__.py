"""The learned networks of ZO-LSTM and the one learned step that ZOLSTM and meta-training run."""
from . import core
from .nets import ARCH_KINDS, Arch, CoordLSTM, LearnedZO
from .step import DIRECTIONS, Group, Plan, StepResult, plan, update

__all__ = ["ARCH_KINDS", "DIRECTIONS", "Arch", "CoordLSTM", "Group", "LearnedZO", "Plan",
           "StepResult", "core", "plan", "update"]
