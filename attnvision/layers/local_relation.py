"""LR-Net's local relation layer: y_c(p') = sum_p softmax_p(Φ(q(p'), k(p)) + g(p - p'))_{group(c)} x_c(p).

"Local Relation Networks for Image Recognition", Hu, Zhang, Xie, Lin, ICCV 2019 - https://arxiv.org/abs/1904.11491
No model code was released. The layer follows the paper's Figure 2 and equation 2 (as reproduced by secondary
sources, ../shared/reference/papers.md §2) and the authors' own op (``_contrib_NeighborRelation`` in Han Hu's MXNet
fork; the later CUDA op of microsoft/Swin-Transformer's LR-Net branch), which settle its semantics:
  - key and query are 1×1 maps C → C/m, one scalar per group of m channels (``channels_per_group``, 8);
  - the value is the input itself (Figure 2: "identity"); the aggregate goes through a final 1×1 C → C_out;
  - Φ (``composability``): the op's forms ``squared_difference`` -(q-k)² (default), ``abs_difference`` -|q-k|,
    ``product`` q·k, ``normalized_abs_difference`` -|q-k| / (|q|+|k|+1), ``normalized_squared_difference``
    -(q-k)² / (|q·k|+1); ``none`` drops it (weights from the geometry prior alone);
  - the geometry prior g (``geometry_prior``): ``mlp`` (default), two 1×1 convs with a ReLU over the window's
    relative offsets (dy, dx), 2 → C/(2m) → C/m, one value per group and offset; ``learned``: those values learned
    directly (the paper's "LR(G*)");
  - weights are shared by contiguous channel groups (channel c uses group c // m), as the op does;
  - stride samples the window centres (the query at the output resolution, key and value at the input's).

Choices where the sources are silent: the offsets enter the MLP in pixels divided by the window radius (so they lie
in [-1, 1]); q and k have biases, as both public re-implementations do; the final 1×1 has none (a BatchNorm follows
it in every block); Φ is not scaled (the op's ``scale`` defaults to 1).

Border semantics (``padding``): ``mask`` (default) excludes out-of-image neighbours from the softmax and the sum, as
the CUDA op does with its -100 logit; ``zero`` keeps them as zero keys and values inside the softmax, as the MXNet
op's default logit of 0 effectively does; ``reflect`` mirrors the image.
"""
from typing import Optional

import torch
from torch import nn
from timm.layers import register_notrace_module

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import Footprint, local_aggregate, local_attention, local_patches, local_softmax, mask_outside

__all__ = ["LocalRelation", "COMPOSABILITIES", "GEOMETRY_PRIORS"]

COMPOSABILITIES = ("squared_difference", "abs_difference", "product", "normalized_abs_difference",
                   "normalized_squared_difference", "none")
GEOMETRY_PRIORS = ("mlp", "learned")



def appearance_composability(q: torch.Tensor, k: torch.Tensor, form: str) -> torch.Tensor:
    """Φ(q, k) elementwise for broadcastable q (window centres) and k (neighbours)."""
    if form == "squared_difference":
        return -(q - k).square()
    if form == "abs_difference":
        return -(q - k).abs()
    if form == "product":
        return q * k
    if form == "normalized_abs_difference":
        return -(q - k).abs() / (q.abs() + k.abs() + 1)
    return -(q - k).square() / ((q * k).abs() + 1)  # normalized_squared_difference


