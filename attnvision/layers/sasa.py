"""SASA's local multi-head self-attention: y_i = sum_{j in N_k(i)} softmax_j(q_i·k_j + q_i·r_{j-i}) v_j.

"Stand-Alone Self-Attention in Vision Models", Ramachandran et al., NeurIPS 2019 - https://arxiv.org/abs/1906.05909
No official code exists; the paper's text (../shared/reference/papers.md §1) is the reference.

Status, against the paper:
  - q, k and v are dense bias-free 1×1 projections C → C_out, split into ``num_heads`` contiguous heads after the
    projection. The paper writes per-head (block-diagonal) projections, but its parameter counts (18.0M for
    ResNet-50) are the dense ones; block-diagonal ones would give 14.7M.
  - Relative embeddings (``positional_encoding='relative'``): a learned row table (C_out/heads/2 × k) and a
    column table (C_out/heads/2 × k); the embedding of offset (a-i, b-j) is the *concatenation* of the row
    entry and the column entry, so the first half of each head's query channels scores row offsets and the
    second half column offsets. The paper does not say whether the tables are per head; they are shared across
    heads here, as Axial-DeepLab says such encodings often are (the count changes by < 0.03M either way).
  - ``positional_encoding='absolute'`` (Table 5): a fixed 2-D sinusoidal encoding of the layer's input grid
    (half of the channels encode the row, half the column, sin/cos at the Transformer's frequencies) added to
    the input of the projections, as the Transformer adds it; ``'none'``: the logits are q·k alone.
  - ``logits='qr'`` (Table 6's "q^T r only"): no key projection, the logits are q·r alone.
  - No 1/sqrt(d) scale, as in the paper. The relative tables start as N(0, 1/d) (d = head width) so that the
    q·r term starts at the size of the content term; the paper gives no initialisation.
  - Downsampling (``stride`` > 1): the attention runs at full resolution and a stride×stride average pool
    follows it, as the paper replaces strided convolutions. The pool uses ``ceil_mode`` so every input size
    gives the ceil(H / stride) of the strided projection shortcut it is added to.

Border semantics (``padding``; the paper does not say): ``mask`` (default) drops out-of-image neighbours from the
softmax, so every pixel attends over the in-image part of its k×k window, which is exactly the paper's formula
restricted to the image; ``zero`` keeps them as zero keys and values with logit q·r, so border pixels give attention
mass to zero vectors (the unofficial leaderj1001 code does this); ``reflect`` mirrors the image.
"""
import math
from typing import Optional

import torch
from torch import nn
from timm.layers import register_notrace_module

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import (Footprint, local_aggregate, local_attention, local_logits, local_softmax,
                            mask_outside)

from .conv import split_projection

__all__ = ["SASAttention", "POSITIONAL_ENCODINGS", "LOGITS", "relative_embedding", "sinusoidal_encoding_2d"]

POSITIONAL_ENCODINGS = ("relative", "absolute", "none")
LOGITS = ("qk_qr", "qr")



