"""The footprint R(i) of a local operator: a kh×kw window with stride, dilation and a border mode.

Border modes (``padding``):
  - ``zero``: out-of-image neighbours are zeros that stay in every sum and softmax (leaderj1001's SASA; convs).
  - ``reflect``: the image is mirrored without repeating the edge, index -1 -> 1 (SAN's official ``pad_mode=1``,
    ``torch.nn.functional.pad(mode='reflect')``).
  - ``mask``: out-of-image neighbours are dropped: their logits are -inf before the softmax and their values count
    as zero (LR-Net's official op, which uses a logit of -100 instead).
Window centres are sampled at the stride, so the output is ``floor((H - 1) / stride) + 1`` high, like a "same"
convolution; padding is ``dilation * (k - 1)``, split as evenly as possible (top/left get the smaller half).
"""
from dataclasses import dataclass
from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from attnvision.errors import ConfigError

__all__ = ["Footprint", "PADDING_MODES"]

PADDING_MODES = ("zero", "reflect", "mask")


def _pair(v) -> Tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


@dataclass(frozen=True)
class Footprint:
    kernel_size: Union[int, Tuple[int, int]]
    stride: int = 1
    dilation: int = 1
    padding: str = "zero"

    def __post_init__(self):
        object.__setattr__(self, "kernel_size", _pair(self.kernel_size))
        if self.padding not in PADDING_MODES:
            raise ConfigError(f"padding={self.padding!r} is unknown; choose one of {', '.join(PADDING_MODES)}")
        if min(self.kernel_size) < 1 or self.stride < 1 or self.dilation < 1:
            raise ConfigError(f"kernel_size={self.kernel_size}, stride={self.stride} and dilation={self.dilation} "
                             f"must be positive")

    @property
    def num_offsets(self) -> int:
        return self.kernel_size[0] * self.kernel_size[1]

    def pads(self) -> Tuple[int, int, int, int]:
        """(left, right, top, bottom), the order ``F.pad`` takes."""
        (kh, kw), dil = self.kernel_size, self.dilation
        th, tw = dil * (kh - 1), dil * (kw - 1)
        return tw // 2, tw - tw // 2, th // 2, th - th // 2

    def out_size(self, height: int, width: int) -> Tuple[int, int]:
        return (height - 1) // self.stride + 1, (width - 1) // self.stride + 1

    def pad(self, x: torch.Tensor) -> torch.Tensor:
        """Pad the last two dims for this footprint; ``mask`` pads with zeros (the mask is applied to logits)."""
        if self.padding == "reflect":
            left, right, top, bottom = self.pads()
            if max(left, right) >= x.shape[-1] or max(top, bottom) >= x.shape[-2]:
                raise ConfigError(f"reflect padding {self.pads()} of a {self.kernel_size} footprint needs an input "
                                  f"larger than {tuple(x.shape[-2:])}; use a smaller kernel_size or padding=zero|mask")
            return F.pad(x, self.pads(), mode="reflect")
        return F.pad(x, self.pads())

    def centres(self, x: torch.Tensor) -> torch.Tensor:
        """x sampled at the window centres (every ``stride``-th pixel), the Ho×Wo grid of the output."""
        return x if self.stride == 1 else x[..., ::self.stride, ::self.stride]

    def offsets(self, device=None) -> torch.Tensor:
        """K×2 relative positions (dy, dx) of the window elements, in pixels, row-major like the K axis."""
        (kh, kw), dil = self.kernel_size, self.dilation
        left, _, top, _ = self.pads()
        dy = torch.arange(kh, device=device) * dil - top
        dx = torch.arange(kw, device=device) * dil - left
        return torch.stack(torch.meshgrid(dy, dx, indexing="ij"), -1).reshape(-1, 2)  # K, 2

    def global_axis(self, height: int, width: int) -> Optional[str]:
        """'height' or 'width' when this is a global axial window over a height×width image (2·L - 1 masked offsets
        along an axis of L pixels, one across it, stride and dilation 1: every pixel of the axis from every pixel, see
        ``axial_footprint``), else None."""
        if self.padding != "mask" or self.stride != 1 or self.dilation != 1:
            return None
        if self.kernel_size == (1, 2 * width - 1):
            return "width"
        if self.kernel_size == (2 * height - 1, 1):
            return "height"
        return None

    def valid_mask(self, height: int, width: int, device=None) -> torch.Tensor:
        """K×Ho×Wo booleans: True where the neighbour lies inside the image."""
        ho, wo = self.out_size(height, width)
        off = self.offsets(device)
        ys = (torch.arange(ho, device=device) * self.stride)[None, :] + off[:, :1]  # K, Ho
        xs = (torch.arange(wo, device=device) * self.stride)[None, :] + off[:, 1:]  # K, Wo
        return ((ys >= 0) & (ys < height))[:, :, None] & ((xs >= 0) & (xs < width))[:, None, :]
