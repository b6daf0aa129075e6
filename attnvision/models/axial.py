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

import torch
from torch import nn
from timm.models import generate_default_cfgs, register_model

from attnvision.errors import check_choice
from attnvision.layers.axial import AxialSpatial
from attnvision.layers.ps_attention import POSITION_TERMS

from .av_resnet import Bottleneck, ResNet
from .base import build_staged, imagenet_cfg
from .official import convert_state_dict, rename

__all__ = ["axial_resnet", "axial_stem", "checkpoint_filter_fn"]

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


BLOCK_NAMES = {"conv_down": "conv1", "bn1": "bn1", "hight_block": "conv2.0", "width_block": "conv2.2",
               "conv_up": "conv3", "bn2": "bn3", "downsample": "downsample"}
ATTENTION_NAMES = {"qkv_transform": "qkv", "bn_qkv": "bn_qkv", "bn_similarity": "bn_logits", "bn_output": "bn_output"}


def checkpoint_filter_fn(state_dict: dict, model: ResNet) -> dict:
    """The authors' state_dict (csrhddlam/axial-deeplab ``lib/models/axialnet.py``) in our keys and layouts; ours
    passes through.

    Keys: their stem ``conv1``/``bn1``, stage i's blocks ``layer{i+1}.{j}`` with ``conv_down``, ``bn1``,
    ``hight_block``, ``width_block``, ``conv_up``, ``bn2`` (our bn3) and ``downsample``; an attention layer's
    ``qkv_transform`` (a Conv1d), ``bn_qkv``, ``bn_similarity`` (our ``bn_logits``, the same [qk, qr, kr] × heads
    order), ``bn_output`` and ``relative``. Layouts that differ: the projection gains our Conv2d's trailing 1;
    their output BN's channels interleave [sum w v_c, sum w r^v_c] per channel where ours has all of one then all of
    the other; their relative table is read at o - p for r^q and r^v (ours at p - o), so those rows are mirrored
    (r^k is read at p - o by both). Their ``flatten_index`` buffer is the table's index, which ours computes."""
    attention = "|".join(ATTENTION_NAMES)
    rules = [(rf"layer(\d)\.(\d+)\.(hight_block|width_block)\.({attention})\.(.+)",
              lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{BLOCK_NAMES[m[3]]}.{ATTENTION_NAMES[m[4]]}.{m[5]}"),
             (r"layer(\d)\.(\d+)\.(hight_block|width_block)\.relative",
              lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{BLOCK_NAMES[m[3]]}.relative"),
             (r"layer(\d)\.(\d+)\.(conv_down|bn1|conv_up|bn2|downsample)\.(.+)",
              lambda m: f"stages.{int(m[1]) - 1}.{m[2]}.{BLOCK_NAMES[m[3]]}.{m[4]}"),
             (r"conv1\.(.+)", r"stem.0.\1"), (r"bn1\.(.+)", r"stem.1.\1"), (r"fc\.(.+)", r"head.fc.\1")]

    def layout(key: str, value):
        if key.endswith(".qkv.weight"):
            return value.unsqueeze(-1)  # Conv1d -> Conv2d
        if ".bn_output." in key and value.dim() == 1:
            return value.view(-1, 2).t().reshape(-1)  # [v_0, r_0, v_1, r_1, ...] -> [v_0, v_1, ..., r_0, r_1, ...]
        if key.endswith(".relative"):
            layer = model.get_submodule(key.rsplit(".", 1)[0])
            rows = value.split([layer.widths[t] for t in layer.terms])
            return torch.cat([r.flip(-1) if t in ("q", "v") else r for t, r in zip(layer.terms, rows)])
        return value

    return convert_state_dict(state_dict, model, lambda key: rename(key, rules), layout, derived=("flatten_index",))


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
    return build_staged(ResNet, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn,
                                spatial_layer="axial", spatial_kwargs=attention,
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
    **{f"test_axial_resnet{s}": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4), first_conv=first_conv)
       for s, first_conv in (("", "stem.0"), ("_full", "stem.0.conv1"))},
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
