"""SAN's vector self-attention: pairwise and patchwise, y_i = sum_{j in R(i)} α_ij ⊙ β(x_j).

"Exploring Self-attention for Image Recognition", Zhao, Jia, Koltun, CVPR 2020 - https://arxiv.org/abs/2004.13621
Official code: https://github.com/hszhao/SAN (``model/san.py``, the SAM module).

Pairwise: α_ij = γ(δ(x_i, x_j)), δ one of summation, subtraction (default), concatenation, Hadamard or dot product of
φ(x_i) and ψ(x_j), with the position encoding p_i - p_j (or p_j, ``position_encoding='absolute'``) concatenated.
Patchwise: α_i = γ(δ(x_R(i))), one weight vector per footprint location computed from the whole patch, δ one of
star-product [φ(x_i)·ψ(x_j)]_j, clique-product [φ(x_j)·ψ(x_k)]_jk or concatenation (default) [φ(x_i), ψ(x_j)_j].

Status, against the official code (hszhao/SAN @ d88b022), whose choices are the defaults here:
  - γ is BN → ReLU → 1×1 conv, repeated ``mapping_depth`` times (2 by default); the hidden convs have no bias, the
    last has one. The paper writes γ as Linear → ReLU → Linear without the BatchNorms the code has; we follow the
    code. γ's hidden width is C/16 for pairwise and C/32 (the weight channels) for patchwise, as in the code; each
    layer beyond two adds a hidden layer of width C/16 at the front. The paper gives no widths for its 1- and
    3-layer γ; this rule reproduces its Table 5 parameter counts (patchwise 3-layer: 12.7M).
  - Normalisation of α: softmax over the footprint for pairwise, none for patchwise (the code; the paper leaves it
    open). ``normalization`` switches either ('softmax' | 'none').
  - Position encoding (pairwise only, as in the paper): linspace(-1, 1) x then y coordinates of the layer's input
    grid through a learned 1×1 conv 2→2, and p_i - p_j gathered with the layer's border mode. Its bias cancels in
    the difference, as the bias of γ's last conv cancels in the pairwise softmax; both are kept, so parameter
    counts equal the code's. Table 8's "absolute" encoding (CoordConv-style, not in the code) is our reading:
    the neighbour's own p_j concatenated instead of the difference (paper silent; same parameters, 10.5M).
  - Sharing of the transformations (Table 6, not in the code): ``shared_transforms='phi_psi'`` is φ = ψ ≠ β, one
    C → C/16 map for both; ``'phi_psi_beta'`` is φ = ψ = β, one C → C_out map (the paper's r1 = r2 = 4 in SAN's
    blocks), so δ is built from C_out channels. γ's hidden width stays C/16 (paper silent); this reproduces
    Table 6's parameter counts.
  - Weight channels: C_out / ``share_planes`` maps, each shared by ``share_planes`` β channels interleaved
    (channel c uses map c mod C_out/share_planes), as the official Aggregation kernel does.
  - Relations other than the official two (subtraction + position encoding, concatenation) follow the paper's
    definitions; the star and dot products are full dot products over the C/16 channels of φ and ψ, which
    reproduces the paper's Table 4 parameter counts.
  - Stride (unused by SAN, whose blocks never stride) samples the window centres, and φ(x_i) there.
  - φ, ψ and β keep the code's three 1×1 convs with bias as parameters, but run as one convolution with their
    weights concatenated (same result, one pass over x); γ's 1×1 convs run as matrix products (``PointwiseConv``,
    nn.Conv2d's parameters).
  - Computation on the fast path: patchwise γ (no softmax) runs fused with the patch gather and the aggregation
    (``ops.mapped``), pairwise γ optionally (``fused_gamma``, ``ops.pairwise``): batch chunks recomputed in the
    backward, γ's BatchNorms as affine maps of the batch statistics, nothing K-expanded kept; the same outputs,
    gradients and running statistics as the unfused layer within float rounding (tests).

Border semantics (``padding``): ``reflect`` (default, the code's pad_mode=1: the image mirrored without repeating
the edge, as ``F.pad(mode='reflect')``), ``zero`` (out-of-image neighbours are zero features that stay in the
relation, the softmax and the sum) or ``mask`` (zero features in the relation, but their weights are excluded:
-inf before the softmax, zero without one).
"""
from dataclasses import replace
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn
from timm.layers import register_notrace_module

