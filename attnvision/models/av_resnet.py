"""ResNet-26/38/50 as the local self-attention papers define them, on a skeleton with a pluggable spatial layer.

"Deep Residual Learning for Image Recognition", He et al., CVPR 2016 - https://arxiv.org/abs/1512.03385

SASA (Ramachandran et al., 2019), SAN (Zhao et al., 2020) and Axial-DeepLab (Wang et al., 2020) compare against
bottleneck ResNets with [1,2,4,1] / [2,3,5,2] / [3,4,6,3] blocks per stage (ResNet-50 minus blocks). timm's own
``resnet26`` is [2,2,2,2], a different network, so ours are registered as ``av_resnet26/38/50``.

Status: ResNet v1.5 exactly as timm/torchvision build it (stride on the 3×3 conv, 1×1 strided projection
shortcut, zero-initialised last BN), so ``av_resnet50`` has timm ``resnet50``'s 25,557,032 parameters and
4.1 GMACs at 224. The attention families reuse this skeleton and swap ``spatial_layer``. Deviation for small
images (``small_stem=True``): the 7×7/2 conv and 3×3/2 max-pool stem becomes one 3×3/1 conv, the usual CIFAR stem.
"""
from functools import partial
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn
from timm.layers import ClassifierHead, DropPath, SEModule, make_divisible
from timm.models import generate_default_cfgs, register_model

from attnvision.errors import ConfigError
from attnvision.layers import ConvSpatial, get_spatial_layer

from .base import StagedClassifier, build_staged, imagenet_cfg, stage_drop_blocks

__all__ = ["Bottleneck", "ResNet"]


class Bottleneck(nn.Module):
    """1×1 reduce, spatial layer (3×3 conv in the baseline), 1×1 expand, plus a projection shortcut.

    Widths: ``planes`` inside the block, ``out_chs`` out (4 × planes in ResNet); the spatial layer maps planes ->
    planes and carries the stride. ``drop_block`` builds a DropBlock applied after the spatial layer's BN, where
    timm's ResNet applies it.
    """

    def __init__(self, in_chs: int, planes: int, out_chs: int, stride: int = 1, spatial_layer: Callable = None,
                 norm_layer: Callable = nn.BatchNorm2d, act_layer: Callable = nn.ReLU, drop_path: float = 0.,
                 se: bool = False, drop_block: Optional[Callable] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chs, planes, 1, bias=False)
        self.bn1 = norm_layer(planes)
        self.act1 = act_layer(inplace=True)
        self.conv2 = spatial_layer(planes, planes, stride=stride)
        # layers that end in their own BatchNorm (Axial-DeepLab's) get none after them, as in their authors' blocks
        self.bn2 = nn.Identity() if getattr(self.conv2, "normalizes_output", False) else norm_layer(planes)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = act_layer(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_chs, 1, bias=False)
        self.bn3 = norm_layer(out_chs)
        self.se = SEModule(out_chs) if se else nn.Identity()  # SE-ResNet (Hu et al., CVPR 2018): before the sum
        self.downsample = nn.Identity()
        if stride != 1 or in_chs != out_chs:
            self.downsample = nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False),
                                            norm_layer(out_chs))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.act3 = act_layer(inplace=True)

    def zero_init_last(self):
        nn.init.zeros_(self.bn3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = self.downsample(x)
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.drop_block(self.bn2(self.conv2(x))))
        x = self.se(self.bn3(self.conv3(x)))
        return self.act3(self.drop_path(x) + shortcut)


def make_stem(in_chans: int, stem_width: int, small_stem: bool, norm_layer: Callable, act_layer: Callable):
    """ImageNet stem (7×7/2 conv, BN, ReLU, 3×3/2 max-pool) or small-image stem (3×3/1 conv, BN, ReLU)."""
    if small_stem:
        conv = nn.Conv2d(in_chans, stem_width, 3, stride=1, padding=1, bias=False)
        pool = nn.Identity()
    else:
        conv = nn.Conv2d(in_chans, stem_width, 7, stride=2, padding=3, bias=False)
        pool = nn.MaxPool2d(3, stride=2, padding=1)
    return nn.Sequential(conv, norm_layer(stem_width), act_layer(inplace=True), pool)


