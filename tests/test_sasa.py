"""SASA (Ramachandran et al., NeurIPS 2019): exact counts against the paper's tables, the layer's semantics,
the attention stem, fast = reference."""
import pytest
import timm
import torch

from attnvision.engine.complexity import count_complexity
from attnvision.errors import ConfigError
from attnvision.layers.sasa import SASAttention, relative_embedding, sinusoidal_encoding_2d
from attnvision.layers.sasa_stem import SASAStem
from attnvision.models import create_model

from conftest import reference_and_fast_grads

# The paper's numbers (Tables 1, 3, 4, 6): parameters in M, FLOPS in B (= 2 x multiply-adds).
PAPER = {  # (depth, stem, overrides) -> (params M, FLOPS B)
    (26, "conv", ()): (10.3, 4.5), (38, "conv", ()): (14.1, 5.7), (50, "conv", ()): (18.0, 7.0),
    (26, "attention", ()): (10.3, 4.7), (38, "attention", ()): (14.1, 6.0), (50, "attention", ()): (18.0, 7.2),
    **{(50, "conv", (("kernel_size", k),)): (18.0, f) for k, f in ((3, 6.6), (5, 6.7), (9, 7.3), (11, 7.7))},
    **{(50, "conv", (("attention_stages", s),)): (p, f) for s, p, f in (
        ((2, 3, 4), 18.1, 7.3), ((3, 4), 18.5, 7.5), ((4,), 20.8, 8.0), ((), 25.6, 8.2), ((1,), 25.5, 7.9),
        ((1, 2), 25.0, 7.8), ((1, 2, 3), 22.7, 7.2))},
    (50, "conv", (("logits", "qr"),)): (16.7, 6.1),
}
# Our exact counts at 224 and 1000 classes: (parameters, multiply-adds).
COUNTS = {
    (26, "conv", ()): (10_331_264, 2_242_155_520), (38, "conv", ()): (14_173_384, 2_862_657_024),
    (50, "conv", ()): (18_015_504, 3_483_158_528), (26, "attention", ()): (10_323_888, 2_336_089_088),
    (38, "attention", ()): (14_166_008, 2_956_590_592), (50, "attention", ()): (18_008_128, 3_577_092_096),
}


def _count(depth, stem, overrides):
    return count_complexity(create_model("sasa_resnet", depth, stem=stem, **dict(overrides)), 224)


@pytest.mark.parametrize("key", sorted(PAPER, key=str))
def test_counts_at_224_match_the_paper(key):
    c = _count(*key)
    params, flops = PAPER[key]
    assert abs(c.params / 1e6 / params - 1) < 0.01
    assert abs(c.flops / 1e9 / flops - 1) < 0.05
    if key in COUNTS:
        assert (c.params, c.macs) == COUNTS[key]


def test_positional_encodings_of_table5_change_only_the_relative_term():
    counts = {pe: _count(50, "conv", (("positional_encoding", pe),)) for pe in ("none", "absolute", "relative")}
    assert counts["none"].macs == counts["absolute"].macs  # the sinusoid is added, not projected
    assert counts["relative"].params - counts["none"].params == sum(  # head_dim/2 × k per table, two tables
        7 * w // 8 for w, n in zip((64, 128, 256, 512), (3, 4, 6, 3)) for _ in range(n))
    assert abs(counts["none"].flops / 1e9 / 6.9 - 1) < 0.05 and abs(counts["relative"].flops / 1e9 / 7.0 - 1) < 0.05


def test_registered_with_timm_and_variants_pick_the_stem():
    names = {f"sasa_resnet{d}{s}" for d in (26, 38, 50) for s in ("", "_attn_stem")}
    assert names <= set(timm.list_models("sasa_resnet*"))
    assert create_model("sasa_resnet", 26, stem="attention").pretrained_cfg["architecture"] == \
        "sasa_resnet26_attn_stem"
    with pytest.raises(ConfigError, match="model.stem='axial'.*conv, attention"):
        create_model("sasa_resnet", 26, stem="axial")
    for stem in ("conv", "attention"):
        model = create_model("sasa_resnet", "test", stem=stem, num_classes=7)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)
        assert [f["reduction"] for f in model.feature_info] == [1, 1, 2, 4, 8]  # stages at 32/16/8/4
    model = create_model("sasa_resnet", 26, stem="attention", attention_stages=(2, 3))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)
    kinds = [type(stage[0].conv2).__name__ for stage in model.stages]
    assert kinds == ["ConvSpatial", "SASAttention", "SASAttention", "ConvSpatial"]
    assert [stage[0].conv2.footprint.kernel_size for stage in model.stages[1:3]] == [(7, 7), (7, 7)]


