"""Any weight function on any footprint: y_i = sum_{j in R(i)} w_ij ⊙ v_j with the weights w of one family and the
footprint R(i) of another.

Each of the four papers fixes one pair: SASA, LR-Net and SAN a k×k window, Axial-DeepLab a 1×m then m×1 pair. What
the other pairs do ("does patchwise SAN with an axial footprint help?") is an open question; here every pair is a
configuration. The weight function is the family's own layer and only its footprint is chosen, so the square
footprint *is* the family's layer (the same parameters and outputs) and the other footprints keep its semantics.
  - ``weights``: ``sasa`` (``SASAttention``), ``lr`` (``LocalRelation``), ``san_pairwise`` and ``san_patchwise``
    (SAN's SAM), ``ps`` (``PSAttention``: Axial-DeepLab's position-sensitive attention on a 2-D window), ``conv``
    (a convolution, whose weights are parameters rather than functions of the input), ``se`` (Squeeze-and-
    Excitation, Hu et al., CVPR 2018: one weight per channel from a global average pool, and the pixel itself as
    the footprint; timm's ``SEModule``, reduction 16).
  - ``footprint``: ``square`` (k×k, ``kernel_size``), ``dilated`` (k×k at ``dilation``), ``axial`` (a ``span`` × 1
    window along the height, then 1 × ``span`` along the width: two layers of the weight function, as
    Axial-DeepLab; ``span=None`` covers the axis, 2·L - 1 offsets), ``global`` (every pixel of the image: a
    (2·H - 1) × (2·W - 1) window, the non-local block's footprint).
Choices and deviations:
  - Borders: the attention weight functions mask out-of-image neighbours (``padding='mask'``), since axial and
    global windows are larger than the image, which SAN's own reflection (its official default) cannot pad; a conv
    pads with zeros.
  - Stride: a square or dilated footprint strides as its family does (SASA and PS pool after, LR-Net and SAN sample
    the window centres, a conv strides); axial and global footprints pool after their layers, as Axial-DeepLab's
    blocks do.
  - Windows sized by the image (axial without ``span``, global) are sized at construction from ``input_size``, the
    side of the layer's input at the configured image size; a larger input then sees less than its whole axis or
    image.
  - ``se`` has only its own footprint (any other is a one-line error) and maps C → C.
"""
from functools import partial
from typing import Optional

from torch import nn
from timm.layers import SEModule

from attnvision.errors import ConfigError, check_choice

from .conv import ConvSpatial
from .local_relation import LocalRelation
from .ps_attention import PSAttention
from .san import SANPairwise, SANPatchwise
from .sasa import SASAttention

__all__ = ["HybridSpatial", "WEIGHT_FUNCTIONS", "FOOTPRINTS"]

WEIGHT_FUNCTIONS = {"sasa": SASAttention, "lr": LocalRelation, "san_pairwise": SANPairwise,
                    "san_patchwise": SANPatchwise, "ps": PSAttention, "conv": ConvSpatial, "se": SEModule}
FOOTPRINTS = ("square", "dilated", "axial", "global")


def _pool(stride: int) -> nn.Module:
    return nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()


class HybridSpatial(nn.Sequential):
    """A spatial layer of the ResNet skeleton: the ``weights`` family's layer on the ``footprint`` window (one layer,
    or the height and the width layer of an axial footprint, then the pool where it strides)."""

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: Optional[int] = None,
                 weights: str = "sasa", footprint: str = "square", span: Optional[int] = None, dilation: int = 2,
                 input_size: int = 56, padding: str = "mask"):
        check_choice("weights", weights, tuple(WEIGHT_FUNCTIONS))
        check_choice("footprint", footprint, FOOTPRINTS)
        if span is not None and (span < 1 or span % 2 == 0):
            raise ConfigError(f"span={span} must be a positive odd window length (or null for the whole axis)")
        if weights == "se":
            if footprint != "square" or kernel_size != 1 or dim != dim_out:
                raise ConfigError(f"weights=se has only its own footprint, the pixel itself (its weights come from a "
                                  f"global pool) and maps C to C: use footprint=square kernel_size=1, not "
                                  f"footprint={footprint} kernel_size={kernel_size}")
            super().__init__(WEIGHT_FUNCTIONS[weights](dim), _pool(stride))
            return
        options = {} if weights == "conv" else {"padding": padding}
        layer = partial(WEIGHT_FUNCTIONS[weights], **options, **({"num_heads": num_heads} if num_heads else {}))
        whole = 2 * input_size - 1  # offsets that cover an axis of input_size pixels from every pixel
        if footprint == "square":
            layers = [layer(dim, dim_out, stride, kernel_size)]
        elif footprint == "dilated":
            layers = [layer(dim, dim_out, stride, kernel_size, dilation=dilation)]
        elif footprint == "axial":
            m = span or whole
            layers = [layer(dim, dim_out, 1, (m, 1)), layer(dim_out, dim_out, 1, (1, m)), _pool(stride)]
        else:
            layers = [layer(dim, dim_out, 1, (whole, whole)), _pool(stride)]
        super().__init__(*layers)
        # PS-attention ends in its own BatchNorm: the block then adds none after it, as in PS-ResNet
        self.normalizes_output = getattr(layers[0], "normalizes_output", False)
