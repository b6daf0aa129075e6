"""Fused multi-head local attention on CPU: softmax(q·(k + r^q) + k·r^k + bias, masked) · (v + r^v) in one C kernel
per pass (``csrc/attention_cpu.c``).

``local_attention(impl='fast')`` takes this path on CPU whenever its bias is per head and offset (LR-Net's geometry
prior) or absent: every relative term (SASA's r^q; Axial-DeepLab's r^q, r^k and r^v), any border mode, and global
axial windows, whose dead offsets the kernel skips. The forward keeps y and one log-sum-exp per pixel; the
backward recomputes the weights (as FlashAttention does), so no K-sized tensor is stored, and the logits/weights
tensors are never allocated at all. Strided windows (LR-Net's stride-2 layers) and rows narrower than the kernel's
blocks (one float register: 16 pixels with AVX-512, 8 with AVX2; e.g. the 7 × 7 stage at 224 px, every stage at
32 px) run at stride 1 on full blocks of a layout of their own (``_Phases``) instead of on scalar lanes.
"""
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from . import cpu
from .footprint import Footprint
from .kernels import accumulate_dtype, unflat_rows

__all__ = ["block_pixels", "nbr_attention", "runs_on_phases"]


def block_pixels() -> int:
    """Pixels per block along a row in the kernel (csrc/attention_cpu.c's XB: one float register)."""
    return cpu.vector_bytes() // 4


def _prepared(dtype, *tensors):
    return [None if t is None else t.to(dtype).contiguous() for t in tensors]


def runs_on_phases(stride: int, wo: int) -> bool:
    """Whether the op lays kp and vp out itself (``_Phases``), reading only their image when masked."""
    return stride > 1 or wo < block_pixels()


