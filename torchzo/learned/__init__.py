"""The learned networks of ZO-LSTM and the functional step shared by ZOLSTM and meta-training."""
from . import core
from .nets import CoordLSTM, LearnedZO, QueryRNN, UpdateRNN

__all__ = ["CoordLSTM", "LearnedZO", "QueryRNN", "UpdateRNN", "core"]
