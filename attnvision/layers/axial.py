"""Axial-DeepLab's position-sensitive axial attention along one axis:
y_o = sum_p softmax_p(q_o·k_p + q_o·r^q_{p-o} + k_p·r^k_{p-o}) (v_p + r^v_{p-o}), p on the row or column of o.

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853. Authors' PyTorch code: https://github.com/csrhddlam/axial-deeplab
(``lib/models/axialnet.py``), whose layer this follows (../shared/reference/papers.md §4.5):
  - one bias-free 1×1 projection C → 2·C_out: per head C_out/heads/2 query and key channels and C_out/heads
    value channels, followed by a BatchNorm;
  - the three logit maps q·k, q·r^q and k·r^k are batch-normalised separately (one BatchNorm over 3 × heads
    maps) and summed; no 1/sqrt(d) scale; the softmax runs over the positions p of the axis;
  - the two outputs sum_p w v_p and sum_p w r^v are batch-normalised separately and summed;
  - one relative table per layer, shared by the heads: r^q and r^k of C_out/heads/2 channels and r^v of
    C_out/heads, one column per offset p - o.
Deviations and additions:
  - ``span``: None (default) or m >= the axis length is global attention; a smaller odd m restricts p to
    |p - o| <= m // 2 (the paper's 1 × m region), masked out of the softmax. The table has 2·L - 1 columns for
    the global span, L = ``length`` (the axis length at the configured image size), and m columns for a local
    span. A global layer meeting another length L' resamples its table linearly to 2·L' - 1 columns, so one
    model runs at any input size (the authors' code is fixed to 224).
  - ``position_terms``: any subset of ('q', 'k', 'v'); the table and the logit BatchNorm hold only the enabled
    terms. With none, the layer is permutation-equivariant along its axis.
  - Computed as dense L × L matmuls per row or column (a local span masks the band), as the authors do.
"""
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnvision.errors import ConfigError, check_choice

__all__ = ["AxialAttention", "AxialSpatial"]


