"""The shared trainer: every family and baseline trains through ``train(cfg)`` with the same recipe machinery.

Optimizer and schedule are timm's (``create_optimizer_v2`` / ``create_scheduler_v2``, stepped per update), the
loss is label-smoothed cross-entropy (or timm's Mixup / CutMix with ``SoftTargetCrossEntropy``, see
``build_criterion``), and a run directory collects the resolved config, TensorBoard events, ``last.pt`` /
``best.pt`` and ``metrics.json``. Under torchrun every rank trains, rank 0 alone writes.

``trainer.ema=true`` keeps timm's ``ModelEmaV3`` of the unwrapped model, updated after every optimizer step with
the constant ``trainer.ema_decay`` (no warm-up). It averages the BatchNorm running statistics too (SASA's EMA
covers the trainable weights, its BatchNorm statistics being themselves averaged with decay 0.9999). Both models
are validated each epoch; the run's ``top1`` / ``top5`` / ``val_loss`` (epoch rows, ``metrics.json``, the result
row and the choice of ``best.pt``) are then the EMA's, and ``top1_raw`` / ``top5_raw`` the raw weights' (without
EMA the two are the same). Checkpoints hold the raw weights under ``model`` and the EMA's under ``ema``.
"""
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from timm.data import Mixup
from timm.loss import SoftTargetCrossEntropy
from timm.utils import ModelEmaV3
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from attnvision.data import build_loaders
from attnvision.errors import ConfigError
from attnvision.results import write_json_atomic, write_row
from attnvision.results.rows import git_commit
from .checkpoint import capture_rng_state, load_checkpoint, resolve_resume, restore_rng_state, save_checkpoint
from .complexity import count_complexity
from .loop import train_one_epoch, validate
from .runtime import setup_runtime

__all__ = ["TrainResult", "build_criterion", "build_model", "train", "row_name"]


@dataclass
class TrainResult:
    metrics: dict
    model: nn.Module


def build_model(model_cfg, device: torch.device, channels_last: bool = False) -> nn.Module:
    """Instantiate ``cfg.model`` (through timm) on ``device``."""
    model = instantiate(model_cfg).to(device)
    return model.to(memory_format=torch.channels_last) if channels_last else model


def build_criterion(cfg, train_loader):
    """``(mixup, loss_fn)``: ``(None, label-smoothed cross-entropy)`` unless ``trainer.mixup_alpha`` or
    ``trainer.cutmix_alpha`` is > 0; then timm's ``Mixup`` with its defaults (every batch mixed, one lambda per batch,
    Mixup or CutMix with probability 1/2 when both are on; label smoothing applied to the mixed targets) and
    ``SoftTargetCrossEntropy``. Mixup pairs each image with the batch reversed and asserts an even batch: every
    training batch of this process must have an even size."""
    tcfg = cfg.trainer
    if not (tcfg.mixup_alpha or tcfg.cutmix_alpha):
        return None, nn.CrossEntropyLoss(label_smoothing=tcfg.label_smoothing)
    per_rank = train_loader.batch_size
    if per_rank % 2 or (not train_loader.drop_last and len(train_loader.sampler) % 2):
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} gives odd training batches ({per_rank} images per "
                          f"process, {len(train_loader.sampler)} per epoch) but trainer.mixup_alpha="
                          f"{tcfg.mixup_alpha} / trainer.cutmix_alpha={tcfg.cutmix_alpha} need even ones")
    mixup = Mixup(mixup_alpha=tcfg.mixup_alpha, cutmix_alpha=tcfg.cutmix_alpha, label_smoothing=tcfg.label_smoothing,
                  num_classes=cfg.model.num_classes)
    return mixup, SoftTargetCrossEntropy()


def command_line_overrides() -> list:
    """The run's command-line overrides as Hydra received them; ``[]`` when ``train`` runs without Hydra."""
    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []


