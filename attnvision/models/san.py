"""SAN10/15/19, pairwise and patchwise: SAN's own five-stage network of self-attention blocks.

"Exploring Self-attention for Image Recognition", Zhao, Jia, Koltun, CVPR 2020 - https://arxiv.org/abs/2004.13621
Official code: https://github.com/hszhao/SAN (``model/san.py``).

Status: the network of the official code, whose parameter counts it equals exactly at 224 and 1000 classes
(pinned in tests/test_san.py):
  - stem: a 1×1 conv 3 → 64 (no bias), BN, ReLU; there is no spatial stem convolution;
  - five stages, each a transition (2×2/2 max-pool, then a 1×1 conv without bias that widens the channels to
    64 / 256 / 512 / 1024 / 2048), a stack of blocks, then BN and ReLU;
  - pre-activation bottleneck blocks: x + conv1×1(ReLU(BN(SA(ReLU(BN(x)))))), SA mapping C → C/4 with the
    C/16 relation width, and the 1×1 conv C/4 → C with bias; blocks never stride;
  - footprints [3, 7, 7, 7, 7]: 3×3 in the high-resolution first stage; ``kernel_size`` sets stages 2-5,
    ``kernel_sizes`` all five.
Deviations:
  - ``zero_init_last=True`` (default) zeroes each block's last 1×1 conv, so every block starts as the identity, as
    timm's ResNets and ours do (Goyal et al., 2017). The code keeps PyTorch's default initialisation everywhere;
    ``zero_init_last=False`` restores it. Measured on digits (AdamW 1e-3, batch 32): with the default init SAN10
    patchwise's loss stays at 2.1-2.5 over its first 20 steps, with zero-init it falls from 2.3 to 0.7.
  - For small images (``small_stem=True``, for 32×32 inputs) the max-pools of the first two transitions are
    dropped, so the stages run at 32/32/16/8/4 pixels, like the small-stem ResNet's stages; the ImageNet network
    runs at 112/56/28/14/7. The paper's five poolings would shrink a 32×32 input to 1×1.
"""
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from timm.layers import ClassifierHead, DropPath
from timm.models import generate_default_cfgs, register_model

from attnvision.errors import ConfigError
from attnvision.layers.san import SANPairwise, SANPatchwise

from .base import StagedClassifier, build_staged, imagenet_cfg, stage_drop_blocks
from .official import convert_state_dict, rename

__all__ = ["SANBlock", "SAN", "checkpoint_filter_fn"]

ATTENTIONS = {"pairwise": SANPairwise, "patchwise": SANPatchwise}


