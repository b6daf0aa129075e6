"""Reference neighbourhood kernels in plain PyTorch (``F.unfold``): the test oracle of the fast kernels.

Same contract as the fast kernels (see ``kernels.py``): contiguous N×D×... tensors, padded images, window offset
o = oy*kw + ox. They materialise the unfolded N×D×K×Ho×Wo tensor, which is exactly what the fast path avoids. The
products are einsums, so ``FlopCounterMode`` counts the multiply-adds the fast kernels' formulas register.
"""
import torch
import torch.nn.functional as F

__all__ = ["unfold_padded", "nbr_dot", "nbr_agg", "nbr_agg_t"]


def unfold_padded(xp: torch.Tensor, kh: int, kw: int, stride: int, dilation: int, ho: int, wo: int):
    """N×D×Hp×Wp padded image -> N×D×K×Ho×Wo neighbourhoods (cropped to the Ho×Wo output grid)."""
    n, d = xp.shape[:2]
    xp = xp[..., :(ho - 1) * stride + (kh - 1) * dilation + 1, :(wo - 1) * stride + (kw - 1) * dilation + 1]
    cols = F.unfold(xp, (kh, kw), dilation=dilation, stride=stride)  # N, D*K, Ho*Wo
    return cols.view(n, d, kh * kw, ho, wo)


def nbr_dot(q, kp, kh, kw, stride, dilation):
    """out[n,o,y,x] = sum_d q[n,d,y,x] * kp[n,d,nbr(y,x,o)]."""
    ho, wo = q.shape[-2:]
    return torch.einsum("ndyx,ndkyx->nkyx", q, unfold_padded(kp, kh, kw, stride, dilation, ho, wo))


def nbr_agg(w, vp, kh, kw, stride, dilation):
    """out[n,d,y,x] = sum_o w[n,o,y,x] * vp[n,d,nbr(y,x,o)]."""
    ho, wo = w.shape[-2:]
    return torch.einsum("nkyx,ndkyx->ndyx", w, unfold_padded(vp, kh, kw, stride, dilation, ho, wo))


def nbr_agg_t(w, u, kh, kw, stride, dilation, hp, wp):
    """The adjoint of ``nbr_agg`` in ``vp``: scatter-add w[n,o,y,x] * u[n,d,y,x] onto nbr(y,x,o) of a Hp×Wp image."""
    n, d, ho, wo = u.shape
    cols = (w.unsqueeze(1) * u.unsqueeze(2)).reshape(n, d * kh * kw, ho * wo)  # N, D*K, Ho*Wo
    h_used, w_used = (ho - 1) * stride + (kh - 1) * dilation + 1, (wo - 1) * stride + (kw - 1) * dilation + 1
    out = F.fold(cols, (h_used, w_used), (kh, kw), dilation=dilation, stride=stride)
    return F.pad(out, (0, wp - w_used, 0, hp - h_used))
