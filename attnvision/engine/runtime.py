"""Device, precision, seeding and determinism from the ``trainer`` config group; shared by train and evaluate."""
import os
from dataclasses import dataclass

import torch
from timm.utils import random_seed

from attnvision.errors import ConfigError
from .checks import check_trainer_cfg
from .distributed import DistInfo, init_distributed
from .loop import Precision

__all__ = ["Runtime", "setup_runtime"]


@dataclass
class Runtime:
    device: torch.device
    dist: DistInfo
    precision: Precision


def setup_runtime(trainer_cfg) -> Runtime:
    """Check the trainer settings, pick the device, join torchrun's group and seed every generator."""
    check_trainer_cfg(trainer_cfg)
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
