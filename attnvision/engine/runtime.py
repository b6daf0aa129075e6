"""Device, precision, seeding and determinism from the ``trainer`` config group; shared by train and evaluate.

``setup_runtime`` writes the resolved ``trainer.precision`` back into the config, so that a run's identity, its saved
config and its row name the precision it ran in, not ``auto``."""
import os
from dataclasses import dataclass

import torch
from timm.utils import random_seed

from attnvision.errors import ConfigError
from .checks import check_trainer_cfg
from .distributed import DistInfo, init_distributed
from .loop import Precision

__all__ = ["Runtime", "native_bf16", "precision_note", "resolve_precision", "setup_runtime"]


@dataclass
class Runtime:
    device: torch.device
    dist: DistInfo
    precision: Precision


def native_bf16(device_type: str) -> bool:
    """Whether ``device_type`` computes bfloat16 natively: CUDA with bf16 support, or a CPU with AVX-512 or AMX
    (oneDNN's test). Elsewhere bf16 autocast is emulated: a ResNet-26 training step on an AVX2-only CPU ran 18x
    slower in bf16 than in fp32 (ad hoc, 32 px, batch 64), as convolutions fall back to PyTorch's slow kernels."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.ops.mkldnn._is_mkldnn_bf16_supported()


def resolve_precision(requested: str, device_type: str) -> str:
    """``trainer.precision`` as it will run: ``auto`` is bf16 where the device computes it natively, else fp32."""
    if requested != "auto":
        return requested
    return "bf16" if native_bf16(device_type) else "fp32"


def precision_note(precision: str, device_type: str) -> str:
    """How a run's (resolved) precision is described at start-up: bf16 where it is only emulated gets a warning."""
    if precision == "bf16" and not native_bf16(device_type):
        return "bf16, emulated on this CPU (no AVX-512 or AMX), many times slower than trainer.precision=fp32 or auto"
    return precision


def setup_runtime(trainer_cfg) -> Runtime:
    """Check the trainer settings, pick the device, join torchrun's group and seed every generator."""
    check_trainer_cfg(trainer_cfg)
    device_type = trainer_cfg.device
    if device_type == "auto":
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("trainer.device=cuda but no CUDA device is visible; use trainer.device=cpu")
    if trainer_cfg.precision == "fp16" and device_type != "cuda":
        raise ConfigError("trainer.precision=fp16 needs CUDA (it uses a GradScaler); use auto, bf16 or fp32 on CPU")
    trainer_cfg.precision = resolve_precision(trainer_cfg.precision, device_type)  # identity, rows: as it runs

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
