"""SAN's patchwise γ at both of its K-expanded ends, without storing a K-expanded tensor.

SAN's patchwise weights α_i = γ(δ(x_R(i))) start from the concatenation δ = [φ_i, ψ_R(i)] (Cr·(K+1) channels per
pixel, 3× the layer's width at k = 7) and end in G·K weights (G weight channels × K offsets, 6× the width).
Materialised, these tensors, their BatchNorm and ReLU copies and their gradients cost more time (allocation, memory
traffic) than the arithmetic; the hidden layers between them are G' ≈ C/8 channels. Both ends run here batch chunk
by batch chunk, each chunk's expanded tensor small enough to stay in cache, and keep only their small inputs for
the backward, which recomputes each chunk's expanded tensor:
  - ``patch_map``: h = W · relu(scale ⊙ δ + shift), γ's first BN → ReLU → 1×1 with the BN as its affine map
    (``concat_moments`` gives its batch statistics from window sums, without δ);
  - ``mapped_agg``: y = sum_j α_j ⊙ v_j with α = W · u + b, γ's last 1×1 inside the aggregation; dα = nbr_dot(dy, v)
    and dv = nbr_agg_t(α, dy) through the neighbourhood kernels.
"""
from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from . import kernels
from .footprint import Footprint
from .kernels import accumulate_dtype, in_accumulate_dtype, saving_tensors

__all__ = ["mapped_aggregate", "mapped_agg", "mapped_macs", "patch_map", "patch_macs", "concat_moments", "interleaved",
           "deinterleaved", "batch_chunks"]

CHUNK_BYTES = 2 ** 22  # an expanded tensor per chunk: a few MB, which the caches hold between its two uses


