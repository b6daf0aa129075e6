"""Evaluate a checkpoint on a validation set with the trainer's own ``validate``.

A run with ``trainer.ema=true`` reports its EMA weights' top-1, so ``weights=auto`` evaluates the checkpoint's
``ema`` weights when it has them and its raw ``model`` weights otherwise; ``weights=ema|raw`` picks one.
``checkpoint=official:PATH`` reads the authors' released weights of SAN or Axial-ResNet (``models.official``)."""
from pathlib import Path

from torch import nn

from attnvision.data import build_loaders
from attnvision.errors import ConfigError, check_choice
from attnvision.results import write_json_atomic
from .checkpoint import load_checkpoint, read_official
from .trainer import build_model
from .runtime import setup_runtime
from .loop import validate

__all__ = ["evaluate"]

WEIGHTS = ("auto", "ema", "raw")
OFFICIAL = "official:"


def evaluate(cfg) -> dict:
    """Top-1, top-5, loss and images/s of ``cfg.checkpoint`` on ``cfg.data``'s validation split."""
    check_choice("weights", cfg.weights, WEIGHTS)
    rt = setup_runtime(cfg.trainer)
    model = build_model(cfg.model, rt.device, cfg.trainer.channels_last)
    arch = model.pretrained_cfg["architecture"]
    if str(cfg.checkpoint).startswith(OFFICIAL):
        if cfg.weights == "ema":
            raise ConfigError(f"weights=ema but checkpoint={cfg.checkpoint} holds the authors' one set of weights; "
                              f"use weights=auto")
        path = str(cfg.checkpoint)[len(OFFICIAL):]
        ckpt = {"official": read_official(arch, path, model, "checkpoint")}
        weights = "official"
    else:
        ckpt = load_checkpoint(cfg.checkpoint)
        if ckpt.get("model_name") != arch:
            raise ConfigError(f"checkpoint={cfg.checkpoint} holds a {ckpt.get('model_name')} model but "
                              f"model={cfg.model.family} model.depth={cfg.model.depth} builds {arch}")
        if cfg.weights == "ema" and "ema" not in ckpt:
            raise ConfigError(f"weights=ema but checkpoint={cfg.checkpoint} was trained without trainer.ema; "
                              f"use weights=auto or weights=raw")
        weights = "raw" if cfg.weights == "raw" or "ema" not in ckpt else "ema"
    try:
        model.load_state_dict(ckpt["model" if weights == "raw" else weights])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1].strip()
        raise ConfigError(f"checkpoint={cfg.checkpoint} does not fit {arch} as configured "
                          f"(num_classes={cfg.model.num_classes}): {first}") from None
    _, val_loader = build_loaders(cfg.data, cfg.trainer.seed, rt.dist.rank, rt.dist.world_size)
    val = validate(model, val_loader, nn.CrossEntropyLoss(), rt.precision, rt.device, cfg.trainer.channels_last,
                   cfg.trainer.limit_val_batches, show_progress=rt.dist.is_main and cfg.trainer.progress)
    metrics = {"model": arch, "data": cfg.data.name, "image_size": cfg.data.image_size,
               "checkpoint": str(cfg.checkpoint), "checkpoint_epoch": ckpt.get("epoch"), "weights": weights, **val}
    if rt.dist.is_main:
        write_json_atomic(Path(cfg.paths.output_dir) / "metrics.json", metrics)
        print(f"{arch} ({weights} weights) on {cfg.data.name} ({val['val_images']} images): top-1 {val['top1']:.2f}  "
              f"top-5 {val['top5']:.2f}  loss {val['val_loss']:.4f}  {val['val_img_per_s']:.0f} img/s")
    return metrics
