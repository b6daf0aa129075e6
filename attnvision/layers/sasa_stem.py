"""SASA's attention stem: self-attention inside 4×4 blocks with spatially-aware values, then BN and a 4×4 max-pool.

"Stand-Alone Self-Attention in Vision Models", Ramachandran et al., NeurIPS 2019, the stem paragraphs of
§4 (../shared/reference/papers.md §1.2) - https://arxiv.org/abs/1906.05909

Every pixel attends to the 16 pixels of its own 4×4 block, the window the following 4×4 max-pool reduces, so the
receptive fields of q, k and v are aligned with the pooling window. Values are spatially aware: a convex mixture
of ``num_mixtures`` value projections, v_ab = (sum_m p(a,b,m) W_V^m) x_ab, p(a,b,m) = softmax_m((emb_row(a) +
emb_col(b))·ν_m), with a, b the pixel's row and column inside its block; p is shared by the heads.

Status, against the paper: 4 heads and the block as written; the logits are q·k + q·r with the body layers'
factorised relative embeddings over the in-block offsets (-3..3), since the paper says only that the stem is a
self-attention layer. Not stated in the paper, chosen here: 4 value mixtures (``num_mixtures``; also what the
unofficial leaderj1001 code uses), row/column/mixture embeddings of ``dim_out`` channels, and no ReLU (the paper
lists BN and the max-pool only). For small images (``pool=False``) the max-pool is dropped and the stem keeps the
resolution, as the conv stem's small-image variant does. Height and width must be multiples of the block.

``values='conv'`` is Table 7's "spatial convolution to produce values": the values come from one block×block
convolution (zero "same" padding, no bias) instead of the mixtures. The paper gives no kernel size; 4×4, the
pooling window, reproduces its 0.2 B FLOPS over the proposed stem (3.69 against 3.58 GMACs for ResNet-50).
"""
from typing import Callable

import torch
from torch import nn
from timm.layers import register_notrace_module

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import local_softmax

from .sasa import relative_embedding

__all__ = ["SASAStem", "sasa_stem", "STEM_VALUES"]

STEM_VALUES = ("mixtures", "conv")


