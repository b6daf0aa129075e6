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

Trustworthy rows: every value is checked before anything is built (``checks.py``); the run writes into a directory
of its own; ``trainer.resume`` continues only a run of the same identity (``identity.py``); ``last.pt`` is also
saved every ``trainer.checkpoint_every`` updates and when SIGTERM or SIGINT arrives, at the next update, so that a
resumed run ends bit-identical to an uninterrupted one; a non-finite loss or weight stops the run (``Diverged``)
with the last finite checkpoint kept and a ``diverged`` row, instead of a NaN model that tables would rank.
"""
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

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
from attnvision.data.sampler import start_epoch as start_loader_epoch
from attnvision.errors import ConfigError
from attnvision.results import write_json_atomic, write_row
from attnvision.results.rows import DIVERGED, FINISHED, git_commit
from .checkpoint import (capture_rng_state, load_checkpoint, remove_stale_temporaries, restore_rng_state,
                         save_checkpoint)
from .checks import check_train_cfg
from .complexity import count_complexity
from .distributed import all_reduce_max, barrier, broadcast_object
from .guards import Diverged, NonFinite, Preempted, StopSignals
from .identity import Resume, find_resume, identity_hash, run_identity, write_record
from .loop import EpochProgress, train_one_epoch, validate
from .runtime import precision_note, setup_runtime

__all__ = ["TrainResult", "build_criterion", "build_model", "train", "row_name", "CHECKPOINT_EVERY_AUTO"]

CHECKPOINT_EVERY_AUTO = 1000  # trainer.checkpoint_every=auto: mid-epoch checkpoints this often in longer epochs


@dataclass
class TrainResult:
    """The run's metrics (its result row) and trained model (None when ``resume=auto`` found the run finished)."""

    metrics: dict
    model: Optional[nn.Module]


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


def _resolve_resume(cfg, identity: dict, is_main: bool) -> Resume:
    """``trainer.resume`` resolved on rank 0 (it searches the log folder and may print) and shared with the other
    ranks, which load the same checkpoint."""
    tcfg, shared = cfg.trainer, None
    if is_main:
        try:
            resume = find_resume(tcfg.resume, tcfg.resume_force, identity, Path(cfg.paths.output_dir),
                                 [Path(cfg.paths.log_dir) / cfg.task_name])
            shared = (resume.run_dir, resume.path, resume.finished, resume.forced)
        except ConfigError as err:
            shared = err
    shared = broadcast_object(shared)
    if isinstance(shared, ConfigError):
        raise shared
    if is_main:
        return resume
    run_dir, path, finished, forced = shared
    return Resume(run_dir, load_checkpoint(path) if path else None, path, finished, forced)


def _drop_unused_dir(new_dir: Path, run_dir: Path) -> None:
    """When ``resume=auto`` continues another run's directory, remove the one made for this invocation if it holds
    nothing but Hydra's ``.hydra`` folder."""
    if new_dir.is_dir() and new_dir.resolve() != run_dir.resolve() and \
            {p.name for p in new_dir.iterdir()} <= {".hydra"}:
        shutil.rmtree(new_dir)


def _already_done(record: dict, run_dir: Path) -> TrainResult:
    """``resume=auto`` found this run finished (its metrics, nothing re-run or re-recorded) or diverged (Diverged)."""
    if record.get("status") == DIVERGED:
        raise Diverged(f"error: trainer.resume=auto: this run diverged before in {run_dir} ({record.get('message')}); "
                       f"change the values that made it diverge, or drop trainer.resume")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    print(f"trainer.resume=auto: this run already finished in {run_dir} (top-1 {metrics.get('top1')}); nothing to "
          f"train, no new row")
    return TrainResult(metrics, None)


def _weights_finite(model: nn.Module) -> bool:
    return bool(torch.stack([p.detach().isfinite().all() for p in model.parameters()]).all())