from attnvision.errors import ConfigError, check_choice
from attnvision.ops import (Footprint, local_aggregate, local_logits, local_patches, local_softmax, local_subtraction,
                            resolve_impl)
from attnvision.ops.kernels import accumulate_dtype
from attnvision.ops.mapped import concat_moments, mapped_aggregate, patch_map
from attnvision.ops.pairwise import pair_attention, pair_moments, subtraction_moments
from attnvision.ops.pointwise import pointwise

from .batch_norm import batch_norm_affine

__all__ = ["SANPairwise", "SANPatchwise", "PAIRWISE_RELATIONS", "PATCHWISE_RELATIONS", "NORMALIZATIONS",
           "POSITION_ENCODINGS", "SHARED_TRANSFORMS"]

PAIRWISE_RELATIONS = ("subtraction", "summation", "concatenation", "hadamard", "dot")
PATCHWISE_RELATIONS = ("concatenation", "star", "clique")
NORMALIZATIONS = ("softmax", "none")
POSITION_ENCODINGS = ("relative", "absolute", "none")
# which of the distinct 1×1 maps serve as (φ, ψ, β): Table 6's φ ≠ ψ ≠ β, φ = ψ ≠ β and φ = ψ = β
SHARED_TRANSFORMS = {"none": (0, 1, 2), "phi_psi": (0, 0, 1), "phi_psi_beta": (0, 0, 0)}



class PointwiseConv(nn.Conv2d):
    """γ's 1×1 convolution, run as a batched matrix product (``ops.pointwise``: on CPU 12-30× faster on γ's few
    channels and many positions), cast under autocast as a convolution is; the parameters, their shapes and names
    are nn.Conv2d's."""

    def __init__(self, in_chs: int, out_chs: int, bias: bool):
        super().__init__(in_chs, out_chs, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight, bias = self.weight.flatten(1), self.bias
        if torch.is_autocast_enabled(x.device.type):
            dtype = torch.get_autocast_dtype(x.device.type)
            x, weight, bias = x.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)
        return pointwise(x, weight, bias)


def mapping_gamma(in_chs: int, hidden: list, out_chs: int) -> nn.Sequential:
    """γ: (BN → ReLU → 1×1 conv) per layer through the ``hidden`` widths; only the last conv has a bias."""
    widths = [in_chs, *hidden, out_chs]
    layers = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers += [nn.BatchNorm2d(w_in), nn.ReLU(inplace=True), PointwiseConv(w_in, w_out, bias=i == len(hidden))]
    return nn.Sequential(*layers)


