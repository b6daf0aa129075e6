"""What every attnvision network shares: a ``stem``, a Sequential of ``stages`` and a timm ``ClassifierHead``.

``StagedClassifier`` gives a network with those three attributes the timm model API (``forward_features``,
``forward_head``, ``reset_classifier``, ``set_grad_checkpointing``, ``group_matcher``), so timm's own train,
validate and benchmark scripts run on our models; ``imagenet_cfg`` is the pretrained-config dict timm's
registry wants for each variant.
"""
from typing import Optional

import torch
from torch import nn
from timm.models import checkpoint_seq

__all__ = ["StagedClassifier", "imagenet_cfg"]


class StagedClassifier(nn.Module):
    """Base of networks built as ``stem`` → ``stages`` (nn.Sequential) → ``head`` (timm ClassifierHead).

    Subclasses set those three modules, ``num_classes`` and ``grad_checkpointing`` in their constructor.
    """

    stem: nn.Module
    stages: nn.Sequential
    head: nn.Module

    @torch.jit.ignore
    def group_matcher(self, coarse: bool = False):
        return dict(stem=r"^stem", blocks=r"^stages\.(\d+)" if coarse else r"^stages\.(\d+)\.(\d+)")

    @torch.jit.ignore
    def set_grad_checkpointing(self, enable: bool = True):
        self.grad_checkpointing = enable

    @torch.jit.ignore
    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int, global_pool: Optional[str] = None):
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def imagenet_cfg(**kwargs) -> dict:
    """timm's per-variant config: ImageNet input, mean/std and crop, no pretrained weights."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.0", "classifier": "head.fc", **kwargs}