def train(cfg) -> TrainResult:
    """Train ``cfg.model`` on ``cfg.data`` for ``cfg.trainer.epochs`` and return the final metrics and model."""
    tcfg = cfg.trainer
    rt = setup_runtime(tcfg)
    check_train_cfg(cfg)
    is_main = rt.dist.is_main
    wall_start = time.perf_counter()

    config = OmegaConf.to_container(cfg, resolve=True)
    identity = run_identity(config)
    run_id = identity_hash(identity)
    resume = _resolve_resume(cfg, identity, is_main)
    run_dir = Path(resume.run_dir)
    if is_main:
        _drop_unused_dir(Path(cfg.paths.output_dir), run_dir)
    if resume.finished is not None:
        return _already_done(resume.finished, run_dir)

    model = build_model(cfg.model, rt.device, tcfg.channels_last)
    arch = model.pretrained_cfg["architecture"]
    complexity = count_complexity(model, cfg.data.image_size)  # a forward at the run's size, before any data is read
    train_loader, val_loader = build_loaders(cfg.data, tcfg.seed, rt.dist.rank, rt.dist.world_size)
    updates_per_epoch = min(len(train_loader), tcfg.limit_train_batches or len(train_loader))
    optimizer = instantiate(cfg.optim)(model)
    scheduler, _ = instantiate(cfg.sched)(optimizer, num_epochs=tcfg.epochs, updates_per_epoch=updates_per_epoch)
    mixup, loss_fn = build_criterion(cfg, train_loader)
    eval_loss_fn = nn.CrossEntropyLoss()
    every = tcfg.checkpoint_every
    if every == "auto":
        every = CHECKPOINT_EVERY_AUTO if updates_per_epoch > CHECKPOINT_EVERY_AUTO else None

    start_epoch, num_updates, best, history, progress = 0, 0, {"top1": -1.0, "epoch": -1}, [], None
    ckpt, saved = resume.checkpoint, None  # saved: (path, epoch, update) of the newest checkpoint of this run
    if ckpt is not None:
        if ckpt["model_name"] != arch:
            raise ConfigError(f"trainer.resume={resume.path} holds a {ckpt['model_name']} but this run builds {arch}")
        if tcfg.ema != ("ema" in ckpt):
            raise ConfigError(f"trainer.ema={tcfg.ema} but trainer.resume={resume.path} was trained with "
                              f"trainer.ema={not tcfg.ema}; resume with the same trainer.ema")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if not resume.forced:  # a forced resume follows this config's schedule from the checkpoint's update on
            scheduler.load_state_dict(ckpt["scheduler"])
        rt.precision.scaler.load_state_dict(ckpt["scaler"])
        start_epoch, num_updates, best, history = ckpt["epoch"], ckpt["num_updates"], ckpt["best"], ckpt["history"]
        if "progress" in ckpt:
            progress = EpochProgress(**ckpt["progress"])
        restore_rng_state(ckpt["rng"])
        saved = (resume.path, start_epoch, num_updates)
        if tcfg.resume != "auto" and start_epoch >= tcfg.epochs and progress is None:
            print(f"trainer.resume={resume.path} finished its {tcfg.epochs} epochs already; nothing to train")
            return TrainResult(ckpt.get("metrics", {}), model)

    train_model = torch.compile(model) if tcfg.compile else model
    if rt.dist.enabled:
        train_model = DistributedDataParallel(
            train_model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None)
    # Made after the DDP wrap, which gives every rank rank 0's weights, so that the ranks' EMAs agree.
    ema = ModelEmaV3(model, decay=tcfg.ema_decay) if tcfg.ema else None
    if ema is not None and ckpt is not None:
        ema.module.load_state_dict(ckpt["ema"])

    writer = _tensorboard(run_dir) if is_main else None
    if is_main:
        for stale in remove_stale_temporaries(run_dir):
            print(f"removed {stale}, left by an interrupted save")
        OmegaConf.save(config, run_dir / "config.yaml")
        write_record(run_dir, run_id, "running", epoch=start_epoch, num_updates=num_updates)

    def log_step(step: int, loss: float, lr: float):
        if writer is not None:
            writer.add_scalar("train/loss", loss, step)
            writer.add_scalar("train/lr", lr, step)

    def checkpoint(epoch_done: int, updates: int, progress: Optional[EpochProgress] = None, is_best: bool = False,
                   metrics: Optional[dict] = None) -> None:
        """Save last.pt (and best.pt) for ``epoch_done`` full epochs plus ``progress`` into the next; a model whose
        weights are not all finite is never saved."""
        nonlocal saved
        if not _weights_finite(model):
            raise NonFinite("a weight is not finite after the last update")
        if is_main:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": rt.precision.scaler.state_dict(),
                     "epoch": epoch_done, "num_updates": updates, "best": best, "history": history,
                     "rng": capture_rng_state(), "model_name": arch, "config": config, "identity": run_id}
            if progress is not None:
                state["progress"] = {"step": progress.step, "sums": progress.sums, "seconds": progress.seconds}
            if metrics is not None:
                state["metrics"] = metrics
            if ema is not None:
                state["ema"] = ema.module.state_dict()
            if is_best:
                save_checkpoint(run_dir / "best.pt", state)
            save_checkpoint(run_dir / "last.pt", state)
            write_record(run_dir, run_id, "running", epoch=epoch_done, num_updates=updates,
                         step=progress.step if progress else 0)
        saved = (run_dir / "last.pt", epoch_done, updates)

    def requested_signal() -> int:
        """The signal some rank received (0: none); every rank agrees, so all stop at the same update. One process
        reads its own flag: no device tensor, no host sync per update."""
        if not rt.dist.enabled:
            return signals.requested or 0
        signum = torch.tensor([float(signals.requested or 0)], device=rt.device)
        return int(all_reduce_max(signum).item())

    def preempted(signum: int, epoch_done: int, updates: int, step: int) -> Preempted:
        if is_main:
            write_record(run_dir, run_id, "preempted", epoch=epoch_done, num_updates=updates, step=step)
        barrier()  # every rank waits for rank 0's save before any exits (torchrun stops the others on an exit)
        where = f"epoch {epoch_done + 1}/{tcfg.epochs}, step {step}" if step else f"the end of epoch {epoch_done}"
        return Preempted(signum, f"preempted by {signal.Signals(signum).name} at {where}: saved {run_dir / 'last.pt'}"
                                 f"; run the same command with trainer.resume=auto to continue")

    def boundary(updates: int, snapshot) -> None:
        """After an update inside an epoch: a mid-epoch checkpoint every ``every`` updates, or on a signal (then
        stop)."""
        signum = requested_signal()
        if signum or (every and updates % every == 0):
            epoch_progress = snapshot()
            checkpoint(epoch, updates, epoch_progress)
            if signum:
                raise preempted(signum, epoch, updates, epoch_progress.step)

    def finish(status: str, **extra) -> dict:
        """metrics.json, the result row and run.json for a run that ended ``status`` (finished or diverged)."""
        final = history[-1] if history and status == FINISHED else {}
        train_s = sum(h["train_s"] for h in history)
        metrics = {
            "model": arch, "family": cfg.model.family, "depth": cfg.model.depth, "data": cfg.data.name,
            "image_size": cfg.data.image_size, "epochs": tcfg.epochs, "params": complexity.params,
            "macs": complexity.macs, "status": status, "top1": final.get("top1"), "top5": final.get("top5"),
            "top1_raw": final.get("top1_raw"), "top5_raw": final.get("top5_raw"), "ema": tcfg.ema,
            "val_loss": final.get("val_loss"), "best_top1": best["top1"], "best_epoch": best["epoch"],
            "train_img_per_s": sum(h["train_images"] for h in history) / train_s if train_s else None,
            "wall_s": time.perf_counter() - wall_start, "seed": tcfg.seed, "precision": tcfg.precision,
            "device": rt.device.type, "world_size": rt.dist.world_size, "git_commit": git_commit(),
            "run_dir": str(run_dir), "identity": run_id,
            "resumed_from": str(resume.path) if resume.path else None, "overrides": command_line_overrides(), **extra,
        }
        if is_main:
            writer.close()
            write_json_atomic(run_dir / "metrics.json", metrics)
            write_row(Path(cfg.paths.log_dir) / "rows", row_name(run_dir, cfg.paths.log_dir), metrics)
            write_record(run_dir, run_id, status, epoch=len(history), num_updates=num_updates, **extra)
        return metrics

    epoch = start_epoch
    with StopSignals() as signals:  # before the run is announced: a signal from then on is a clean stop
        if is_main:
            print(f"{arch}: {complexity.params / 1e6:.2f}M params, {complexity.macs / 1e9:.3f} GMACs at "
                  f"{cfg.data.image_size}px | {cfg.data.name}: {len(train_loader.dataset)} train / "
                  f"{len(val_loader.dataset) * rt.dist.world_size} val images | "
                  f"{precision_note(tcfg.precision, rt.device.type)} | run dir {run_dir}")
            if ckpt is not None:
                where = (f"epoch {start_epoch + 1}/{tcfg.epochs}, step {progress.step}" if progress else
                         f"the end of epoch {start_epoch}/{tcfg.epochs}")
                print(f"resumed from {resume.path} at {where} (update {num_updates})")
                if resume.forced:
                    print(f"trainer.resume_force=true: continuing although {', '.join(resume.forced)}; the schedule "
                          f"follows this run's config")
        try:
            for epoch in range(start_epoch, tcfg.epochs):
                done = progress if epoch == start_epoch else None
                start_loader_epoch(train_loader, epoch, done.step if done else 0)
                epoch_start = time.perf_counter()
                stats = train_one_epoch(
                    train_model, train_loader, optimizer, scheduler, loss_fn, rt.precision, rt.device, num_updates,
                    rt.dist.world_size, tcfg.channels_last, tcfg.clip_grad, tcfg.limit_train_batches,
                    desc=f"epoch {epoch + 1}/{tcfg.epochs}", show_progress=is_main and tcfg.progress,
                    on_step=log_step, mixup=mixup, ema=ema, progress=done, boundary=boundary)
                num_updates = stats.pop("num_updates")
                scheduler.step(epoch + 1)
                raw = validate(model, val_loader, eval_loss_fn, rt.precision, rt.device, tcfg.channels_last,
                               tcfg.limit_val_batches)
                val = raw if ema is None else validate(ema.module, val_loader, eval_loss_fn, rt.precision,
                                                       rt.device, tcfg.channels_last, tcfg.limit_val_batches)
                if not (math.isfinite(raw["val_loss"]) and math.isfinite(val["val_loss"])):
                    raise NonFinite(f"the validation loss was {val['val_loss']} after the epoch")
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
                    for key, value in (("val/top1", val["top1"]), ("val/top5", val["top5"]),
                                       ("val/loss", val["val_loss"]), ("val/top1_raw", raw["top1"]),
                                       ("train/img_per_s", stats["img_per_s"]), ("time/epoch_s", row["epoch_s"])):
                        writer.add_scalar(key, value, epoch + 1)
                checkpoint(epoch + 1, num_updates, is_best=is_best, metrics=row)
                signum = requested_signal()
                if signum and epoch + 1 < tcfg.epochs:
                    raise preempted(signum, epoch + 1, num_updates, 0)
        except NonFinite as err:
            kept = f"kept {saved[0]} (epoch {saved[1]}, update {saved[2]})" if saved else "no checkpoint was saved"
            hint = "" if tcfg.precision == "fp32" else " or trainer.precision=fp32"
            message = f"diverged in epoch {epoch + 1}/{tcfg.epochs}: {err}; {kept}"
            finish(DIVERGED, message=message)
            raise Diverged(f"error: {message}; try a lower optim.lr (now {cfg.optim.lr}){hint}") from None

    metrics = finish(FINISHED)
    if is_main:
        summary = pd.DataFrame(history)[["epoch", "train_loss", "train_top1", "val_loss", "top1", "top5",
                                         "img_per_s", "epoch_s"]]
        formats = (".0f", ".3f", ".2f", ".3f", ".2f", ".2f", ".0f", ".1f")
        print("\n" + summary.to_markdown(index=False, floatfmt=formats))
        print(f"\n{arch} on {cfg.data.name}: top-1 {metrics['top1']:.2f} (best {best['top1']:.2f} at epoch "
              f"{best['epoch']}), {metrics['train_img_per_s']:.0f} train img/s, {metrics['wall_s']:.0f}s wall | "
              f"{run_dir}")
    return TrainResult(metrics, model)
