"""Batch statistics of the logit terms of local attention, for a BatchNorm over them (Axial-DeepLab's logit BN),
without keeping the K-sized logits.

For each term t of q_i·k_j, q_i·r^q_{j-i} and k_j·r^k_{j-i} over the pairs (i, j) a footprint attends (``mask``
borders: both inside the image; ``zero``/``reflect``: every window element), ``logit_moments`` returns per head the
sum and the sum of squares of the term, differentiable in q, k and the tables:
  - the position terms in closed form: sum_(i,j) q_i·r_{j-i} = sum_i q_i·R_i with R_i = sum over the offsets
    attended at i of r, and the squares sum_i q_i^T (sum r r^T) q_i likewise; the key term counts, per pixel j
    and offset, the windows that read j (mirrored reads included). O(D² per pixel), no K factor;
  - q·k on a global axial window in closed form per line, <sum_i q_i q_i^T, sum_j k_j k_j^T>;
  - q·k on a local window from its logits, recomputed in the backward: on CPU the ops ``dot_moments`` and
    ``dot_moments_grad`` (``csrc/moments_cpu.c``), which sum them as they compute them and never write the K per
    pixel; elsewhere the neighbourhood kernel ``nbr_dot`` reduced at once, the gradient through its adjoints.
"""
from typing import Dict, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable
from torch.utils.flop_counter import register_flop_formula

from . import cpu, kernels
from .footprint import Footprint
from .kernels import accumulate_dtype, flat_rows, in_accumulate_dtype, nbr_macs, unflat_rows
from .primitives import _kernels, axial_lines, neighbour_index

__all__ = ["logit_moments"]


def _position_moments(x: torch.Tensor, rel: torch.Tensor, reads: torch.Tensor, num_heads: int,
                      axis: Optional[str]) -> torch.Tensor:
    """(sum, sum of squares) per head of x_p·rel[o] over the (offset o, pixel p) pairs, pair (o, p) counted
    ``reads[o, p]`` times; x: B×heads·D×H×W, rel: D×K shared by the heads, reads: K×H×W.

    The squares sum x_p^T M_p x_p with M_p = sum_o reads[o, p] rel[o] rel[o]^T, reduced over the batch first: on a
    global axial window per position along the axis (``axis``; M_p varies only along it), else as the full
    window's M on every pixel plus the pairs where ``reads`` differs from 1 (borders only; under torch.compile,
    whose graphs take no value-dependent sizes, every pixel, with weight 0 inside)."""
    b, _, height, width = x.shape
    d = rel.shape[0]
    outer = (rel[:, None] * rel[None]).reshape(d * d, -1)  # D·D, K
    if axis is not None:
        reads = reads[:, :, 0] if axis == "height" else reads[:, 0, :]  # K, L
        x = axial_lines(x, axis, num_heads)  # B·other, heads, D, L
        second = (torch.einsum("ngdl,ngel->gdel", x, x) * (outer @ reads).view(d, d, -1)).sum((1, 2, 3))
        return torch.stack([torch.einsum("ngdl,dl->g", x, rel @ reads), second])
    reads = reads.flatten(1)  # K, P
    x = x.reshape(b, num_heads, d, height * width)  # B, heads, D, P
    second = (torch.einsum("bgdp,bgep->gde", x, x) * outer.sum(1).view(d, d)).sum((1, 2))
    if torch.compiler.is_compiling():
        border = slice(None)
    else:
        border = (reads != 1).any(0).nonzero().squeeze(1)  # the pixels some offset reads other than once
    dots = torch.einsum("bgdn,dk->bgkn", x[..., border], rel)  # B, heads, K, border pixels
    second = second + (dots.square() * (reads[:, border] - 1)).sum((0, 2, 3))
    return torch.stack([torch.einsum("bgdp,dp->g", x, rel @ reads), second])


def _axial_dot_moments(q: torch.Tensor, k: torch.Tensor, axis: str, num_heads: int) -> torch.Tensor:
    """(sum, sum of squares) per head of q_i·k_j over every pair of a line along ``axis``."""
    q, k = (axial_lines(t, axis, num_heads) for t in (q, k))  # B·other, heads, D, L
    second = torch.einsum("ngdi,ngei->ngde", q, q) * torch.einsum("ngdj,ngej->ngde", k, k)
    return torch.stack([(q.sum(-1) * k.sum(-1)).sum((0, 2)), second.sum((0, 2, 3))])