@pytest.mark.parametrize("stem", ["conv", "attention"])
def test_gradients_reach_every_parameter(stem):
    torch.manual_seed(0)
    model = create_model("sasa_resnet", "test", stem=stem, num_classes=5, zero_init_last=False)
    model(torch.randn(2, 3, 32, 32)).logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert missing == []


def _layer(**kw):
    torch.manual_seed(0)
    return SASAttention(8, 8, num_heads=2, kernel_size=5, **kw).double()


def test_translation_equivariant_on_an_interior_crop():
    layer = _layer(padding="zero")
    x = torch.randn(1, 8, 20, 20, dtype=torch.float64)
    shifted = torch.roll(x, shifts=(3, 2), dims=(2, 3))
    y, y_shifted = layer(x), layer(shifted)
    # away from the borders (k//2 = 2) and the wrapped rows/columns, shifting the input shifts the output
    assert torch.allclose(y_shifted[..., 3 + 2:-2, 2 + 2:-2], y[..., 2:-2 - 3, 2:-2 - 2], atol=1e-12)
    assert not torch.allclose(y_shifted, y, atol=1e-3)


@pytest.mark.parametrize("padding", ["mask", "zero"])
def test_each_heads_weights_sum_to_one_and_mask_excludes_the_outside(padding):
    layer = _layer(padding=padding)
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    w = layer.attention_weights(x)  # B, heads, K, H, W
    assert w.shape == (2, 2, 25, 6, 7)
    assert torch.allclose(w.sum(2), torch.ones(2, 2, 6, 7, dtype=torch.float64))
    outside = ~layer.footprint.valid_mask(6, 7)
    if padding == "mask":
        assert torch.all(w[:, :, outside] == 0)
    else:  # zero padding keeps out-of-image zero keys inside the softmax: the corner gives them weight
        assert w[:, :, outside].min() > 0
    q, k, v = layer.project(x)  # forward aggregates exactly these weights (fused kernel vs explicit weights)
    ref = torch.einsum("bgkhw,bgdkhw->bgdhw", w, torch.nn.functional.pad(v, (2, 2, 2, 2)).unfold(2, 5, 1)
                       .unfold(3, 5, 1).reshape(2, 2, 4, 6, 7, 25).permute(0, 1, 2, 5, 3, 4)).reshape(2, 8, 6, 7)
    assert torch.allclose(layer(x), ref, atol=1e-12)


def test_relative_embedding_concatenates_a_row_half_and_a_column_half():
    rows, cols = torch.randn(3, 5), torch.randn(3, 4)
    r = relative_embedding(rows, cols).view(6, 5, 4)  # D, row offset, column offset
    assert torch.equal(r[:3], rows[:, :, None].expand(3, 5, 4))
    assert torch.equal(r[3:], cols[:, None, :].expand(3, 5, 4))
    layer = _layer(logits="qr")
    assert (layer.rel_rows.shape, layer.rel_cols.shape) == ((2, 5), (2, 5))  # head_dim/2 × k, not summed d × k
    x = torch.randn(1, 8, 9, 9, dtype=torch.float64)
    with torch.no_grad():  # queries whose row half is zero score column offsets only, and vice versa
        layer.qkv.weight[:8].view(2, 2, 2, 8, 1, 1)[:, 0] = 0  # zero each head's first (row) half
    q, _, _ = layer.project(x)
    logits = layer.attention_logits(q, None).view(1, 2, 5, 5, 9, 9)[..., 2:-2, 2:-2]  # interior windows
    assert torch.allclose(logits, logits[:, :, :1].expand_as(logits))  # constant along the row offset
    assert not torch.allclose(logits, logits[:, :, :, :1].expand_as(logits))


