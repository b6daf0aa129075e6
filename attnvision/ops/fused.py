"""Fused multi-head local attention on CPU: softmax(q·(k + r^q) + k·r^k + bias, masked) · (v + r^v) in one C kernel
per pass (``csrc/attention_cpu.c``).

``local_attention(impl='fast')`` takes this path on CPU whenever its bias is per head and offset (LR-Net's geometry
prior) or absent: every relative term (SASA's r^q; Axial-DeepLab's r^q, r^k and r^v), any border mode, and global
axial windows, whose dead offsets the kernel skips. The forward keeps y and one log-sum-exp per pixel; the
backward recomputes the weights (as FlashAttention does), so no K-sized tensor is stored, and the logits/weights
tensors are never allocated at all. Stride-1 rows narrower than the kernel's 16-pixel blocks (the 14 × 14 and 7 × 7
stages at 224 px, every stage at 32 px) run as one long row of full blocks (``_Rows``) instead of on scalar lanes.
"""
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from . import cpu
from .footprint import Footprint
from .kernels import accumulate_dtype

__all__ = ["nbr_attention", "XB"]

XB = 16  # pixels per block along a row in the kernel (csrc/attention_cpu.c)


def _prepared(dtype, *tensors):
    return [None if t is None else t.to(dtype).contiguous() for t in tensors]


class _Rows:
    """The kernel's layout for rows narrower than a block (stride 1, Wo < XB), which would otherwise run on scalar
    lanes: the Ho output rows as one row of Ho·Wp pixels over the fully padded Hp × Wp image (plus one zero row
    that the last row's overhang reads), Wp - Wo junk pixels per row, so that every block is full. Neighbour (oy,
    ox) of flat pixel f is then f + oy·Wp + ox, which the kernel's own addressing gives with no window offset. A
    mask becomes one more key channel per plane, 0 inside the image and -BIG outside, met by a query channel of
    ones (and zero rows of r^q and r^k): those logits are -BIG and their weights exactly 0. The backward reads the
    junk pixels with an infinite log-sum-exp, so their weights, and everything they add, are 0."""

    BIG = 1e30

    def __init__(self, q, geometry):
        kh, kw, _, dil, mask_h, mask_w, win_top, win_left, pad_top, pad_left = geometry
        self.masked = mask_h > 0
        self.n, self.d, self.ho, self.wo = q.shape
        self.wp, hp = self.wo + (kw - 1) * dil, self.ho + (kh - 1) * dil
        if self.masked:  # what kp holds: the image, padded around to the window's reach here
            self.region = (pad_top, pad_left, mask_h, mask_w)
            self.pads = (win_left, self.wp - win_left - mask_w, win_top, hp + 1 - win_top - mask_h)
        else:  # kp holds the padded image: the part the windows read
            self.region = (pad_top - win_top, pad_left - win_left, hp, self.wp)
            self.pads = (0, 0, 0, 1)
        self.geometry = (kh, kw, 1, dil, 0, 0, 0, 0, 0, 0)

    @staticmethod
    def fits(q, geometry) -> bool:
        return geometry[2] == 1 and q.shape[-1] < XB

    def part(self, t):
        """The part of the op's kp or vp that this layout pads: the image (masked), or what the windows read."""
        top, left, height, width = self.region
        return t[..., top:top + height, left:left + width]

    def inputs(self, q, kp, vp, terms):
        kp, vp = (F.pad(self.part(t), self.pads) for t in (kp, vp))  # N, D, Hp + 1, Wp
        if self.masked:
            inside = q.new_zeros((1, 1, *self.region[2:]))
            flag = F.pad(inside, self.pads, value=-self.BIG).expand(self.n, 1, -1, -1)
            kp = torch.cat([kp, flag], 1)  # N, D + 1, Hp + 1, Wp
            q = torch.cat([q, q.new_ones((self.n, 1, self.ho, self.wo))], 1)
            terms = [None if t is None else F.pad(t, (0, 0, 0, 1)) for t in terms[:2]] + terms[2:]
        return self.flat(q), kp.contiguous(), vp.contiguous(), [None if t is None else t.contiguous() for t in terms]

    def flat(self, t, value=0.0):
        """[N, C, Ho, Wo] (or [N, Ho, Wo]) as the one row of Ho·Wp pixels, junk pixels = ``value``."""
        return F.pad(t, (0, self.wp - self.wo), value=value).reshape(*t.shape[:-2], 1, self.ho * self.wp)

    def unflat(self, t):
        return t.reshape(*t.shape[:-2], self.ho, self.wp)[..., :self.wo].contiguous()

    def gradients(self, dq, dkp, dvp, dterms, kp, vp):
        """The gradients in the op's own layout; what this layout added (padding, the mask channel) has none."""
        left, right, top, bottom = self.pads
        grads = []
        for full, like in ((dkp[:, :self.d], kp), (dvp, vp)):
            g = torch.zeros_like(like)
            self.part(g).copy_(full[..., top:full.shape[-2] - bottom, left:full.shape[-1] - right])
            grads.append(g)
        if self.masked:
            dterms = [None if t is None else t[..., :self.d, :] for t in dterms[:2]] + dterms[2:]
        return self.unflat(dq)[:, :self.d], *grads, dterms


