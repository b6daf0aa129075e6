"""SASA-ResNet-26/38/50: ResNets whose spatial convolutions are SASA's local self-attention, conv or attention stem.

"Stand-Alone Self-Attention in Vision Models", Ramachandran et al., NeurIPS 2019 - https://arxiv.org/abs/1906.05909

Status: the paper's conversion rule on our ResNet skeleton (``av_resnet.py``): every bottleneck's 3×3 conv becomes a
k×k ``SASAttention`` layer (k=7, 8 heads), followed by a 2×2/2 average pool where the ResNet strides; the 1×1
convs, the strided 1×1 projection shortcuts and the widths stay. ``attention_stages`` keeps 3×3 convs in the
other stages (Table 3). Two stems:
  - ``sasa_resnet{26,38,50}``: the conv stem, the ResNet's 7×7/2 conv and 3×3/2 max-pool ("conv-stem + attention");
  - ``sasa_resnet{26,38,50}_attn_stem``: the attention stem of ``SASAStem`` ("full attention").
Counts at 224 and 1000 classes, against the paper's Table 1 (pinned in tests/test_sasa.py): 10.3 / 14.1 / 18.0 M
parameters for both stems. Deviation: the last BN of each block is zero-initialised, as in our ResNets; the paper
does not mention it. Small images (``small_stem=True``): the conv stem becomes a 3×3/1 conv, the attention stem
drops its max-pool, so 32×32 inputs give stages at 32/16/8/4.
"""
from functools import partial

from timm.models import generate_default_cfgs, register_model

from attnvision.layers.sasa_stem import sasa_stem

from .av_resnet import ResNet, make_stem
from .base import build_staged, imagenet_cfg

__all__ = ["sasa_resnet"]

DEPTHS = {26: (1, 2, 4, 1), 38: (2, 3, 5, 2), 50: (3, 4, 6, 3)}


def sasa_resnet(variant: str, pretrained: bool = False, attention_stem: bool = False, kernel_size: int = 7,
                heads: int = 8, positional_encoding: str = "relative", logits: str = "qk_qr", padding: str = "mask",
                value_mixtures: int = 4, stem_values: str = "mixtures", **kwargs) -> ResNet:
    """Build a SASA-ResNet; the keyword names are the ``model=sasa_resnet`` config keys."""
    attention = dict(kernel_size=kernel_size, num_heads=heads, positional_encoding=positional_encoding,
                     logits=logits, padding=padding)
    stem = partial(sasa_stem, num_mixtures=value_mixtures, values=stem_values) if attention_stem else make_stem
    return build_staged(ResNet, variant, pretrained, spatial_layer="sasa", spatial_kwargs=attention,
                                stem_layer=stem, **kwargs)


default_cfgs = generate_default_cfgs({
    **{f"sasa_resnet{d}{s}": imagenet_cfg(first_conv="stem.0" if not s else "stem.qk")
       for d in DEPTHS for s in ("", "_attn_stem")},
    "test_sasa_resnet": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4)),
    "test_sasa_resnet_attn_stem": imagenet_cfg(input_size=(3, 32, 32), pool_size=(4, 4), first_conv="stem.qk"),
})


@register_model
def sasa_resnet26(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-26, conv stem: [1,2,4,1] blocks, 7×7 windows, 8 heads; 10.3M parameters, 4.5 B FLOPS."""
    return sasa_resnet("sasa_resnet26", pretrained, **{"layers": DEPTHS[26], **kwargs})


@register_model
def sasa_resnet38(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-38, conv stem: [2,3,5,2] blocks; 14.1M parameters, 5.7 B FLOPS."""
    return sasa_resnet("sasa_resnet38", pretrained, **{"layers": DEPTHS[38], **kwargs})


@register_model
def sasa_resnet50(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-50, conv stem: [3,4,6,3] blocks; 18.0M parameters, 7.0 B FLOPS."""
    return sasa_resnet("sasa_resnet50", pretrained, **{"layers": DEPTHS[50], **kwargs})


@register_model
def sasa_resnet26_attn_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-26, full attention (attention stem); 10.3M parameters, 4.7 B FLOPS."""
    return sasa_resnet("sasa_resnet26_attn_stem", pretrained, True, **{"layers": DEPTHS[26], **kwargs})


@register_model
def sasa_resnet38_attn_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-38, full attention (attention stem); 14.1M parameters, 6.0 B FLOPS."""
    return sasa_resnet("sasa_resnet38_attn_stem", pretrained, True, **{"layers": DEPTHS[38], **kwargs})


@register_model
def sasa_resnet50_attn_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """SASA ResNet-50, full attention (attention stem); 18.0M parameters, 7.2 B FLOPS."""
    return sasa_resnet("sasa_resnet50_attn_stem", pretrained, True, **{"layers": DEPTHS[50], **kwargs})


_TEST_ARGS = dict(layers=(1, 1, 1, 1), widths=(16, 16, 32, 32), stem_width=16, small_stem=True)


@register_model
def test_sasa_resnet(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test SASA ResNet, conv stem: one block per stage, widths 16-32, 32×32 stem."""
    return sasa_resnet("test_sasa_resnet", pretrained, **dict(_TEST_ARGS, **kwargs))


@register_model
def test_sasa_resnet_attn_stem(pretrained: bool = False, **kwargs) -> ResNet:
    """Tiny CPU-test SASA ResNet with the attention stem (no max-pool at 32×32)."""
    return sasa_resnet("test_sasa_resnet_attn_stem", pretrained, True, **dict(_TEST_ARGS, **kwargs))
