"""Fused multi-head local attention on CPU: softmax(q·(k + r^q) + k·r^k + bias, masked) · (v + r^v) in one C kernel
per pass (``csrc/attention_cpu.c``).

``local_attention(impl='fast')`` takes this path on CPU whenever its bias is per head and offset (LR-Net's geometry
prior) or absent: every relative term (SASA's r^q; Axial-DeepLab's r^q, r^k and r^v), any border mode, and global
axial windows, whose dead offsets the kernel skips. The forward keeps y and one log-sum-exp per pixel; the
backward recomputes the weights (as FlashAttention does), so no K-sized tensor is stored, and the logits/weights
tensors are never allocated at all.
"""
from typing import Optional, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from . import cpu
from .footprint import Footprint
from .kernels import accumulate_dtype

__all__ = ["nbr_attention", "XB"]

XB = 16  # pixels per block along a row in the kernel (csrc/attention_cpu.c)


def _prepared(dtype, *tensors):
    return [None if t is None else t.to(dtype).contiguous() for t in tensors]


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
    n, _, ho, wo = q.shape
    y = q.new_empty((n, vp.shape[1], ho, wo))
    lse = q.new_empty((n, ho, wo))
    cpu.attention_forward(q, kp, vp, terms, y, lse, groups, kh, kw, stride, dilation,
                          (mask_h, mask_w, win_top, win_left, pad_top, pad_left))
    return y, lse


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
    groups, kh, kw, stride, dilation, *mask = ctx.geometry
    dtype = accumulate_dtype(inputs[0])
    q, kp, vp, *terms = _prepared(dtype, *inputs)
    dq, dkp, dvp = torch.zeros_like(q), torch.zeros_like(kp), torch.zeros_like(vp)
    threads = torch.get_num_threads()
    dterms = [None if t is None else t.new_zeros((threads, *t.shape)) for t in terms]  # per-thread partial sums
    cpu.attention_backward(q, kp, vp, terms, y, lse, dy.to(dtype).contiguous(), dq, dkp, dvp, dterms, groups, kh,
                           kw, stride, dilation, tuple(mask))
    grads = [dq, dkp, dvp] + [None if g is None else g.sum(0) for g in dterms]
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
