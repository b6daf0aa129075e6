"""Hybrid ResNets: the ResNet-26/38/50 skeleton whose spatial layers are any weight function on any footprint
(``layers/hybrid.py``), ``model=hybrid model.weights=... model.footprint=...``.

Status: our ResNet skeleton as SASA-ResNet uses it (ResNet's 7×7/2 conv and 3×3/2 max-pool stem, bottlenecks of
widths 64-512 with expansion 4, strided 1×1 projection shortcuts, zero-init of each block's last BN), every
bottleneck's 3×3 conv replaced by ``HybridSpatial``. With ``weights=sasa footprint=square`` it is SASA-ResNet, with
``weights=conv footprint=square kernel_size=3`` ResNet; SE-ResNet, the baseline of ``weights=se``, is
``model=resnet model.se=true``. Small images (``small_stem=True``): 3×3/1 conv stem, stages at 32/16/8/4.
"""
from typing import Optional

from timm.models import generate_default_cfgs, register_model

from attnvision.layers import HybridSpatial

from .av_resnet import ResNet
from .base import build_staged, imagenet_cfg
from .sasa import DEPTHS

__all__ = ["hybrid_resnet"]


def hybrid_resnet(variant: str, pretrained: bool = False, weights: str = "sasa", footprint: str = "square",
                  kernel_size: int = 7, span: Optional[int] = None, dilation: int = 2, heads: Optional[int] = None,
                  padding: str = "mask", img_size: int = 224, **kwargs) -> ResNet:
    """Build a hybrid ResNet; the keyword names are the ``model=hybrid`` config keys."""
    spatial = dict(weights=weights, footprint=footprint, kernel_size=kernel_size, span=span, dilation=dilation,
                   num_heads=heads, padding=padding)
    return build_staged(ResNet, variant, pretrained, spatial_layer=HybridSpatial, spatial_kwargs=spatial,
                                img_size=img_size, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"hybrid_resnet{d}": imagenet_cfg() for d in DEPTHS},
    "test_hybrid_resnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
})


@register_model
def hybrid_resnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """Hybrid ResNet-26: [1,2,4,1] bottlenecks, any weight function on any footprint."""
    return hybrid_resnet("hybrid_resnet26", pretrained, **{"layers": DEPTHS[26], **kwargs})


@register_model
def hybrid_resnet38(pretrained: bool = False, **kwargs) -> ResNet:
    """Hybrid ResNet-38: [2,3,5,2] bottlenecks, any weight function on any footprint."""
    return hybrid_resnet("hybrid_resnet38", pretrained, **{"layers": DEPTHS[38], **kwargs})


@register_model
def hybrid_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """Hybrid ResNet-50: [3,4,6,3] bottlenecks, any weight function on any footprint."""
    return hybrid_resnet("hybrid_resnet50", pretrained, **{"layers": DEPTHS[50], **kwargs})


@register_model
def test_hybrid_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test hybrid ResNet: one block per stage, widths 16-32, 32×32 stages."""
    return hybrid_resnet("test_hybrid_resnet", pretrained, **{"layers": (1, 1, 1, 1), "widths": (16, 16, 32, 32),
                                                              "stem_width": 16, "small_stem": True, "img_size": 32,
                                                              **kwargs})
