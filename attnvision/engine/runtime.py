"""Device, precision, seeding and determinism from the ``trainer`` config group; shared by train and evaluate."""
import os
from dataclasses import dataclass

import torch
from timm.utils import random_seed

from attnvision.errors import ConfigError
from .distributed import DistInfo, init_distributed
from .loop import Precision

__all__ = ["Runtime", "setup_runtime"]


@dataclass
class Runtime:
    device: torch.device
    dist: DistInfo
    precision: Precision


def _positive_or_null(key: str, value) -> None:
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
        raise ConfigError(f"{key}={value!r} must be a positive integer or null")


def setup_runtime(trainer_cfg) -> Runtime:
    """Validate the trainer settings, pick the device, join torchrun's group and seed every generator."""
    if trainer_cfg.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"trainer.device={trainer_cfg.device!r} is unknown; choose one of auto, cpu, cuda")
    if trainer_cfg.precision not in Precision.CHOICES:
        raise ConfigError(f"trainer.precision={trainer_cfg.precision!r} is unknown; "
                          f"choose one of {', '.join(Precision.CHOICES)}")
    for key in ("epochs", "limit_train_batches", "limit_val_batches"):
        _positive_or_null(f"trainer.{key}", trainer_cfg[key])
    if trainer_cfg.epochs is None:
        raise ConfigError("trainer.epochs=null must be a positive integer")
    device_type = trainer_cfg.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    if trainer_cfg.precision == "fp16" and device_type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (it uses a GradScaler); use bf16 or fp32 on CPU")

    dist = init_distributed()
    device = torch.device(device_type, dist.local_rank) if device_type == "cuda" else torch.device("cpu")
    if trainer_cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = device_type == "cuda"
    random_seed(trainer_cfg.seed, dist.rank)
    return Runtime(device, dist, Precision(trainer_cfg.precision, device_type))