def _fused(ops, q: torch.Tensor, geometry) -> bool:
    """Whether the C kernels of ``moments_cpu.c`` run: the fast ops on CPU, stride 1."""
    return ops is kernels and q.device.type == "cpu" and geometry[2] == 1


class _Rows:
    """moments_cpu.c's layout for q and kp: as given, or, for rows narrower than a vector (``cpu.vector_bytes()``),
    ``flat_rows``' one long row (its junk pixels' q is zero: their logits are 0 and add nothing to either sum, nor to
    dkp)."""

    def __init__(self, q):
        self.ho, self.wo = q.shape[-2:]
        self.narrow = self.wo < cpu.vector_bytes() // q.element_size()

    def inputs(self, q, kp):
        return flat_rows(q, kp) if self.narrow else (q.contiguous(), kp.contiguous())

    def gradients(self, dq, dkp):
        return (unflat_rows(dq, self.ho, self.wo), dkp[..., :-1, :]) if self.narrow else (dq, dkp)


@torch.library.custom_op("attnvision::dot_moments", mutates_args=(), device_types="cpu")
def dot_moments(q: torch.Tensor, kp: torch.Tensor, kh: int, kw: int, dilation: int) -> torch.Tensor:
    """2 × N: per plane the sum and the sum of squares of the logits nbr_dot(q, kp) (stride 1), by moments_cpu.c."""
    rows = _Rows(q)
    q, kp = rows.inputs(*in_accumulate_dtype(q, kp))
    sums = q.new_empty((q.shape[0], 2))
    cpu.dot_moments("dot_moments", (q, kp, sums), *kp.shape[-2:], kh, kw, dilation)
    return sums.t().contiguous()


