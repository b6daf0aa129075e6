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


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


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
    if not isinstance(trainer_cfg.ema, bool):
        raise ConfigError(f"trainer.ema={trainer_cfg.ema!r} must be true or false")
    if not _is_number(trainer_cfg.ema_decay) or not 0 <= trainer_cfg.ema_decay < 1:
        raise ConfigError(f"trainer.ema_decay={trainer_cfg.ema_decay!r} must be a number in [0, 1)")
    for key in ("mixup_alpha", "cutmix_alpha"):
        if not _is_number(trainer_cfg[key]) or trainer_cfg[key] < 0:
            raise ConfigError(f"trainer.{key}={trainer_cfg[key]!r} must be a number >= 0 (0 turns it off)")
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