def test_absolute_encoding_is_a_2d_sinusoid_and_strides_pool_after_attention():
    pe = sinusoidal_encoding_2d(8, 4, 5)
    assert pe.shape == (1, 8, 4, 5)
    assert torch.equal(pe[0, :4, :, 0:1].expand(4, 4, 5), pe[0, :4])  # first half: constant along a row
    assert torch.allclose(pe[0, 0, :, 0], torch.arange(4.).sin())
    layer = SASAttention(8, 8, stride=2, num_heads=2, positional_encoding="absolute")
    assert layer(torch.randn(1, 8, 7, 9)).shape == (1, 8, 4, 5)  # ceil, like the strided shortcut
    for bad, match in [(dict(num_heads=3), "heads=3"), (dict(logits="qk"), "logits='qk'"),
                       (dict(positional_encoding="none", logits="qr"), "needs positional_encoding"),
                       (dict(padding="circular"), "padding='circular'")]:
        with pytest.raises(ConfigError, match=match):
            SASAttention(16, 16, **bad)


@pytest.mark.parametrize("kw", [dict(padding="mask"), dict(padding="zero"), dict(positional_encoding="absolute"),
                                dict(positional_encoding="none"), dict(logits="qr"), dict(stride=2)])
def test_fast_and_reference_ops_agree(kw):
    layer = _layer(**kw).float()
    x = torch.randn(2, 8, 11, 10, requires_grad=True)
    for ref, fast in zip(*reference_and_fast_grads(layer, x)):
        assert torch.allclose(ref, fast, atol=1e-5, rtol=1e-4)


def test_attention_stem_blocks_mixtures_and_pool():
    torch.manual_seed(0)
    stem = SASAStem(3, 16, num_mixtures=3).double().eval()
    p = stem.mixture_weights()
    assert p.shape == (4, 4, 3) and torch.allclose(p.sum(-1), torch.ones(4, 4, dtype=torch.float64))
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    y = stem(x)
    assert y.shape == (1, 16, 4, 4)
    x2 = x.clone()
    x2[..., 4:8, 8:12] += 1.  # a change inside one 4×4 block reaches that block's pooled output only
    changed = (stem(x2) - y).abs().sum(1)[0] > 0
    assert changed.nonzero().tolist() == [[1, 2]]
    # with q, k and the relative tables zeroed every pixel attends uniformly to its block, so the stem returns the
    # block mean of the spatially-aware values v_ab = (sum_m p(a mod 4, b mod 4, m) W_V^m) x_ab
    with torch.no_grad():
        for t in (stem.qk.weight, stem.rel_rows, stem.rel_cols):
            t.zero_()
    stem.norm, stem.pool = torch.nn.Identity(), torch.nn.Identity()
    w = stem.values.weight.view(3, 16, 3)  # M, C_out, C_in
    v = torch.einsum("abm,mcd,dhawb->chawb", p, w, x[0].view(3, 4, 4, 4, 4))  # C, H/4, 4, W/4, 4
    expected = v.mean((2, 4), keepdim=True).expand_as(v).reshape(16, 16, 16)
    assert torch.allclose(stem(x)[0], expected, atol=1e-12)
    with pytest.raises(ConfigError, match="divisible by its 4x4 blocks"):
        stem(torch.randn(1, 3, 18, 16, dtype=torch.float64))


def test_attention_stem_conv_values():
    """Table 7's "spatial convolution to produce values": one 4×4 conv ("same" zero padding) makes v."""
    torch.manual_seed(0)
    stem = SASAStem(3, 16, values="conv").double().eval()
    assert stem.emb_mix is None and stem.values[1].weight.shape == (16, 3, 4, 4)
    with torch.no_grad():
        for t in (stem.qk.weight, stem.rel_rows, stem.rel_cols):
            t.zero_()
    stem.norm, stem.pool = torch.nn.Identity(), torch.nn.Identity()
    x = torch.randn(1, 3, 16, 16, dtype=torch.float64)
    v = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (1, 2, 1, 2)), stem.values[1].weight)  # 1, C, H, W
    expected = v.view(16, 4, 4, 4, 4).mean((2, 4), keepdim=True).expand(16, 4, 4, 4, 4).reshape(1, 16, 16, 16)
    assert torch.allclose(stem(x), expected, atol=1e-12)  # uniform attention: the block means of the conv values
    conv, mixtures = (count_complexity(SASAStem(3, 64, values=v), 32).macs for v in ("conv", "mixtures"))
    # a 4×4 kernel instead of four 1×1 mixtures, and no mixture weights p = softmax((emb_row + emb_col)·ν)
    assert conv - mixtures == 32 * 32 * 64 * 3 * (4 * 4 - 4) - 4 * 4 * 64 * 4
    with pytest.raises(ConfigError, match="stem_values='pixel' is unknown; choose one of mixtures, conv"):
        SASAStem(3, 16, values="pixel")
