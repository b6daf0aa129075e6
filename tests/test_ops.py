"""The local-aggregation core: gradcheck, fast == reference, FLOP formulas, conv and dense-attention identities."""
import inspect
import itertools
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from attnvision.ops import (Footprint, axial_footprint, local_aggregate, local_attention, local_logits,
                            local_patches, local_softmax, local_subtraction, resolve_impl, set_default_impl)
from attnvision.ops import kernels

FOOTPRINTS = [Footprint(k, s, dil, pad) for pad in ("zero", "reflect", "mask")
              for k, s, dil in ((3, 1, 1), (3, 2, 1), (3, 1, 2), ((1, 5), 1, 1))]
IMPLS = ("reference", "fast")
# AV_TEST_DEVICE=cuda runs the same checks on a GPU, where "fast" is the Triton kernels
DEVICE = torch.device(os.environ.get("AV_TEST_DEVICE", "cpu"))


def _ids(fp):
    return f"{fp.padding}-k{fp.kernel_size[0]}x{fp.kernel_size[1]}-s{fp.stride}-d{fp.dilation}"


def _inputs(fp, dtype=torch.float64, b=1, c=4, h=5, w=6, heads=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    ho, wo = fp.out_size(h, w)
    k = fp.num_offsets

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype).to(DEVICE).requires_grad_()

    return dict(q=rnd(b, c, ho, wo), x=rnd(b, c, h, w), v=rnd(b, c, h, w), rel_q=rnd(heads, c // heads, k),
                rel_k=rnd(1, c // heads, k), rel_v=rnd(heads, c // heads, k), weights=rnd(b, heads, k, ho, wo),
                bias=rnd(heads, k, 1, 1), heads=heads)


def _primitives(t, fp, impl):
    """Every primitive once, as (name, fn, inputs); logits go through the softmax so that -inf never leaks out."""
    heads = t["heads"]
    return [
        ("logits", lambda q, x, rq, rk: local_softmax(local_logits(q, x, fp, heads, rq, rk, impl)),
         (t["q"], t["x"], t["rel_q"], t["rel_k"])),
        ("patches", lambda x: local_patches(x, fp, impl), (t["x"],)),
        ("subtraction", lambda q, x: local_subtraction(q, x, fp, impl), (t["q"], t["x"])),
        ("aggregate_contiguous", lambda w, v, rv: local_aggregate(w, v, fp, "contiguous", rv, impl),
         (t["weights"], t["v"], t["rel_v"])),
        ("aggregate_interleaved", lambda w, v: local_aggregate(w, v, fp, "interleaved", impl=impl),
         (t["weights"], t["v"])),
        ("attention", lambda q, x, v, rq, rk, rv: local_attention(q, x, v, fp, heads, rq, rk, rv, impl=impl),
         (t["q"], t["x"], t["v"], t["rel_q"], t["rel_k"], t["rel_v"])),
        # query-side embedding and a per-head bias only: the fused kernel's case on CPU
        ("attention_fused", lambda q, x, v, rq, bias: local_attention(q, x, v, fp, heads, rq, bias=bias, impl=impl),
         (t["q"], t["x"], t["v"], t["rel_q"], t["bias"])),
    ]


@pytest.mark.parametrize("fp", FOOTPRINTS, ids=_ids)
@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck_every_primitive(fp, impl):
    for name, fn, args in _primitives(_inputs(fp), fp, impl):
        # CUDA's reflection-pad and fold backward use atomics, hence a non-determinism tolerance there
        assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-5, nondet_tol=1e-10 if DEVICE.type == "cuda"
                                        else 0.0), name


@pytest.mark.parametrize("fp", FOOTPRINTS, ids=_ids)
@pytest.mark.parametrize("h,w", [(9, 11), (4, 21)])  # rows narrower than a vector (one long row); a partial vector
def test_fast_matches_reference_forward_and_backward(fp, h, w):
    t = _inputs(fp, torch.float32, b=2, c=8, h=h, w=w)
    ref, fast = _primitives(t, fp, "reference"), _primitives(t, fp, "fast")
    for (name, ref_fn, args), (_, fast_fn, _) in zip(ref, fast):
        grads = []
        for fn in (ref_fn, fast_fn):
            out = fn(*args)
            cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
            grads.append((out, torch.autograd.grad(out, args, cotangent)))
        (out_r, grads_r), (out_f, grads_f) = grads
        torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5, msg=name)
        for g_f, g_r in zip(grads_f, grads_r):
            torch.testing.assert_close(g_f, g_r, rtol=1e-5, atol=1e-5, msg=name)


