"""Triton kernels for the neighbourhood ops of local self-attention: the CUDA fast path of attnvision's
local-aggregation ops (the CPU fast path is a separate C kernel with identical semantics).

Shapes: ``N`` is batch×group flattened, ``D`` channels, ``K = kh*kw`` window offsets with ``o = oy*kw + ox``.
Keys/values ``kp``/``vp`` are already padded (Hp×Wp); queries, weights and outputs live on the Ho×Wo grid. The
neighbour of output pixel (y, x) at offset o is padded pixel (y*s + oy*dil, x*s + ox*dil).

* ``nbr_dot(q, kp)``   -> [N, K, Ho, Wo]: ``out[n,o,y,x] = sum_d q[n,d,y,x] * kp[n,d, nbr(y,x,o)]`` (logits).
* ``nbr_agg(w, vp)``   -> [N, D, Ho, Wo]: ``out[n,d,y,x] = sum_o w[n,o,y,x] * vp[n,d, nbr(y,x,o)]`` (aggregation).
* ``nbr_agg_t(w, u)``  -> [N, D, Hp, Wp]: the adjoint of ``nbr_agg`` w.r.t. ``vp`` (equally of ``nbr_dot`` w.r.t.
  ``kp``), ``out[n,d,p] = sum_{(o,y,x): nbr(y,x,o) = p} w[n,o,y,x] * u[n,d,y,x]``; it is the backward pass of both.

All three are written as gathers: a program owns one row of a block of output pixels and reads whatever reaches
them. ``nbr_agg_t`` inverts the neighbour map per offset (``y = (py - oy*dil) / s`` when that divides exactly and
lands on the grid) instead of scattering, so it needs no atomics and is deterministic. Accumulation is in float32
(float64 for float64 inputs); the output has the dtype of the first input.
"""
import torch
import triton
import triton.language as tl

__all__ = ["nbr_dot", "nbr_agg", "nbr_agg_t"]

# Channels one program walks in nbr_agg/nbr_agg_t: enough to amortise loading its weight tile, few enough that
# small maps still give the GPU many programs.
BLOCK_D = 16
# Upper bound on a program's [BLOCK_K, BLOCK_X] tile, so a 7×7 window keeps its tiles in registers at 4 warps.
MAX_TILE = 2048


