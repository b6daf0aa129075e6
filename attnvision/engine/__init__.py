"""Training, evaluation, checkpoints, distributed plumbing and complexity counting."""
from .complexity import Complexity, count_complexity
from .trainer import TrainResult, build_model, train

__all__ = ["Complexity", "count_complexity", "TrainResult", "build_model", "train"]
