"""LR-Net-26/50: ResNets whose spatial convolutions, the stem's 7×7 included, are local relation layers.

"Local Relation Networks for Image Recognition", Hu, Zhang, Xie, Lin, ICCV 2019 - https://arxiv.org/abs/1904.11491

Status: the paper's text could not be read (../shared/reference/papers.md §2); the network is settled by the
numbers the paper reports (LR-Net-26: 14.7M parameters, 2.6 GFLOPs; LR-Net-50: 23.3M, 4.3 G multiply-adds as
Axial-DeepLab re-quotes it), the layer of its Figure 2 and the authors' op (``LocalRelation``):
  - every bottleneck's 3×3 conv becomes a 7×7 local relation layer with m = 8 channels per weight, stride inside
    the layer (the query sampled at the stride), on our ResNet-v1.5 skeleton;
  - depths: LR-Net-26 is [2,2,2,2] bottlenecks, the "ResNet-26" of timm (16.0M), not the [1,2,4,1] of SASA, SAN and
    Axial-DeepLab: with the layer of Figure 2, [1,2,4,1] cannot reach 14.7M at any width that also gives 23.3M
    for LR-Net-50 (it gives 12.5M);
  - the bottleneck expansion α (``expansion``, output width over inner width) is 2.56 instead of ResNet's 4, so the
    inner widths are 104 / 200 / 400 / 800 (256/2.56 = 100 rounded up to a multiple of m): the relation layer
    costs less than a 3×3 conv, and the paper widens the bottleneck so that the network costs what the ResNet does;
    α is not printed in any source we could read, and 2.56 is the value at which both parameter counts land
    within 1%;
  - the stem: a 1×1 conv 3 → 64, BN, ReLU, then a 7×7 local relation layer with stride 2, BN, ReLU and the 3×3/2
    max-pool (``stem='relation'``); ``stem='conv'`` keeps ResNet's 7×7 conv.
Counts at 224 and 1000 classes (tests/test_lrnet.py): 14.61M / 23.38M parameters (paper 14.7M / 23.3M), but
2.41 / 4.08 G multiply-adds, 7.3% / 5.2% below the paper's 2.6 / 4.3 G. The gap is about 0.2 G at both depths,
so it is not a per-block term; without the paper's text we cannot say what its FLOP count includes beyond
multiply-adds, and we do not add unsupported choices to close it (README, LR-Net).
Small images (``small_stem=True``): the stem's relation layer has stride 1 and the max-pool is dropped (the conv
stem becomes a 3×3/1 conv), so 32×32 inputs give stages at 32/16/8/4.
"""
from functools import partial
from typing import Callable

from torch import nn
from timm.models import generate_default_cfgs, register_model

from attnvision.layers.local_relation import LocalRelation

from .av_resnet import ResNet, make_stem
from .base import build_staged, imagenet_cfg

__all__ = ["lrnet", "relation_stem"]

DEPTHS = {26: (2, 2, 2, 2), 50: (3, 4, 6, 3)}


def relation_stem(in_chans: int, stem_width: int, small_stem: bool, norm_layer: Callable, act_layer: Callable,
                  **relation_kwargs) -> nn.Sequential:
    """1×1 conv, BN, ReLU, 7×7 local relation layer (stride 2), BN, ReLU, 3×3/2 max-pool; stride 1 and no pool for
    small images."""
    return nn.Sequential(
        nn.Conv2d(in_chans, stem_width, 1, bias=False), norm_layer(stem_width), act_layer(inplace=True),
        LocalRelation(stem_width, stem_width, stride=1 if small_stem else 2, **relation_kwargs),
        norm_layer(stem_width), act_layer(inplace=True),
        nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1))


def lrnet(variant: str, pretrained: bool = False, stem: str = "relation", kernel_size: int = 7, heads=None,
          channels_per_group: int = 8, composability: str = "squared_difference", geometry_prior: str = "mlp",
          padding: str = "mask", expansion: float = 2.56, **kwargs) -> ResNet:
    """Build an LR-Net; the keyword names are the ``model=lrnet`` config keys (``heads``: groups per layer, C/m)."""
    relation = dict(kernel_size=kernel_size, num_heads=heads, channels_per_group=channels_per_group,
                    composability=composability, geometry_prior=geometry_prior, padding=padding)
    stem_layer = partial(relation_stem, **relation) if stem == "relation" else make_stem
    return build_staged(ResNet, variant, pretrained, spatial_layer="local_relation",
                                spatial_kwargs=relation, stem_layer=stem_layer, expansion=expansion, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"lrnet{d}{s}": imagenet_cfg() for d in DEPTHS for s in ("", "_conv_stem")},
    "test_lrnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
    "test_lrnet_conv_stem": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
})


@register_model
def lrnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """LR-Net-26: [2,2,2,2] bottlenecks, α = 2.56, 7×7 relation layers and relation stem; 14.7M parameters."""
    return lrnet("lrnet26", pretrained, **{"layers": DEPTHS[26], **kwargs})


@register_model
def lrnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """LR-Net-50: [3,4,6,3] bottlenecks, α = 2.56, 7×7 relation layers and relation stem; 23.3M parameters."""
    return lrnet("lrnet50", pretrained, **{"layers": DEPTHS[50], **kwargs})


@register_model
def lrnet26_conv_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """LR-Net-26 with ResNet's 7×7 conv stem."""
    return lrnet("lrnet26_conv_stem", pretrained, "conv", **{"layers": DEPTHS[26], **kwargs})


@register_model
def lrnet50_conv_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """LR-Net-50 with ResNet's 7×7 conv stem."""
    return lrnet("lrnet50_conv_stem", pretrained, "conv", **{"layers": DEPTHS[50], **kwargs})


_TEST_ARGS = dict(layers=(1, 1, 1, 1), widths=(8, 16, 16, 32), stem_width=16, small_stem=True)


@register_model
def test_lrnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test LR-Net: one block per stage, inner widths 16-48, 32×32 relation stem."""
    return lrnet("test_lrnet", pretrained, **dict(_TEST_ARGS, **kwargs))


@register_model
def test_lrnet_conv_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test LR-Net with the conv stem."""
    return lrnet("test_lrnet_conv_stem", pretrained, "conv", **dict(_TEST_ARGS, **kwargs))