class AxialAttention(nn.Module):
    """Multi-head position-sensitive attention along ``axis`` ('height' or 'width') of a B × C × H × W map.

    Widths: projection C → 2·C_out (1×1, no bias); heads of C_out/heads/2 query and key channels and C_out/heads
    value channels; relative table (sum of the enabled terms' widths) × (2·length - 1 or span).
    """

    def __init__(self, dim: int, dim_out: int, axis: str = "height", length: int = 56, span: Optional[int] = None,
                 num_heads: int = 8, position_terms: Sequence[str] = ("q", "k", "v")):
        super().__init__()
        check_choice("axis", axis, ("height", "width"))
        for term in position_terms:
            check_choice("position_terms", term, ("q", "k", "v"))
        head_dim = dim_out // num_heads if num_heads > 0 else 0
        if head_dim < 2 or dim_out % num_heads or head_dim % 2:
            raise ConfigError(f"heads={num_heads} does not split {dim_out} channels into heads of an even width")
        if span is not None and (span < 1 or span % 2 == 0):
            raise ConfigError(f"span={span} must be a positive odd window length (or null for the whole axis)")
        self.axis, self.length, self.num_heads, self.head_dim = axis, length, num_heads, head_dim
        self.local = span is not None and span < length
        self.span = span if self.local else None
        self.terms = tuple(t for t in ("q", "k", "v") if t in position_terms)
        self.widths = {"q": head_dim // 2, "k": head_dim // 2, "v": head_dim}
        self.qkv = nn.Conv1d(dim, 2 * dim_out, 1, bias=False)
        self.bn_qkv = nn.BatchNorm1d(2 * dim_out)
        self.bn_logits = nn.BatchNorm2d((1 + len([t for t in self.terms if t != "v"])) * num_heads)
        self.bn_output = nn.BatchNorm1d((2 if "v" in self.terms else 1) * dim_out)
        columns = span if self.local else 2 * length - 1
        rows = sum(self.widths[t] for t in self.terms)
        self.relative = nn.Parameter(torch.randn(rows, columns) * head_dim ** -0.5) if rows else None
        self.init_weights()

    def init_weights(self):
        """The authors' init: the projection N(0, 1/C), the table N(0, 1/head_dim) (set in __init__)."""
        nn.init.normal_(self.qkv.weight, std=self.qkv.in_channels ** -0.5)

    def relative_embeddings(self, length: int) -> dict:
        """{term: D × L × L} embeddings r_{p-o} for query o (dim 1) and key p (dim 2) on an axis of ``length``."""
        if self.relative is None:
            return {}
        table = self.relative
        if not self.local and length != self.length:  # resample the global table to 2·L' - 1 offsets
            table = F.interpolate(table[None], size=2 * length - 1, mode="linear", align_corners=True)[0]
        centre = table.shape[1] // 2
        pos = torch.arange(length, device=table.device)
        offset = (pos[None, :] - pos[:, None]).clamp(-centre, centre) + centre  # L, L: p - o, clamped to the table
        embeddings = table[:, offset]  # rows, L, L
        return dict(zip(self.terms, embeddings.split([self.widths[t] for t in self.terms])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.axis == "height":
            x = x.transpose(2, 3)  # B, C, W, H: attend along the last dim
        b, c, other, length = x.shape
        g, d = self.num_heads, self.head_dim
        lines = x.permute(0, 2, 1, 3).reshape(b * other, c, length)  # B·other, C, L
        qkv = self.bn_qkv(self.qkv(lines)).view(b * other, g, 2 * d, length)
        q, k, v = qkv.split([d // 2, d // 2, d], 2)  # N, heads, d/2 | d/2 | d, L
        rel = self.relative_embeddings(length)
        logits = [torch.einsum("ngci,ngcj->ngij", q, k)]  # N, heads, L (query o), L (key p)
        if "q" in rel:
            logits.append(torch.einsum("ngci,cij->ngij", q, rel["q"].to(q.dtype)))
        if "k" in rel:
            logits.append(torch.einsum("ngcj,cij->ngij", k, rel["k"].to(k.dtype)))
        logits = self.bn_logits(torch.cat(logits, 1))  # N, terms·heads, L, L
        logits = logits.view(b * other, -1, g, length, length).sum(1)  # N, heads, L, L
        if self.local:
            pos = torch.arange(length, device=x.device)
            outside = (pos[None, :] - pos[:, None]).abs() > self.span // 2
            logits = logits.masked_fill(outside, float("-inf"))
        weights = logits.softmax(-1)
        out = [torch.einsum("ngij,ngcj->ngci", weights, v)]  # N, heads, d, L
        if "v" in rel:
            out.append(torch.einsum("ngij,cij->ngci", weights, rel["v"].to(weights.dtype)))
        out = self.bn_output(torch.cat(out, 1).reshape(b * other, -1, length))  # N, (1 or 2)·C_out, L
        out = out.view(b * other, -1, g * d, length).sum(1)  # N, C_out, L
        out = out.view(b, other, g * d, length).permute(0, 2, 1, 3)  # B, C_out, other, L
        return out.transpose(2, 3) if self.axis == "height" else out


class AxialSpatial(nn.Sequential):
    """The spatial layer of an axial bottleneck: height-axis then width-axis attention, then (``stride`` > 1) an
    average pool over both axes after the width layer, as the authors' code strides (the paper strides each axis
    after its own layer). Both layers end in their own BatchNorm (``normalizes_output``).

    ``input_size`` is the side of the input at the configured image size (the ResNet skeleton passes it); it
    sizes the global tables. ``kernel_size`` is accepted for the spatial-layer signature and is the span when
    ``span`` is not given (None = global).
    """

    normalizes_output = True

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: Optional[int] = None,
                 num_heads: int = 8, span: Optional[int] = None, input_size: int = 56,
                 position_terms: Sequence[str] = ("q", "k", "v")):
        span = span if span is not None else kernel_size
        super().__init__(
            AxialAttention(dim, dim_out, "height", input_size, span, num_heads, position_terms),
            AxialAttention(dim_out, dim_out, "width", input_size, span, num_heads, position_terms),
            nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity())
