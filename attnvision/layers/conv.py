"""The convolutional spatial layer: the k×k conv of a ResNet bottleneck (He et al., CVPR 2016).

Status: a plain ``nn.Conv2d`` without bias, stride on the k×k conv as in ResNet v1.5 (torchvision/timm), which is
the baseline the attention papers compare against. Border semantics: zero padding of k // 2.
"""
from typing import List, Tuple, Union

import torch
import torch.nn.functional as F
from torch import nn

from attnvision.ops import cpu

__all__ = ["ConvSpatial", "split_projection"]


def split_projection(conv: nn.Conv2d, x: torch.Tensor, parts: int = 1) -> List[torch.Tensor]:
    """``conv(x).chunk(parts, 1)`` for a bias-free 1×1 projection. On an AVX-512 CPU with an NCHW input it runs as
    convs of at most 64 output channels: there oneDNN's NCHW 1×1 conv took 3-4× longer for 128-192 outputs than the
    same outputs in 64-channel pieces (scripts/bench_ops.py's layers), and each part comes out contiguous, as the
    fused kernels read it. On an AVX2 CPU the pieces were slower (ad hoc, fwd+bwd, 64 × 128 × 32² to 384 channels:
    615 against 397 ms), so there, as for channels-last inputs (the trainer's) and other devices, it is one conv."""
    if x.device.type != "cpu" or not x.is_contiguous() or conv.bias is not None or cpu.vector_bytes() < 64:
        return list(conv(x).chunk(parts, 1))
    outputs = []
    for weight in conv.weight.chunk(parts, 0):
        pieces = [F.conv2d(x, w) for w in weight.split(64, 0)]
        outputs.append(pieces[0] if len(pieces) == 1 else torch.cat(pieces, 1))
    return outputs


class ConvSpatial(nn.Conv2d):
    """k×k convolution with the spatial-layer signature.

    ``num_heads`` is accepted for signature compatibility and is the conv's ``groups`` (1 = dense conv), so a
    sweep over heads on a conv baseline turns it into a grouped conv rather than failing.
    """

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: Union[int, Tuple[int, int]] = 3,
                 num_heads: int = 1, dilation: int = 1):
        kernel_size = (kernel_size, kernel_size) if isinstance(kernel_size, int) else tuple(kernel_size)
        padding = tuple(dilation * (k // 2) for k in kernel_size)
        super().__init__(dim, dim_out, kernel_size, stride=stride, padding=padding, dilation=dilation,
                         groups=num_heads, bias=False)

    def macs(self, out_hw: tuple) -> int:
        """Multiply-adds for an output of spatial size ``out_hw`` (batch 1)."""
        k_h, k_w = self.kernel_size
        return out_hw[0] * out_hw[1] * self.out_channels * (self.in_channels // self.groups) * k_h * k_w
