"""SAN's pairwise vector attention with γ fused: nothing K-expanded kept, γ's BatchNorm statistics by recompute.

The pairwise weights α_ij = softmax_j γ(δ_ij) start from a relation per pixel-neighbour pair, δ_ij = [φ_i - ψ_j,
p_i - p_j], and γ = BN → ReLU → 1×1 → BN → ReLU → 1×1 runs on K·H·W positions per image, so every tensor between
δ and α is K-expanded. Here they exist only for a batch chunk at a time (``mapped.batch_chunks``) and are
recomputed in the backward:
  - ``subtraction_moments``: the first BN's batch statistics in closed form: sum (φ_i - ψ_j)² = K·sum φ² -
    2·sum φ_i·box(ψ)_i + sum box(ψ²)_i, box the window sum; the position channels p_i - p_j do not depend on the
    image;
  - ``pair_moments``: the second BN's statistics, the sums and squares of the hidden layer h over every pair (a
    pass that keeps nothing);
  - ``pair_attention``: h, the logits, the mask and softmax and the aggregation; its backward recomputes the chunk
    and runs the softmax's, the maps', the ReLUs' and the BNs' adjoints down to φ, ψ and the position channels.
Both BNs enter as their affine maps (``layers.batch_norm``), differentiable through the statistics. The FLOP count
is γ's two 1×1 maps and the aggregation, as the unfused layer's. It is opt-in (``SANPairwise(fused_gamma=True)``):
it keeps about 3× less memory, but recomputes γ three times in float32, so on CPU a training step takes 1.5-2× the
unfused one's (measured on SAN10 at 32 and 224 px).
"""
from typing import List, Optional

import torch
from torch.utils.flop_counter import register_flop_formula

from . import kernels
from .footprint import Footprint
from .kernels import accumulate_dtype, in_accumulate_dtype, saving_tensors
from .mapped import batch_chunks, deinterleaved, interleaved

__all__ = ["subtraction_moments", "pair_moments", "pair_attention", "pair_macs"]


def subtraction_moments(centre: torch.Tensor, xp: torch.Tensor, pos: Optional[torch.Tensor], fp: Footprint):
    """(mean, biased variance, count) per channel of δ_ij = [centre_i - xp_j, pos_ij] over every pair, without δ:
    centre B×Cr×Ho×Wo, xp B×Cr×Hp×Wp padded, pos 2×K×Ho×Wo (the same for every image) or None."""
    centre, xp, pos = in_accumulate_dtype(centre, xp, pos)
    (b, _, ho, wo), k = centre.shape, fp.num_offsets
    (kh, kw), s, dil = fp.kernel_size, fp.stride, fp.dilation

    def box(t):  # B, Cr, Ho, Wo: the sum over each pixel's window, as shifted slices (cheap in the backward too)
        t = sum(t[..., oy * dil:oy * dil + (ho - 1) * s + 1:s, :] for oy in range(kh))
        return sum(t[..., ox * dil:ox * dil + (wo - 1) * s + 1:s] for ox in range(kw))

    count = b * k * ho * wo
    window = box(xp)
    first = (k * centre - window).sum((0, 2, 3))
    second = (k * centre.square() - 2 * centre * window + box(xp.square())).sum((0, 2, 3))
    mean, var = first / count, second / count - (first / count).square()
    if pos is None:
        return mean, var, count
    pos = pos.flatten(1)
    return torch.cat([mean, pos.mean(1)]), torch.cat([var, pos.var(1, unbiased=False)]), count


class _Chunk:
    """One batch chunk's K-expanded tensors, recomputed from the op's inputs, and their adjoints. Layout: channels
    first, then the chunk's n images, K offsets and P pixels, folded into C × n·K·P for the 1×1 maps."""

    def __init__(self, inputs: List[Optional[torch.Tensor]], s: slice, geometry):
        centre, xp, pos, self.scale1, self.shift1, self.w1 = inputs[:6]
        self.geometry = geometry
        self.n, self.c, ho, wo = centre[s].shape
        self.shape = (self.n, _offsets(geometry), ho, wo)
        n, k, c = self.n, self.shape[1], self.c
        patches = kernels.nbr_gather(xp[s].reshape(n * c, 1, *xp.shape[-2:]), *geometry, ho, wo)  # n·Cr, K, Ho, Wo
        delta = patches.new_empty((len(self.scale1), n, k, ho * wo))  # Cδ, n, K, P
        torch.sub(centre[s].reshape(n, c, 1, ho * wo), patches.view(n, c, k, ho * wo), out=delta[:c].transpose(0, 1))
        if pos is not None:
            delta[c:] = pos.reshape(2, 1, k, -1)
        self.delta = delta.view(len(self.scale1), -1)  # Cδ, n·K·P
        self.r1 = torch.addcmul(self.shift1[:, None], self.delta, self.scale1[:, None]).relu_()  # r1 > 0 iff t1 > 0
        self.h = torch.mm(self.w1, self.r1)  # Ch, n·K·P

    def backward_h(self, dh: torch.Tensor, grads: dict, s: slice, has_pos: bool) -> None:
        """Accumulate the gradients of the inputs from dh (Ch × n·K·P) into ``grads``."""
        n, k, ho, wo = self.shape
        grads["w1"].addmm_(dh, self.r1.t())
        dt1 = torch.mm(self.w1.t(), dh).mul_(self.r1 > 0)
        grads["scale1"] += (dt1 * self.delta).sum(1)
        grads["shift1"] += dt1.sum(1)
        ddelta = dt1.mul_(self.scale1[:, None]).view(-1, n, k, ho * wo)  # Cδ, n, K, P
        dsub = ddelta[:self.c]
        grads["centre"][s] = dsub.sum(2).transpose(0, 1).reshape(n, self.c, ho, wo)
        dpatches = dsub.neg().transpose(0, 1).reshape(n * self.c, k, ho, wo)
        ones = dpatches.new_ones((n * self.c, 1, ho, wo))
        xp_shape = grads["xp"].shape[-2:]
        grads["xp"][s] = kernels.nbr_agg_t(dpatches, ones, *self.geometry, *xp_shape).view(n, self.c, *xp_shape)
        if has_pos:
            grads["pos"] += ddelta[self.c:].sum(1).view(2, k, ho, wo)


