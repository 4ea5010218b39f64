"""The learned networks of ZO-LSTM and the one learned step that ZOLSTM and meta-training run."""
from . import arch
from .arch import ARCHITECTURES, PRESETS, Architecture, GeneralConfig, PaperConfig
from .blocks import CoordLSTM
from .nets import LearnedZO
from .step import COVARIANCES, Group, LearnedState, Plan, StepResult, init, plan, update

__all__ = ["ARCHITECTURES", "COVARIANCES", "PRESETS", "Architecture", "CoordLSTM",
           "GeneralConfig", "Group", "LearnedState", "LearnedZO", "PaperConfig", "Plan",
           "StepResult", "arch", "init", "plan", "update"]
