"""One training epoch and one validation pass, shared by the trainer and ``evaluate.py``."""
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import partial
from itertools import islice
from typing import Callable, Optional

import torch
from timm.utils import ModelEmaV3, unwrap_model
from torch import nn
from tqdm import tqdm

from .distributed import all_reduce_sum
from .guards import NonFinite, first_non_finite

__all__ = ["EpochProgress", "Precision", "train_one_epoch", "validate"]


class Precision:
    """``trainer.precision``: fp32, bf16 autocast (CPU and CUDA) or fp16 autocast with a GradScaler (CUDA); ``auto``
    is resolved before (``runtime.resolve_precision``)."""

    CHOICES = ("auto", "fp32", "bf16", "fp16")

    def __init__(self, precision: str, device_type: str):
        self.device_type = device_type
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.scaler = torch.amp.GradScaler(device_type, enabled=precision == "fp16")

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype) if self.dtype else nullcontext()


def _to_device(images, targets, device, channels_last: bool):
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, targets.to(device, non_blocking=True)


@dataclass
class EpochProgress:
    """How far an epoch got: batches done, running sums (loss, top-1 hits, images) and seconds; what a mid-epoch
    checkpoint keeps so that the resumed epoch ends with the same statistics."""

    step: int = 0
    sums: torch.Tensor = field(default_factory=lambda: torch.zeros(3, dtype=torch.float64))
    seconds: float = 0.0


def train_one_epoch(model: nn.Module, loader, optimizer, scheduler, loss_fn: Callable, precision: Precision,
                    device: torch.device, num_updates: int, world_size: int = 1, channels_last: bool = False,
                    clip_grad: Optional[float] = None, limit_batches: Optional[int] = None, desc: str = "",
                    show_progress: bool = True, on_step: Optional[Callable] = None, log_every: int = 10,
                    mixup: Optional[Callable] = None, ema: Optional[ModelEmaV3] = None,
                    progress: Optional[EpochProgress] = None, boundary: Optional[Callable] = None) -> dict:
    """Run one epoch; returns mean loss, top-1 on the training batches, images/s (all ranks) and update count.

    ``mixup`` (timm's Mixup) mixes each batch and gives the soft targets ``loss_fn`` is computed against; top-1
    still compares the prediction with each image's own, unmixed label. ``ema`` is updated with the unwrapped
    model after every optimizer step. ``progress`` continues an epoch a checkpoint stopped in (the loader then
    yields only its remaining batches). The losses are checked every ``log_every`` steps (where they are read
    anyway) and before every checkpoint: a non-finite one raises NonFinite naming its step.
    ``boundary(num_updates, snapshot)``, called after every update but the epoch's last, may checkpoint (taking
    ``snapshot()``) or stop.
    """
    model.train()
    total = min(len(loader), limit_batches) if limit_batches else len(loader)
    progress = progress or EpochProgress()
    # Running sums stay on the device; they are read (a host sync) only every `log_every` steps.
    sums = progress.sums.to(device)
    start = time.perf_counter() - progress.seconds
    losses, last_finite = [], None  # losses since the last check, on the device

    def check_losses(step: int):
        nonlocal last_finite
        values = torch.stack(losses).tolist()
        bad = first_non_finite(values)
        if bad is not None:
            i, value = bad
            last = values[i - 1] if i else last_finite
            raise NonFinite(f"the training loss was {value} at step {step - len(values) + 1 + i} (last finite loss "
                            f"{'none' if last is None else format(last, '.4g')})")
        last_finite = values[-1]
        losses.clear()

    def snapshot(step: int) -> EpochProgress:
        """The epoch so far, for a mid-epoch checkpoint, once its pending losses are checked."""
        if losses:
            check_losses(step)
        return EpochProgress(step, sums.detach().cpu().clone(), time.perf_counter() - start)

    bar = tqdm(islice(loader, total - progress.step), total=total, initial=progress.step, desc=desc,
               disable=not show_progress, dynamic_ncols=True, leave=True)
    for step, (images, targets) in enumerate(bar, progress.step + 1):
        images, targets = _to_device(images, targets, device, channels_last)
        loss_targets = targets
        if mixup is not None:
            images, loss_targets = mixup(images, targets)
        with precision.autocast():
            logits = model(images)
            loss = loss_fn(logits, loss_targets)
        optimizer.zero_grad(set_to_none=True)
        precision.scaler.scale(loss).backward()
        if clip_grad:
            precision.scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        precision.scaler.step(optimizer)
        precision.scaler.update()
        num_updates += 1
        scheduler.step_update(num_updates=num_updates)
        if ema is not None:
            ema.update(unwrap_model(model))

        losses.append(loss.detach().float())
        sums += torch.stack([loss.detach().double() * len(targets), (logits.argmax(1) == targets).sum().double(),
                             torch.tensor(len(targets), dtype=torch.float64, device=device)])
        if step % log_every == 0 or step == total:
            check_losses(step)
            loss_avg, hits, seen = sums.tolist()
            img_per_s = seen * world_size / (time.perf_counter() - start)
            bar.set_postfix(loss=f"{loss_avg / seen:.3f}", acc=f"{100 * hits / seen:.1f}", img_s=f"{img_per_s:.0f}",
                            refresh=False)
            if on_step is not None:
                on_step(num_updates, last_finite, optimizer.param_groups[0]["lr"])
        if boundary is not None and step < total:
            boundary(num_updates, partial(snapshot, step))
    seconds = time.perf_counter() - start
    sums = all_reduce_sum(sums)
    return {"train_loss": float(sums[0] / sums[2]), "train_top1": float(100 * sums[1] / sums[2]),
            "train_images": int(sums[2]), "train_s": seconds, "img_per_s": float(sums[2]) / seconds,
            "num_updates": num_updates}


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn: Callable, precision: Precision, device: torch.device,
             channels_last: bool = False, limit_batches: Optional[int] = None, show_progress: bool = False) -> dict:
    """Exact top-1 / top-5 / mean loss over the (sharded) validation set, summed over ranks."""
    model.eval()
    total = min(len(loader), limit_batches) if limit_batches else len(loader)
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    start = time.perf_counter()
    for images, targets in tqdm(islice(loader, total), total=total, desc="val", disable=not show_progress,
                                leave=False, dynamic_ncols=True):
        images, targets = _to_device(images, targets, device, channels_last)
        with precision.autocast():
            logits = model(images)
        logits = logits.float()
        k = min(5, logits.shape[1])
        hits = logits.topk(k, dim=1).indices.eq(targets[:, None])  # B, k
        sums += torch.stack([loss_fn(logits, targets).double() * len(targets), hits[:, 0].sum().double(),
                             hits.any(1).sum().double(), torch.tensor(len(targets), dtype=torch.float64,
                                                                      device=device)])
    seconds = time.perf_counter() - start
    sums = all_reduce_sum(sums)
    n = float(sums[3])
    return {"val_loss": float(sums[0]) / n, "top1": 100 * float(sums[1]) / n, "top5": 100 * float(sums[2]) / n,
            "val_images": int(n), "val_img_per_s": n / seconds}
