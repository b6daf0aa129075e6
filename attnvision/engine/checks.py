"""Start-up checks: every value a run depends on is checked before a model is built or data is read, so a bad one
is one line naming the key and what it may be, never a traceback an epoch later."""
import tempfile
from pathlib import Path

from timm.optim import list_optimizers

from attnvision.data import check_data_cfg
from attnvision.data.imagenet import check_imagefolder
from attnvision.errors import ConfigError, check_bool, check_choice, check_number, check_positive_int, is_int
from .distributed import world_from_env
from .loop import Precision

__all__ = ["check_trainer_cfg", "check_optim_cfg", "check_sched_cfg", "check_writable", "check_image_size",
           "check_train_cfg"]

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "step", "multistep", "plateau", "tanh", "poly", "constant", "rsqrt")  # timm create_scheduler_v2


def check_trainer_cfg(tcfg) -> None:
    """The ``trainer`` group's values."""
    check_choice("trainer.device", tcfg.device, DEVICES)
    check_choice("trainer.precision", tcfg.precision, Precision.CHOICES)
    check_positive_int("trainer.epochs", tcfg.epochs)
    for key in ("limit_train_batches", "limit_val_batches"):
        check_positive_int(f"trainer.{key}", tcfg[key], null_ok=True)
    check_positive_int("trainer.checkpoint_every", tcfg.checkpoint_every, null_ok=True, also=("auto",))
    if not is_int(tcfg.seed) or tcfg.seed < 0:
        raise ConfigError(f"trainer.seed={tcfg.seed!r} must be an integer >= 0")
    for key in ("deterministic", "channels_last", "compile", "ema", "progress", "resume_force"):
        check_bool(f"trainer.{key}", tcfg[key])
    check_number("trainer.clip_grad", tcfg.clip_grad, 0, low_open=True, null_ok=True)
    check_number("trainer.label_smoothing", tcfg.label_smoothing, 0, 1)
    check_number("trainer.ema_decay", tcfg.ema_decay, 0, 1)
    for key in ("mixup_alpha", "cutmix_alpha"):
        check_number(f"trainer.{key}", tcfg[key], 0)
    if tcfg.resume not in (None, "auto") and not isinstance(tcfg.resume, str):
        raise ConfigError(f"trainer.resume={tcfg.resume!r} must be auto, null or a checkpoint path")


def check_optim_cfg(ocfg) -> None:
    """The ``optim`` group's values (timm's ``create_optimizer_v2`` arguments)."""
    check_choice("optim.opt", ocfg.opt, list_optimizers())
    check_number("optim.lr", ocfg.lr, 0, low_open=True)
    check_number("optim.weight_decay", ocfg.get("weight_decay", 0.0), 0)
    if "momentum" in ocfg:
        check_number("optim.momentum", ocfg.momentum, 0, 1)
    check_bool("optim.filter_bias_and_bn", ocfg.get("filter_bias_and_bn", True))


def check_sched_cfg(scfg, epochs: int) -> None:
    """The ``sched`` group's values (timm's ``create_scheduler_v2`` arguments) against ``trainer.epochs``."""
    check_choice("sched.sched", scfg.sched, SCHEDULES)
    for key in ("warmup_epochs", "min_lr", "warmup_lr"):
        if key in scfg:
            check_number(f"sched.{key}", scfg[key], 0)
    if scfg.get("warmup_epochs", 0) >= epochs > 1:
        raise ConfigError(f"sched.warmup_epochs={scfg.warmup_epochs} must be less than trainer.epochs={epochs}")
    if "decay_epochs" in scfg:
        check_number("sched.decay_epochs", scfg.decay_epochs, 0, low_open=True)
    if "decay_rate" in scfg:
        check_number("sched.decay_rate", scfg.decay_rate, 0, 1, low_open=True, high_open=False)
    check_bool("sched.step_on_epochs", scfg.get("step_on_epochs", False))


def check_writable(folder, key: str) -> None:
    """``folder`` exists (made if needed) and takes a new file; else one line naming ``key``."""
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        raise ConfigError(f"{key}: cannot write to {folder} ({err.strerror}); choose a writable folder") from None


def check_image_size(model_cfg, image_size) -> None:
    """``data.image_size`` must be at least the network's total stride (8 with the small-image stem, 32 with the
    ImageNet one): below it the last stages see nothing but padding."""
    small = model_cfg.get("small_stem", False)
    smallest = 8 if small else 32
    if isinstance(image_size, int) and image_size < smallest:
        raise ConfigError(f"data.image_size={image_size} is below the network's total stride of {smallest} px "
                          f"({'small-image' if small else 'ImageNet'} stem); use data.image_size >= {smallest}")


def check_train_cfg(cfg) -> None:
    """What ``train`` checks before it builds anything, beyond the trainer values (``setup_runtime`` checks those):
    optim, sched and data values (an ImageFolder's class folders against ``data.num_classes``), and that the run
    and rows directories take files."""
    world = world_from_env()
    check_optim_cfg(cfg.optim)
    check_sched_cfg(cfg.sched, cfg.trainer.epochs)
    check_data_cfg(cfg.data, world.world_size)
    if cfg.data.name == "imagenet":
        check_imagefolder(cfg.data.root, cfg.data.num_classes)
    check_image_size(cfg.model, cfg.data.image_size)
    if world.is_main:
        check_writable(cfg.paths.output_dir, "paths.output_dir")
        check_writable(Path(cfg.paths.log_dir) / "rows", "paths.log_dir")
