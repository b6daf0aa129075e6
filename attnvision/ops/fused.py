"""Fused multi-head local attention on CPU: softmax(q·(k + rel) + bias, masked) · v in one C kernel per pass.

``local_attention(impl='fast')`` takes this path on CPU when the layer's terms fit it (query-side relative
embeddings, a per-head per-offset bias such as LR-Net's geometry prior, any border mode); Axial's key- and
value-side terms and all CUDA runs use the composition of the three neighbourhood kernels instead. The forward
keeps y and one log-sum-exp per pixel; the backward recomputes the weights (as FlashAttention does), so no
K-sized tensor is stored, and the big logits/weights tensors are never allocated at all.
"""
from typing import Optional, Tuple

import torch
from torch.utils.flop_counter import register_flop_formula

from . import cpu
from .kernels import accumulate_dtype

__all__ = ["nbr_attention"]


def _prepared(dtype, *tensors):
    return [None if t is None else t.to(dtype).contiguous() for t in tensors]


@torch.library.custom_op("attnvision::nbr_attention", mutates_args=(), device_types="cpu")
def nbr_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, rel: Optional[torch.Tensor],
                  bias: Optional[torch.Tensor], groups: int, kh: int, kw: int, stride: int, dilation: int,
                  mask_h: int, mask_w: int, pad_top: int, pad_left: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """y [N,Dv,Ho,Wo] and lse [N,Ho,Wo] for q [N,D,Ho,Wo], padded kp [N,D,Hp,Wp] / vp [N,Dv,Hp,Wp], rel [G,D,K]
    and bias [G,K] (optional, sample n uses group n % G); mask_h > 0 masks neighbours outside that image."""
    dtype = accumulate_dtype(q)
    q, kp, vp, rel, bias = _prepared(dtype, q, kp, vp, rel, bias)
    n, _, ho, wo = q.shape
    y = q.new_empty((n, vp.shape[1], ho, wo))
    lse = q.new_empty((n, ho, wo))
    cpu.attention_forward(q, kp, vp, rel, bias, y, lse, groups, kh, kw, stride, dilation,
                          (mask_h, mask_w, pad_top, pad_left))
    return y, lse


@nbr_attention.register_fake
def _(q, kp, vp, rel, bias, groups, kh, kw, stride, dilation, mask_h, mask_w, pad_top, pad_left):
    n, _, ho, wo = q.shape
    dtype = accumulate_dtype(q)
    return q.new_empty((n, vp.shape[1], ho, wo), dtype=dtype), q.new_empty((n, ho, wo), dtype=dtype)


def _setup(ctx, inputs, output):
    q, kp, vp, rel, bias = inputs[:5]
    ctx.save_for_backward(q, kp, vp, rel, bias, *output)
    ctx.geometry = inputs[5:]
    ctx.mark_non_differentiable(output[1])


def _backward(ctx, dy, _dlse):
    q, kp, vp, rel, bias, y, lse = ctx.saved_tensors
    groups, kh, kw, stride, dilation, *mask = ctx.geometry
    dtype = accumulate_dtype(q)
    qc, kc, vc, rc, bc, dyc = _prepared(dtype, q, kp, vp, rel, bias, dy)
    threads = torch.get_num_threads()
    dq, dkp, dvp = torch.zeros_like(qc), torch.zeros_like(kc), torch.zeros_like(vc)
    drel = None if rel is None else qc.new_zeros((threads, *rel.shape))  # per-thread partial sums
    dbias = None if bias is None else qc.new_zeros((threads, *bias.shape))
    cpu.attention_backward(qc, kc, vc, rc, bc, y, lse, dyc, dq, dkp, dvp, drel, dbias, groups, kh, kw, stride,
                           dilation, tuple(mask))
    grads = [dq.to(q.dtype), dkp.to(kp.dtype), dvp.to(vp.dtype),
             None if rel is None else drel.sum(0).to(rel.dtype), None if bias is None else dbias.sum(0).to(bias.dtype)]
    return (*grads, *[None] * 9)


nbr_attention.register_autograd(_backward, setup_context=_setup)


@register_flop_formula(torch.ops.attnvision.nbr_attention)
def _nbr_attention_flops(q_shape, kp_shape, vp_shape, rel_shape, bias_shape, groups, kh, kw, *args, out_shape=None,
                         **kwargs) -> int:
    n, d, ho, wo = q_shape
    k = kh * kw
    logits = n * d * k * ho * wo * (2 if rel_shape is not None else 1)  # q·k, and q·r when given
    return 2 * (logits + n * vp_shape[1] * k * ho * wo)
