"""The three neighbourhood kernels as torch custom ops, with autograd, fake (meta) kernels and FLOP formulas.

Contract (all inputs contiguous; N = batch×groups, D channels, K = kh*kw offsets, o = oy*kw + ox; ``kp``/``vp`` are
padded Hp×Wp images, everything else lives on the Ho×Wo output grid; nbr(y,x,o) = (y*s + oy*dil, x*s + ox*dil)):

    nbr_dot(q[N,D,Ho,Wo], kp[N,D,Hp,Wp])  -> [N,K,Ho,Wo]   sum_d q * kp[nbr]          (logits, relations)
    nbr_agg(w[N,K,Ho,Wo], vp[N,D,Hp,Wp])  -> [N,D,Ho,Wo]   sum_o w * vp[nbr]          (aggregation)
    nbr_agg_t(w[N,K,Ho,Wo], u[N,D,Ho,Wo]) -> [N,D,Hp,Wp]   scatter of w * u onto nbr  (adjoint of both)
    nbr_gather(xp[N,1,Hp,Wp])             -> [N,K,Ho,Wo]   xp[nbr]                    (patches, a 1-channel nbr_dot)

Each one's gradients are the other two (dq = agg(dout, kp), dkp = agg_t(dout, q), dw = dot(dy, vp),
dvp = agg_t(w, dy), and for agg_t: dw = dot(u, dout), du = agg(w, dout)), so forward and backward never
materialise a k²-expanded tensor, and double backward works. Devices: CPU runs the C kernels of ``cpu.py``, CUDA
the Triton kernels of ``triton_nbr.py``. ``nbr_gather`` moves data without arithmetic, so it has no FLOP formula,
like ``F.unfold``. float16/bfloat16 inputs are computed in float32 and returned as float32,
so attention logits stay in float32 under autocast.
"""
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import register_flop_formula

from . import cpu

__all__ = ["nbr_dot", "nbr_agg", "nbr_agg_t", "nbr_gather", "nbr_macs", "flat_rows", "unflat_rows", "accumulate_dtype",
           "in_accumulate_dtype", "saving_tensors"]


