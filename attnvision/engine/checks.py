"""Start-up checks: every value a run depends on is checked before a model is built or data is read, so a bad one
is one line naming the key and what it may be, never a traceback an epoch later."""
import tempfile
from pathlib import Path

from attnvision.errors import ConfigError, check_choice
from .loop import Precision

__all__ = ["check_trainer_cfg", "check_optim_cfg", "check_sched_cfg", "check_writable", "check_image_size",
           "check_train_cfg"]

DEVICES = ("auto", "cpu", "cuda")
SCHEDULES = ("cosine", "step", "multistep", "plateau", "tanh", "poly", "constant", "rsqrt")  # timm create_scheduler_v2


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(key: str, value, low=None, high=None, low_open=False, high_open=True, null_ok=False) -> None:
    """``value`` must be a number in [low, high) (bounds as given) or, with ``null_ok``, null."""
    if value is None and null_ok:
        return
    ok = _is_number(value) and (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        lower = "" if low is None else f"{'>' if low_open else '>='} {low}"
        upper = "" if high is None else f"{'<' if high_open else '<='} {high}"
        allowed = " and ".join(part for part in (lower, upper) if part) or "any number"
        raise ConfigError(f"{key}={value!r} must be a number {allowed}" + (", or null" if null_ok else ""))


def _positive_int(key: str, value, null_ok: bool = False, also: tuple = ()) -> None:
    if (value is None and null_ok) or value in also or (_is_int(value) and value > 0):
        return
    extra = "".join(f", {v}" for v in also) + (", or null" if null_ok else "")
    raise ConfigError(f"{key}={value!r} must be a positive integer{extra}")


def _bool(key: str, value) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")


def check_trainer_cfg(tcfg) -> None:
    """The ``trainer`` group's values."""
    check_choice("trainer.device", tcfg.device, DEVICES)
    check_choice("trainer.precision", tcfg.precision, Precision.CHOICES)
    _positive_int("trainer.epochs", tcfg.epochs)
    for key in ("limit_train_batches", "limit_val_batches"):
        _positive_int(f"trainer.{key}", tcfg[key], null_ok=True)
    _positive_int("trainer.checkpoint_every", tcfg.checkpoint_every, null_ok=True, also=("auto",))
    if not _is_int(tcfg.seed) or tcfg.seed < 0:
        raise ConfigError(f"trainer.seed={tcfg.seed!r} must be an integer >= 0")
    for key in ("deterministic", "channels_last", "compile", "ema", "progress", "resume_force"):
        _bool(f"trainer.{key}", tcfg[key])
    _number("trainer.clip_grad", tcfg.clip_grad, 0, low_open=True, null_ok=True)
    _number("trainer.label_smoothing", tcfg.label_smoothing, 0, 1)
    _number("trainer.ema_decay", tcfg.ema_decay, 0, 1)
    for key in ("mixup_alpha", "cutmix_alpha"):
        _number(f"trainer.{key}", tcfg[key], 0)
    if tcfg.resume not in (None, "auto") and not isinstance(tcfg.resume, str):
        raise ConfigError(f"trainer.resume={tcfg.resume!r} must be auto, null or a checkpoint path")


def check_optim_cfg(ocfg) -> None:
    """The ``optim`` group's values (timm's ``create_optimizer_v2`` arguments)."""
    from timm.optim import list_optimizers
    check_choice("optim.opt", ocfg.opt, list_optimizers())
    _number("optim.lr", ocfg.lr, 0, low_open=True)
    _number("optim.weight_decay", ocfg.get("weight_decay", 0.0), 0)
    if "momentum" in ocfg:
        _number("optim.momentum", ocfg.momentum, 0, 1)
    _bool("optim.filter_bias_and_bn", ocfg.get("filter_bias_and_bn", True))


def check_sched_cfg(scfg, epochs: int) -> None:
    """The ``sched`` group's values (timm's ``create_scheduler_v2`` arguments) against ``trainer.epochs``."""
    check_choice("sched.sched", scfg.sched, SCHEDULES)
    for key in ("warmup_epochs", "min_lr", "warmup_lr"):
        if key in scfg:
            _number(f"sched.{key}", scfg[key], 0)
    if scfg.get("warmup_epochs", 0) >= epochs > 1:
        raise ConfigError(f"sched.warmup_epochs={scfg.warmup_epochs} must be less than trainer.epochs={epochs}")
    if "decay_epochs" in scfg:
        _number("sched.decay_epochs", scfg.decay_epochs, 0, low_open=True)
    if "decay_rate" in scfg:
        _number("sched.decay_rate", scfg.decay_rate, 0, 1, low_open=True, high_open=False)
    _bool("sched.step_on_epochs", scfg.get("step_on_epochs", False))


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
    from attnvision.data import check_data_cfg
    from attnvision.data.imagenet import check_imagefolder
    from attnvision.engine.distributed import world_from_env
    check_optim_cfg(cfg.optim)
    check_sched_cfg(cfg.sched, cfg.trainer.epochs)
    check_data_cfg(cfg.data, world_from_env().world_size)
    if cfg.data.name == "imagenet":
        check_imagefolder(cfg.data.root, cfg.data.num_classes)
    check_image_size(cfg.model, cfg.data.image_size)
    if world_from_env().is_main:
        check_writable(cfg.paths.output_dir, "paths.output_dir")
        check_writable(Path(cfg.paths.log_dir) / "rows", "paths.log_dir")