class SANBlock(nn.Module):
    """Pre-activation self-attention bottleneck: C → (BN, ReLU, SA) → C/``mid_reduction`` → (BN, ReLU, 1×1 conv) → C,
    plus the identity. SA's relation width is C/``rel_reduction``; ``drop_block`` builds a DropBlock applied after
    the attention's BN (our addition for timm's ``--drop-block``; the paper uses none)."""

    def __init__(self, dim: int, attention: Callable, kernel_size: int, rel_reduction: int = 16,
                 mid_reduction: int = 4, drop_path: float = 0., drop_block: Optional[Callable] = None, **attn_kwargs):
        super().__init__()
        mid = dim // mid_reduction
        self.bn1 = nn.BatchNorm2d(dim)
        self.act1 = nn.ReLU(inplace=True)
        self.attn = attention(dim, mid, kernel_size=kernel_size, rel_planes=dim // rel_reduction, **attn_kwargs)
        self.bn2 = nn.BatchNorm2d(mid)
        self.drop_block = drop_block() if drop_block is not None else nn.Identity()
        self.act2 = nn.ReLU(inplace=True)
        self.conv = nn.Conv2d(mid, dim, 1)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def zero_init_last(self):
        nn.init.zeros_(self.conv.weight)
        nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act2(self.drop_block(self.bn2(self.attn(self.act1(self.bn1(x))))))
        return x + self.drop_path(self.conv(out))


class SAN(StagedClassifier):
    """SAN: 1×1 stem, then five (transition, self-attention blocks, BN-ReLU) stages and a linear classifier.

    Args:
        layers: blocks per stage, e.g. (2, 1, 2, 4, 1) for SAN10.
        attention: 'pairwise' or 'patchwise'.
        kernel_size: footprint of stages 2-5 (7 in the paper); stage 1 keeps 3×3.
        kernel_sizes: all five footprints, overriding ``kernel_size``.
        widths: channels of the five stages; each block's SA runs at width/4 with relation width/16.
        small_stem: no max-pool in the first two transitions, for 32×32 inputs.
        zero_init_last: zero each block's last conv (blocks start as the identity); False = the code's init.
        drop_block_rate: DropBlock in the last two stages (timm's ``--drop-block``; not in the paper).
        attn_kwargs: the layer's options (relation, position_encoding, shared_transforms, mapping_depth,
            normalization, share_planes, padding, impl), see ``attnvision.layers.san``.
    """

    def __init__(self, layers: Sequence[int], attention: str = "pairwise", kernel_size: int = 7,
                 kernel_sizes: Optional[Sequence[int]] = None, widths: Sequence[int] = (64, 256, 512, 1024, 2048),
                 stem_width: int = 64, rel_reduction: int = 16, mid_reduction: int = 4, small_stem: bool = False,
                 num_classes: int = 1000, in_chans: int = 3, global_pool: str = "avg", drop_rate: float = 0.,
                 drop_path_rate: float = 0., zero_init_last: bool = True, drop_block_rate: float = 0., **attn_kwargs):
        super().__init__()
        if attention not in ATTENTIONS:
            raise ConfigError(f"attention={attention!r} is unknown; choose one of {', '.join(ATTENTIONS)}")
        kernel_sizes = tuple(kernel_sizes or (3,) + (kernel_size,) * (len(layers) - 1))
        if not len(layers) == len(widths) == len(kernel_sizes):
            raise ConfigError(f"layers={tuple(layers)}, widths={tuple(widths)} and kernel_sizes={kernel_sizes} "
                             f"must have the same length")
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.drop_rate = drop_rate
        self.grad_checkpointing = False

        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_width, 1, bias=False), nn.BatchNorm2d(stem_width),
                                  nn.ReLU(inplace=True))
        self.feature_info = [dict(num_chs=stem_width, reduction=1, module="stem")]
        drop_path_rates = torch.linspace(0, drop_path_rate, sum(layers), device="cpu").tolist()
        drop_blocks = stage_drop_blocks(len(layers), drop_block_rate)
        stages, in_chs, reduction = [], stem_width, 1
        for i, (depth, dim, k, drop_block) in enumerate(zip(layers, widths, kernel_sizes, drop_blocks)):
            pool = not (small_stem and i < 2)
            reduction *= 2 if pool else 1
            rates, drop_path_rates = drop_path_rates[:depth], drop_path_rates[depth:]
            blocks = [SANBlock(dim, ATTENTIONS[attention], k, rel_reduction, mid_reduction, rate, drop_block,
                               **attn_kwargs) for rate in rates]
            stages.append(nn.Sequential(nn.MaxPool2d(2, 2) if pool else nn.Identity(),
                                        nn.Conv2d(in_chs, dim, 1, bias=False), *blocks,
                                        nn.BatchNorm2d(dim), nn.ReLU(inplace=True)))
            in_chs = dim
            self.feature_info.append(dict(num_chs=dim, reduction=reduction, module=f"stages.{i}"))
        self.stages = nn.Sequential(*stages)
        self.num_features = self.head_hidden_size = in_chs
        self.head = ClassifierHead(in_chs, num_classes, pool_type=global_pool, drop_rate=drop_rate)
        self.reset_parameters(zero_init_last)

    def reset_parameters(self, zero_init_last: bool = True):
        """PyTorch's default initialisation, as the official code, plus the optional identity start of blocks."""
        if zero_init_last:
            for m in self.modules():
                if isinstance(m, SANBlock):
                    m.zero_init_last()


SAM_NAMES = {"conv1": "phi", "conv2": "psi", "conv3": "beta", "conv_p": "position", "conv_w": "gamma"}