class _Phases:
    """The kernel's stride-1 vector layout for what would otherwise run on its scalar lanes: strided windows and rows
    narrower than a block (Wo < ``block_pixels()``).

    The region the windows read, Hr = (Ho - 1)·s + (kh - 1)·dil + 1 rows by the like Wr columns, is laid out as its
    s × s phase images (rows ≡ py and columns ≡ px mod s), side by side in one s·Hq × s·Wq image (Hq = ⌈Hr/s⌉, Wq
    likewise). Offset (oy, ox), with oy·dil = s·ay + py and ox·dil = s·ax + px, finds the neighbour of output pixel
    (y, x) at (y + ay, x + ax) of phase (py, px): a fixed shift from (y, x) on that image's grid, so the kernel runs
    at stride 1 with that table of shifts (``shifts``). At stride 1 this is the padded image itself.
    Narrow rows run as one row of Ho·Ws pixels on that image's pitch Ws (plus one zero row that the last row's
    overhang reads), Ws - Wo junk pixels per row, so that every block is full; the backward reads the junk pixels
    with an infinite log-sum-exp, so their weights, and everything they add, are 0.
    A mask becomes one more key channel, 0 inside the image and -BIG outside, met by a query channel of ones (and
    zero rows of r^q and r^k): those logits are -BIG and their weights exactly 0."""

    BIG = 1e30

    def __init__(self, q, geometry):
        kh, kw, s, dil, mask_h, mask_w, win_top, win_left, pad_top, pad_left = geometry
        self.masked, self.s = mask_h > 0, s
        self.n, self.d, self.ho, self.wo = q.shape
        self.narrow = self.wo < block_pixels()
        height, width = (self.ho - 1) * s + (kh - 1) * dil + 1, (self.wo - 1) * s + (kw - 1) * dil + 1
        self.hq, self.wq = -(-height // s), -(-width // s)  # a phase image
        self.ws = ws = s * self.wq
        if self.masked:  # what kp holds: the image, padded (or cropped) here to the region
            self.region = (pad_top, pad_left, mask_h, mask_w)
            self.pads = (win_left, ws - win_left - mask_w, win_top, s * self.hq - win_top - mask_h)
        else:  # kp holds the padded image: the region is a part of it
            self.region = (pad_top - win_top, pad_left - win_left, height, width)
            self.pads = (0, ws - width, 0, s * self.hq - height)
        phase = [divmod(o * dil, s) for o in range(max(kh, kw))]  # (a, p) per offset along an axis
        self.shifts = torch.tensor([(phase[oy][1] * self.hq + phase[oy][0]) * ws + phase[ox][1] * self.wq
                                    + phase[ox][0] for oy in range(kh) for ox in range(kw)])
        self.geometry = (kh, kw, 1, dil, 0, 0, 0, 0, 0, 0)

    @staticmethod
    def fits(q, geometry) -> bool:
        return runs_on_phases(geometry[2], q.shape[-1])

    def part(self, t):
        """The part of the op's kp or vp that the layout holds: the image (masked), or the region."""
        top, left, height, width = self.region
        return t[..., top:top + height, left:left + width]

    def phases(self):
        """Per phase image, (slices of the layout, slices of ``part``) that hold the same pixels: region row s·i +
        py (``pads``' top rows come before ``part``) is row py·Hq + i of the layout; columns likewise."""
        def axis(count, before, length):
            spans = []
            for p in range(self.s):
                first = max(0, -((p - before) // self.s))  # the first i whose region index holds a part pixel
                end = min(count, (before + length - 1 - p) // self.s + 1)
                spans.append((slice(p * count + first, p * count + end),
                              slice(self.s * first + p - before, self.s * (end - 1) + p - before + 1, self.s)))
            return [span for span in spans if span[0].stop > span[0].start]

        height, width = self.region[2:]
        return [((..., rows, cols), (..., part_rows, part_cols))
                for rows, part_rows in axis(self.hq, self.pads[2], height)
                for cols, part_cols in axis(self.wq, self.pads[0], width)]

    def laid_out(self, part, flag=False):
        """[N, C (+1 with ``flag``), s·Hq (+1 narrow), Ws]: ``part`` on the phase images, zero around it; ``flag``
        adds the mask channel (0 on ``part``'s pixels, -BIG around them)."""
        n, c = part.shape[:2]
        out = part.new_zeros((n, c + flag, self.s * self.hq + self.narrow, self.ws))
        if flag:
            out[:, c] = -self.BIG
        for dst, src in self.phases():
            out[:, :c][dst] = part[src]
            if flag:
                out[:, c][dst] = 0
        return out

    def inputs(self, q, kp, vp, terms):
        kp, vp = self.laid_out(self.part(kp), self.masked), self.laid_out(self.part(vp))
        if self.masked:
            q = torch.cat([q, q.new_ones((self.n, 1, self.ho, self.wo))], 1)
            terms = [None if t is None else F.pad(t, (0, 0, 0, 1)) for t in terms[:2]] + terms[2:]
        return self.grid(q), kp, vp, [None if t is None else t.contiguous() for t in terms]

    def grid(self, t, value=0.0):
        """[N, C, Ho, Wo] (or [N, Ho, Wo]) on the kernel's output grid: narrow rows as the one row of Ho·Ws pixels,
        junk pixels = ``value``."""
        if not self.narrow:
            return t.contiguous()
        return F.pad(t, (0, self.ws - self.wo), value=value).reshape(*t.shape[:-2], 1, self.ho * self.ws)

    def outputs(self, t):
        return unflat_rows(t, self.ho, self.wo) if self.narrow else t

    def gradients(self, dq, dkp, dvp, dterms, kp, vp):
        """The gradients in the op's own layout; what this layout added (padding, the mask channel) has none."""
        grads = []
        top, left, height, width = self.region
        whole = (top, left, height, width) == (0, 0, *kp.shape[-2:]) and min(self.pads) >= 0  # the phases cover kp
        for full, like in ((dkp, kp), (dvp, vp)):
            g = torch.empty_like(like) if whole else torch.zeros_like(like)
            part = self.part(g)
            for dst, src in self.phases():
                part[src] = full[:, :like.shape[1]][dst]
            grads.append(g)
        if self.masked:
            dterms = [None if t is None else t[..., :self.d, :] for t in dterms[:2]] + dterms[2:]
        return self.outputs(dq)[:, :self.d], *grads, dterms


@torch.library.custom_op("attnvision::nbr_attention", mutates_args=(), device_types="cpu")
def nbr_attention(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, rel_q: Optional[torch.Tensor],
                  rel_k: Optional[torch.Tensor], rel_v: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                  groups: int, kh: int, kw: int, stride: int, dilation: int, mask_h: int, mask_w: int, win_top: int,
                  win_left: int, pad_top: int, pad_left: int, rel_v_apart: bool = False
                  ) -> Tuple[torch.Tensor, torch.Tensor]:
    """y [N,Dv,Ho,Wo] and lse [N,Ho,Wo] for q [N,D,Ho,Wo], kp [N,D,Hp,Wp] / vp [N,Dv,Hp,Wp] padded by pad_top /
    pad_left, the optional terms rel_q, rel_k [G,D,K], rel_v [G,Dv,K] and bias [G,K] (plane n uses group n % G); the
    window of pixel (y, x) starts at image pixel (y·stride - win_top, x·stride - win_left); mask_h > 0 masks
    neighbours outside that mask_h × mask_w image. ``rel_v_apart`` (with rel_v): y [N,2·Dv,Ho,Wo] holds the sums of
    v and of rel_v side by side instead of their sum."""
    dtype = accumulate_dtype(q)
    q, kp, vp, *terms = _prepared(dtype, q, kp, vp, rel_q, rel_k, rel_v, bias)
    geometry = (kh, kw, stride, dilation, mask_h, mask_w, win_top, win_left, pad_top, pad_left)
    layout = _Phases(q, geometry) if _Phases.fits(q, geometry) else None
    shifts = None
    if layout is not None:
        q, kp, vp, terms = layout.inputs(q, kp, vp, terms)
        geometry, shifts = layout.geometry, layout.shifts
    n, _, ho, wo = q.shape
    apart = rel_v_apart and rel_v is not None
    y = q.new_empty((n, vp.shape[1] << apart, ho, wo))
    lse = q.new_empty((n, ho, wo))
    cpu.attention_forward(q, kp, vp, terms, y, lse, shifts, groups, *geometry[:4], geometry[4:], apart)
    return (layout.outputs(y), layout.outputs(lse)) if layout is not None else (y, lse)


@nbr_attention.register_fake
def _(q, kp, vp, rel_q, rel_k, rel_v, bias, groups, kh, kw, stride, dilation, mask_h, mask_w, win_top, win_left,
      pad_top, pad_left, rel_v_apart=False):
    n, _, ho, wo = q.shape
    dtype = accumulate_dtype(q)
    channels = vp.shape[1] * (2 if rel_v_apart and rel_v is not None else 1)  # (no bool shift of a symbolic size)
    return q.new_empty((n, channels, ho, wo), dtype=dtype), q.new_empty((n, ho, wo), dtype=dtype)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:7], *output)
    ctx.geometry = inputs[7:18]
    ctx.apart = len(inputs) > 18 and inputs[18] and inputs[5] is not None
    ctx.mark_non_differentiable(output[1])


@torch.library.custom_op("attnvision::nbr_attention_backward", mutates_args=(), device_types="cpu")
def nbr_attention_backward(q: torch.Tensor, kp: torch.Tensor, vp: torch.Tensor, rel_q: Optional[torch.Tensor],
                           rel_k: Optional[torch.Tensor], rel_v: Optional[torch.Tensor], bias: Optional[torch.Tensor],
                           y: torch.Tensor, lse: torch.Tensor, dy: torch.Tensor, groups: int, kh: int, kw: int,
                           stride: int, dilation: int, mask_h: int, mask_w: int, win_top: int, win_left: int,
                           pad_top: int, pad_left: int, apart: bool) -> List[torch.Tensor]:
    """The gradients of nbr_attention's q, kp, vp and of each of its terms that is not None (in that order, each in
    its input's dtype) for the output gradient ``dy``, from its outputs y and lse; an op of its own, so that
    torch.compile and torch.export see the kernel's backward as one opaque call."""
    inputs = (q, kp, vp, rel_q, rel_k, rel_v, bias)
    geometry = (kh, kw, stride, dilation, mask_h, mask_w, win_top, win_left, pad_top, pad_left)
    dtype = accumulate_dtype(q)
    q, kp, vp, *terms = _prepared(dtype, *inputs)
    dy = dy.to(dtype).contiguous()
    layout = _Phases(q, geometry) if _Phases.fits(q, geometry) else None
    given, shifts = (kp, vp), None  # the op's own layout, which the gradients take
    if layout is not None:
        q, kp, vp, terms = layout.inputs(q, kp, vp, terms)
        y, lse, dy = layout.grid(y), layout.grid(lse, float("inf")), layout.grid(dy)
        geometry, shifts = layout.geometry, layout.shifts
    dq, dkp, dvp = torch.zeros_like(q), torch.zeros_like(kp), torch.zeros_like(vp)
    threads = torch.get_num_threads()
    dterms = [None if t is None else t.new_zeros((threads, *t.shape)) for t in terms]  # per-thread partial sums
    cpu.attention_backward(q, kp, vp, terms, y, lse, dy, dq, dkp, dvp, dterms, shifts, groups, *geometry[:4],
                           tuple(geometry[4:]), apart)
    dterms = [None if g is None else g.sum(0) for g in dterms]
    if layout is not None:
        dq, dkp, dvp, dterms = layout.gradients(dq, dkp, dvp, dterms, *given)
    return [g.to(t.dtype).contiguous() for g, t in zip([dq, dkp, dvp] + dterms, inputs) if t is not None]


@nbr_attention_backward.register_fake
def _(q, kp, vp, rel_q, rel_k, rel_v, bias, *rest):
    return [torch.empty_like(t) for t in (q, kp, vp, rel_q, rel_k, rel_v, bias) if t is not None]


def _backward(ctx, dy, _dlse):
    *inputs, y, lse = ctx.saved_tensors
    grads = iter(nbr_attention_backward(*inputs, y, lse, dy, *ctx.geometry, ctx.apart))
    return (*[None if t is None else next(grads) for t in inputs], *[None] * 12)


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