def test_kernels_support_double_backward():
    q = torch.randn(2, 3, 4, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    kp = torch.randn(2, 3, 6, 7, dtype=torch.float64, device=DEVICE, requires_grad=True)
    assert torch.autograd.gradgradcheck(lambda a, b: kernels.nbr_dot(a, b, 3, 3, 1, 1), (q, kp))


@pytest.mark.parametrize("h,w,kh,kw,stride,dilation", [
    (9, 21, 3, 3, 1, 1), (6, 37, 5, 3, 1, 2), (4, 4, 7, 7, 1, 1), (8, 8, 3, 5, 1, 1), (1, 1, 1, 1, 1, 1),
    (7, 19, 3, 3, 2, 1)])  # partial last vector; narrow rows (one long row); a one-pixel image; strided lanes
@pytest.mark.parametrize("channels", [1, 8])  # nbr_agg_t scatters one channel and gathers eight (nbr_agg_tg)
def test_kernel_row_layouts_match_reference(h, w, kh, kw, stride, dilation, channels):
    """The three kernels in every row layout they pick, against the unfold reference in float64."""
    from attnvision.ops import reference
    g = torch.Generator().manual_seed(0)
    ho, wo = (h - 1) // stride + 1, (w - 1) // stride + 1
    hp, wp = h + dilation * (kh - 1), w + dilation * (kw - 1)
    q, u = (torch.randn(3, channels, ho, wo, generator=g, dtype=torch.float64).to(DEVICE) for _ in range(2))
    kp = torch.randn(3, channels, hp, wp, generator=g, dtype=torch.float64).to(DEVICE)
    weights = torch.randn(3, kh * kw, ho, wo, generator=g, dtype=torch.float64).to(DEVICE)
    geometry = (kh, kw, stride, dilation)
    for fast, ref in ((kernels.nbr_dot(q, kp, *geometry), reference.nbr_dot(q, kp, *geometry)),
                      (kernels.nbr_agg(weights, kp, *geometry), reference.nbr_agg(weights, kp, *geometry)),
                      (kernels.nbr_agg_t(weights, u, *geometry, hp, wp),
                       reference.nbr_agg_t(weights, u, *geometry, hp, wp))):
        torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("stride,dilation", [(1, 1), (2, 1), (1, 2)])
def test_static_weights_reproduce_depthwise_convolution(impl, stride, dilation):
    x = torch.randn(2, 6, 9, 10, device=DEVICE)
    kernel = torch.randn(6, 1, 3, 3, device=DEVICE)
    fp = Footprint(3, stride, dilation, "zero")
    ho, wo = fp.out_size(9, 10)
    weights = kernel.view(1, 6, 9, 1, 1).expand(2, 6, 9, ho, wo)  # one fixed 3×3 kernel per channel
    expected = F.conv2d(x, kernel, stride=stride, padding=dilation, dilation=dilation, groups=6)
    torch.testing.assert_close(local_aggregate(weights, x, fp, impl=impl), expected, rtol=1e-5, atol=1e-5)


def test_flop_formulas_match_hand_counts():
    b, c, h, w, heads, k = 2, 8, 6, 7, 2, 3
    fp = Footprint(k)
    q, x = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    rel = torch.randn(heads, c // heads, k * k)
    with FlopCounterMode(display=False) as counter:
        logits = local_logits(q, x, fp, heads, rel_q=rel, impl="fast")
    # q·k over the window, plus q·r: each B·C·K·H·W multiply-adds
    assert counter.get_total_flops() == 2 * (2 * b * c * k * k * h * w)
    with FlopCounterMode(display=False) as counter:
        local_aggregate(local_softmax(logits), x, fp, impl="fast")
    assert counter.get_total_flops() == 2 * b * c * k * k * h * w
    weights = torch.randn(b, heads, k * k, h, w, requires_grad=True)
    v = torch.randn(b, c, h, w, requires_grad=True)
    with FlopCounterMode(display=False) as counter:
        local_aggregate(weights, v, fp, impl="fast").sum().backward()
    # backward: dW is one nbr_dot and dV one nbr_agg_t, each as costly as the forward
    assert counter.get_total_flops() == 3 * 2 * b * c * k * k * h * w


def test_reflect_padding_is_torch_reflect():
    x = torch.arange(30.).view(1, 1, 5, 6)
    patches = local_patches(x, Footprint(3, padding="reflect"))  # 1, 1, 9, 5, 6
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    for o, (dy, dx) in enumerate(itertools.product(range(3), range(3))):
        torch.testing.assert_close(patches[0, 0, o], padded[0, 0, dy:dy + 5, dx:dx + 6])
    assert patches[0, 0, 0, 0, 0] == x[0, 0, 1, 1]  # index -1 mirrors to 1, the edge is not repeated


@pytest.mark.parametrize("impl", IMPLS)
def test_mask_mode_gives_exactly_zero_weight_outside(impl):
    fp = Footprint(3, padding="mask")
    q, k = torch.randn(1, 4, 5, 5, device=DEVICE), torch.randn(1, 4, 5, 5, device=DEVICE)
    weights = local_softmax(local_logits(q, k, fp, 2, impl=impl))
    valid = fp.valid_mask(5, 5, DEVICE)
    assert (weights[:, :, ~valid] == 0).all() and (weights[:, :, valid] > 0).all()
    torch.testing.assert_close(weights.sum(2), torch.ones(1, 2, 5, 5, device=DEVICE))


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("axis", ["height", "width"])
def test_global_axial_attention_is_dense_attention_along_the_axis(impl, axis):
    b, c, h, w, heads = 2, 4, 5, 6, 2
    q, k, v = (torch.randn(b, c, h, w, device=DEVICE) for _ in range(3))
    length = h if axis == "height" else w
    rel = torch.randn(heads, c // heads, 2 * length - 1, device=DEVICE)
    fp = axial_footprint(length, span=None, axis=axis)
    y = local_attention(q, k, v, fp, heads, rel_q=rel, rel_k=rel, rel_v=rel, impl=impl)

    # dense reference: rows (or columns) as sequences, relative index j - i + length - 1
    def seq(t):  # B, C, H, W -> B·other, heads, d, L
        t = t if axis == "width" else t.transpose(2, 3)
        return t.permute(0, 2, 1, 3).reshape(-1, heads, c // heads, length)
    qs, ks, vs = seq(q), seq(k), seq(v)
    idx = torch.arange(length, device=DEVICE)[None, :] - torch.arange(length, device=DEVICE)[:, None] + length - 1
    r = rel[:, :, idx]  # heads, d, L_i, L_j
    logits = torch.einsum("nhdi,nhdj->nhij", qs, ks) + torch.einsum("nhdi,hdij->nhij", qs, r) \
        + torch.einsum("nhdj,hdij->nhij", ks, r)
    a = logits.softmax(-1)
    out = torch.einsum("nhij,nhdj->nhdi", a, vs) + torch.einsum("nhij,hdij->nhdi", a, r)
    other = w if axis == "height" else h
    out = out.reshape(b, other, c, length).permute(0, 2, 1, 3)  # B, C, other, L
    expected = out if axis == "width" else out.transpose(2, 3)
    torch.testing.assert_close(y, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("axis", ["height", "width"])
def test_global_axial_fast_path_matches_reference_with_gradients(axis):
    """The fast path of a global axial footprint is dense matmuls along the axis; the reference unfolds 2L-1."""
    b, c, h, w, heads = 1, 4, 4, 5, 2
    length = h if axis == "height" else w
    g = torch.Generator().manual_seed(0)
    args = [torch.randn(*shape, generator=g, dtype=torch.float64).to(DEVICE).requires_grad_() for shape in
            [(b, c, h, w)] * 3 + [(heads, c // heads, 2 * length - 1)] * 3 + [(heads, 2 * length - 1, 1, 1)]]
    fp = axial_footprint(length, None, axis)

    def attention(impl):
        return lambda q, k, v, rq, rk, rv, bias: local_attention(q, k, v, fp, heads, rq, rk, rv, bias, impl=impl)

    torch.testing.assert_close(attention("fast")(*args), attention("reference")(*args))
    assert torch.autograd.gradcheck(attention("fast"), args)


def test_local_axial_span_is_a_window():
    fp = axial_footprint(10, span=5, axis="width")
    assert fp.kernel_size == (1, 5) and fp.padding == "mask"
    assert axial_footprint(10, span=19).kernel_size == axial_footprint(10, span=25).kernel_size == (1, 19)
    assert axial_footprint(10, span=11).kernel_size == (1, 11)  # 11 < 2·10 - 1: a window, not the whole axis


def test_impl_selection_and_override(monkeypatch):
    assert resolve_impl(None, torch.device("cpu")) == "fast"  # the C kernels build on this machine
    assert resolve_impl("reference", torch.device("cpu")) == "reference"
    set_default_impl("reference")
    try:
        assert resolve_impl(None, torch.device("cpu")) == "reference"
    finally:
        set_default_impl("auto")
    with pytest.raises(ValueError, match="impl='nope' is unknown; choose one of auto, reference, fast"):
        resolve_impl("nope", torch.device("cpu"))
    assert resolve_impl("auto", torch.device("meta")) == "reference"  # no kernels there
    with pytest.raises(RuntimeError, match="impl='fast' has no kernels on meta"):
        resolve_impl("fast", torch.device("meta"))
    with pytest.raises(ValueError, match="padding='same' is unknown"):
        Footprint(3, padding="same")


@pytest.mark.parametrize("w,padding", [(20, "zero"), (9, "zero"), (9, "mask")])
def test_fused_attention_is_used_on_cpu_and_counts_its_flops(w, padding):
    """Charged B·C·K·H·W per term, also for narrow rows whose kernel call also computes junk pixels (and, masked,
    one more channel)."""
    b, c, h, heads, k = 2, 8, 9, 2, 3
    fp = Footprint(k, padding=padding)
    q, x = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    rel = torch.randn(heads, c // heads, k * k)
    with FlopCounterMode(display=False) as counter:
        local_attention(q, x, x, fp, heads, rel_q=rel, impl="fast")
    assert set(map(str, counter.get_flop_counts()["Global"])) == {"attnvision.nbr_attention"}
    # q·k, q·r and the aggregation: B·C·K·H·W multiply-adds each
    assert counter.get_total_flops() == 2 * 3 * b * c * k * k * h * w


WIDE = [(Footprint(3, 1, 1, "mask"), 9, 37), (Footprint(7, 1, 1, "mask"), 12, 35),
        (Footprint(5, 1, 1, "zero"), 7, 16), (Footprint(3, 1, 2, "reflect"), 7, 40),
        (Footprint(3, 2, 1, "mask"), 9, 37), (Footprint(7, 2, 1, "mask"), 11, 40), (Footprint(5, 2, 2, "zero"), 9, 38),
        (Footprint(3, 3, 1, "reflect"), 7, 50), (Footprint((1, 5), 1, 1, "mask"), 5, 21),
        (axial_footprint(20, None, "width"), 3, 20), (axial_footprint(17, None, "height"), 17, 18)]


# rows narrower than a block run as one long row with junk pixels (and the mask as a key channel), strided ones on
# their phase images
NARROW = [(Footprint(3, 1, 1, "mask"), 9, 7), (Footprint(7, 1, 1, "mask"), 6, 5), (Footprint(4, 1, 1, "mask"), 6, 7),
          (Footprint(5, 1, 1, "zero"), 7, 9), (Footprint(3, 1, 2, "reflect"), 7, 8),
          (Footprint((1, 5), 1, 1, "mask"), 5, 9), (Footprint(3, 2, 1, "mask"), 9, 9),
          (Footprint(7, 2, 1, "mask"), 9, 13), (Footprint(4, 2, 1, "mask"), 8, 9), (Footprint(3, 3, 2, "zero"), 10, 11),
          (Footprint(3, 1, 1, "mask"), 2, 3), (Footprint(3, 2, 1, "zero"), 3, 3),  # under one block: scalar lanes
          (axial_footprint(9, None, "width"), 3, 9), (axial_footprint(9, None, "height"), 9, 6)]


@pytest.mark.parametrize("fp,h,w", WIDE + NARROW, ids=[f"{_ids(fp)}-{h}x{w}" for fp, h, w in WIDE + NARROW])
@pytest.mark.parametrize("terms", ["", "qb", "qkv", "kvb", "qkv-apart"])
def test_fused_attention_on_vector_blocks_matches_reference(fp, h, w, terms):
    """Rows of 16 pixels and more take the fused kernel's register-tiled vector path (an overlapped last block,
    border blocks with their own live offsets, skipped dead offsets of a global axial window), and so do narrower
    rows laid out as one long row and strided windows laid out as their phase images; outputs and every gradient
    equal the reference in float64, for 8-channel heads (full register tiles) and 3-channel ones, also with the
    sums of v and r^v apart (the reference: per head [v, 0] and [0, r^v])."""
    for c, heads in ((16, 2), (6, 2)):
        g = torch.Generator().manual_seed(c)
        ho, wo, k = *fp.out_size(h, w), fp.num_offsets

        def rnd(*shape):
            return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_()

        q, x, v = rnd(2, c, ho, wo), rnd(2, c, h, w), rnd(2, c, h, w)
        extra = {"rel_q": rnd(1, c // heads, k) if "q" in terms else None,
                 "rel_k": rnd(heads, c // heads, k) if "k" in terms else None,
                 "rel_v": rnd(heads, c // heads, k) if "v" in terms else None,
                 "bias": rnd(heads, k, 1, 1) if "b" in terms else None}
        inputs = [q, x, v] + [t for t in extra.values() if t is not None]
        results = []
        for impl in IMPLS:
            y = local_attention(q, x, v, fp, heads, impl=impl, rel_v_apart="apart" in terms, **extra)
            results.append((y, torch.autograd.grad(y, inputs, torch.ones_like(y) + y.detach())))
        (y_ref, grads_ref), (y_fast, grads_fast) = results
        torch.testing.assert_close(y_fast, y_ref, rtol=1e-10, atol=1e-10)
        for g_fast, g_ref in zip(grads_fast, grads_ref):
            torch.testing.assert_close(g_fast, g_ref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("stride,w", [(2, 40), (2, 9), (3, 50)])
def test_fused_attention_runs_strided_windows_at_stride_one(monkeypatch, stride, w):
    """A strided window reaches the kernel at stride 1 (its phase images), where full rows take the vector blocks:
    forward and backward see stride 1 and the explicit table of neighbour shifts, one per offset."""
    from attnvision.ops import cpu
    calls = []
    for name in ("attention_forward", "attention_backward"):
        def spy(*args, _run=getattr(cpu, name)):
            bound = inspect.signature(_run).bind(*args).arguments
            calls.append((bound["shifts"], bound["stride"]))
            return _run(*args)
        monkeypatch.setattr(cpu, name, spy)
    fp = Footprint(7, stride, 1, "mask")
    q = torch.randn(2, 8, *fp.out_size(12, w))
    x = torch.randn(2, 8, 12, w, requires_grad=True)
    local_attention(q, x, x, fp, 2, impl="fast").sum().backward()
    assert len(calls) == 2 and all(stride_ == 1 and shifts.shape == (49,) for shifts, stride_ in calls)
    assert x.grad.abs().sum() > 0


@pytest.mark.parametrize("axis", ["height", "width"])
def test_fused_global_axial_counts_the_dense_pairs(axis):
    """A global axial window has 2L - 1 offsets, but the fused kernel skips the dead ones and is charged the L × L
    pairs per line that Axial-DeepLab's dense matmuls compute."""
    b, c, h, w, heads = 2, 8, 6, 20, 2
    length = h if axis == "height" else w
    q = torch.randn(b, c, h, w)
    rel = torch.randn(1, c // heads, 2 * length - 1)
    with FlopCounterMode(display=False) as counter:
        local_attention(q, q, q, axial_footprint(length, None, axis), heads, rel, rel, rel, impl="fast")
    assert set(map(str, counter.get_flop_counts()["Global"])) == {"attnvision.nbr_attention"}
    pairs = b * heads * h * w * length
    assert counter.get_total_flops() == 2 * (3 * pairs * c // heads + 2 * pairs * c // heads)


def test_fast_path_stores_nothing_k_squared_sized():
    """Autograd keeps only inputs-sized tensors for the fast aggregation (the reference keeps the unfolded values)."""
    b, c, h, w, heads, k = 2, 16, 12, 12, 2, 7
    fp = Footprint(k)
    weights = torch.randn(b, heads, k * k, h, w, requires_grad=True)
    v = torch.randn(b, c, h, w, requires_grad=True)
    largest = {}
    for impl in IMPLS:
        sizes = []

        def pack(t):
            sizes.append(t.numel())
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            local_aggregate(weights, v, fp, impl=impl)
        largest[impl] = max(sizes)
    assert largest["fast"] <= max(weights.numel(), v.numel() * 2)
    assert largest["reference"] >= v.numel() * k * k


@pytest.mark.parametrize("fp,h,w", [(Footprint(7, 1, 1, "mask"), 9, 13), (Footprint(3, 1, 2, "zero"), 6, 21),
                                    (Footprint(5, 1, 1, "mask"), 7, 5), (Footprint(3, 1, 1, "reflect"), 4, 3)],
                         ids=["7-mask-overlapped", "3-dil2-zero", "5-mask-narrow", "3-reflect-narrow"])
def test_logit_moments_kernel_matches_the_logits(fp, h, w):
    """The q·k sums and sums of squares of the logit BN's statistics (moments_cpu.c: never written per offset, rows
    on overlapping vectors or laid out as one long row) and their gradients equal those of the K-sized logits in
    float64."""
    from attnvision.ops.moments import logit_moments
    g = torch.Generator().manual_seed(w)
    q, k = (torch.randn(2, 6, h, w, generator=g, dtype=torch.float64, requires_grad=True) for _ in range(2))
    results = []
    for impl in IMPLS:
        moments, count = logit_moments(q, k, fp, 2, {}, impl)  # (sum, sum of squares), q·k, heads
        weights = torch.tensor([[[1.5, -0.5]], [[0.25, 2.0]]], dtype=torch.float64)
        results.append((moments, count, torch.autograd.grad((moments * weights).sum(), (q, k))))
    (ref, ref_count, ref_grads), (fast, fast_count, fast_grads) = results
    torch.testing.assert_close(fast, ref, rtol=1e-12, atol=1e-10)
    assert fast_count == ref_count and ref.shape == (2, 1, 2) and ref[1].min() > 0
    for a, b in zip(fast_grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-10)
