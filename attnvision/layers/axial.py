"""Axial-DeepLab's position-sensitive axial attention along one axis:
y_o = sum_p softmax_p(q_o·k_p + q_o·r^q_{p-o} + k_p·r^k_{p-o}) (v_p + r^v_{p-o}), p on the row or column of o.

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853. Authors' PyTorch code: https://github.com/csrhddlam/axial-deeplab
(``lib/models/axialnet.py``), whose layer this follows (../shared/reference/papers.md §4.5), through the
position-sensitive operator of ``ps_attention.py`` (projection, BatchNorms):
  - per head C_out/heads/2 query and key channels and C_out/heads value channels;
  - one relative table per layer, shared by the heads: r^q and r^k of C_out/heads/2 channels and r^v of
    C_out/heads, one column per offset p - o.
Deviations and additions:
  - ``span``: None (default) is global attention; an odd m restricts p to |p - o| <= m // 2 (the paper's 1 × m
    region). A window covers the axis from every pixel once m >= 2·L - 1, and then equals the global layer.
  - Table size: the global table has 2·L - 1 columns, L = ``length`` (the axis length at the configured image
    size), and a global layer meeting another length L' resamples it linearly to 2·L' - 1 columns, so one model
    runs at any input size (the authors' code is fixed to 224). A local span has a table of m columns.
    ``table_span`` = T instead fixes the table at 2·T - 1 columns, read at its centre for any length <= T, as the
    authors' TF2 re-implementation (deeplab2, ``MAX_SPAN`` = 255) does; Table 1's parameter counts need it.
  - ``position_terms``: any subset of ('q', 'k', 'v'); the table and the logit BatchNorm hold only the enabled
    terms. With none, the layer is permutation-equivariant along its axis.
  - Computation: the BatchNorms fold into one fused attention over the axis (``fold``, in training and in eval
    mode; see ``ps_attention.py``); a global window is charged the same L × L pairs as the authors' dense L × L
    matmuls per row or column (relative embeddings gathered as D × L × L). A global layer runs those matmuls
    where the fold cannot (a q·k scale below 1e-6) and in training on an axis shorter than
    ``DENSE_TRAINING_BELOW`` pixels, where they are faster; a local one falls back to ``attend``. The
    reference path (``impl='reference'`` or ``set_default_impl('reference')``) runs the unfolded BatchNorms on
    the shared ops core's footprint primitives over a 1 × m or 1 × (2·L - 1) window with masked borders. The
    paths agree (tests).
  - The relative offsets are p - o for all three terms (the authors' code reads r^q and r^v at o - p): the same
    family of tables, mirrored.
"""
from typing import Dict, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import (axial_footprint, axial_image, axial_lines, dense_axial_logits, dense_axial_outputs,
                             requested_impl)

from .ps_attention import POSITION_TERMS, PositionSensitiveAttention

__all__ = ["AxialAttention", "AxialSpatial", "STRIDE_MODES"]

STRIDE_MODES = ("pool", "axis")
# A global layer shorter than this trains faster on its dense L × L matmuls than folded (the fold's moments pass
# and fused kernel pay off on long axes): fwd+bwd on CPU (AMD EPYC, 2 threads), folded / dense: L=56 0.24,
# L=28 1.0, L=14 1.7, L=8 2.3, L=4 2.6 with AVX-512; with AVX2 (axial26s' own layers) L=56 0.21-0.47, L=32
# 0.27-0.61, L=28 0.9-1.2, L=16 1.1-1.5, L=14 1.1-1.25, L=8 1.1-1.4, and whole axial26s training steps with this
# limit at 0, 16 or 32 within the machine's noise of each other.
DENSE_TRAINING_BELOW = 32


