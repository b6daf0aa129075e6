"""The local-aggregation primitives every family composes: y_i = sum_{j in R(i)} w_ij ⊙ v_j.

  - ``local_logits``: per-head q_i·k_j over the footprint, plus the relative terms q_i·r_{j-i} (SASA, Axial) and
    k_j·r_{j-i} (Axial). Out-of-image neighbours get -inf in ``mask`` mode.
  - ``local_patches`` / ``local_subtraction``: the neighbours x_j, and x_i - x_j (SAN's relation functions).
  - ``local_aggregate``: sum_j w_ij v_j with one weight per head (scalar attention, contiguous channel groups)
    or per shared channel group (vector attention, ``sharing='interleaved'`` as SAN's code, ``'contiguous'`` as
    LR-Net's op), plus the value-side position term sum_j w_ij r_{j-i} (Axial).
  - ``local_attention``: softmax(logits + bias) aggregated, the composition SASA, LR-Net and Axial share.
  - ``axial_footprint``: the 1×m (or m×1) footprint of axial attention; m ≥ the axis length means global.

Every primitive takes ``impl``: ``'reference'`` (pad + unfold, the oracle), ``'fast'`` (the custom ops of
``kernels.py``: C on CPU, Triton on CUDA, nothing k²-expanded in forward or backward; on CPU softmax attention
runs as one fused kernel, ``fused.py``) or ``'auto'`` (fast where its kernels exist). ``set_default_impl`` or
``$AV_OPS_IMPL`` overrides the default. Relative embeddings have shape
(G or 1, D, K): per head, or shared across heads.
"""
import os
from typing import List, Optional

import torch
import torch.nn.functional as F

from . import cpu, kernels, reference
from .fused import block_pixels, nbr_attention, runs_on_phases
from .kernels import accumulate_dtype
from .footprint import Footprint

__all__ = ["IMPLS", "set_default_impl", "requested_impl", "resolve_impl", "local_logits", "local_patches",
           "local_subtraction", "local_aggregate", "local_softmax", "local_attention", "axial_footprint",
           "mask_outside", "neighbour_index", "query_position_term", "key_position_term", "axial_lines", "axial_image",
           "dense_axial_logits", "dense_axial_outputs"]

IMPLS = ("auto", "reference", "fast")
_default_impl = os.environ.get("AV_OPS_IMPL", "auto")


def set_default_impl(impl: str) -> None:
    """Choose the implementation used where a primitive's ``impl`` is None."""
    global _default_impl
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is unknown; choose one of {', '.join(IMPLS)}")
    _default_impl = impl


def _triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def requested_impl(impl: Optional[str] = None) -> str:
    """``impl``, or the default one when it is None, before 'auto' is resolved for a device."""
    return impl or _default_impl


def resolve_impl(impl: Optional[str], device: torch.device) -> str:
    """'reference' or 'fast' for ``impl`` (None = the default) on ``device``."""
    impl = requested_impl(impl)
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is unknown; choose one of {', '.join(IMPLS)}")
    fast = cpu.available() if device.type == "cpu" else device.type == "cuda" and _triton_available()
    if impl == "fast" and not fast:
        raise RuntimeError(f"impl='fast' has no kernels on {device.type} here (CPU: the C kernels could not be built; "
                           f"CUDA: Triton is missing); use impl='reference'")
    return impl if impl != "auto" else ("fast" if fast else "reference")


def _kernels(impl: Optional[str], device: torch.device):
    return kernels if resolve_impl(impl, device) == "fast" else reference


def _geometry(fp: Footprint):
    (kh, kw) = fp.kernel_size
    return kh, kw, fp.stride, fp.dilation


def mask_outside(logits: torch.Tensor, fp: Footprint, height: int, width: int) -> torch.Tensor:
    """B×G×K×Ho×Wo ``logits`` with -inf at the neighbours outside a height×width input in ``mask`` mode."""
    if fp.padding != "mask":
        return logits
    valid = fp.valid_mask(height, width, logits.device)  # K, Ho, Wo
    return logits.masked_fill(~valid, float("-inf"))