def row_name(run_dir: Path, log_dir: Path) -> str:
    """A file name for this run's result row, unique across runs and multirun jobs."""
    run_dir = Path(run_dir).resolve()
    try:
        return "__".join(run_dir.relative_to(Path(log_dir).resolve()).parts)
    except ValueError:
        return "__".join(run_dir.parts[-2:])


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=str(run_dir / "tensorboard"))


def train(cfg) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.trainer.epochs`` and return the final metrics and model."""
    tcfg = cfg.trainer
    rt = setup_runtime(tcfg)
    is_main = rt.dist.is_main
    run_dir = Path(cfg.paths.output_dir)
    wall_start = time.perf_counter()

    train_loader, val_loader = build_loaders(cfg.data, tcfg.seed, rt.dist.rank, rt.dist.world_size)
    model = build_model(cfg.model, rt.device, tcfg.channels_last)
    arch = model.pretrained_cfg["architecture"]
    complexity = count_complexity(model, cfg.data.image_size)
    optimizer = instantiate(cfg.optim)(model)
    scheduler, _ = instantiate(cfg.sched)(optimizer, num_epochs=tcfg.epochs,
                                          updates_per_epoch=min(len(train_loader), tcfg.limit_train_batches or
                                                                len(train_loader)))
    mixup, loss_fn = build_criterion(cfg, train_loader)
    eval_loss_fn = nn.CrossEntropyLoss()

    start_epoch, num_updates, best, history = 0, 0, {"top1": -1.0, "epoch": -1}, []
    resume_path = resolve_resume(tcfg.resume, run_dir)
    if resume_path is not None:
        ckpt = load_checkpoint(resume_path)
        if ckpt["model_name"] != arch:
            raise ConfigError(f"trainer.resume={resume_path} holds a {ckpt['model_name']} but this run builds {arch}")
        if tcfg.ema != ("ema" in ckpt):
            raise ConfigError(f"trainer.ema={tcfg.ema} but trainer.resume={resume_path} was trained with "
                              f"trainer.ema={not tcfg.ema}; resume with the same trainer.ema")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        rt.precision.scaler.load_state_dict(ckpt["scaler"])
        start_epoch, num_updates, best, history = ckpt["epoch"], ckpt["num_updates"], ckpt["best"], ckpt["history"]
        restore_rng_state(ckpt["rng"])
        if is_main:
            print(f"resumed from {resume_path} at epoch {start_epoch}/{tcfg.epochs}")

    train_model = torch.compile(model) if tcfg.compile else model
    if rt.dist.enabled:
        train_model = DistributedDataParallel(
            train_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    # Made after the DDP wrap, which gives every rank rank 0's weights, so that the ranks' EMAs agree.
    ema = ModelEmaV3(model, decay=tcfg.ema_decay) if tcfg.ema else None
    if ema is not None and resume_path is not None:
        ema.module.load_state_dict(ckpt["ema"])

    writer = _tensorboard(run_dir) if is_main else None
    if is_main:
        print(f"{arch}: {complexity.params / 1e6:.2f}M params, {complexity.macs / 1e9:.3f} GMACs at "
              f"{cfg.data.image_size}px | {cfg.data.name}: {len(train_loader.dataset)} train / "
              f"{len(val_loader.dataset) * rt.dist.world_size} val images | run dir {run_dir}")

    def log_step(step: int, loss: float, lr: float):
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)

    config = OmegaConf.to_container(cfg, resolve=True)
    if is_main:
        OmegaConf.save(config, run_dir / "config.yaml")
    for epoch in range(start_epoch, tcfg.epochs):
        train_loader.sampler.set_epoch(epoch)
        epoch_start = time.perf_counter()
        stats = train_one_epoch(
            train_model, train_loader, optimizer, scheduler, loss_fn, rt.precision, rt.device, num_updates,
            rt.dist.world_size, tcfg.channels_last, tcfg.clip_grad, tcfg.limit_train_batches,
            desc=f"epoch {epoch + 1}/{tcfg.epochs}", show_progress=is_main and tcfg.progress, on_step=log_step,
            mixup=mixup, ema=ema)
        num_updates = stats.pop("num_updates")
        scheduler.step(epoch + 1)
        raw = validate(model, val_loader, eval_loss_fn, rt.precision, rt.device, tcfg.channels_last,
                       tcfg.limit_val_batches)
        val = raw if ema is None else validate(ema.module, val_loader, eval_loss_fn, rt.precision, rt.device,
                                               tcfg.channels_last, tcfg.limit_val_batches)
        row = {"epoch": epoch + 1, **stats, **val, "top1_raw": raw["top1"], "top5_raw": raw["top5"],
               "epoch_s": time.perf_counter() - epoch_start}
        history.append(row)
        is_best = val["top1"] > best["top1"]
        if is_best:
            best = {"top1": val["top1"], "top5": val["top5"], "epoch": epoch + 1}
        if is_main:
            raw_note = f" (raw weights {raw['top1']:.2f})" if ema is not None else ""
            print(f"epoch {epoch + 1}/{tcfg.epochs}: train loss {stats['train_loss']:.4f}, val top-1 "
                  f"{val['top1']:.2f}{raw_note}, top-5 {val['top5']:.2f}, {stats['img_per_s']:.0f} img/s")
            for key, value in (("val/top1", val["top1"]), ("val/top5", val["top5"]), ("val/loss", val["val_loss"]),
                               ("val/top1_raw", raw["top1"]), ("train/img_per_s", stats["img_per_s"]),
                               ("time/epoch_s", row["epoch_s"])):
                writer.add_scalar(key, value, epoch + 1)
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": rt.precision.scaler.state_dict(),
                     "epoch": epoch + 1, "num_updates": num_updates, "best": best, "history": history,
                     "rng": capture_rng_state(), "model_name": arch, "config": config, "metrics": row}
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            if is_best:
                save_checkpoint(run_dir / "best.pt", state)
            save_checkpoint(run_dir / "last.pt", state)

    final = history[-1] if history else {}
    train_s = sum(h["train_s"] for h in history)
    metrics = {
        "model": arch, "family": cfg.model.family, "depth": cfg.model.depth, "data": cfg.data.name,
        "image_size": cfg.data.image_size, "epochs": tcfg.epochs, "params": complexity.params,
        "macs": complexity.macs, "top1": final.get("top1"), "top5": final.get("top5"),
        "top1_raw": final.get("top1_raw"), "top5_raw": final.get("top5_raw"), "ema": tcfg.ema,
        "val_loss": final.get("val_loss"), "best_top1": best["top1"], "best_epoch": best["epoch"],
        "train_img_per_s": sum(h["train_images"] for h in history) / train_s if train_s else None,
        "wall_s": time.perf_counter() - wall_start, "seed": tcfg.seed, "precision": tcfg.precision,
        "device": rt.device.type, "world_size": rt.dist.world_size, "git_commit": git_commit(),
        "run_dir": str(run_dir), "overrides": command_line_overrides(),
    }
    if is_main:
        writer.close()
        write_json_atomic(run_dir / "metrics.json", metrics)
        write_row(Path(cfg.paths.log_dir) / "rows", row_name(run_dir, cfg.paths.log_dir), metrics)
        summary = pd.DataFrame(history)[["epoch", "train_loss", "train_top1", "val_loss", "top1", "top5",
                                         "img_per_s", "epoch_s"]]
        formats = (".0f", ".3f", ".2f", ".3f", ".2f", ".2f", ".0f", ".1f")
        print("\n" + summary.to_markdown(index=False, floatfmt=formats))
        print(f"\n{arch} on {cfg.data.name}: top-1 {metrics['top1']:.2f} (best {best['top1']:.2f} at epoch "
              f"{best['epoch']}), {metrics['train_img_per_s']:.0f} train img/s, {metrics['wall_s']:.0f}s wall | "
              f"{run_dir}")
    return TrainResult(metrics, model)