def interleaved(t: torch.Tensor, groups: int) -> torch.Tensor:
    """B×C×H×W -> (B·G)×C/G×H×W, group g holding channels g, g + G, g + 2G, ... (SAN's weight sharing)."""
    b, c, h, w = t.shape
    return t.view(b, c // groups, groups, h, w).transpose(1, 2).reshape(b * groups, c // groups, h, w)


def deinterleaved(t: torch.Tensor, batch: int) -> torch.Tensor:
    """The inverse of ``interleaved``."""
    n, d, h, w = t.shape
    return t.view(batch, n // batch, d, h, w).transpose(1, 2).reshape(batch, -1, h, w)


def _fold(t: torch.Tensor) -> torch.Tensor:
    """n × C × (pixels) -> C × n·P, the chunk's pixels side by side, so that a 1×1 map is one matrix product with the
    batch in it (per-image products are slow and reread the weight on the small late stages). A view when n = 1."""
    return t.reshape(t.shape[0], t.shape[1], -1).transpose(0, 1).reshape(t.shape[1], -1)


def _unfold(t: torch.Tensor, n: int) -> torch.Tensor:
    """The inverse of ``_fold``: C × n·P -> n × C × P, contiguous."""
    return t.view(t.shape[0], n, -1).transpose(0, 1).contiguous()


def batch_chunks(t: torch.Tensor, channels: int):
    """Batch slices of t (B × · × Ho × Wo) whose expanded tensor of ``channels`` takes about CHUNK_BYTES."""
    size = max(1, CHUNK_BYTES // (channels * t.shape[-2] * t.shape[-1] * t.element_size()))
    return [slice(start, start + size) for start in range(0, t.shape[0], size)]


def _weights(u: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], groups: int) -> torch.Tensor:
    """α = weight · u + bias, the 1×1 map of u (n × G' × Ho × Wo), as (n·G) × K × Ho × Wo. A matrix product, which
    runs about 10× faster than a 1×1 convolution with this few input channels on CPU."""
    n, _, ho, wo = u.shape
    u = _fold(u)  # G', n·P
    alpha = torch.mm(weight, u) if bias is None else torch.addmm(bias[:, None], weight, u)
    return _unfold(alpha, n).view(n * groups, -1, ho, wo)  # n·G, K, Ho, Wo


@torch.library.custom_op("attnvision::mapped_agg", mutates_args=())
def mapped_agg(u: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], vp: torch.Tensor, groups: int,
               kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    """y [B,C,Ho,Wo] for u [B,G',Ho,Wo], weight [G·K,G'], bias [G·K] and vp [B,C,Hp,Wp] padded: channel c aggregates
    with weight channel c mod G of α = weight·u + bias."""
    u, weight, bias, vp = in_accumulate_dtype(u, weight, bias, vp)
    return torch.cat([deinterleaved(kernels.nbr_agg(_weights(u[s], weight, bias, groups), interleaved(vp[s], groups),
                                                     kh, kw, stride, dilation), u[s].shape[0])
                      for s in batch_chunks(u, weight.shape[0])])


@mapped_agg.register_fake
def _(u, weight, bias, vp, groups, kh, kw, stride, dilation):
    return u.new_empty((u.shape[0], vp.shape[1], *u.shape[-2:]), dtype=accumulate_dtype(u))


def _backward(ctx, dy):
    """Per chunk: α recomputed, dv = agg_t(α, dy), dα = dot(dy, v), and through the map du, dW, db."""
    inputs = ctx.saved_tensors
    groups, *geometry = ctx.geometry
    u, weight, bias, vp, dy = in_accumulate_dtype(*inputs, dy)
    du, dvp, dweight = torch.empty_like(u), torch.empty_like(vp), torch.zeros_like(weight)
    dbias = None if bias is None else torch.zeros_like(bias)
    for s in batch_chunks(u, weight.shape[0]):
        n = u[s].shape[0]
        dy_i = interleaved(dy[s], groups)
        alpha = _weights(u[s], weight, bias, groups)
        dvp[s] = deinterleaved(kernels.nbr_agg_t(alpha, dy_i, *geometry, *vp.shape[-2:]), n)
        dalpha = _fold(kernels.nbr_dot(dy_i, interleaved(vp[s], groups), *geometry).view(n, weight.shape[0], -1))
        du[s] = _unfold(torch.mm(weight.t(), dalpha), n).view_as(du[s])  # dalpha: G·K, n·P
        dweight.addmm_(dalpha, _fold(u[s]).t())
        if dbias is not None:
            dbias += dalpha.sum(1)
    grads = (du, dweight, dbias, dvp)
    return (*(None if g is None else g.to(t.dtype) for g, t in zip(grads, inputs)), None, None, None, None, None)


mapped_agg.register_autograd(_backward, setup_context=saving_tensors(4))


def mapped_macs(u_shape, weight_shape, vp_shape, kh: int, kw: int) -> int:
    """Multiply-adds of ``mapped_agg``: the 1×1 map, then the aggregation."""
    n, hidden, ho, wo = u_shape
    return n * ho * wo * (weight_shape[0] * hidden + vp_shape[1] * kh * kw)


@register_flop_formula(torch.ops.attnvision.mapped_agg)
def _mapped_agg_flops(u_shape, weight_shape, bias_shape, vp_shape, groups, kh, kw, *args, out_shape=None,
                      **kwargs) -> int:
    return 2 * mapped_macs(u_shape, weight_shape, vp_shape, kh, kw)


def mapped_aggregate(u: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], v: torch.Tensor,
                     fp: Footprint) -> torch.Tensor:
    """B×C×Ho×Wo outputs y_c = sum_j α[c mod G, j] v_c[nbr(j)], α = conv1x1(u, weight, bias) read as G weight
    channels × K offsets (``weight``: G·K × G' × 1 × 1), channels sharing a weight channel interleaved as SAN's.
    Border values per ``fp.padding`` (``mask``: zeros, which the weights multiply: the same as masked weights
    without a softmax)."""
    (kh, kw), groups = fp.kernel_size, weight.shape[0] // fp.num_offsets
    return mapped_agg(u, weight.flatten(1), bias, fp.pad(v), groups, kh, kw, fp.stride, fp.dilation)


def _concat(centre: torch.Tensor, xp: torch.Tensor, geometry) -> torch.Tensor:
    """δ = [centre, xp's K neighbours] as n × Cr·(K+1) × Ho × Wo, neighbour o of channel c at Cr + c·K + o."""
    n, c, ho, wo = centre.shape
    patches = kernels.nbr_gather(xp.reshape(n * c, 1, *xp.shape[-2:]), *geometry, ho, wo)  # n·Cr, K, Ho, Wo
    return torch.cat([centre, patches.view(n, -1, ho, wo)], 1)


@torch.library.custom_op("attnvision::patch_map", mutates_args=())
def patch_map(centre: torch.Tensor, xp: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor, weight: torch.Tensor,
              kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    """h [B,G',Ho,Wo] = weight · relu(scale ⊙ δ + shift) for δ = [centre, the K neighbours of xp] (``_concat``):
    centre [B,Cr,Ho,Wo] at the window centres, xp [B,Cr,Hp,Wp] padded, scale and shift [Cr·(K+1)], weight
    [G',Cr·(K+1)]."""
    centre, xp, scale, shift, weight = in_accumulate_dtype(centre, xp, scale, shift, weight)
    geometry, (ho, wo) = (kh, kw, stride, dilation), centre.shape[-2:]
    hidden = []
    for s in batch_chunks(centre, weight.shape[1]):
        r = torch.addcmul(shift[:, None], _fold(_concat(centre[s], xp[s], geometry)), scale[:, None]).relu_()
        hidden.append(_unfold(torch.mm(weight, r), centre[s].shape[0]).view(-1, weight.shape[0], ho, wo))
    return torch.cat(hidden)


@patch_map.register_fake
def _(centre, xp, scale, shift, weight, kh, kw, stride, dilation):
    return centre.new_empty((centre.shape[0], weight.shape[0], *centre.shape[-2:]), dtype=accumulate_dtype(centre))


def _patch_map_backward(ctx, dh):
    """Per chunk: δ and scale ⊙ δ + shift recomputed, then the 1×1 map's, the ReLU's and the affine map's adjoints;
    the neighbours' gradient goes back to xp through nbr_agg_t (the gather's adjoint)."""
    inputs = ctx.saved_tensors
    centre, xp, scale, shift, weight, dh = in_accumulate_dtype(*inputs, dh)
    c, (ho, wo) = centre.shape[1], centre.shape[-2:]
    dcentre, dxp = torch.empty_like(centre), torch.empty_like(xp)
    dscale, dshift, dweight = torch.zeros_like(scale), torch.zeros_like(shift), torch.zeros_like(weight)
    for s in batch_chunks(centre, weight.shape[1]):
        n = centre[s].shape[0]
        delta = _fold(_concat(centre[s], xp[s], ctx.geometry))  # Cr·(K+1), n·P
        t = torch.addcmul(shift[:, None], delta, scale[:, None])
        dh_c = _fold(dh[s])  # G', n·P
        dweight.addmm_(dh_c, t.relu().t())
        dt = torch.mm(weight.t(), dh_c).mul_(t > 0)
        dscale += (dt * delta).sum(1)
        dshift += dt.sum(1)
        ddelta = _unfold(dt.mul_(scale[:, None]), n).view(n, -1, ho, wo)  # n, Cr·(K+1), Ho, Wo
        dcentre[s] = ddelta[:, :c]
        ones = ddelta.new_ones((n * c, 1, ho, wo))
        dxp[s] = kernels.nbr_agg_t(ddelta[:, c:].reshape(n * c, -1, ho, wo), ones, *ctx.geometry,
                                   *xp.shape[-2:]).view(n, c, *xp.shape[-2:])
    return (*(g.to(t.dtype) for g, t in zip((dcentre, dxp, dscale, dshift, dweight), inputs)), None, None, None,
            None)


patch_map.register_autograd(_patch_map_backward, setup_context=saving_tensors(5))


def patch_macs(centre_shape, weight_shape) -> int:
    """Multiply-adds of ``patch_map``: its 1×1 map (the gather moves data, the affine map and ReLU are
    elementwise)."""
    n, _, ho, wo = centre_shape
    return n * ho * wo * weight_shape[0] * weight_shape[1]


@register_flop_formula(torch.ops.attnvision.patch_map)
def _patch_map_flops(centre_shape, xp_shape, scale_shape, shift_shape, weight_shape, *args, out_shape=None,
                     **kwargs) -> int:
    return 2 * patch_macs(centre_shape, weight_shape)


def concat_moments(centre: torch.Tensor, xp: torch.Tensor, fp: Footprint):
    """(mean, biased variance, count) per channel of δ = [centre, xp's K neighbours] over batch and output pixels,
    differentiable, without δ: a neighbour channel's sums are sums of the batch-summed xp and xp² over the Ho × Wo
    pixels its offset reads, taken as the rows each offset row reads, then the columns. Elementwise work, which FLOP
    counts leave out as they do BatchNorm."""
    centre, xp = in_accumulate_dtype(centre, xp)
    (kh, kw), (ho, wo) = fp.kernel_size, centre.shape[-2:]
    count = centre.shape[0] * ho * wo
    sums = torch.stack([xp.sum(0), xp.square().sum(0)])  # 2, Cr, Hp, Wp
    rows, cols = ((torch.arange(n, device=xp.device) * fp.stride)[None] +
                  (torch.arange(k, device=xp.device) * fp.dilation)[:, None] for n, k in ((ho, kh), (wo, kw)))
    windows = sums[:, :, rows].sum(3)[..., cols].sum(-1)  # 2, Cr, kh, kw
    first, second = windows.flatten(1) / count  # each Cr·K, channel-major as δ
    centre = centre.transpose(0, 1).flatten(1)  # Cr, B·Ho·Wo
    mean = torch.cat([centre.mean(1), first])
    var = torch.cat([centre.var(1, unbiased=False), second - first.square()])
    return mean, var, count