def checkpoint_filter_fn(state_dict: dict, model: SAN) -> dict:
    """The official code's state_dict (hszhao/SAN ``model/san.py``) in our keys; ours passes through.

    Theirs names the stem ``conv_in``/``bn_in``, stage i's transition ``conv{i}``, its blocks ``layer{i}.{j}`` and
    its closing BN ``bn{i}`` (registered before the blocks); a block's SAM has ``conv1``/``conv2``/``conv3`` (φ, ψ,
    β), ``conv_p`` (the position map) and ``conv_w`` (γ, the same Sequential as ours). Every layout is ours."""
    rules = [(r"layer(\d)\.(\d+)\.sam\.(conv[123]|conv_p|conv_w)\.(.+)",
              lambda m: f"stages.{m[1]}.{int(m[2]) + 2}.attn.{SAM_NAMES[m[3]]}.{m[4]}"),
             (r"layer(\d)\.(\d+)\.(bn1|bn2|conv)\.(.+)", lambda m: f"stages.{m[1]}.{int(m[2]) + 2}.{m[3]}.{m[4]}"),
             (r"conv_in\.(.+)", r"stem.0.\1"), (r"bn_in\.(.+)", r"stem.1.\1"),
             (r"conv(\d)\.(.+)", r"stages.\1.1.\2"),
             (r"bn(\d)\.(.+)", lambda m: f"stages.{m[1]}.{len(model.stages[int(m[1])]) - 2}.{m[2]}"
              if int(m[1]) < len(model.stages) else None),
             (r"fc\.(.+)", r"head.fc.\1")]
    return convert_state_dict(state_dict, model, lambda key: rename(key, rules))


def _create_san(variant: str, pretrained: bool = False, **kwargs) -> SAN:
    return build_staged(SAN, variant, pretrained, pretrained_filter_fn=checkpoint_filter_fn, **kwargs)


default_cfgs = generate_default_cfgs({
    # the 7×7 windows' reflect padding needs a last stage of at least 4×4 pixels: 128 px and up
    **{f"san{d}_{a}": imagenet_cfg(min_input_size=(3, 128, 128)) for d in (10, 15, 19) for a in ATTENTIONS},
    **{f"test_san_{a}": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)) for a in ATTENTIONS},
})

SAN10, SAN15, SAN19 = (2, 1, 2, 4, 1), (3, 2, 3, 5, 2), (3, 3, 4, 6, 3)


@register_model
def san10_pairwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN10 pairwise (subtraction + position encoding): [2,1,2,4,1] blocks, 10.5M parameters."""
    return _create_san("san10_pairwise", pretrained, **dict(dict(layers=SAN10, attention="pairwise"), **kwargs))


@register_model
def san15_pairwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN15 pairwise: [3,2,3,5,2] blocks, 14.1M parameters."""
    return _create_san("san15_pairwise", pretrained, **dict(dict(layers=SAN15, attention="pairwise"), **kwargs))


@register_model
def san19_pairwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN19 pairwise: [3,3,4,6,3] blocks, 17.6M parameters."""
    return _create_san("san19_pairwise", pretrained, **dict(dict(layers=SAN19, attention="pairwise"), **kwargs))


@register_model
def san10_patchwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN10 patchwise (concatenation): [2,1,2,4,1] blocks, 11.8M parameters."""
    return _create_san("san10_patchwise", pretrained, **dict(dict(layers=SAN10, attention="patchwise"), **kwargs))


@register_model
def san15_patchwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN15 patchwise: [3,2,3,5,2] blocks, 16.2M parameters."""
    return _create_san("san15_patchwise", pretrained, **dict(dict(layers=SAN15, attention="patchwise"), **kwargs))


@register_model
def san19_patchwise(pretrained: bool = False, **kwargs) -> SAN:
    """SAN19 patchwise: [3,3,4,6,3] blocks, 20.5M parameters."""
    return _create_san("san19_patchwise", pretrained, **dict(dict(layers=SAN19, attention="patchwise"), **kwargs))


_TEST_ARGS = dict(layers=(1, 1, 1, 1, 1), widths=(32, 32, 64, 64, 128), stem_width=16, small_stem=True)


@register_model
def test_san_pairwise(pretrained: bool = False, **kwargs) -> SAN:
    """Tiny CPU-test SAN pairwise: one block per stage, widths 32-128, 32×32 stages."""
    return _create_san("test_san_pairwise", pretrained, **dict(dict(_TEST_ARGS, attention="pairwise"), **kwargs))


@register_model
def test_san_patchwise(pretrained: bool = False, **kwargs) -> SAN:
    """Tiny CPU-test SAN patchwise: one block per stage, widths 32-128, 32×32 stages."""
    return _create_san("test_san_patchwise", pretrained, **dict(dict(_TEST_ARGS, attention="patchwise"), **kwargs))
