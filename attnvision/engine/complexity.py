"""Parameters and multiply-adds, counted with ``torch.utils.flop_counter.FlopCounterMode``.

Convention: MACs are multiply-accumulates of the convolutions, matmuls and linears that FlopCounterMode sees, at
batch size 1 in eval mode; FLOPs = 2 × MACs (SASA's "FLOPS"). BatchNorm, activations, pooling and residual adds
are not counted, which is how timm and Axial-DeepLab count (SAN's own counter adds them; see each family's notes).
"""
from dataclasses import dataclass, field
from typing import List, Tuple

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["Complexity", "count_complexity", "count_params", "stage_names"]


@dataclass
class Complexity:
    params: int
    macs: int
    stages: List[Tuple[str, int, int]] = field(default_factory=list)  # (name, params, macs)

    @property
    def flops(self) -> int:
        return 2 * self.macs


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def stage_names(model: nn.Module) -> List[str]:
    """Top-level children in order, with a ``stages`` Sequential expanded into ``stages.0``, ``stages.1``, ..."""
    names = []
    for name, child in model.named_children():
        if name == "stages" and isinstance(child, nn.Sequential):
            names += [f"stages.{i}" for i in range(len(child))]
        else:
            names.append(name)
    return names


@torch.no_grad()
def count_complexity(model: nn.Module, image_size: int, in_chans: int = 3) -> Complexity:
    """Total and per-stage parameters and MACs of ``model`` on one ``in_chans``×S×S image."""
    was_training = model.training
    device = next(model.parameters()).device
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, in_chans, image_size, image_size, device=device))
    finally:
        model.train(was_training)
    flops_by_module = counter.get_flop_counts()
    root = type(model).__name__
    stages = []
    for name in stage_names(model):
        macs = sum(flops_by_module.get(f"{root}.{name}", {}).values()) // 2
        params = count_params(model.get_submodule(name))
        if params or macs:
            stages.append((name, params, macs))
    return Complexity(count_params(model), counter.get_total_flops() // 2, stages)