def accumulate_dtype(t: torch.Tensor) -> torch.dtype:
    """float32 for every input dtype (logits and weights stay float32 under autocast); float64 stays float64."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def in_accumulate_dtype(*tensors):
    """``tensors`` (None stays None) in the accumulate dtype of the first."""
    dtype = accumulate_dtype(tensors[0])
    return [None if t is None else t.to(dtype) for t in tensors]


def saving_tensors(count: int):
    """A custom op's ``setup_context`` that saves its first ``count`` inputs for the backward and keeps the rest
    (its ints and flags) as ``ctx.geometry``."""
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:count])
        ctx.geometry = inputs[count:]
    return setup_context


# nbr_agg_t's gather form copies w into a padded layout: it pays where several channels share each loaded weight
# and the copy stays in cache (measured: 2-3× faster at 8 channels and a few MB; 3-14× slower at 1 channel or 25+ MB)
GATHER_T_BYTES = 2 ** 23


def _run(name: str, a: torch.Tensor, b: torch.Tensor, out_shape, kh, kw, stride, dilation, hp, wp):
    dtype = accumulate_dtype(a)
    a, b = a.to(dtype).contiguous(), b.to(dtype).contiguous()
    if a.device.type == "cuda":
        from . import triton_nbr
        if name == "nbr_agg_t":
            return triton_nbr.nbr_agg_t(a, b, kh, kw, stride, dilation, hp, wp)
        return getattr(triton_nbr, name)(a, b, kh, kw, stride, dilation)
    n, ho, wo = a.shape[0], a.shape[-2], a.shape[-1]
    d = out_shape[1] if name != "nbr_dot" else a.shape[1]
    if name == "nbr_agg_t" and stride == 1 and d >= 4 and a.numel() * a.element_size() <= GATHER_T_BYTES:
        return _run_gather_t(a, b, out_shape, kh, kw, dilation)
    if name != "nbr_agg_t" and stride == 1 and wo < cpu.vector_bytes() // a.element_size():
        return _run_flat(name, a, b, out_shape, d, kh, kw, dilation)
    out = torch.empty(out_shape, dtype=dtype, device=a.device)
    return cpu.launch(name, a, b, out, n, d, ho, wo, hp, wp, kh, kw, stride, dilation)


def _run_gather_t(w: torch.Tensor, u: torch.Tensor, out_shape, kh, kw, dilation):
    """nbr_agg_t (stride 1) as the gather kernel nbr_agg_tg: w and u laid out flat in the output's Wp-wide rows
    behind the window's reach of zeros (see nbr_cpu.c), so every output vector is summed in registers and written
    once instead of scattered into overlapping vectors."""
    n, hp, wp = w.shape[0], out_shape[-2], out_shape[-1]
    ho, wo = w.shape[-2:]
    front = (kh - 1) * dilation * wp + (kw - 1) * dilation

    def flat(t):
        out = t.new_zeros((*t.shape[:2], front + hp * wp))
        out[..., front:].view(*t.shape[:2], hp, wp)[..., :ho, :wo] = t
        return out

    out = w.new_empty(out_shape)
    return cpu.launch("nbr_agg_tg", flat(w), flat(u), out, n, u.shape[1], ho, wo, hp, wp, kh, kw, 1, dilation)


def flat_rows(a: torch.Tensor, b: torch.Tensor):
    """A stride-1 kernel's inputs for rows narrower than its vectors (``cpu.vector_bytes()``), which would run on scalar lanes: a's
    (the output grid's) Ho rows as one row of Ho·Wp pixels, padded with Wp - Wo junk columns of zeros per row, and b
    (the padded image) with one zero row that the last row's junk pixels read. Neighbour (oy, ox) of flat pixel f
    is then f + oy·dil·Wp + ox·dil, which the kernels' own addressing gives for a one-row output over b's rows."""
    n, c, ho, wo = a.shape
    wp = b.shape[-1]
    return F.pad(a, (0, wp - wo)).view(n, c, 1, ho * wp), F.pad(b, (0, 0, 0, 1))


def unflat_rows(t: torch.Tensor, ho: int, wo: int) -> torch.Tensor:
    """The Ho × Wo output grid of a one-row result of ``flat_rows`` ([..., 1, Ho·Wp])."""
    return t.reshape(*t.shape[:-2], ho, -1)[..., :wo].contiguous()


def _run_flat(name: str, a: torch.Tensor, b: torch.Tensor, out_shape, d, kh, kw, dilation):
    """nbr_dot / nbr_agg (stride 1) on narrow rows, laid out by ``flat_rows``."""
    ho, wo = a.shape[-2:]
    a, b = flat_rows(a, b)
    out = a.new_empty((a.shape[0], out_shape[1], 1, a.shape[-1]))
    cpu.launch(name, a, b, out, a.shape[0], d, 1, a.shape[-1], *b.shape[-2:], kh, kw, 1, dilation)
    return unflat_rows(out, ho, wo)


@torch.library.custom_op("attnvision::nbr_dot", mutates_args=())
def nbr_dot(q: torch.Tensor, kp: torch.Tensor, kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    n, _, ho, wo = q.shape
    return _run("nbr_dot", q, kp, (n, kh * kw, ho, wo), kh, kw, stride, dilation, kp.shape[-2], kp.shape[-1])


@torch.library.custom_op("attnvision::nbr_agg", mutates_args=())
def nbr_agg(w: torch.Tensor, vp: torch.Tensor, kh: int, kw: int, stride: int, dilation: int) -> torch.Tensor:
    n, _, ho, wo = w.shape
    return _run("nbr_agg", w, vp, (n, vp.shape[1], ho, wo), kh, kw, stride, dilation, vp.shape[-2], vp.shape[-1])


@torch.library.custom_op("attnvision::nbr_agg_t", mutates_args=())
def nbr_agg_t(w: torch.Tensor, u: torch.Tensor, kh: int, kw: int, stride: int, dilation: int, hp: int,
              wp: int) -> torch.Tensor:
    n, d = u.shape[:2]
    return _run("nbr_agg_t", w, u, (n, d, hp, wp), kh, kw, stride, dilation, hp, wp)


@torch.library.custom_op("attnvision::nbr_gather", mutates_args=())
def nbr_gather(xp: torch.Tensor, kh: int, kw: int, stride: int, dilation: int, ho: int, wo: int) -> torch.Tensor:
    ones = xp.new_ones((xp.shape[0], 1, ho, wo))
    return _run("nbr_dot", ones, xp, (xp.shape[0], kh * kw, ho, wo), kh, kw, stride, dilation, *xp.shape[-2:])


@nbr_dot.register_fake
def _(q, kp, kh, kw, stride, dilation):
    return q.new_empty((q.shape[0], kh * kw, *q.shape[-2:]), dtype=accumulate_dtype(q))


@nbr_agg.register_fake
def _(w, vp, kh, kw, stride, dilation):
    return w.new_empty((w.shape[0], vp.shape[1], *w.shape[-2:]), dtype=accumulate_dtype(w))


@nbr_agg_t.register_fake
def _(w, u, kh, kw, stride, dilation, hp, wp):
    return u.new_empty((*u.shape[:2], hp, wp), dtype=accumulate_dtype(w))


@nbr_gather.register_fake
def _(xp, kh, kw, stride, dilation, ho, wo):
    return xp.new_empty((xp.shape[0], kh * kw, ho, wo), dtype=accumulate_dtype(xp))


def _save(ctx, inputs, output):
    a, b, kh, kw, stride, dilation = inputs[:6]
    ctx.save_for_backward(a, b)
    ctx.geometry = (kh, kw, stride, dilation)


def _cast(grad, like):
    return None if grad is None else grad.to(like.dtype)


def _nbr_dot_backward(ctx, dout):
    q, kp = ctx.saved_tensors
    kh, kw, s, dil = ctx.geometry
    dq = nbr_agg(dout, kp, kh, kw, s, dil) if ctx.needs_input_grad[0] else None
    dkp = nbr_agg_t(dout, q, kh, kw, s, dil, kp.shape[-2], kp.shape[-1]) if ctx.needs_input_grad[1] else None
    return _cast(dq, q), _cast(dkp, kp), None, None, None, None


def _nbr_agg_backward(ctx, dy):
    w, vp = ctx.saved_tensors
    kh, kw, s, dil = ctx.geometry
    dw = nbr_dot(dy, vp, kh, kw, s, dil) if ctx.needs_input_grad[0] else None
    dvp = nbr_agg_t(w, dy, kh, kw, s, dil, vp.shape[-2], vp.shape[-1]) if ctx.needs_input_grad[1] else None
    return _cast(dw, w), _cast(dvp, vp), None, None, None, None


def _nbr_agg_t_backward(ctx, dout):
    w, u = ctx.saved_tensors
    kh, kw, s, dil = ctx.geometry
    dw = nbr_dot(u, dout, kh, kw, s, dil) if ctx.needs_input_grad[0] else None
    du = nbr_agg(w, dout, kh, kw, s, dil) if ctx.needs_input_grad[1] else None
    return _cast(dw, w), _cast(du, u), None, None, None, None, None, None


def _save_gather(ctx, inputs, output):
    xp, kh, kw, stride, dilation = inputs[:5]
    ctx.padded_shape, ctx.dtype, ctx.geometry = xp.shape, xp.dtype, (kh, kw, stride, dilation)


def _nbr_gather_backward(ctx, dout):
    ones = dout.new_ones((dout.shape[0], 1, *dout.shape[-2:]))
    dxp = nbr_agg_t(dout, ones, *ctx.geometry, *ctx.padded_shape[-2:])
    return dxp.to(ctx.dtype), None, None, None, None, None, None


nbr_dot.register_autograd(_nbr_dot_backward, setup_context=_save)
nbr_agg.register_autograd(_nbr_agg_backward, setup_context=_save)
nbr_agg_t.register_autograd(_nbr_agg_t_backward, setup_context=_save)
nbr_gather.register_autograd(_nbr_gather_backward, setup_context=_save_gather)


def nbr_macs(n: int, d: int, k: int, ho: int, wo: int) -> int:
    """Multiply-adds of any of the three kernels: one per (n, d, o, y, x)."""
    return n * d * k * ho * wo


@register_flop_formula(torch.ops.attnvision.nbr_dot)
def _nbr_dot_flops(q_shape, kp_shape, kh, kw, *args, out_shape=None, **kwargs) -> int:
    n, d, ho, wo = q_shape
    return 2 * nbr_macs(n, d, kh * kw, ho, wo)


@register_flop_formula(torch.ops.attnvision.nbr_agg)
def _nbr_agg_flops(w_shape, vp_shape, kh, kw, *args, out_shape=None, **kwargs) -> int:
    n, _, ho, wo = w_shape
    return 2 * nbr_macs(n, vp_shape[1], kh * kw, ho, wo)


@register_flop_formula(torch.ops.attnvision.nbr_agg_t)
def _nbr_agg_t_flops(w_shape, u_shape, kh, kw, *args, out_shape=None, **kwargs) -> int:
    n, d, ho, wo = u_shape
    return 2 * nbr_macs(n, d, kh * kw, ho, wo)