def _offsets(geometry) -> int:
    return geometry[0] * geometry[1]


def _chunk_channels(inputs, geometry) -> int:
    """The K-expanded channels per pixel of a chunk: δ, h and, with w2 (``pair_attention``), the logits; times K."""
    widths = len(inputs[3]) + inputs[5].shape[0] + (inputs[8].shape[0] if len(inputs) > 8 else 0)
    return _offsets(geometry) * widths


def _zero_grads(names, tensors) -> dict:
    return {name: None if t is None else torch.zeros_like(t) for name, t in zip(names, tensors)}


GAMMA1 = ("centre", "xp", "pos", "scale1", "shift1", "w1")


@torch.library.custom_op("attnvision::pair_moments", mutates_args=())
def pair_moments(centre: torch.Tensor, xp: torch.Tensor, pos: Optional[torch.Tensor], scale1: torch.Tensor,
                 shift1: torch.Tensor, w1: torch.Tensor, kh: int, kw: int, stride: int,
                 dilation: int) -> torch.Tensor:
    """2 × Ch: the sums and sums of squares over every pair of h = w1 · relu(scale1 ⊙ δ + shift1), δ as in
    ``subtraction_moments`` (w1: Ch × Cδ)."""
    inputs = in_accumulate_dtype(centre, xp, pos, scale1, shift1, w1)
    out = inputs[0].new_zeros((2, w1.shape[0]))
    geometry = (kh, kw, stride, dilation)
    for s in batch_chunks(inputs[0], _chunk_channels(inputs, geometry)):
        h = _Chunk(inputs, s, geometry).h
        out[0] += h.sum(1)
        out[1] += h.square().sum(1)
    return out


@pair_moments.register_fake
def _(centre, xp, pos, scale1, shift1, w1, kh, kw, stride, dilation):
    return centre.new_empty((2, w1.shape[0]), dtype=accumulate_dtype(centre))


def _moments_backward(ctx, grad):
    """Per chunk: h recomputed, dh = g_sum + 2·g_squares·h, then γ's first layer's adjoints."""
    saved = ctx.saved_tensors
    inputs = in_accumulate_dtype(*saved)
    grads = _zero_grads(GAMMA1, inputs)
    grad = grad.to(inputs[0].dtype)
    for s in batch_chunks(inputs[0], _chunk_channels(inputs, ctx.geometry)):
        chunk = _Chunk(inputs, s, ctx.geometry)
        chunk.backward_h(torch.addcmul(grad[0][:, None], chunk.h, 2 * grad[1][:, None]), grads, s, inputs[2] is not None)
    return (*(None if grads[name] is None else grads[name].to(t.dtype) for name, t in zip(GAMMA1, saved)),
            None, None, None, None)


pair_moments.register_autograd(_moments_backward, setup_context=saving_tensors(6))


@register_flop_formula(torch.ops.attnvision.pair_moments)
def _pair_moments_flops(*args, **kwargs) -> int:
    return 0  # BatchNorm statistics, which FLOP counts leave out


GAMMA = GAMMA1 + ("scale2", "shift2", "w2", "bias2", "vp")


def _attend(chunk: _Chunk, inputs, mask, softmax: bool, groups: int):
    """The chunk's weights α (n·G × K × Ho × Wo) and the tensors their backward needs."""
    scale2, shift2, w2, bias2 = inputs[6:10]
    n, k, ho, wo = chunk.shape
    r2 = torch.addcmul(shift2[:, None], chunk.h, scale2[:, None]).relu_()  # r2 > 0 iff its input is
    logits = torch.mm(w2, r2) if bias2 is None else torch.addmm(bias2[:, None], w2, r2)  # G, n·K·P
    logits = logits.view(groups, n, k, ho, wo)
    if mask is not None:
        logits = logits.masked_fill_(~mask, float("-inf") if softmax else 0.)
    alpha = logits.softmax(2) if softmax else logits
    return alpha.transpose(0, 1).reshape(n * groups, k, ho, wo), r2  # n·G, K, Ho, Wo