def query_position_term(q: torch.Tensor, rel_q: torch.Tensor, num_heads: int) -> torch.Tensor:
    """B×G×K×Ho×Wo term q_i·rel_q[j-i]: every query (at the window centres) on every offset's embedding (D×K,
    shared by the heads, or G×D×K)."""
    b, c, ho, wo = q.shape
    return torch.einsum("bgdhw,gdk->bgkhw", q.reshape(b, num_heads, c // num_heads, ho, wo),
                        rel_q.to(q.dtype).expand(num_heads, -1, -1))


def key_position_term(k: torch.Tensor, rel_k: torch.Tensor, fp: Footprint, num_heads: int) -> torch.Tensor:
    """B×G×K×Ho×Wo term k_j·rel_k[j-i]: project every key on every offset's embedding, then gather each offset's
    neighbour. Out-of-image neighbours read an appended zero column (zero keys), reflected ones their mirror."""
    b, c, height, width = k.shape
    g, d = num_heads, c // num_heads
    ho, wo = fp.out_size(height, width)
    index = neighbour_index(fp, height, width, k.device).view(1, 1, fp.num_offsets, ho * wo)
    proj = torch.einsum("bgdp,gdk->bgkp", k.reshape(b, g, d, height * width), rel_k.expand(g, -1, -1))
    proj = torch.cat([proj.new_zeros(b, g, fp.num_offsets, 1), proj], -1)  # B, G, K, 1 + H*W; column 0: outside
    return proj.gather(-1, index.expand(b, g, -1, -1)).view(b, g, fp.num_offsets, ho, wo)


def neighbour_index(fp: Footprint, height: int, width: int, device=None) -> torch.Tensor:
    """K×Ho×Wo: 1 + the flat index y·W + x of the pixel each window element reads in a height×width input; 0 where
    it reads a zero outside the image (``zero`` and ``mask`` borders). Reflected borders read their mirror."""
    index = torch.arange(1, height * width + 1, device=device, dtype=torch.float64).view(1, 1, height, width)
    kh, kw, s, dil = _geometry(fp)
    index = reference.unfold_padded(fp.pad(index), kh, kw, s, dil, *fp.out_size(height, width))
    return index.round().long().view(kh * kw, *index.shape[-2:])


def local_logits(q: torch.Tensor, k: torch.Tensor, fp: Footprint, num_heads: int,
                 rel_q: Optional[torch.Tensor] = None, rel_k: Optional[torch.Tensor] = None,
                 impl: Optional[str] = None) -> torch.Tensor:
    """B×heads×K×Ho×Wo logits q_i·k_j (+ q_i·rel_q[j-i]) (+ k_j·rel_k[j-i]) in float32 (float64 stays).

    q: B×Cq×Ho×Wo queries at the window centres; k: B×Cq×H×W keys; heads split Cq into contiguous groups.
    """
    b, c, ho, wo = q.shape
    height, width = k.shape[-2:]
    if (ho, wo) != fp.out_size(height, width):
        raise ValueError(f"queries are {ho}x{wo} but the footprint maps {height}x{width} keys to "
                         f"{fp.out_size(height, width)}")
    g, d = num_heads, c // num_heads
    kp = fp.pad(k)
    hp, wp = kp.shape[-2:]
    ops = _kernels(impl, q.device)
    logits = ops.nbr_dot(q.reshape(b * g, d, ho, wo), kp.reshape(b * g, d, hp, wp), *_geometry(fp))
    logits = logits.view(b, g, fp.num_offsets, ho, wo).to(accumulate_dtype(q))
    if rel_q is not None:
        logits = logits + query_position_term(q.to(logits.dtype), rel_q, num_heads)
    if rel_k is not None:
        logits = logits + key_position_term(k.to(logits.dtype), rel_k.to(logits.dtype), fp, num_heads)
    return mask_outside(logits, fp, height, width)


def local_patches(x: torch.Tensor, fp: Footprint, impl: Optional[str] = None) -> torch.Tensor:
    """B×C×K×Ho×Wo neighbours x_j of every window centre (border values per ``fp.padding``; mask -> zeros)."""
    b, c = x.shape[:2]
    xp = fp.pad(x)
    ho, wo = fp.out_size(*x.shape[-2:])
    kh, kw, s, dil = _geometry(fp)
    if resolve_impl(impl, x.device) == "reference":
        return reference.unfold_padded(xp, kh, kw, s, dil, ho, wo)
    patches = kernels.nbr_gather(xp.reshape(b * c, 1, *xp.shape[-2:]), kh, kw, s, dil, ho, wo)
    return patches.view(b, c, kh * kw, ho, wo)


def local_subtraction(x_center: torch.Tensor, x: torch.Tensor, fp: Footprint,
                      impl: Optional[str] = None) -> torch.Tensor:
    """B×C×K×Ho×Wo relation x_center_i - x_j (SAN's subtraction), x_center given at the window centres."""
    return x_center.unsqueeze(2) - local_patches(x, fp, impl).to(x_center.dtype)


def local_aggregate(weights: torch.Tensor, v: torch.Tensor, fp: Footprint, sharing: str = "contiguous",
                    rel_v: Optional[torch.Tensor] = None, impl: Optional[str] = None) -> torch.Tensor:
    """B×C×Ho×Wo outputs sum_j w_ij ⊙ v_j (+ sum_j w_ij rel_v[j-i]).

    weights: B×G×K×Ho×Wo, one weight map per group of C/G value channels; ``sharing`` says which channels share a
    map: ``contiguous`` (channel c uses map c // (C/G): heads, LR-Net) or ``interleaved`` (map c % G: SAN).
    """
    b, g, k, ho, wo = weights.shape
    c = v.shape[1]
    if k != fp.num_offsets or c % g:
        raise ValueError(f"weights {tuple(weights.shape)} do not fit {c} value channels and {fp.num_offsets} offsets")
    if sharing not in ("contiguous", "interleaved"):
        raise ValueError(f"sharing={sharing!r} is unknown; choose one of contiguous, interleaved")
    d = c // g
    vp = fp.pad(v)
    hp, wp = vp.shape[-2:]
    if sharing == "interleaved":
        vp = vp.view(b, d, g, hp, wp).transpose(1, 2)  # B, G, D, Hp, Wp
    ops = _kernels(impl, v.device)
    y = ops.nbr_agg(weights.reshape(b * g, k, ho, wo), vp.reshape(b * g, d, hp, wp), *_geometry(fp))
    y = y.view(b, g, d, ho, wo).to(weights.dtype)
    if rel_v is not None:
        y = y + torch.einsum("bgkhw,gdk->bgdhw", weights, rel_v.to(weights.dtype).expand(g, -1, -1))
    if sharing == "interleaved":
        y = y.transpose(1, 2)  # B, D, G, Ho, Wo
    return y.reshape(b, c, ho, wo)


def local_softmax(logits: torch.Tensor, dim: int = 2) -> torch.Tensor:
    """Softmax over the footprint axis (``dim``, 2 in the B×G×K×Ho×Wo layout), in float32 (float64 stays)."""
    return logits.softmax(dim, dtype=accumulate_dtype(logits))


def _per_head_bias(bias: Optional[torch.Tensor], num_heads: int, k: int) -> Optional[torch.Tensor]:
    """``bias`` as heads×K when it is constant over batch and pixels (what the fused kernel takes), else None."""
    target = (1, num_heads, k, 1, 1)
    try:
        if torch.broadcast_shapes(bias.shape, target) != target:
            return None
    except RuntimeError:
        return None
    return bias.expand(target).reshape(num_heads, k)


def axial_lines(t: torch.Tensor, axis: str, num_heads: int) -> torch.Tensor:
    """B×C×H×W -> (B·other)×heads×C/heads×L: the rows (``axis='width'``) or columns (``'height'``) as sequences."""
    if axis == "height":
        t = t.transpose(2, 3)  # B, C, W, H: the axis last
    b, c, other, length = t.shape
    return t.permute(0, 2, 1, 3).reshape(b * other, num_heads, c // num_heads, length)


def axial_image(lines: torch.Tensor, axis: str, batch: int) -> torch.Tensor:
    """The inverse of ``axial_lines``: (B·other)×heads×D×L -> B×(heads·D)×H×W."""
    n, g, d, length = lines.shape
    t = lines.reshape(batch, n // batch, g * d, length).permute(0, 2, 1, 3)  # B, C, other, L
    return t.transpose(2, 3) if axis == "height" else t


def _relative_lines(rel: torch.Tensor, num_heads: int, length: int) -> torch.Tensor:
    """heads×D×L×L embeddings r[j-i] for query i and key j from D×(2L-1) (shared) or heads×D×(2L-1) ones."""
    pos = torch.arange(length, device=rel.device)
    return rel.expand(num_heads, *rel.shape[-2:])[..., pos[None, :] - pos[:, None] + length - 1]


def dense_axial_logits(q: torch.Tensor, k: torch.Tensor, rel_q: Optional[torch.Tensor] = None,
                       rel_k: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """The logit terms of global axial attention on lines (``axial_lines``), each N×heads×L×L: q_i·k_j, then
    q_i·rel_q[j-i] and k_j·rel_k[j-i] when given (D×(2L-1) embeddings shared by the heads, or heads×D×(2L-1)).
    Dense matmuls with the embeddings gathered as D×L×L, as Axial-DeepLab computes them."""
    n, g, _, length = q.shape
    terms = [torch.einsum("nhdi,nhdj->nhij", q, k)]
    if rel_q is not None:
        terms.append(torch.einsum("nhdi,hdij->nhij", q, _relative_lines(rel_q.to(q.dtype), g, length)))
    if rel_k is not None:
        terms.append(torch.einsum("nhdj,hdij->nhij", k, _relative_lines(rel_k.to(k.dtype), g, length)))
    return terms


def dense_axial_outputs(weights: torch.Tensor, v: torch.Tensor,
                        rel_v: Optional[torch.Tensor] = None) -> List[torch.Tensor]:
    """The outputs of global axial attention on lines, each N×heads×D×L: sum_j w_ij v_j, then sum_j w_ij rel_v[j-i]
    when given."""
    outputs = [torch.einsum("nhij,nhdj->nhdi", weights, v)]
    if rel_v is not None:
        rel = _relative_lines(rel_v.to(weights.dtype), weights.shape[1], weights.shape[-1])
        outputs.append(torch.einsum("nhij,hdij->nhdi", weights, rel))
    return outputs


def local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, fp: Footprint, num_heads: int,
                    rel_q=None, rel_k=None, rel_v=None, bias: Optional[torch.Tensor] = None, rel_v_apart: bool = False,
                    impl: Optional[str] = None) -> torch.Tensor:
    """Multi-head local attention softmax_j(q_i·k_j + rel terms + bias) (v_j + rel_v[j-i]), B×Cv×Ho×Wo, or with
    ``rel_v_apart`` (and rel_v) B×2·Cv×Ho×Wo, per head the sums of v_j and of rel_v[j-i] side by side.

    ``bias`` broadcasts against the B×heads×K×Ho×Wo logits (LR-Net's geometry prior is heads×K×1×1). The fast
    path, when the bias is per head and offset (or absent), is one fused kernel on CPU (``fused.py``) and, on
    CUDA, dense matmuls along the axis for a global axial footprint; otherwise the three neighbourhood kernels.
    """
    head_bias = None if bias is None else _per_head_bias(bias, num_heads, fp.num_offsets)
    fast = resolve_impl(impl, q.device) == "fast" and (bias is None or head_bias is not None)
    if rel_v_apart and rel_v is not None and not (fast and q.device.type == "cpu"):  # per head [v, 0] and [0, r^v]
        b, _, height, width = v.shape
        v = v.view(b, num_heads, -1, height, width)
        v = torch.cat([v, torch.zeros_like(v)], 2).flatten(1, 2)  # B, heads·2Dv, H, W
        rel_v = torch.cat([torch.zeros_like(rel_v), rel_v], -2)  # (heads,) 2Dv, K
    if fast and q.device.type == "cpu":
        b, c, ho, wo = q.shape
        height, width = k.shape[-2:]
        left, right, top, _ = fp.pads()
        if fp.padding == "mask" and runs_on_phases(fp.stride, wo):  # the op lays the image out itself
            kp, vp, geometry = k, v, (height, width, top, left, 0, 0)
        elif fp.padding == "mask":  # only a block's lanes overhang the image, never a dead row: pad what they reach
            xb = block_pixels()
            kp, vp = (F.pad(t, (min(left, xb), min(right, xb))) for t in (k, v))
            geometry = (height, width, top, left, 0, min(left, xb))
        else:
            kp, vp = fp.pad(k), fp.pad(v)
            geometry = (0, 0, top, left, top, left)
        terms = [None if r is None else r.expand(num_heads, -1, -1) for r in (rel_q, rel_k, rel_v)]
        y, _ = nbr_attention(q.reshape(b * num_heads, c // num_heads, ho, wo),
                             kp.reshape(b * num_heads, c // num_heads, *kp.shape[-2:]),
                             vp.reshape(b * num_heads, v.shape[1] // num_heads, *vp.shape[-2:]), *terms, head_bias,
                             num_heads, *_geometry(fp), *geometry, rel_v_apart)
        return y.view(b, -1, ho, wo)
    axis = fp.global_axis(*k.shape[-2:])
    if fast and axis is not None:
        dtype = accumulate_dtype(q)
        qs, ks, vs = (axial_lines(t.to(dtype), axis, num_heads) for t in (q, k, v))
        logits = sum(dense_axial_logits(qs, ks, rel_q, rel_k))  # N, heads, L, L
        if head_bias is not None:
            logits = logits + _relative_lines(head_bias.to(dtype)[:, None], num_heads, qs.shape[-1])[:, 0]
        return axial_image(sum(dense_axial_outputs(logits.softmax(-1), vs, rel_v)), axis, q.shape[0])
    logits = local_logits(q, k, fp, num_heads, rel_q, rel_k, impl)
    if bias is not None:
        logits = logits + bias
    return local_aggregate(local_softmax(logits), v, fp, "contiguous", rel_v, impl)


def axial_footprint(length: int, span: Optional[int] = None, axis: str = "width", stride: int = 1) -> Footprint:
    """The footprint of axial attention along ``axis`` of an axis of ``length`` pixels.

    ``span`` is the window length m (odd); None or m >= 2·length - 1 (a window that covers the axis from every
    pixel) means global: the 2·length - 1 relative offsets of Axial-DeepLab's embedding table. Borders are masked,
    never padded in.
    """
    if axis not in ("height", "width"):
        raise ValueError(f"axis={axis!r} is unknown; choose one of height, width")
    m = 2 * length - 1 if span is None or span >= 2 * length - 1 else span
    return Footprint((m, 1) if axis == "height" else (1, m), stride=stride, padding="mask")
