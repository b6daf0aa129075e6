"""Axial-ResNet, conv stem: ResNets whose 3×3 convs are height-then-width position-sensitive axial attention.

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853. Authors' PyTorch code: https://github.com/csrhddlam/axial-deeplab.

Status: the conv-stem networks of the authors' code (``axial26s``, ``axial50s/m/l``) on our ResNet skeleton:
ResNet's 7×7/2 conv and 3×3/2 max-pool stem, bottlenecks 1×1 → ``AxialSpatial`` (height, width, 2×2 average pool
where the ResNet strides) → ReLU → 1×1, expansion 2, 8 heads, strided 1×1 projection shortcuts, zero-init of each
block's last BN; every channel count scaled by the width multiplier s (0.5 / 0.75 / 1.0). The span is global; the
relative tables are sized for ``img_size`` (224) and resampled for other sizes, so the same model runs at 32, 224
and 320. Small images (``small_stem=True``): the conv stem becomes a 3×3/1 conv, so 32×32 inputs give stages at
32/16/8/4. Not built yet: the full-axial stem (span-15 axial blocks, §4.2) and the PS-attention layer of Table 1.
"""
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from .base import imagenet_cfg
from .resnet import ResNet

__all__ = ["axial_resnet"]

DEPTHS = {26: (1, 2, 4, 1), 50: (3, 4, 6, 3)}
WIDTHS = {"s": 0.5, "m": 0.75, "l": 1.0}


def axial_resnet(variant: str, pretrained: bool = False, width: float = 0.5, heads: int = 8, span=None,
                 img_size: int = 224, **kwargs) -> ResNet:
    """Build a conv-stem Axial-ResNet; the keyword names are the ``model=axial_resnet`` config keys (``width``: the
    channel multiplier s)."""
    kwargs.setdefault("widths", tuple(int(w * width) for w in (64, 128, 256, 512)))
    kwargs.setdefault("stem_width", int(64 * width))
    return build_model_with_cfg(ResNet, variant, pretrained, spatial_layer="axial",
                                spatial_kwargs=dict(num_heads=heads, span=span), expansion=2,
                                img_size=img_size, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"axial{d}{w}": imagenet_cfg() for d in DEPTHS for w in WIDTHS},
    "test_axial_resnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
})


@register_model
def axial26s(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-26-S, conv stem: [1,2,4,1] blocks, width ×0.5."""
    return axial_resnet("axial26s", pretrained, **{"layers": DEPTHS[26], "width": WIDTHS["s"], **kwargs})


@register_model
def axial50s(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-50-S, conv stem: [3,4,6,3] blocks, width ×0.5."""
    return axial_resnet("axial50s", pretrained, **{"layers": DEPTHS[50], "width": WIDTHS["s"], **kwargs})


@register_model
def axial50m(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-50-M, conv stem: [3,4,6,3] blocks, width ×0.75."""
    return axial_resnet("axial50m", pretrained, **{"layers": DEPTHS[50], "width": WIDTHS["m"], **kwargs})


@register_model
def axial50l(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-50-L, conv stem: [3,4,6,3] blocks, width ×1.0."""
    return axial_resnet("axial50l", pretrained, **{"layers": DEPTHS[50], "width": WIDTHS["l"], **kwargs})


@register_model
def axial26m(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-26-M, conv stem: [1,2,4,1] blocks, width ×0.75 (not in the paper; completes the grid)."""
    return axial_resnet("axial26m", pretrained, **{"layers": DEPTHS[26], "width": WIDTHS["m"], **kwargs})


@register_model
def axial26l(pretrained: bool = False, **kwargs) -> ResNet:
    """Axial-ResNet-26-L, conv stem: [1,2,4,1] blocks, width ×1.0 (not in the paper; completes the grid)."""
    return axial_resnet("axial26l", pretrained, **{"layers": DEPTHS[26], "width": WIDTHS["l"], **kwargs})


@register_model
def test_axial_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test Axial-ResNet: one block per stage, 32×32 stem, tables for 32×32 inputs."""
    return axial_resnet("test_axial_resnet", pretrained, **{
        "layers": (1, 1, 1, 1), "widths": (8, 8, 16, 16), "stem_width": 16, "small_stem": True, "img_size": 32,
        "heads": 2, **kwargs})