@torch.library.custom_op("attnvision::pair_attention", mutates_args=())
def pair_attention(centre: torch.Tensor, xp: torch.Tensor, pos: Optional[torch.Tensor], scale1: torch.Tensor,
                   shift1: torch.Tensor, w1: torch.Tensor, scale2: torch.Tensor, shift2: torch.Tensor,
                   w2: torch.Tensor, bias2: Optional[torch.Tensor], vp: torch.Tensor, mask: Optional[torch.Tensor],
                   softmax: bool, kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    """y [B,C,Ho,Wo] = sum_j α_ij ⊙ vp_j (channel c with weight channel c mod G), α = softmax_j (or not) of
    w2 · relu(scale2 ⊙ h + shift2) + bias2, h as in ``pair_moments``, -inf (or 0) where ``mask`` (K×Ho×Wo) is
    False; vp [B,C,Hp,Wp] padded."""
    inputs = in_accumulate_dtype(centre, xp, pos, scale1, shift1, w1, scale2, shift2, w2, bias2, vp)
    geometry, groups = (kh, kw, stride, dilation), w2.shape[0]
    ys = []
    for s in batch_chunks(inputs[0], _chunk_channels(inputs, geometry)):
        alpha, _ = _attend(_Chunk(inputs, s, geometry), inputs, mask, softmax, groups)
        ys.append(deinterleaved(kernels.nbr_agg(alpha, interleaved(inputs[10][s], groups), *geometry),
                                alpha.shape[0] // groups))
    return torch.cat(ys)


@pair_attention.register_fake
def _(centre, xp, pos, scale1, shift1, w1, scale2, shift2, w2, bias2, vp, mask, softmax, kh, kw, stride, dilation):
    return centre.new_empty((centre.shape[0], vp.shape[1], *centre.shape[-2:]), dtype=accumulate_dtype(centre))


def _attention_backward(ctx, dy):
    """Per chunk: everything recomputed; dv = agg_t(α, dy) and dα = dot(dy, v), the softmax's adjoint, then γ's
    second and first layers' adjoints."""
    *saved, mask = ctx.saved_tensors
    inputs = in_accumulate_dtype(*saved)
    (softmax, *geometry), groups = ctx.geometry, saved[8].shape[0]
    grads = _zero_grads(GAMMA, inputs)
    dy = dy.to(inputs[0].dtype)
    vp, scale2, w2 = inputs[10], inputs[6], inputs[8]
    for s in batch_chunks(inputs[0], _chunk_channels(inputs, geometry)):
        chunk = _Chunk(inputs, s, geometry)
        n, k, ho, wo = chunk.shape
        alpha, r2 = _attend(chunk, inputs, mask, softmax, groups)
        dy_i = interleaved(dy[s], groups)
        grads["vp"][s] = deinterleaved(kernels.nbr_agg_t(alpha, dy_i, *geometry, *vp.shape[-2:]), n)
        dalpha = kernels.nbr_dot(dy_i, interleaved(vp[s], groups), *geometry).view(n, groups, k, ho, wo)
        if softmax:
            alpha = alpha.view_as(dalpha)
            dlogits = alpha * (dalpha - (alpha * dalpha).sum(2, keepdim=True))
        else:
            dlogits = dalpha if mask is None else dalpha.masked_fill(~mask, 0.)
        dlogits = dlogits.transpose(0, 1).reshape(groups, -1)  # G, n·K·P
        if grads["bias2"] is not None:
            grads["bias2"] += dlogits.sum(1)
        grads["w2"].addmm_(dlogits, r2.t())
        dt2 = torch.mm(w2.t(), dlogits).mul_(r2 > 0)
        grads["scale2"] += (dt2 * chunk.h).sum(1)
        grads["shift2"] += dt2.sum(1)
        chunk.backward_h(dt2.mul_(scale2[:, None]), grads, s, inputs[2] is not None)
    return (*(None if grads[name] is None else grads[name].to(t.dtype) for name, t in zip(GAMMA, saved)),
            None, None, None, None, None, None)


pair_attention.register_autograd(_attention_backward, setup_context=saving_tensors(12))


def pair_macs(centre_shape, w1_shape, w2_shape, vp_shape, kh: int, kw: int) -> int:
    """Multiply-adds of ``pair_attention``: γ's two 1×1 maps on every pair, then the aggregation."""
    b, _, ho, wo = centre_shape
    return b * kh * kw * ho * wo * (w1_shape[0] * w1_shape[1] + w2_shape[0] * w2_shape[1] + vp_shape[1])


@register_flop_formula(torch.ops.attnvision.pair_attention)
def _pair_attention_flops(centre_shape, xp_shape, pos_shape, scale1_shape, shift1_shape, w1_shape, scale2_shape,
                          shift2_shape, w2_shape, bias2_shape, vp_shape, mask_shape, softmax, kh, kw, *args,
                          out_shape=None, **kwargs) -> int:
    return 2 * pair_macs(centre_shape, w1_shape, w2_shape, vp_shape, kh, kw)