@register_notrace_module  # a leaf for FX tracing: the forward branches on shapes
class _VectorAttention(nn.Module):
    """What both SAN operators share: φ, ψ (C → C/16) and β (C → C_out) 1×1 convs with bias, γ, the footprint, the
    weight normalisation and the interleaved aggregation. Subclasses build δ from the Cr = ``relation_planes``
    channels of φ and ψ (C/16, or C_out when φ = ψ = β), size γ, and define ``mapped_relations(phi, psi)``: γ(δ) as
    B × C_out/share × K × Ho × Wo, before masking and normalisation."""

    relations: tuple = ()
    default_normalization: str = ""

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: Optional[int] = None,
                 dilation: int = 1, share_planes: int = 8, rel_planes: Optional[int] = None,
                 relation: Optional[str] = None, mapping_depth: int = 2, normalization: Optional[str] = None,
                 shared_transforms: str = "none", padding: str = "reflect", impl: Optional[str] = None):
        super().__init__()
        self.relation = relation or self.relations[0]
        self.normalization = normalization or self.default_normalization
        check_choice("relation", self.relation, self.relations)
        check_choice("normalization", self.normalization, NORMALIZATIONS)
        check_choice("shared_transforms", shared_transforms, tuple(SHARED_TRANSFORMS))
        if mapping_depth < 1:
            raise ConfigError(f"mapping_depth={mapping_depth} must be at least 1 (the number of linear layers in γ)")
        self.mapping_depth = mapping_depth
        self.num_weights = num_heads or dim_out // share_planes  # weight channels C_out / share_planes
        self.rel_planes = rel_planes or dim // 16
        if self.num_weights < 1 or dim_out % self.num_weights or self.rel_planes < 1:
            raise ConfigError(f"dim={dim}, dim_out={dim_out} do not fit share_planes={share_planes} "
                             f"(num_heads={num_heads}) and rel_planes={rel_planes}")
        self.footprint = Footprint(kernel_size, stride, dilation, padding)
        # δ sees zero-padded neighbours in mask mode; the mask then applies to the weights
        self.relation_footprint = replace(self.footprint, padding="zero") if padding == "mask" else self.footprint
        self.impl = impl
        self.shared_transforms = shared_transforms
        self.relation_planes = dim_out if shared_transforms == "phi_psi_beta" else self.rel_planes
        self.phi = nn.Conv2d(dim, self.relation_planes, 1)
        self.psi = nn.Conv2d(dim, self.rel_planes, 1) if shared_transforms == "none" else None
        self.beta = nn.Conv2d(dim, dim_out, 1) if shared_transforms != "phi_psi_beta" else None

    def project(self, x: torch.Tensor) -> tuple:
        """φ(x), ψ(x), β(x) as one 1×1 convolution of the distinct maps: x is read (and cast under autocast) once."""
        maps = [conv for conv in (self.phi, self.psi, self.beta) if conv is not None]
        weight, bias = torch.cat([conv.weight for conv in maps]), torch.cat([conv.bias for conv in maps])
        outputs = F.conv2d(x, weight, bias).split([conv.out_channels for conv in maps], 1)
        return tuple(outputs[i] for i in SHARED_TRANSFORMS[self.shared_transforms])

    def weights(self, x: torch.Tensor, projections: Optional[tuple] = None) -> torch.Tensor:
        """B × C_out/share × K × Ho × Wo attention weights α: γ(δ), masked and normalised over the footprint."""
        phi, psi, _ = projections or self.project(x)
        weights = self.mapped_relations(phi, psi)
        if self.footprint.padding == "mask":
            valid = self.footprint.valid_mask(*x.shape[-2:], x.device)  # K, Ho, Wo
            weights = weights.masked_fill(~valid, float("-inf") if self.normalization == "softmax" else 0.)
        return local_softmax(weights) if self.normalization == "softmax" else weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        projections = self.project(x)
        y = local_aggregate(self.weights(x, projections), projections[2], self.footprint, "interleaved",
                            impl=self.impl)
        return y.to(x.dtype)  # accumulated in float32; out in the input's dtype


