"""A 1×1 convolution as one batched matrix product, for maps of few channels over many positions.

SAN's γ is 1×1 convolutions of a handful of channels (C/16 relation channels, C/32 weight channels) over K·H·W
positions per image (pairwise: every pixel-neighbour pair). On CPU the convolution library runs such shapes at a
small fraction of the machine's rate: a 6 → 4 map over 8 × 49 × 3136 positions took 83 ms as a convolution and 3 ms
as a matrix product (30× less; forward and backward, 12×; timed ad hoc on the 2-core EPYC). ``pointwise`` is that
product, over the input's own strides (no copy), with the convolution's FLOP count, in the input's dtype (a caller
under autocast casts as autocast casts a convolution: half the bytes, and bf16 products ran about 4× faster than
float32 ones here).
"""
from typing import Optional

import torch
from torch.utils.flop_counter import register_flop_formula


__all__ = ["pointwise", "pointwise_macs"]


def _flat(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], t.shape[1], -1)  # B, C, positions


@torch.library.custom_op("attnvision::pointwise", mutates_args=())
def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
    """y [B,Cout,...] = weight [Cout,Cin] · x [B,Cin,...] (+ bias [Cout]) at every position, in x's dtype."""
    w = weight.to(x.dtype).expand(x.shape[0], -1, -1)
    y = torch.bmm(w, _flat(x)) if bias is None else torch.baddbmm(bias.to(x.dtype)[:, None], w, _flat(x))
    return y.view(x.shape[0], -1, *x.shape[2:])


@pointwise.register_fake
def _(x, weight, bias):
    return x.new_empty((x.shape[0], weight.shape[0], *x.shape[2:]))


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dy):
    x, weight, bias = ctx.saved_tensors
    xf, dyf = _flat(x), _flat(dy.to(x.dtype))
    dx = torch.bmm(weight.to(x.dtype).t().expand(x.shape[0], -1, -1), dyf).view(x.shape)
    dweight = torch.bmm(dyf, xf.transpose(1, 2)).sum(0).to(weight.dtype)
    dbias = None if bias is None else dyf.sum((0, 2)).to(bias.dtype)
    return dx, dweight, dbias


pointwise.register_autograd(_backward, setup_context=_setup)


def pointwise_macs(x_shape, weight_shape) -> int:
    positions = 1
    for size in x_shape[2:]:
        positions *= size
    return x_shape[0] * positions * weight_shape[0] * weight_shape[1]


@register_flop_formula(torch.ops.attnvision.pointwise)
def _pointwise_flops(x_shape, weight_shape, bias_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * pointwise_macs(x_shape, weight_shape)