@triton.jit
def _nbr_dot_kernel(q_ptr, k_ptr, out_ptr, D, Ho, Wo, Hp, Wp, KH: tl.constexpr, KW: tl.constexpr,
                    STRIDE: tl.constexpr, DIL: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr):
    n = tl.program_id(0).to(tl.int64)  # int64 so batch offsets cannot overflow on large batches
    y = tl.program_id(1)
    xs = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    o = tl.arange(0, BLOCK_K)
    tile = (o < KH * KW)[:, None] & (xs < Wo)[None, :]
    nbr = (y * STRIDE + (o // KW) * DIL)[:, None] * Wp + (xs * STRIDE)[None, :] + ((o % KW) * DIL)[:, None]
    q_row = q_ptr + n * D * Ho * Wo + y * Wo + xs
    k_plane = k_ptr + n * D * Hp * Wp
    # D is the reduction, so it stays inside one program; each channel is one fused multiply-add on the tile.
    acc = tl.zeros((BLOCK_K, BLOCK_X), ACC)
    for _ in range(D):
        q = tl.load(q_row, mask=xs < Wo, other=0).to(ACC)
        acc += q[None, :] * tl.load(k_plane + nbr, mask=tile, other=0).to(ACC)
        q_row += Ho * Wo
        k_plane += Hp * Wp
    out = out_ptr + n * KH * KW * Ho * Wo + o[:, None] * Ho * Wo + y * Wo + xs[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=tile)


@triton.jit
def _nbr_agg_kernel(w_ptr, v_ptr, out_ptr, D, Ho, Wo, Hp, Wp, KH: tl.constexpr, KW: tl.constexpr,
                    STRIDE: tl.constexpr, DIL: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr):
    d_blocks = tl.cdiv(D, BLOCK_D)
    n = (tl.program_id(0) // d_blocks).to(tl.int64)
    d0 = (tl.program_id(0) % d_blocks) * BLOCK_D
    y = tl.program_id(1)
    xs = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    o = tl.arange(0, BLOCK_K)
    tile = (o < KH * KW)[:, None] & (xs < Wo)[None, :]
    nbr = (y * STRIDE + (o // KW) * DIL)[:, None] * Wp + (xs * STRIDE)[None, :] + ((o % KW) * DIL)[:, None]
    # The weights are shared by every channel: load them once per program.
    w = tl.load(w_ptr + n * KH * KW * Ho * Wo + o[:, None] * Ho * Wo + y * Wo + xs[None, :],
                mask=tile, other=0).to(ACC)
    v_plane = v_ptr + (n * D + d0) * Hp * Wp
    out_row = out_ptr + (n * D + d0) * Ho * Wo + y * Wo + xs
    for _ in range(d0, tl.minimum(d0 + BLOCK_D, D)):
        v = tl.load(v_plane + nbr, mask=tile, other=0).to(ACC)
        tl.store(out_row, tl.sum(w * v, axis=0).to(out_ptr.dtype.element_ty), mask=xs < Wo)
        v_plane += Hp * Wp
        out_row += Ho * Wo


@triton.jit
def _nbr_agg_t_kernel(w_ptr, u_ptr, out_ptr, D, Ho, Wo, Hp, Wp, KH: tl.constexpr, KW: tl.constexpr,
                      STRIDE: tl.constexpr, DIL: tl.constexpr, ACC: tl.constexpr,
                      BLOCK_K: tl.constexpr, BLOCK_X: tl.constexpr, BLOCK_D: tl.constexpr):
    d_blocks = tl.cdiv(D, BLOCK_D)
    n = (tl.program_id(0) // d_blocks).to(tl.int64)
    d0 = (tl.program_id(0) % d_blocks) * BLOCK_D
    py = tl.program_id(1)
    pxs = tl.program_id(2) * BLOCK_X + tl.arange(0, BLOCK_X)
    o = tl.arange(0, BLOCK_K)
    # Invert the neighbour map per offset: padded pixel p is reached from t = p - o*dil iff s divides t and t/s is
    # on the output grid. Sign is checked before divisibility since integer % and // truncate towards zero.
    ty = py - (o // KW) * DIL
    tx = pxs[None, :] - ((o % KW) * DIL)[:, None]
    row_hit = (o < KH * KW) & (ty >= 0) & (ty % STRIDE == 0) & (ty // STRIDE < Ho)
    hit = row_hit[:, None] & (tx >= 0) & (tx % STRIDE == 0) & (tx // STRIDE < Wo) & (pxs < Wp)[None, :]
    src = tl.where(hit, (ty // STRIDE)[:, None] * Wo + tx // STRIDE, 0)  # [BLOCK_K, BLOCK_X], in-bounds always
    w = tl.load(w_ptr + n * KH * KW * Ho * Wo + o[:, None] * Ho * Wo + src, mask=hit, other=0).to(ACC)
    u_plane = u_ptr + (n * D + d0) * Ho * Wo
    out_row = out_ptr + (n * D + d0) * Hp * Wp + py * Wp + pxs
    for _ in range(d0, tl.minimum(d0 + BLOCK_D, D)):
        u = tl.load(u_plane + src, mask=hit, other=0).to(ACC)
        tl.store(out_row, tl.sum(w * u, axis=0).to(out_ptr.dtype.element_ty), mask=pxs < Wp)
        u_plane += Ho * Wo
        out_row += Hp * Wp


def _acc_dtype(a: torch.Tensor, b: torch.Tensor, names: str):
    if a.dtype != b.dtype:
        raise TypeError(f"{names} must share a dtype, got {a.dtype} and {b.dtype}")
    if a.dtype == torch.float64:
        return tl.float64
    if a.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return tl.float32
    raise TypeError(f"{names} must be float16, bfloat16, float32 or float64, got {a.dtype}")


def _check(a: torch.Tensor, b: torch.Tensor, names: str, kh: int, kw: int, stride: int, dilation: int,
           Ho: int, Wo: int, Hp: int, Wp: int):
    if a.dim() != 4 or b.dim() != 4:
        raise ValueError(f"{names} must be 4-D, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{names} disagree on N: {tuple(a.shape)} vs {tuple(b.shape)}")
    if a.device != b.device:
        raise ValueError(f"{names} are on different devices: {a.device} and {b.device}")
    if min(kh, kw, stride, dilation) < 1:
        raise ValueError(f"kh, kw, stride, dilation must be >= 1, got {kh}, {kw}, {stride}, {dilation}")
    need_h, need_w = (Ho - 1) * stride + (kh - 1) * dilation + 1, (Wo - 1) * stride + (kw - 1) * dilation + 1
    if Hp < need_h or Wp < need_w:
        raise ValueError(f"padded size {Hp}x{Wp} is too small for a {Ho}x{Wo} output with a {kh}x{kw} window, "
                         f"stride {stride}, dilation {dilation}: needs at least {need_h}x{need_w}")


def _blocks(K: int, width: int):
    block_k = triton.next_power_of_2(K)
    return block_k, min(triton.next_power_of_2(width), max(16, MAX_TILE // block_k))


def nbr_dot(q: torch.Tensor, kp: torch.Tensor, kh: int, kw: int, stride: int = 1, dilation: int = 1):
    """Query-key logits over each pixel's window: q [N, D, Ho, Wo], kp [N, D, Hp, Wp] -> [N, kh*kw, Ho, Wo]."""
    acc = _acc_dtype(q, kp, "q and kp")
    _check(q, kp, "q and kp", kh, kw, stride, dilation, *q.shape[2:], *kp.shape[2:])
    if q.shape[1] != kp.shape[1]:
        raise ValueError(f"q and kp disagree on D: {tuple(q.shape)} vs {tuple(kp.shape)}")
    q, kp = q.contiguous(), kp.contiguous()
    N, D, Ho, Wo = q.shape
    out = torch.empty((N, kh * kw, Ho, Wo), dtype=q.dtype, device=q.device)
    block_k, block_x = _blocks(kh * kw, Wo)
    _nbr_dot_kernel[(N, Ho, triton.cdiv(Wo, block_x))](
        q, kp, out, D, Ho, Wo, *kp.shape[2:], kh, kw, stride, dilation, acc, block_k, block_x)
    return out


def nbr_agg(w: torch.Tensor, vp: torch.Tensor, kh: int, kw: int, stride: int = 1, dilation: int = 1):
    """Weighted sum over each pixel's window: w [N, kh*kw, Ho, Wo], vp [N, D, Hp, Wp] -> [N, D, Ho, Wo]."""
    acc = _acc_dtype(w, vp, "w and vp")
    _check(w, vp, "w and vp", kh, kw, stride, dilation, *w.shape[2:], *vp.shape[2:])
    if w.shape[1] != kh * kw:
        raise ValueError(f"w has {w.shape[1]} offsets, expected kh*kw = {kh * kw}")
    w, vp = w.contiguous(), vp.contiguous()
    N, D = vp.shape[:2]
    Ho, Wo = w.shape[2:]
    out = torch.empty((N, D, Ho, Wo), dtype=w.dtype, device=w.device)
    block_k, block_x = _blocks(kh * kw, Wo)
    _nbr_agg_kernel[(N * triton.cdiv(D, BLOCK_D), Ho, triton.cdiv(Wo, block_x))](
        w, vp, out, D, Ho, Wo, *vp.shape[2:], kh, kw, stride, dilation, acc, block_k, block_x, BLOCK_D)
    return out


def nbr_agg_t(w: torch.Tensor, u: torch.Tensor, kh: int, kw: int, stride: int, dilation: int, Hp: int, Wp: int):
    """Adjoint of nbr_agg w.r.t. vp: w [N, kh*kw, Ho, Wo], u [N, D, Ho, Wo] -> [N, D, Hp, Wp]."""
    acc = _acc_dtype(w, u, "w and u")
    _check(w, u, "w and u", kh, kw, stride, dilation, *w.shape[2:], Hp, Wp)
    if w.shape[1] != kh * kw or w.shape[2:] != u.shape[2:]:
        raise ValueError(f"w must be [N, kh*kw={kh * kw}, Ho, Wo] matching u's grid, "
                         f"got {tuple(w.shape)} and {tuple(u.shape)}")
    w, u = w.contiguous(), u.contiguous()
    N, D, Ho, Wo = u.shape
    out = torch.empty((N, D, Hp, Wp), dtype=w.dtype, device=w.device)
    block_k, block_x = _blocks(kh * kw, Wp)
    _nbr_agg_t_kernel[(N * triton.cdiv(D, BLOCK_D), Hp, triton.cdiv(Wp, block_x))](
        w, u, out, D, Ho, Wo, Hp, Wp, kh, kw, stride, dilation, acc, block_k, block_x, BLOCK_D)
    return out
