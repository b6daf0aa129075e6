"""Training, evaluation, checkpoints, distributed plumbing, complexity counting and paper-table reproduction."""
from .complexity import Complexity, count_complexity
from .trainer import TrainResult, build_model, train
from .reproduce import reproduce

__all__ = ["Complexity", "count_complexity", "TrainResult", "build_model", "train", "reproduce"]