class ResNet(StagedClassifier):
    """Bottleneck ResNet whose k×k spatial operator is chosen by name.

    Widths: the stem outputs ``stem_width`` channels; stage i has ``widths[i] * 4`` channels out and
    ``widths[i] * 4 / expansion`` planes inside its blocks (``widths[i]`` for ResNet's expansion α = 4; rounded to a
    multiple of 8). Stage 1 keeps the stem's resolution, stages 2-4 halve it in their first block.

    Args:
        layers: blocks per stage, e.g. (1, 2, 4, 1) for ResNet-26.
        spatial_layer: registered name ('conv', ...) or class with the spatial-layer signature.
        spatial_kwargs: extra arguments for every spatial layer (kernel_size, num_heads, ...).
        attention_stages: the stages (1-based) whose blocks use ``spatial_layer``; the others keep the 3×3 conv
            (SASA's Table 3). None = all.
        stem_layer: builds the stem, with ``make_stem``'s signature (the attention families swap in theirs).
        small_stem: 3×3/1 stem without max-pool for 32×32 inputs.
        expansion: the bottleneck expansion α, output over inner width (LR-Net and Axial-ResNet change it).
        se: a Squeeze-and-Excitation module (timm's, reduction 16) on every block's residual branch before the sum
            (SE-ResNet, Hu et al., CVPR 2018).
        img_size: when set, every spatial layer also gets ``input_size``, the side of its input at this image size
            (layers that size position tables from the resolution, such as global axial attention, need it).
        drop_block_rate: DropBlock (Ghiasi et al., 2018) in the last two stages, as timm's ResNet (timm's
            ``--drop-block``).
    """

    def __init__(self, layers: Sequence[int], widths: Sequence[int] = (64, 128, 256, 512), stem_width: int = 64,
                 spatial_layer: Union[str, Callable] = "conv", spatial_kwargs: Optional[dict] = None,
                 attention_stages: Optional[Sequence[int]] = None, stem_layer: Callable = make_stem,
                 small_stem: bool = False, expansion: float = 4., img_size: Optional[int] = None,
                 num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.,
                 drop_path_rate: float = 0., zero_init_last: bool = True, norm_layer: Callable = nn.BatchNorm2d,
                 act_layer: Callable = nn.ReLU, se: bool = False, drop_block_rate: float = 0.):
        super().__init__()
        if len(layers) != len(widths):
            raise ValueError(f"layers={tuple(layers)} and widths={tuple(widths)} must have the same length")
        stage_ids = range(1, len(layers) + 1)
        attention_stages = stage_ids if attention_stages is None else tuple(attention_stages)
        if not set(attention_stages) <= set(stage_ids):
            raise ConfigError(f"attention_stages={list(attention_stages)} must be a subset of {list(stage_ids)}")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False
        spatial = partial(get_spatial_layer(spatial_layer), **(spatial_kwargs or {}))

        self.stem = stem_layer(in_chans, stem_width, small_stem, norm_layer, act_layer)
        reduction = 1 if small_stem else 4
        self.feature_info = [dict(num_chs=stem_width, reduction=reduction, module="stem")]

        drop_path_rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        stages, in_chs, block_idx = [], stem_width, 0
        for stage_idx, (depth, width, drop_block) in enumerate(zip(layers, widths,
                                                                    stage_drop_blocks(len(layers), drop_block_rate))):
            out_chs, planes = 4 * width, make_divisible(4 * width / expansion, 8)
            stride = 1 if stage_idx == 0 else 2
            reduction *= stride
            blocks = []
            stage_layer = spatial if stage_idx + 1 in attention_stages else ConvSpatial
            for i in range(depth):
                layer = stage_layer
                if img_size is not None and stage_layer is spatial:  # side of this block's input
                    layer = partial(stage_layer, input_size=img_size // (reduction // (stride if i == 0 else 1)))
                blocks.append(Bottleneck(in_chs, planes, out_chs, stride if i == 0 else 1,
                                         spatial_layer=layer, norm_layer=norm_layer, act_layer=act_layer,
                                         drop_path=drop_path_rates[block_idx], se=se, drop_block=drop_block))
                in_chs = out_chs
                block_idx += 1
            stages.append(nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=in_chs, reduction=reduction, module=f"stages.{stage_idx}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.reset_parameters(zero_init_last)

    def reset_parameters(self, zero_init_last: bool = True):
        """Kaiming (fan-out) convs and unit BNs as ResNet, then the layers that define their own ``init_weights``,
        then (by default) zero-init of each block's last BN."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if hasattr(m, "init_weights") and m is not self:
                m.init_weights()
            if zero_init_last and isinstance(m, Bottleneck):
                m.zero_init_last()


def resnet(variant: str, pretrained: bool = False, kernel_size: int = 3, **kwargs) -> ResNet:
    """Build a baseline ResNet whose spatial convs are ``kernel_size``×``kernel_size`` (SAN's Table 7 sweeps 3/5/7);
    the keyword names are the ``model=resnet`` config keys."""
    return build_staged(ResNet, variant, pretrained, spatial_kwargs=dict(kernel_size=kernel_size), **kwargs)


default_cfgs = generate_default_cfgs({
    "av_resnet26": imagenet_cfg(),
    "av_resnet38": imagenet_cfg(),
    "av_resnet50": imagenet_cfg(),
    "test_av_resnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
})


@register_model
def av_resnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-26 of SASA/SAN/Axial-DeepLab: bottleneck [1,2,4,1], 13.7M parameters."""
    model_args = dict(layers=(1, 2, 4, 1))
    return resnet("av_resnet26", pretrained, **dict(model_args, **kwargs))


@register_model
def av_resnet38(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-38 of SASA/SAN: bottleneck [2,3,5,2], 19.6M parameters."""
    model_args = dict(layers=(2, 3, 5, 2))
    return resnet("av_resnet38", pretrained, **dict(model_args, **kwargs))


@register_model
def av_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """ResNet-50: bottleneck [3,4,6,3], 25.6M parameters, identical to timm's resnet50."""
    model_args = dict(layers=(3, 4, 6, 3))
    return resnet("av_resnet50", pretrained, **dict(model_args, **kwargs))


@register_model
def test_av_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test ResNet: one block per stage, narrow widths, 32×32 stem."""
    model_args = dict(layers=(1, 1, 1, 1), widths=(8, 16, 32, 64), stem_width=16, small_stem=True)
    return resnet("test_av_resnet", pretrained, **dict(model_args, **kwargs))