@torch.library.custom_op("attnvision::nbr_attention", mutates_args=(), device_types="cpu")
def nbr_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, rel_q: Optional[torch.Tensor],
                  rel_k: Optional[torch.Tensor], rel_v: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  groups: int, kh: int, kw: int, stride: int, dilation: int, mask_h: int, mask_w: int, win_top: int,
                  win_left: int, pad_top: int, pad_left: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """y [N,Dv,Ho,Wo] and lse [N,Ho,Wo] for q [N,D,Ho,Wo], kp [N,D,Hp,Wp] / vp [N,Dv,Hp,Wp] padded by pad_top /
    pad_left, the optional terms rel_q, rel_k [G,D,K], rel_v [G,Dv,K] and bias [G,K] (plane n uses group n % G); the
    window of pixel (y, x) starts at image pixel (y·stride - win_top, x·stride - win_left); mask_h > 0 masks
    neighbours outside that mask_h × mask_w image."""
    dtype = accumulate_dtype(q)
    q, kp, vp, *terms = _prepared(dtype, q, kp, vp, rel_q, rel_k, rel_v, bias)
    geometry = (kh, kw, stride, dilation, mask_h, mask_w, win_top, win_left, pad_top, pad_left)
    rows = _Rows(q, geometry) if _Rows.fits(q, geometry) else None
    if rows is not None:
        q, kp, vp, terms = rows.inputs(q, kp, vp, terms)
        geometry = rows.geometry
    n, _, ho, wo = q.shape
    y = q.new_empty((n, vp.shape[1], ho, wo))
    lse = q.new_empty((n, ho, wo))
    cpu.attention_forward(q, kp, vp, terms, y, lse, groups, *geometry[:4], geometry[4:])
    return (rows.unflat(y), rows.unflat(lse)) if rows is not None else (y, lse)


@nbr_attention.register_fake
def _(q, kp, vp, rel_q, rel_k, rel_v, bias, groups, kh, kw, stride, dilation, mask_h, mask_w, win_top, win_left,
      pad_top, pad_left):
    n, _, ho, wo = q.shape
    dtype = accumulate_dtype(q)
    return q.new_empty((n, vp.shape[1], ho, wo), dtype=dtype), q.new_empty((n, ho, wo), dtype=dtype)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], *output)
    ctx.geometry = inputs[7:]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, _dlse):
    *inputs, y, lse = ctx.saved_tensors
    groups, *geometry = ctx.geometry
    dtype = accumulate_dtype(inputs[0])
    q, kp, vp, *terms = _prepared(dtype, *inputs)
    dy = dy.to(dtype).contiguous()
    rows = _Rows(q, geometry) if _Rows.fits(q, geometry) else None
    given = kp, vp  # in the op's own layout, which the gradients take
    if rows is not None:
        q, kp, vp, terms = rows.inputs(q, kp, vp, terms)
        y, lse, dy, geometry = rows.flat(y), rows.flat(lse, float("inf")), rows.flat(dy), rows.geometry
    dq, dkp, dvp = torch.zeros_like(q), torch.zeros_like(kp), torch.zeros_like(vp)
    threads = torch.get_num_threads()
    dterms = [None if t is None else t.new_zeros((threads, *t.shape)) for t in terms]  # per-thread partial sums
    cpu.attention_backward(q, kp, vp, terms, y, lse, dy, dq, dkp, dvp, dterms, groups, *geometry[:4],
                           tuple(geometry[4:]))
    dterms = [None if g is None else g.sum(0) for g in dterms]
    if rows is not None:
        dq, dkp, dvp, dterms = rows.gradients(dq, dkp, dvp, dterms, *given)
    grads = [dq, dkp, dvp] + dterms
    return (*[None if g is None else g.to(t.dtype) for g, t in zip(grads, inputs)], *[None] * 11)


nbr_attention.register_autograd(_backward, setup_context=_setup)


def attention_pairs(ho: int, wo: int, kh: int, kw: int, stride: int, dilation: int, mask_h: int, mask_w: int) -> int:
    """The (pixel, neighbour) pairs a FLOP count charges: every window offset of every output pixel, except for a
    masked global axial window (2L - 1 offsets along an axis of L), charged the L × L pairs per line that
    Axial-DeepLab's dense matmuls compute (and the kernel, skipping dead offsets, does)."""
    axis = Footprint((kh, kw), stride, dilation, "mask").global_axis(mask_h, mask_w) if mask_h > 0 else None
    if axis == "height":
        return ho * ho * wo
    if axis == "width":
        return wo * wo * ho
    return ho * wo * kh * kw


@register_flop_formula(torch.ops.attnvision.nbr_attention)
def _nbr_attention_flops(q_shape, kp_shape, vp_shape, rel_q_shape, rel_k_shape, rel_v_shape, bias_shape, groups, kh,
                         kw, stride, dilation, mask_h, mask_w, *args, out_shape=None, **kwargs) -> int:
    n, d, ho, wo = q_shape
    pairs = n * attention_pairs(ho, wo, kh, kw, stride, dilation, mask_h, mask_w)
    logits = pairs * d * (1 + (rel_q_shape is not None) + (rel_k_shape is not None))  # q·k, q·r^q, k·r^k
    outputs = pairs * vp_shape[1] * (1 + (rel_v_shape is not None))  # p·v, p·r^v
    return 2 * (logits + outputs)