class SANPairwise(_VectorAttention):
    """Pairwise vector attention, the SAM module of SAN with ``sa_type=0``.

    Widths (C = ``dim``): φ, ψ: C → C/16 (``rel_planes``); β: C → ``dim_out``; δ has C/16 channels (2·C/16 for
    concatenation, 1 for the dot product; C_out for C/16 when φ = ψ = β), plus 2 with position encoding;
    γ: δ → C/16 → ``dim_out`` / ``share_planes`` weight channels, one weight per footprint offset each.
    ``num_heads``, when given, sets the number of weight channels directly (the spatial-layer signature's name).
    """

    relations = PAIRWISE_RELATIONS
    default_normalization = "softmax"

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: Optional[int] = None,
                 position_encoding: str = "relative", fused_gamma: bool = False, **kwargs):
        super().__init__(dim, dim_out, stride, kernel_size, num_heads, **kwargs)
        check_choice("position_encoding", position_encoding, POSITION_ENCODINGS)
        self.position_encoding = position_encoding
        self.fused_gamma = fused_gamma
        rel, encoded = self.relation_planes, position_encoding != "none"
        delta = {"concatenation": 2 * rel, "dot": 1}.get(self.relation, rel) + (2 if encoded else 0)
        self.position = nn.Conv2d(2, 2, 1) if encoded else None
        self.gamma = mapping_gamma(delta, [self.rel_planes] * (self.mapping_depth - 1), self.num_weights)

    def _position_encoding(self, x: torch.Tensor) -> torch.Tensor:
        """1 × 2 × K × Ho × Wo positions of the learned coordinate map p of x's grid: p_i - p_j, or p_j when
        absolute."""
        height, width = x.shape[-2:]
        axes = (torch.linspace(-1., 1., width, device=x.device), torch.linspace(-1., 1., height, device=x.device))
        grid = torch.stack(torch.meshgrid(*axes, indexing="xy"))[None].to(self.position.weight.dtype)  # 1, 2, H, W
        p = self.position(grid)
        if self.position_encoding == "absolute":
            return local_patches(p, self.relation_footprint, self.impl)
        return local_subtraction(self.footprint.centres(p), p, self.relation_footprint, self.impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """With ``fused_gamma`` (fast path, subtraction, γ of depth 2) the layer runs fused (``ops.pairwise``): the
        relations, γ, the mask, the softmax and the aggregation per batch chunk, recomputed in the backward, γ's
        BatchNorms as affine maps from statistics that need no K-expanded tensor kept. That keeps about 3× less
        memory, but recomputes γ three times and in float32, so on CPU a training step is 1.5-2× slower than the
        unfused one (whose γ runs in bf16 under autocast): hence off by default."""
        if not self.fused_gamma or self.relation != "subtraction" or self.mapping_depth != 2 or \
                resolve_impl(self.impl, x.device) != "fast":
            return super().forward(x)
        phi, psi, beta = self.project(x)
        fp, relation_fp = self.footprint, self.relation_footprint
        centre, psi_p = fp.centres(phi), relation_fp.pad(psi)
        pos = self._position_encoding(psi)[0] if self.position is not None else None  # 2, K, Ho, Wo
        bn1, conv1, bn2, conv2 = (self.gamma[i] for i in (0, 2, 3, 5))
        w1, w2, dtype = conv1.weight.flatten(1), conv2.weight.flatten(1), accumulate_dtype(centre)
        geometry = (*fp.kernel_size, fp.stride, fp.dilation)
        scale1, shift1 = batch_norm_affine(bn1, lambda: subtraction_moments(centre, psi_p, pos, relation_fp), dtype)

        def hidden_moments():
            sums = pair_moments(centre, psi_p, pos, scale1, shift1, w1, *geometry)
            count = centre.shape[0] * fp.num_offsets * centre.shape[-2] * centre.shape[-1]
            mean = sums[0] / count
            return mean, sums[1] / count - mean.square(), count

        scale2, shift2 = batch_norm_affine(bn2, hidden_moments, dtype)
        mask = fp.valid_mask(*x.shape[-2:], x.device) if fp.padding == "mask" else None
        y = pair_attention(centre, psi_p, pos, scale1, shift1, w1, scale2, shift2, w2, conv2.bias, fp.pad(beta),
                           mask, self.normalization == "softmax", *geometry)
        return y.to(x.dtype)

    def mapped_relations(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        fp = self.relation_footprint
        q, k = self.footprint.centres(phi), psi  # q: B, Cr, Ho, Wo; k: B, Cr, H, W
        if self.relation == "subtraction":
            delta = local_subtraction(q, k, fp, self.impl)  # B, Cr, K, Ho, Wo
        elif self.relation == "dot":
            delta = local_logits(q, k, fp, 1, impl=self.impl)  # B, 1, K, Ho, Wo
        else:
            patches = local_patches(k, fp, self.impl).to(q.dtype)  # B, Cr, K, Ho, Wo
            centre = q.unsqueeze(2).expand_as(patches)
            delta = {"summation": lambda: centre + patches, "hadamard": lambda: centre * patches,
                     "concatenation": lambda: torch.cat([centre, patches], 1)}[self.relation]()
        if self.position is not None:
            pos = self._position_encoding(psi).expand(psi.shape[0], -1, -1, -1, -1)
            delta = torch.cat([delta, pos], 1)  # B, δ + 2, K, Ho, Wo
        b, c, k_, ho, wo = delta.shape
        weights = self.gamma(delta.reshape(b, c, k_, ho * wo))  # B, C_out/share, K, Ho*Wo
        return weights.reshape(b, self.num_weights, k_, ho, wo)


class SANPatchwise(_VectorAttention):
    """Patchwise vector attention, the SAM module of SAN with ``sa_type=1``.

    Widths (C = ``dim``, K = k², G = ``dim_out`` / ``share_planes``): φ, ψ: C → Cr; β: C → ``dim_out``; δ has
    Cr·(K+1) channels for concatenation (C_out·(K+1) when φ = ψ = β), K for the star product, K² for the clique
    product; γ: δ → G → K·G, read as G weight channels × K footprint locations.
    """

    relations = PATCHWISE_RELATIONS
    default_normalization = "none"

    def __init__(self, dim: int, dim_out: int, stride: int = 1, kernel_size: int = 7, num_heads: Optional[int] = None,
                 **kwargs):
        super().__init__(dim, dim_out, stride, kernel_size, num_heads, **kwargs)
        k, g = self.footprint.num_offsets, self.num_weights
        delta = {"concatenation": self.relation_planes * (k + 1), "star": k, "clique": k * k}[self.relation]
        hidden = [self.rel_planes] * (self.mapping_depth - 2) + [g] * (self.mapping_depth > 1)
        self.gamma = mapping_gamma(delta, hidden, k * g)

    def delta(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """δ(x_R(i)), γ's input: B × δ channels × Ho × Wo."""
        fp = self.relation_footprint
        if self.relation == "clique":
            phi = local_patches(phi, fp, self.impl)  # B, Cr, K, Ho, Wo
            psi = local_patches(psi, fp, self.impl).to(phi.dtype)
            return torch.einsum("bcjhw,bckhw->bjkhw", phi, psi).flatten(1, 2)  # B, K*K, Ho, Wo
        if self.relation == "star":
            return local_logits(self.footprint.centres(phi), psi, fp, 1, impl=self.impl).flatten(1, 2)  # B, K, Ho, Wo
        phi = self.footprint.centres(phi)
        patches = local_patches(psi, fp, self.impl).to(phi.dtype).flatten(1, 2)  # B, Cr*K, Ho, Wo
        return torch.cat([phi, patches], 1)  # B, Cr*(K+1), Ho, Wo

    def mapped_relations(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        weights = self.gamma(self.delta(phi, psi))  # B, G*K, Ho, Wo
        b, _, ho, wo = weights.shape
        return weights.reshape(b, self.num_weights, self.footprint.num_offsets, ho, wo)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The fast path without a softmax never stores a K-expanded tensor: γ's last 1×1 map runs inside the
        aggregation (``ops.mapped.mapped_agg``; masked neighbours are zero values there, as good as zero weights) and,
        for the concatenation, its first BN → ReLU → 1×1 inside the gather of the patch (``patch_map``)."""
        if self.normalization != "none" or resolve_impl(self.impl, x.device) != "fast":
            return super().forward(x)
        phi, psi, beta = self.project(x)
        last = self.gamma[-1]
        return mapped_aggregate(self.hidden(phi, psi), last.weight, last.bias, beta, self.footprint).to(x.dtype)

    def hidden(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """γ(δ) up to its last 1×1 map: B × G' × Ho × Wo."""
        if self.relation != "concatenation" or self.mapping_depth < 2:
            return self.gamma[:-1](self.delta(phi, psi))
        fp = self.relation_footprint
        centre, psi_p = self.footprint.centres(phi), fp.pad(psi)
        bn, conv = self.gamma[0], self.gamma[2]
        scale, shift = batch_norm_affine(bn, lambda: concat_moments(centre, psi_p, fp), accumulate_dtype(centre))
        h = patch_map(centre, psi_p, scale, shift, conv.weight.flatten(1), *fp.kernel_size, fp.stride, fp.dilation)
        return self.gamma[3:-1](h.to(self.gamma[3].weight.dtype))  # float32 out; γ's next BN in its own dtype