@register_notrace_module  # a leaf for FX tracing: the forward branches on shapes
class LocalRelation(nn.Module):
    """The local relation layer, a spatial layer of the ResNet skeleton (``spatial_layer='local_relation'``).

    Widths (C = ``dim``, G = ``num_heads`` or C / ``channels_per_group``): query, key: C → G (1×1, bias);
    geometry prior: 2 → G/2 → G (1×1 convs with bias) or a learned G × k² table; output: C → ``dim_out`` (1×1, no
    bias). ``kernel_size`` may be a (kh, kw) pair and ``dilation`` spreads the window (the paper: square,
    dilation 1; ``layers/hybrid.py`` uses both); the geometry prior then sees offsets over the radius in pixels.
    """

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: Optional[int] = None,
                 channels_per_group: int = 8, composability: str = "squared_difference", geometry_prior: str = "mlp",
                 padding: str = "mask", impl: Optional[str] = None, dilation: int = 1):
        super().__init__()
        check_choice("composability", composability, COMPOSABILITIES)
        check_choice("geometry_prior", geometry_prior, GEOMETRY_PRIORS)
        groups = num_heads or dim // channels_per_group
        if groups < 1 or dim % groups:
            raise ConfigError(f"{dim} channels do not split into {groups} groups (heads={num_heads}, "
                              f"channels_per_group={channels_per_group})")
        self.groups, self.composability, self.impl = groups, composability, impl
        self.footprint = Footprint(kernel_size, stride, dilation, padding)
        if composability != "none":
            self.query = nn.Conv2d(dim, groups, 1)
            self.key = nn.Conv2d(dim, groups, 1)
        if geometry_prior == "mlp":
            hidden = max(groups // 2, 1)
            self.geometry = nn.Sequential(nn.Conv2d(2, hidden, 1), nn.ReLU(inplace=True), nn.Conv2d(hidden, groups, 1))
        else:
            self.geometry = nn.Parameter(torch.zeros(groups, self.footprint.num_offsets))
        self.proj = nn.Conv2d(dim, dim_out, 1, bias=False)
        self.init_weights()

    def init_weights(self):
        """Query and key as variance-preserving linear maps (N(0, 1/C), zero bias), so that Φ starts at order one;
        ResNet's fan-out Kaiming init of a C → C/m conv would make q and k m times larger in variance and the
        softmax nearly one-hot."""
        if self.composability != "none":
            for conv in (self.query, self.key):
                nn.init.normal_(conv.weight, std=conv.in_channels ** -0.5)
                nn.init.zeros_(conv.bias)

    def geometry_term(self) -> torch.Tensor:
        """G × K prior g(p - p') for every group and window offset."""
        if isinstance(self.geometry, nn.Parameter):
            return self.geometry
        (kh, kw), dil = self.footprint.kernel_size, self.footprint.dilation
        radius = torch.tensor([max(dil * (kh // 2), 1), max(dil * (kw // 2), 1)],
                              device=self.geometry[0].weight.device)
        offsets = self.footprint.offsets(radius.device) / radius  # K, 2 in [-1, 1]
        prior = self.geometry(offsets.t().to(self.geometry[0].weight.dtype)[None, :, :, None])  # 1, G, K, 1
        return prior.view(self.groups, -1)

    def attention_logits(self, x: torch.Tensor) -> torch.Tensor:
        """B × G × K × Ho × Wo logits Φ + g, -inf outside the image in mask mode (the explicit, K-sized form)."""
        ho, wo = self.footprint.out_size(*x.shape[-2:])
        logits = self.geometry_term()[None, :, :, None, None].expand(x.shape[0], -1, -1, ho, wo)
        if self.composability != "none":
            q = self.query(self.footprint.centres(x)).unsqueeze(2)  # B, G, 1, Ho, Wo
            k = local_patches(self.key(x), self.footprint, self.impl).to(q.dtype)  # B, G, K, Ho, Wo
            logits = logits + appearance_composability(q, k, self.composability)
        return mask_outside(logits, self.footprint, *x.shape[-2:])

    def attention_weights(self, x: torch.Tensor) -> torch.Tensor:
        """B × G × K × Ho × Wo aggregation weights ω(p', p)."""
        return local_softmax(self.attention_logits(x))

    def aggregate(self, x: torch.Tensor) -> torch.Tensor:
        """B × C × Ho × Wo aggregate sum_p ω(p', p) x(p), before the output 1×1."""
        prior = self.geometry_term()[None, :, :, None, None]  # 1, G, K, 1, 1
        if self.composability in ("squared_difference", "product", "none"):  # dot-product forms: one fused kernel
            if self.composability == "none":  # the prior alone: zero queries and keys
                q = x.new_zeros(x.shape[0], self.groups, *self.footprint.out_size(*x.shape[-2:]))
                k = x.new_zeros(x.shape[0], self.groups, *x.shape[-2:])
            else:
                q, k = self.query(self.footprint.centres(x)), self.key(x)  # B, G, Ho, Wo and B, G, H, W
            if self.composability == "squared_difference":
                # -(q-k)² = 2qk - k² - q², and q² is constant over the window: attention with per-group
                # queries [2q, -1] and keys [k, k²]
                q = torch.stack([2 * q, -torch.ones_like(q)], 2).flatten(1, 2)  # B, 2G, Ho, Wo
                k = torch.stack([k, k.square()], 2).flatten(1, 2)  # B, 2G, H, W
            return local_attention(q, k, x, self.footprint, self.groups, bias=prior, impl=self.impl)
        return local_aggregate(self.attention_weights(x), x, self.footprint, "contiguous", impl=self.impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.aggregate(x).to(x.dtype))  # accumulated in float32; out in the input's dtype
