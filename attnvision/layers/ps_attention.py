"""Axial-DeepLab's position-sensitive self-attention over a footprint R(o), and its k×k 2-D layer (Table 1's
"PS-Attention"): y_o = sum_{p in R(o)} softmax_p(q_o·k_p + q_o·r^q_{p-o} + k_p·r^k_{p-o}) (v_p + r^v_{p-o}).

"Axial-DeepLab: Stand-Alone Axial-Attention for Panoptic Segmentation", Wang et al., ECCV 2020 -
https://arxiv.org/abs/2003.07853 (../shared/reference/papers.md §4.1). The BatchNorms follow the authors' PyTorch
axial layer (csrhddlam/axial-deeplab ``lib/models/axialnet.py``), which the paper says all its attention layers use:
  - one bias-free 1×1 projection to per-head q, k and v channels, then a BatchNorm over them;
  - the logit terms q·k, q·r^q and k·r^k are batch-normalised separately (one BatchNorm over terms × heads maps)
    and summed; no 1/sqrt(d) scale;
  - the outputs sum_p w v_p and sum_p w r^v are batch-normalised separately and summed; the layer therefore ends
    in its own BatchNorm (``normalizes_output``: the ResNet block adds none after it).
Deviation: the logit BatchNorm takes its statistics over the (o, p) pairs the softmax can attend (inside the image
and the window); in a dense L × L axial layer with a global span those are all pairs, as in the authors' code.
Computation (``fold``): the logit BatchNorm is affine per (term, head) and its shift is constant over the window, so
it folds into the fused attention as scales on k and the relative tables. In eval mode the output BN's folds into v
and r^v as well. In training the batch statistics of the logit terms come from their sums and sums of squares
(``ops.moments``: closed forms for the position terms, a reduced and recomputed neighbourhood kernel for q·k), and
the fused attention returns sum_p w v_p and sum_p w r^v side by side for the output BN. The same outputs,
gradients and running statistics as the unfolded BatchNorms within float rounding (tests), without the K-sized
logits; ``impl='reference'`` runs the unfolded computation.

``PSAttention`` is the 2-D k×k layer of Table 1: SASA's layer (``sasa.py``: dense q, k, v of C_out channels,
heads, factorised row/column relative embeddings shared by the heads, mask borders, stride by a 2×2 average pool
after the attention) with the k·r^k and r^v terms and the BatchNorms added. ``position_terms`` switches r^q, r^k
and r^v on or off; ``position_terms=('q',)`` is Table 1's "Conv-Stem + Attention" with BN.
"""
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from timm.layers import register_notrace_module

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import (Footprint, key_position_term, local_aggregate, local_attention, local_logits, local_softmax,
                            query_position_term, requested_impl)
from attnvision.ops.kernels import accumulate_dtype
from attnvision.ops.moments import logit_moments

from .batch_norm import track_running_stats
from .conv import split_projection
from .sasa import relative_embedding

__all__ = ["PositionSensitiveAttention", "PSAttention", "POSITION_TERMS"]

POSITION_TERMS = ("q", "k", "v")


