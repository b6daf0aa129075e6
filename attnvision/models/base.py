"""What every attnvision network shares: a ``stem``, a Sequential of ``stages`` and a timm ``ClassifierHead``.

``StagedClassifier`` gives a network with those three attributes the timm model API (``forward_features``,
``forward_head``, ``forward_intermediates``, ``prune_intermediate_layers``, ``reset_classifier``,
``set_grad_checkpointing``, ``group_matcher``), so timm's own train, validate and benchmark scripts, its
``features_only`` backbones and its test suite's checks run on our models; ``build_staged`` is timm's
``build_model_with_cfg`` with the options every family shares; ``imagenet_cfg`` is the pretrained-config dict
timm's registry wants for each variant.
"""
from contextlib import nullcontext
from typing import List, Optional, Tuple, Union

import torch
from torch import nn
from timm.models import build_model_with_cfg, checkpoint_seq
from timm.models._features import feature_take_indices  # where timm's own model files take it from
from timm.models.resnet import drop_blocks

__all__ = ["StagedClassifier", "build_staged", "imagenet_cfg", "stage_drop_blocks"]


class StagedClassifier(nn.Module):
    """Base of networks built as ``stem`` → ``stages`` (nn.Sequential) → ``head`` (timm ClassifierHead).

    Subclasses set those three modules, ``num_classes``, ``in_chans``, ``grad_checkpointing`` and ``feature_info``
    (the stem's output, then each stage's) in their constructor.
    """

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
        """A new classifier of ``num_classes`` (0: none), on the device and dtype of the rest of the model."""
        reference = next(self.stem.parameters())
        self.num_classes = num_classes
        self.head.reset(num_classes, pool_type=global_pool)
        self.head.to(device=reference.device, dtype=reference.dtype)

    def forward_intermediates(self, x: torch.Tensor, indices: Optional[Union[int, List[int]]] = None,
                              norm: bool = False, stop_early: bool = False, output_fmt: str = "NCHW",
                              intermediates_only: bool = False
                              ) -> Union[List[torch.Tensor], Tuple[torch.Tensor, List[torch.Tensor]]]:
        """The final features and the feature maps of ``indices`` (timm's convention: 0 is the stem's output, i the
        i-th stage's; an int n takes the last n, None all). ``norm`` is accepted for timm's API: the networks have
        no final norm. With ``stop_early`` the stages after the last requested map are skipped."""
        if output_fmt != "NCHW":
            raise ValueError(f"output_fmt={output_fmt!r} is not supported; the feature maps are NCHW")
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        intermediates = []
        x = self.stem(x)
        if 0 in take_indices:
            intermediates.append(x)
        stages = self.stages[:max_index] if stop_early else self.stages
        for i, stage in enumerate(stages, start=1):
            x = checkpoint_seq(stage, x) if self.grad_checkpointing and not torch.jit.is_scripting() else stage(x)
            if i in take_indices:
                intermediates.append(x)
        if intermediates_only:
            return intermediates
        return x, intermediates

    def prune_intermediate_layers(self, indices: Union[int, List[int]] = 1, prune_norm: bool = False,
                                  prune_head: bool = True) -> List[int]:
        """Drop the stages after the last of ``indices`` (and the classifier); returns the absolute indices kept."""
        take_indices, max_index = feature_take_indices(len(self.stages) + 1, indices)
        if max_index < len(self.stages):
            self.stages = self.stages[:max_index]
            self.num_features = self.head_hidden_size = self.feature_info[max_index]["num_chs"]
            prune_head = True  # the classifier is sized for the last stage's channels
        if prune_head:
            self.reset_classifier(0, "")
        return take_indices

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if self.grad_checkpointing and not torch.jit.is_scripting():
            return checkpoint_seq(self.stages, x)
        return self.stages(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x, pre_logits=pre_logits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def build_staged(model_cls: type, variant: str, pretrained: bool = False, device=None, dtype=None,
                 **kwargs) -> StagedClassifier:
    """timm's ``build_model_with_cfg`` for a ``StagedClassifier``: ``features_only=True`` wraps the model in timm's
    ``FeatureGetterNet`` (features through ``forward_intermediates``), by default of every level (the stem and
    each stage of ``kwargs['layers']``), and ``device`` / ``dtype`` (e.g. ``device='meta'``) place the parameters at
    construction, as timm's own models take them."""
    levels = tuple(range(len(kwargs["layers"]) + 1))
    with torch.device(device) if device is not None else nullcontext():
        model = build_model_with_cfg(model_cls, variant, pretrained,
                                     feature_cfg=dict(feature_cls="getter", out_indices=levels), **kwargs)
    return model if dtype is None else model.to(dtype)


def stage_drop_blocks(num_stages: int, drop_block_rate: float) -> list:
    """timm ResNet's DropBlock builders per stage (block size 5 in the second-to-last stage, 3 in the last, None
    before them and when the rate is 0), for any number of stages."""
    return [None] * (num_stages - 4) + drop_blocks(drop_block_rate)


def imagenet_cfg(**kwargs) -> dict:
    """timm's per-variant config: ImageNet input, mean/std and crop, no pretrained weights."""
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.0", "classifier": "head.fc", **kwargs}