class AxialAttention(PositionSensitiveAttention):
    """Multi-head position-sensitive attention along ``axis`` ('height' or 'width') of a B × C × H × W map.

    Widths: projection C → 2·C_out (1×1, no bias); heads of C_out/heads/2 query and key channels and C_out/heads
    value channels; relative table (sum of the enabled terms' widths) × (2·length - 1, span or 2·table_span - 1).
    """

    def __init__(self, dim: int, dim_out: int, axis: str = "height", length: int = 56, span: Optional[int] = None,
                 num_heads: int = 8, position_terms: Sequence[str] = POSITION_TERMS,
                 table_span: Optional[int] = None, impl: Optional[str] = None):
        super().__init__(dim, dim_out, num_heads, 0.5, position_terms, impl)
        check_choice("axis", axis, ("height", "width"))
        if span is not None and (span < 1 or span % 2 == 0):
            raise ConfigError(f"span={span} must be a positive odd window length (or null for the whole axis)")
        if table_span is not None and (table_span < 1 or (span is not None and span > 2 * table_span - 1)):
            raise ConfigError(f"table_span={table_span} must be positive and hold the span={span} window "
                              f"(2·table_span - 1 >= span)")
        self.axis, self.length, self.span, self.table_span = axis, length, span, table_span
        self.resampled = table_span is None and (span is None or span >= 2 * length - 1)  # the global table
        columns = 2 * table_span - 1 if table_span else (2 * length - 1 if self.resampled else span)
        rows = sum(self.widths[t] for t in self.terms)
        self.relative = nn.Parameter(torch.randn(rows, columns) * self.head_dim ** -0.5) if rows else None

    def window(self, length: int) -> Optional[int]:
        """The window length m on an axis of ``length``, None when it covers the axis (global)."""
        return self.span if self.span is not None and self.span < 2 * length - 1 else None

    def relative_table(self, length: int) -> Dict[str, torch.Tensor]:
        """{term: widths[t] × K embeddings} for the K offsets of an axis of ``length`` (K = 2·length - 1, or the
        window), column K // 2 being offset 0."""
        if self.relative is None:
            return {}
        offsets = self.window(length) or 2 * length - 1
        table = self.relative
        if self.resampled:
            if offsets != table.shape[1]:
                table = F.interpolate(table[None], size=offsets, mode="linear", align_corners=True)[0]
        elif offsets > table.shape[1]:
            raise ConfigError(f"an axis of {length} pixels has offsets up to ±{length - 1}, beyond the "
                              f"table_span={self.table_span} table; raise model.table_span")
        else:
            first = (table.shape[1] - offsets) // 2
            table = table[:, first:first + offsets]
        return dict(zip(self.terms, table.split([self.widths[t] for t in self.terms])))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        length = x.shape[2 if self.axis == "height" else 3]
        window = self.window(length)
        rel = self.relative_table(length)
        fp = axial_footprint(length, window, self.axis)
        dense = window is None and self.training and length < DENSE_TRAINING_BELOW
        y = None if dense else self.fold(q, k, v, fp, rel)
        if y is None and (window is not None or requested_impl(self.impl) == "reference"):
            y = self.attend(q, k, v, fp, rel)
        if y is None:
            q, k, v = (axial_lines(t, self.axis, self.num_heads) for t in (q, k, v))  # B·other, heads, c, L
            weights = self.combine_logits(dense_axial_logits(q, k, rel.get("q"), rel.get("k")), None).softmax(-1)
            outputs = dense_axial_outputs(weights, v, rel.get("v"))  # B·other, heads, d, L
            y = self.combine_outputs([axial_image(o, self.axis, x.shape[0]) for o in outputs])
        return y.to(x.dtype)  # accumulated in float32; out in the input's dtype


class AxialSpatial(nn.Sequential):
    """The spatial layer of an axial bottleneck: height-axis then width-axis attention, strided (``stride`` > 1) by
    ``stride_mode``: ``pool`` (default), a stride × stride average pool after the width layer, as the authors'
    code; ``axis``, an average pool along the height after the height layer and along the width after the width
    layer, as the paper describes ("striding on each axis after its layer"). Both layers end in their own
    BatchNorm (``normalizes_output``).

    ``input_size`` is the side of the input at the configured image size (the ResNet skeleton passes it); it
    sizes the global tables. ``kernel_size`` is accepted for the spatial-layer signature and is the span when
    ``span`` is not given (None = global).
    """

    normalizes_output = True

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: Optional[int] = None,
                 num_heads: int = 8, span: Optional[int] = None, input_size: int = 56,
                 position_terms: Sequence[str] = POSITION_TERMS, table_span: Optional[int] = None,
                 stride_mode: str = "pool"):
        check_choice("stride_mode", stride_mode, STRIDE_MODES)
        span = span if span is not None else kernel_size
        axial = dict(span=span, num_heads=num_heads, position_terms=position_terms, table_span=table_span)
        strided = stride > 1
        per_axis = strided and stride_mode == "axis"
        super().__init__(
            AxialAttention(dim, dim_out, "height", input_size, **axial),
            nn.AvgPool2d((stride, 1), ceil_mode=True) if per_axis else nn.Identity(),
            AxialAttention(dim_out, dim_out, "width", input_size, **axial),
            nn.AvgPool2d((1, stride) if per_axis else stride, ceil_mode=True) if strided else nn.Identity())