@register_notrace_module  # a leaf for FX tracing: the forward branches on shapes
class PositionSensitiveAttention(nn.Module):
    """The projection, the BatchNorms and the footprint computation shared by the 2-D and the axial layer.

    Widths: C → heads × (2·qk_dim + head_dim) (1×1, no bias), head_dim = C_out / heads, qk_dim = ``qk_ratio`` ×
    head_dim; the relative embeddings of term t have ``widths[t]`` channels (qk_dim for r^q and r^k, head_dim for
    r^v), shared by the heads.
    """

    normalizes_output = True

    def __init__(self, dim: int, dim_out: int, num_heads: int, qk_ratio: float, position_terms: Sequence[str],
                 impl: Optional[str] = None):
        super().__init__()
        for term in position_terms:
            check_choice("position_terms", term, POSITION_TERMS)
        head_dim = dim_out // num_heads if num_heads > 0 else 0
        if head_dim < 2 or dim_out % num_heads or head_dim % 2:
            raise ConfigError(f"heads={num_heads} does not split {dim_out} channels into heads of an even width")
        self.num_heads, self.head_dim, self.impl = num_heads, head_dim, impl
        self.terms = tuple(t for t in POSITION_TERMS if t in position_terms)
        qk_dim = int(head_dim * qk_ratio)
        self.widths = {"q": qk_dim, "k": qk_dim, "v": head_dim}
        self.qkv = nn.Conv2d(dim, num_heads * (2 * self.widths["q"] + head_dim), 1, bias=False)
        self.bn_qkv = nn.BatchNorm2d(self.qkv.out_channels)
        self.bn_logits = nn.BatchNorm2d((1 + len([t for t in self.terms if t != "v"])) * num_heads)
        self.bn_output = nn.BatchNorm2d((2 if "v" in self.terms else 1) * dim_out)

    def init_weights(self):
        """The authors' init of the projection, N(0, 1/C); the relative tables start at N(0, 1/head_dim)."""
        nn.init.normal_(self.qkv.weight, std=self.qkv.in_channels ** -0.5)

    def project(self, x: torch.Tensor) -> List[torch.Tensor]:
        """q, k (B × heads·qk_dim × H × W) and v (B × C_out × H × W), each head's channels contiguous."""
        b, _, height, width = x.shape
        d = self.widths["q"]
        # NCHW before the BN, as the heads' splits below are: a BatchNorm whose input (channels-last, the trainer's)
        # and gradient (NCHW) differ in memory format ran its backward 8-15× slower on CPU
        qkv = self.bn_qkv(split_projection(self.qkv, x)[0].contiguous())
        qkv = qkv.view(b, self.num_heads, 2 * d + self.head_dim, height, width)
        return [t.reshape(b, -1, height, width) for t in qkv.split([d, d, self.head_dim], 2)]  # per-head splits

    def combine_logits(self, terms: List[torch.Tensor], attended: Optional[torch.Tensor]) -> torch.Tensor:
        """Sum of the batch-normalised logit terms (each N × heads × S), -inf where ``attended`` (a boolean of
        shape S, None = everywhere) is False; the BatchNorm sees the attended entries only."""
        logits = torch.cat(terms, 1).to(self.bn_logits.weight.dtype)  # N, terms·heads, S... (bf16 in a bf16 model)
        n, channels, *shape = logits.shape
        if attended is None:
            logits = self.bn_logits(logits.reshape(n, channels, -1, 1)).view(n, channels, *shape)
        else:
            normed = self.bn_logits(logits[:, :, attended].unsqueeze(-1)).squeeze(-1)  # N, terms·heads, attended
            logits = logits.new_full(logits.shape, float("-inf"), dtype=normed.dtype)
            logits[:, :, attended] = normed
        return logits.view(n, len(terms), self.num_heads, *shape).sum(1)  # N, heads, S...

    def combine_outputs(self, outputs: List[torch.Tensor]) -> torch.Tensor:
        """Sum of the batch-normalised outputs sum_p w v_p and sum_p w r^v (each B × C_out × H × W)."""
        y = self.bn_output(torch.cat(outputs, 1).to(self.bn_output.weight.dtype))  # B, (1 or 2)·C_out, H, W
        return y.view(y.shape[0], len(outputs), -1, *y.shape[-2:]).sum(1)

    def fold(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp: Footprint,
             rel: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """``attend`` as one fused attention with the BatchNorms folded in, or None where they cannot fold.

        The logit BN is affine per (term, head), and its shift is constant over the window, so it reduces to
        scales carried by k and the relative tables. In eval mode they come from the running statistics and the
        output BN folds into v and r^v too. With batch statistics (training) the scales come from the sums and
        squares of ``ops.moments.logit_moments`` (no K-sized logits kept) and are differentiated as the BN's
        are; the running statistics are updated as ``nn.BatchNorm2d`` does; and the fused attention returns sum_p w
        v_p and sum_p w r^v side by side (``rel_v_apart``) for the output BN. None with ``impl='reference'`` (the
        unfolded path is the oracle) and where a head's q·k scale γ/σ is below 1e-6 (k carries it, and the k·r^k
        scale is divided by it). Under ``torch.compile`` and ``torch.export`` that value-dependent check is skipped
        (a graph cannot branch on a value): a head whose scale is below 1e-6 then gets its k·r^k term from the
        division (deviation; the scale is γ/σ of a BatchNorm, 1 at initialisation)."""
        if requested_impl(self.impl) == "reference":
            return None
        bn_logits, bn_output = self.bn_logits, self.bn_output
        g, d = self.num_heads, self.head_dim
        dtype = accumulate_dtype(q)
        q = q.to(dtype)
        batch_logits = self.training or bn_logits.running_var is None
        if batch_logits:
            (sums, squares), count = logit_moments(q, k, fp, g, rel, self.impl)  # each terms, heads
            mean = sums / count
            var = squares / count - mean.square()
        else:
            mean, var = (s.to(dtype).view(-1, g) for s in (bn_logits.running_mean, bn_logits.running_var))
        logit_scale = bn_logits.weight.to(dtype).view(-1, g) * (var + bn_logits.eps).rsqrt()  # terms, heads
        if not torch.compiler.is_compiling() and logit_scale[0].abs().min() < 1e-6:
            return None
        if batch_logits and bn_logits.track_running_stats:
            track_running_stats(bn_logits, mean.detach().flatten(), var.detach().flatten(), count)
        logit_shift = (bn_logits.bias.to(dtype).view(-1, g) - mean * logit_scale).sum(0)  # heads
        scales = dict(zip([t for t in self.terms if t != "v"], logit_scale[1:]))
        k = (k.to(dtype).view(k.shape[0], g, -1, *k.shape[-2:]) * logit_scale[0].view(1, g, 1, 1, 1)).flatten(1, 2)
        rel_v = rel["v"].to(dtype) if "v" in rel else None
        terms = {"rel_q": rel["q"].to(dtype) * scales["q"].view(g, 1, 1) if "q" in rel else None,
                 "rel_k": rel["k"].to(dtype) * (scales["k"] / logit_scale[0]).view(g, 1, 1) if "k" in rel else None,
                 "bias": logit_shift.view(1, g, 1, 1, 1)}  # constant over the window: no effect but on its gradient
        v = v.to(dtype).view(v.shape[0], g, d, *v.shape[-2:])  # B, heads, d, H, W
        if self.training or bn_output.running_var is None:
            if rel_v is None:
                return self.combine_outputs([local_attention(q, k, v.flatten(1, 2), fp, g, **terms, impl=self.impl)])
            y = local_attention(q, k, v.flatten(1, 2), fp, g, **terms, rel_v=rel_v, rel_v_apart=True, impl=self.impl)
            y = y.view(y.shape[0], g, 2, d, *y.shape[-2:])  # B, heads, (sum w v, sum w r^v), d, H, W
            return self.combine_outputs([t.flatten(1, 2) for t in y.unbind(2)])  # one gradient pass, no zero fills
        out_scale = bn_output.weight.to(dtype) * (bn_output.running_var.to(dtype) + bn_output.eps).rsqrt()
        out_shift = bn_output.bias.to(dtype) - bn_output.running_mean.to(dtype) * out_scale
        out_scale, out_shift = out_scale.view(-1, g, d), out_shift.view(-1, g, d)  # outputs, heads, d
        v = (v * out_scale[0].view(1, g, d, 1, 1)).flatten(1, 2)
        rel_v = rel_v * out_scale[1].view(g, d, 1) if rel_v is not None else None
        y = local_attention(q, k, v, fp, g, **terms, rel_v=rel_v, impl=self.impl)  # B, C_out, H, W
        return y + out_shift.sum(0).view(1, -1, 1, 1)

    def attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp: Footprint,
               rel: Dict[str, torch.Tensor]) -> torch.Tensor:
        """B × C_out × H × W attention over ``fp`` (stride 1) through the shared ops core; ``rel`` maps the enabled
        terms to their widths[t] × K embeddings, one column per offset of ``fp``."""
        b, _, height, width = q.shape
        terms = [local_logits(q, k, fp, self.num_heads, impl=self.impl)]  # B, heads, K, H, W
        if "q" in rel:
            terms.append(query_position_term(q.to(terms[0].dtype), rel["q"], self.num_heads))
        if "k" in rel:
            terms.append(key_position_term(k.to(terms[0].dtype), rel["k"].to(terms[0].dtype), fp, self.num_heads))
        attended = fp.valid_mask(height, width, q.device) if fp.padding == "mask" else None
        weights = local_softmax(self.combine_logits(terms, attended))  # B, heads, K, H, W
        outputs = [local_aggregate(weights, v, fp, impl=self.impl)]
        if "v" in rel:
            outputs.append(torch.einsum("bgkhw,dk->bgdhw", weights, rel["v"].to(weights.dtype))
                           .reshape(b, -1, height, width))
        return self.combine_outputs([o.to(weights.dtype) for o in outputs])