@register_notrace_module  # a leaf for FX tracing: the forward branches on shapes
class SASAStem(nn.Module):
    """RGB (``in_chans``) → ``dim_out`` channels: block attention, BN, max-pool by the block size.

    Widths: q, k: in_chans → dim_out (1×1, no bias), W_V^1..M: in_chans → dim_out each (or one block×block conv
    in_chans → dim_out with ``values='conv'``), ``num_heads`` heads of dim_out/heads channels, relative tables
    (dim_out/heads/2) × (2·block - 1) per axis.
    """

    def __init__(self, in_chans: int, dim_out: int, block_size: int = 4, num_heads: int = 4, num_mixtures: int = 4,
                 values: str = "mixtures", pool: bool = True, norm_layer: Callable = nn.BatchNorm2d):
        super().__init__()
        head_dim = dim_out // num_heads if num_heads > 0 else 0
        if head_dim < 1 or dim_out % num_heads or head_dim % 2:
            raise ConfigError(f"the attention stem's {num_heads} heads do not split {dim_out} channels evenly")
        if num_mixtures < 1:
            raise ConfigError(f"value_mixtures={num_mixtures} must be at least 1")
        check_choice("stem_values", values, STEM_VALUES)
        self.block_size, self.num_heads, self.num_mixtures = block_size, num_heads, num_mixtures
        self.qk = nn.Conv2d(in_chans, 2 * dim_out, 1, bias=False)
        if values == "conv":
            before = (block_size - 1) // 2  # "same" zero padding, the extra row and column after for an even block
            after = block_size - 1 - before
            self.values = nn.Sequential(nn.ZeroPad2d((before, after, before, after)),
                                        nn.Conv2d(in_chans, dim_out, block_size, bias=False))
            self.emb_row = self.emb_col = self.emb_mix = None
        else:
            self.values = nn.Conv2d(in_chans, num_mixtures * dim_out, 1, bias=False)  # W_V^1..M stacked
            self.emb_row = nn.Parameter(torch.randn(block_size, dim_out) * dim_out ** -0.5)
            self.emb_col = nn.Parameter(torch.randn(block_size, dim_out) * dim_out ** -0.5)
            self.emb_mix = nn.Parameter(torch.randn(num_mixtures, dim_out) * dim_out ** -0.5)
        span = 2 * block_size - 1
        self.rel_rows = nn.Parameter(torch.randn(head_dim // 2, span) * head_dim ** -0.5)
        self.rel_cols = nn.Parameter(torch.randn(head_dim // 2, span) * head_dim ** -0.5)
        self.norm = norm_layer(dim_out)
        self.pool = nn.MaxPool2d(block_size) if pool else nn.Identity()

    def mixture_weights(self) -> torch.Tensor:
        """block × block × M convex weights p(a, b, m)."""
        emb = self.emb_row[:, None, :] + self.emb_col[None, :, :]  # s, s, dim_out
        return (emb @ self.emb_mix.t()).softmax(-1)  # s, s, M

    def relative_table(self) -> torch.Tensor:
        """s² × s² × head_dim embeddings r_{j-i} for every (query i, key j) pair of a block, row-major."""
        s = self.block_size
        table = relative_embedding(self.rel_rows, self.rel_cols)  # head_dim, (2s-1)²
        pos = torch.arange(s, device=table.device)
        dy = (pos[None, :] - pos[:, None] + s - 1).repeat_interleave(s, 0).repeat_interleave(s, 1)  # s², s²
        dx = (pos[None, :] - pos[:, None] + s - 1).repeat(s, s)
        return table[:, dy * (2 * s - 1) + dx].permute(1, 2, 0)  # s², s², head_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, height, width = x.shape
        s, g, m = self.block_size, self.num_heads, self.num_mixtures
        if height % s or width % s:
            raise ConfigError(f"the attention stem needs height and width divisible by its {s}x{s} blocks, "
                              f"got {height}x{width}")
        hb, wb = height // s, width // s
        q, k = self.qk(x).chunk(2, 1)  # B, C, H, W each
        c = q.shape[1]
        d = c // g
        if self.emb_mix is None:
            v = self.values(x)  # B, C, H, W
        else:
            p = self.mixture_weights().permute(2, 0, 1).reshape(1, m, 1, 1, s, 1, s).to(q.dtype)
            v = (self.values(x).view(b, m, c, hb, s, wb, s) * p).sum(1)  # B, C, H/s, s, W/s, s

        def blocks(t):  # B, C, H, W -> B, heads, blocks, s², d
            return t.reshape(b, g, d, hb, s, wb, s).permute(0, 1, 3, 5, 4, 6, 2).reshape(b, g, hb * wb, s * s, d)

        q, k, v = blocks(q), blocks(k), blocks(v)
        logits = q @ k.transpose(-1, -2)  # B, heads, blocks, s², s²
        logits = logits + torch.einsum("bgnid,ijd->bgnij", q, self.relative_table().to(q.dtype))
        y = local_softmax(logits, dim=-1).to(v.dtype) @ v  # B, heads, blocks, s², d
        y = y.reshape(b, g, hb, wb, s, s, d).permute(0, 1, 6, 2, 4, 3, 5).reshape(b, c, height, width)
        return self.pool(self.norm(y))


def sasa_stem(in_chans: int, stem_width: int, small_stem: bool, norm_layer: Callable, act_layer: Callable,
              num_mixtures: int = 4, values: str = "mixtures") -> SASAStem:
    """The attention stem with the ResNet skeleton's stem signature (``act_layer`` unused: BN, then max-pool)."""
    return SASAStem(in_chans, stem_width, num_mixtures=num_mixtures, values=values, pool=not small_stem,
                    norm_layer=norm_layer)
