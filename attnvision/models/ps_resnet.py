"""PS-ResNet-26/38/50: conv-stem ResNets whose spatial convolutions are k×k position-sensitive attention, Table 1 of
Axial-DeepLab ("Conv-Stem + PS-Attention" and, with ``position_terms=('q',)``, "Conv-Stem + Attention" with BN).

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853 (../shared/reference/papers.md §4.4). The authors released no code for these rows.

Status: SASA's conversion (``sasa.py``: ResNet skeleton, conv stem, every bottleneck's 3×3 conv a 7×7 attention
layer of 8 heads, a 2×2/2 average pool where the ResNet strides) with ``PSAttention``, which adds the k·r^k and r^v
terms and the authors' BatchNorms to SASA's layer; the BN after the spatial layer is dropped because the layer ends
in its own. Counts at 224 and 1000 classes (pinned in tests/test_axial.py): ps_resnet50 18.03 M parameters and
3.68 G multiply-adds against the paper's 18.0 M / 3.7 B. Deviation: the last BN of each block is zero-initialised,
as in our other ResNets.
"""
from typing import Sequence

from timm.models import generate_default_cfgs, register_model

from attnvision.layers.ps_attention import POSITION_TERMS

from .av_resnet import ResNet
from .base import build_staged, imagenet_cfg
from .sasa import DEPTHS

__all__ = ["ps_resnet"]


def ps_resnet(variant: str, pretrained: bool = False, kernel_size: int = 7, heads: int = 8,
              position_terms: Sequence[str] = POSITION_TERMS, padding: str = "mask", **kwargs) -> ResNet:
    """Build a PS-ResNet; the keyword names are the ``model=ps_resnet`` config keys."""
    attention = dict(kernel_size=kernel_size, num_heads=heads, position_terms=tuple(position_terms),
                     padding=padding)
    return build_staged(ResNet, variant, pretrained, spatial_layer="ps_attention",
                                spatial_kwargs=attention, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"ps_resnet{d}": imagenet_cfg() for d in DEPTHS},
    "test_ps_resnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
})


@register_model
def ps_resnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """PS-ResNet-26, conv stem: [1,2,4,1] blocks, 7×7 position-sensitive attention, 8 heads."""
    return ps_resnet("ps_resnet26", pretrained, **{"layers": DEPTHS[26], **kwargs})


@register_model
def ps_resnet38(pretrained: bool = False, **kwargs) -> ResNet:
    """PS-ResNet-38, conv stem: [2,3,5,2] blocks."""
    return ps_resnet("ps_resnet38", pretrained, **{"layers": DEPTHS[38], **kwargs})


@register_model
def ps_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """PS-ResNet-50, conv stem: [3,4,6,3] blocks; Axial-DeepLab Table 1: 18.0M parameters, 3.7 B multiply-adds."""
    return ps_resnet("ps_resnet50", pretrained, **{"layers": DEPTHS[50], **kwargs})


@register_model
def test_ps_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test PS-ResNet: one block per stage, widths 16-32, 32×32 stem."""
    return ps_resnet("test_ps_resnet", pretrained, **{"layers": (1, 1, 1, 1), "widths": (16, 16, 32, 32),
                                                      "stem_width": 16, "small_stem": True, **kwargs})
