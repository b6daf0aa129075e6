"""A BatchNorm applied as the affine map it is, y = scale·x + shift per channel, for layers that fold it into a
fused computation instead of running it on a tensor they never materialise (SAN's γ, Axial-DeepLab's logits)."""
from typing import Callable, Tuple

import torch
from torch import nn

__all__ = ["track_running_stats", "batch_norm_affine"]


def track_running_stats(bn: nn.BatchNorm2d, mean: torch.Tensor, var: torch.Tensor, count: torch.Tensor) -> None:
    """Update ``bn``'s running statistics with a batch's mean and biased variance over ``count`` entries per
    channel, as its own training forward does (unbiased variance, ``momentum`` or, when None, a cumulative
    average)."""
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = 1 / bn.num_batches_tracked.item() if bn.momentum is None else bn.momentum
        bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), factor)
        bn.running_var.lerp_((var * count / (count - 1)).to(bn.running_var.dtype), factor)


def batch_norm_affine(bn: nn.BatchNorm2d, batch_moments: Callable[[], Tuple[torch.Tensor, torch.Tensor, int]],
                      dtype: torch.dtype) -> Tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) of ``bn`` in its current mode: from ``batch_moments()`` = (mean, biased variance, count) in
    training, differentiable through them, with the running statistics updated as ``bn`` would; from the running
    statistics in eval."""
    if bn.training or bn.running_var is None:
        mean, var, count = batch_moments()
        if bn.track_running_stats and bn.training:
            track_running_stats(bn, mean.detach(), var.detach(), count)
    else:
        mean, var = bn.running_mean.to(dtype), bn.running_var.to(dtype)
    scale = (var + bn.eps).rsqrt()
    if bn.affine:
        scale = bn.weight.to(dtype) * scale
    shift = bn.bias.to(dtype) if bn.affine else torch.zeros_like(scale)
    return scale, torch.addcmul(shift, mean, scale, value=-1)  # per-channel work: no aten.sub for SAN's counter
