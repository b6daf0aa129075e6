"""Axial-ResNets: ResNets whose 3×3 convs are height-then-width position-sensitive axial attention, conv or axial stem.

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853. Authors' PyTorch code: https://github.com/csrhddlam/axial-deeplab.

Status: the conv-stem networks of the authors' code (``axial26s``, ``axial50s/m/l``; also 26m/26l) on our ResNet
skeleton: ResNet's 7×7/2 conv and 3×3/2 max-pool stem, bottlenecks 1×1 → ``AxialSpatial`` (height, width, 2×2
average pool where the ResNet strides) → ReLU → 1×1, expansion 2, 8 heads, strided 1×1 projection shortcuts,
zero-init of each block's last BN; every channel count scaled by the width multiplier s (0.5 / 0.75 / 1.0). Their
parameter counts equal the authors' code (tests/test_axial.py). The span is global by default; the relative
tables are sized for ``img_size`` (224) and resampled for other sizes, so the same model runs at 32, 224 and 320.

Full axial-attention models (``axial{26,50}{s,m,l}_full``, §4.2: "the stem is replaced by three axial-attention
blocks, the first with stride 2"; span m = 15 in all blocks is the config's choice for Table 1). The paper gives
no widths or pooling for that stem; ours: three axial bottlenecks of inner width int(64·s) and output int(128·s),
the first strided, then the conv stem's 3×3/2 max-pool so that stage 1 again sees 56×56. With Table 1's tables
(``table_span=255``) this gives 12.53 M parameters and 3.17 G multiply-adds against the paper's 12.5 M / 3.3 B
(tests/test_axial.py pins them; the widths and the max-pool were chosen as the fit of the options tried, see
the README).

Small images (``small_stem=True``): the conv stem becomes a 3×3/1 conv, the axial stem drops its stride and
max-pool, so 32×32 inputs give stages at 32/16/8/4.
"""
from functools import partial
from typing import Callable, Optional, Sequence

from torch import nn
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from attnvision.errors import check_choice
from attnvision.layers.axial import AxialSpatial
from attnvision.layers.ps_attention import POSITION_TERMS

from .base import imagenet_cfg
from .resnet import Bottleneck, ResNet

__all__ = ["axial_resnet", "axial_stem"]

DEPTHS = {26: (1, 2, 4, 1), 50: (3, 4, 6, 3)}
WIDTHS = {"s": 0.5, "m": 0.75, "l": 1.0}


def axial_stem(in_chans: int, stem_width: int, small_stem: bool, norm_layer: Callable, act_layer: Callable,
               spatial_layer: Callable = AxialSpatial, img_size: int = 224) -> nn.Sequential:
    """The full model's stem: three axial bottlenecks (inner width stem_width / 2, ``stem_width`` out), the first
    with stride 2, then a 3×3/2 max-pool; at stride 1 and without the pool for small images."""
    blocks, size, in_chs = [], img_size, in_chans
    for i in range(3):
        stride = 1 if small_stem or i else 2
        blocks.append(Bottleneck(in_chs, stem_width // 2, stem_width, stride,
                                 partial(spatial_layer, input_size=size), norm_layer, act_layer))
        size, in_chs = -(-size // stride), stem_width
    return nn.Sequential(*blocks, nn.Identity() if small_stem else nn.MaxPool2d(3, stride=2, padding=1))


def axial_resnet(variant: str, pretrained: bool = False, width: float = 0.5, stem: str = "conv", heads: int = 8,
                 span: Optional[int] = None, position_terms: Sequence[str] = POSITION_TERMS,
                 table_span: Optional[int] = None, stride_mode: str = "pool", img_size: int = 224,
                 **kwargs) -> ResNet:
    """Build an Axial-ResNet; the keyword names are the ``model=axial_resnet`` config keys (``width``: the channel
    multiplier s; ``stem``: conv | axial)."""
    check_choice("stem", stem, ("conv", "axial"))
    attention = dict(num_heads=heads, span=span, position_terms=tuple(position_terms), table_span=table_span,
                     stride_mode=stride_mode)
    kwargs.setdefault("widths", tuple(int(w * width) for w in (64, 128, 256, 512)))
    if stem == "axial":
        kwargs.setdefault("stem_width", int(128 * width))
        kwargs["stem_layer"] = partial(axial_stem, spatial_layer=partial(AxialSpatial, **attention),
                                       img_size=img_size)
    kwargs.setdefault("stem_width", int(64 * width))
    return build_model_with_cfg(ResNet, variant, pretrained, spatial_layer="axial", spatial_kwargs=attention,
                                expansion=2, img_size=img_size, **kwargs)


def _register(name: str, depth: int, width: str, stem: str) -> None:
    def build(pretrained: bool = False, **kwargs) -> ResNet:
        return axial_resnet(name, pretrained, **{"layers": DEPTHS[depth], "width": WIDTHS[width], "stem": stem,
                                                 **kwargs})

    build.__name__ = build.__qualname__ = name
    build.__doc__ = (f"Axial-ResNet-{depth}-{width.upper()}, {stem} stem: {list(DEPTHS[depth])} blocks, width "
                     f"×{WIDTHS[width]}.")
    register_model(build)


VARIANTS = {f"axial{d}{w}{'_full' if stem == 'axial' else ''}": (d, w, stem)
            for d in DEPTHS for w in WIDTHS for stem in ("conv", "axial")}
default_cfgs = generate_default_cfgs({
    **{name: imagenet_cfg(first_conv="stem.0" if stem == "conv" else "stem.0.conv1")
       for name, (_, _, stem) in VARIANTS.items()},
    **{f"test_axial_resnet{s}": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)) for s in ("", "_full")},
})
for _name, _spec in VARIANTS.items():
    _register(_name, *_spec)


_TEST_ARGS = dict(layers=(1, 1, 1, 1), widths=(8, 8, 16, 16), stem_width=16, small_stem=True, img_size=32, heads=2)


@register_model
def test_axial_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test Axial-ResNet, conv stem: one block per stage, 32×32 stem, tables for 32×32 inputs."""
    return axial_resnet("test_axial_resnet", pretrained, **dict(_TEST_ARGS, **kwargs))


@register_model
def test_axial_resnet_full(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test full Axial-ResNet: the axial stem at 32×32 (no stride, no max-pool), span 7."""
    return axial_resnet("test_axial_resnet_full", pretrained, **dict(_TEST_ARGS, stem="axial", span=7, **kwargs))