@torch.library.custom_op("attnvision::dot_moments_grad", mutates_args=(), device_types="cpu")
def dot_moments_grad(q: torch.Tensor, kp: torch.Tensor, grad: torch.Tensor, kh: int, kw: int,
                     dilation: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(dq, dkp) of dot_moments for its output's gradient ``grad`` (2 × N): per pair w = grad[0] + 2·grad[1]·logit,
    dq = sum w kp[nbr], dkp = scatter of w q, by moments_cpu.c."""
    rows = _Rows(q)
    qf, kpf = rows.inputs(*in_accumulate_dtype(q, kp))
    coef = torch.stack([grad[0], 2 * grad[1]], 1).to(qf.dtype).contiguous()  # N, 2: w = a + b·logit
    dq, dkp = torch.empty_like(qf), torch.zeros_like(kpf)
    cpu.dot_moments("dot_moments_bwd", (qf, kpf, coef, dq, dkp), *kpf.shape[-2:], kh, kw, dilation)
    dq, dkp = rows.gradients(dq, dkp)
    return dq.to(q.dtype).contiguous(), dkp.to(kp.dtype).contiguous()


@dot_moments.register_fake
def _(q, kp, kh, kw, dilation):
    return q.new_empty((2, q.shape[0]), dtype=accumulate_dtype(q))


@dot_moments_grad.register_fake
def _(q, kp, grad, kh, kw, dilation):
    return torch.empty_like(q), torch.empty_like(kp)


@register_flop_formula(torch.ops.attnvision.dot_moments)
def _dot_moments_flops(q_shape, kp_shape, kh, kw, *args, out_shape=None, **kwargs) -> int:
    return 2 * nbr_macs(*q_shape[:2], kh * kw, *q_shape[2:])  # the logits, as nbr_dot


@register_flop_formula(torch.ops.attnvision.dot_moments_grad)
def _dot_moments_grad_flops(q_shape, kp_shape, grad_shape, kh, kw, *args, out_shape=None, **kwargs) -> int:
    return 3 * 2 * nbr_macs(*q_shape[:2], kh * kw, *q_shape[2:])  # the logits again, dq and dkp


class _DotMoments(torch.autograd.Function):
    """(sum, sum of squares) per plane n of the logits q_i·k_j, nbr_dot(q, kp) (``ops`` = kernels or reference),
    recomputed in the backward instead of kept: their gradient w = g_sum + 2·g_squares·logits goes back through
    the kernels' own adjoints (dq = agg(w, kp), dkp = agg_t(w, q)). On CPU with the C kernels (stride 1) both
    passes are one kernel each (``moments_cpu.c``) that never writes the logits."""

    @staticmethod
    def forward(ctx, q, kp, ops, geometry):
        ctx.save_for_backward(q, kp)
        ctx.ops, ctx.geometry = ops, geometry
        if _fused(ops, q, geometry):
            return dot_moments(q, kp, geometry[0], geometry[1], geometry[3])
        logits = ops.nbr_dot(q, kp, *geometry).flatten(1)  # N, K·Ho·Wo
        return torch.stack([logits.sum(1), torch.linalg.vector_norm(logits, dim=1).square()])  # 2, N

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        q, kp = ctx.saved_tensors
        ops, geometry = ctx.ops, ctx.geometry
        if _fused(ops, q, geometry):
            return *dot_moments_grad(q, kp, grad.contiguous(), geometry[0], geometry[1], geometry[3]), None, None
        w = ops.nbr_dot(q, kp, *geometry)  # N, K, Ho, Wo
        w = w.mul_(2 * grad[1].view(-1, 1, 1, 1)).add_(grad[0].view(-1, 1, 1, 1))
        dq = ops.nbr_agg(w, kp, *geometry).to(q.dtype) if ctx.needs_input_grad[0] else None
        dkp = ops.nbr_agg_t(w, q, *geometry, *kp.shape[-2:]).to(kp.dtype) if ctx.needs_input_grad[1] else None
        return dq, dkp, None, None


def logit_moments(q: torch.Tensor, k: torch.Tensor, fp: Footprint, num_heads: int, rel: Dict[str, torch.Tensor],
                  impl=None) -> Tuple[torch.Tensor, torch.Tensor]:
    """(sums, count): sums is 2 × terms × heads, the sums and sums of squares of q·k, then q·r^q and k·r^k for
    the terms in ``rel`` ('q', 'k': D × K tables shared by the heads), over the attended pairs, whose number per
    head is ``count``. q: B×heads·D×H×W at every pixel (stride 1), k likewise."""
    with torch.autocast(q.device.type, enabled=False):  # sums of squares in float32 even under bf16 autocast
        dtype = accumulate_dtype(q)
        q, k = q.to(dtype), k.to(dtype)
        height, width = k.shape[-2:]
        index = neighbour_index(fp, height, width, q.device).flatten(1)  # K, P: 1 + the pixel read, 0 outside
        attended = (index > 0) if fp.padding == "mask" else torch.ones_like(index, dtype=torch.bool)
        axis = fp.global_axis(height, width)
        if axis is not None:
            sums = [_axial_dot_moments(q, k, axis, num_heads)]
        else:
            b, c = q.shape[:2]
            kp = fp.pad(k)  # a zero key outside the image (mask) adds nothing to either sum
            moments = _DotMoments.apply(q.reshape(b * num_heads, c // num_heads, height, width),
                                        kp.reshape(b * num_heads, c // num_heads, *kp.shape[-2:]),
                                        _kernels(impl, q.device),
                                        (*fp.kernel_size, fp.stride, fp.dilation))
            sums = [moments.view(2, b, num_heads).sum(1)]
        if "q" in rel:
            reads = attended.to(dtype).view(-1, height, width)  # K, H, W
            sums.append(_position_moments(q, rel["q"].to(dtype), reads, num_heads, axis))
        if "k" in rel:  # how often the attended pairs read each pixel with each offset
            reads = torch.zeros(index.shape[0], index.shape[1] + 1, dtype=dtype, device=q.device)
            reads.scatter_add_(1, index * attended, attended.to(dtype))
            reads = reads[:, 1:].view(-1, height, width)  # K, H, W
            sums.append(_position_moments(k, rel["k"].to(dtype), reads, num_heads, axis))
        return torch.stack(sums, 1), attended.sum().to(dtype) * q.shape[0]