def relative_embedding(rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """D × kh·kw embeddings r_{a,b} = [rows[:, a]; cols[:, b]] for the row-major window offsets (a, b).

    rows: D/2 × kh (row offsets), cols: D/2 × kw (column offsets): the first D/2 channels carry the row offset,
    the last D/2 the column offset (SASA's factorised 2-D relative embedding).
    """
    (half, kh), kw = rows.shape, cols.shape[1]
    r = torch.cat([rows[:, :, None].expand(half, kh, kw), cols[:, None, :].expand(half, kh, kw)])  # D, kh, kw
    return r.reshape(2 * half, kh * kw)


def sinusoidal_encoding_2d(channels: int, height: int, width: int, device=None) -> torch.Tensor:
    """1 × C × H × W fixed absolute encoding: C/2 channels of sin/cos of the row, C/2 of the column."""
    quarter = channels // 4
    freq = torch.exp(torch.arange(quarter, device=device) * (-math.log(10000.) / quarter))  # C/4

    def encode(length):  # C/2 × length
        angle = freq[:, None] * torch.arange(length, device=device)[None, :]
        return torch.cat([angle.sin(), angle.cos()])

    rows = encode(height)[:, :, None].expand(-1, height, width)
    cols = encode(width)[:, None, :].expand(-1, height, width)
    return torch.cat([rows, cols])[None]  # 1, C, H, W


@register_notrace_module  # a leaf for FX tracing: the forward branches on shapes
class SASAttention(nn.Module):
    """k×k local multi-head self-attention with SASA's relative embeddings, a spatial layer of the ResNet skeleton.

    Widths: q, k, v: C → C_out (1×1, no bias; no k with ``logits='qr'``); C_out / ``num_heads`` channels per head,
    even with relative embeddings (row half, column half). Parameters: 3·C·C_out (2·C·C_out for ``qr``) plus
    C_out/heads·k for the relative tables; independent of k apart from those. ``kernel_size`` may be a (kh, kw)
    pair and ``dilation`` spreads the window (the paper: square, dilation 1; ``layers/hybrid.py`` uses both).
    """

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: int = 8,
                 positional_encoding: str = "relative", logits: str = "qk_qr", padding: str = "mask",
                 impl: Optional[str] = None, dilation: int = 1):
        super().__init__()
        check_choice("positional_encoding", positional_encoding, POSITIONAL_ENCODINGS)
        check_choice("logits", logits, LOGITS)
        if logits == "qr" and positional_encoding != "relative":
            raise ConfigError(f"logits='qr' scores with the relative embeddings alone; it needs "
                              f"positional_encoding='relative', not {positional_encoding!r}")
        head_dim = dim_out // num_heads if num_heads > 0 else 0
        if head_dim < 1 or dim_out % num_heads or (positional_encoding == "relative" and head_dim % 2):
            raise ConfigError(f"heads={num_heads} does not split {dim_out} channels into heads of an even width")
        if positional_encoding == "absolute" and dim % 4:
            raise ConfigError(f"positional_encoding='absolute' needs input channels divisible by 4, got {dim}")
        self.num_heads, self.head_dim = num_heads, head_dim
        self.positional_encoding, self.logits = positional_encoding, logits
        self.footprint = Footprint(kernel_size, 1, dilation, padding)
        self.impl = impl
        self.num_projections = 3 if logits == "qk_qr" else 2
        self.qkv = nn.Conv2d(dim, self.num_projections * dim_out, 1, bias=False)
        if positional_encoding == "relative":
            kh, kw = self.footprint.kernel_size
            self.rel_rows = nn.Parameter(torch.randn(head_dim // 2, kh) * head_dim ** -0.5)
            self.rel_cols = nn.Parameter(torch.randn(head_dim // 2, kw) * head_dim ** -0.5)
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def relative_embeddings(self) -> Optional[torch.Tensor]:
        """1 × head_dim × K relative embeddings, shared by the heads, or None without relative encoding."""
        if self.positional_encoding != "relative":
            return None
        return relative_embedding(self.rel_rows, self.rel_cols)[None]

    def project(self, x: torch.Tensor) -> tuple:
        """q, k, v (B × C_out × H × W each; k is None with ``logits='qr'``), from x plus the absolute encoding."""
        if self.positional_encoding == "absolute":
            x = x + sinusoidal_encoding_2d(x.shape[1], *x.shape[-2:], x.device).to(x.dtype)
        if self.logits == "qk_qr":
            return tuple(split_projection(self.qkv, x, 3))
        q, v = split_projection(self.qkv, x, 2)
        return q, None, v

    def attention_logits(self, q: torch.Tensor, k: Optional[torch.Tensor]) -> torch.Tensor:
        """B × heads × K × H × W logits q·k + q·r (or q·r alone when k is None), -inf outside the image in mask
        mode."""
        if k is not None:
            return local_logits(q, k, self.footprint, self.num_heads, self.relative_embeddings(), self.impl)
        b, _, height, width = q.shape
        logits = torch.einsum("bgdhw,gdk->bgkhw", q.reshape(b, self.num_heads, self.head_dim, height, width),
                              self.relative_embeddings().to(q.dtype))  # B, heads, K, H, W
        return mask_outside(logits, self.footprint, height, width)

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """B × heads × K × H × W softmax weights of every window (what ``forward`` aggregates with)."""
        q, k, _ = self.project(x)
        return local_softmax(self.attention_logits(q, k))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        if k is not None:  # one fused kernel where the device has it, nothing K-sized stored
            y = local_attention(q, k, v, self.footprint, self.num_heads, rel_q=self.relative_embeddings(),
                                impl=self.impl)
        else:
            y = local_aggregate(local_softmax(self.attention_logits(q, None)), v, self.footprint, impl=self.impl)
        return self.pool(y.to(x.dtype))  # the kernels accumulate in float32; the output keeps the input's dtype