class PSAttention(PositionSensitiveAttention):
    """k×k position-sensitive attention, a spatial layer of the ResNet skeleton (``spatial_layer='ps_attention'``).

    Widths: q, k, v: C → C_out each, as SASA; per term a row table (widths[t]/2 × k) and a column table
    (widths[t]/2 × k), the embedding of offset (a, b) being [rows[:, a]; cols[:, b]]. ``kernel_size`` may be a
    (kh, kw) pair and ``dilation`` spreads the window (Table 1: square, dilation 1; ``layers/hybrid.py`` uses both).
    """

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: int = 8,
                 position_terms: Sequence[str] = POSITION_TERMS, padding: str = "mask", impl: Optional[str] = None,
                 dilation: int = 1):
        super().__init__(dim, dim_out, num_heads, 1.0, position_terms, impl)
        self.footprint = Footprint(kernel_size, 1, dilation, padding)
        kh, kw = self.footprint.kernel_size
        self.halves = halves = [self.widths[t] // 2 for t in self.terms]
        self.rel_rows = nn.Parameter(torch.randn(sum(halves), kh) * self.head_dim ** -0.5) if halves else None
        self.rel_cols = nn.Parameter(torch.randn(sum(halves), kw) * self.head_dim ** -0.5) if halves else None
        self.pool = nn.AvgPool2d(stride, ceil_mode=True) if stride > 1 else nn.Identity()

    def relative_embeddings(self) -> Dict[str, torch.Tensor]:
        """{term: widths[t] × K embeddings} of the enabled terms."""
        if not self.terms:
            return {}
        pairs = zip(self.rel_rows.split(self.halves), self.rel_cols.split(self.halves))
        return {t: relative_embedding(rows, cols) for t, (rows, cols) in zip(self.terms, pairs)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.project(x)
        rel = self.relative_embeddings()
        y = self.fold(q, k, v, self.footprint, rel)
        y = y if y is not None else self.attend(q, k, v, self.footprint, rel)
        return self.pool(y.to(x.dtype))  # accumulated in float32; out in the input's dtype
