"""Axial-DeepLab (Wang et al., ECCV 2020): the position-sensitive axial and 2-D layers (widths, spans, sizes,
equivariance, gradients, fast against reference ops) and the Axial-ResNet / PS-ResNet models (exact counts against
the authors' code and Table 1, input sizes, stems)."""
import copy

import pytest
import torch

from attnvision.engine.complexity import count_complexity
from attnvision.errors import ConfigError
from attnvision.layers import AxialAttention, AxialSpatial, PSAttention
from attnvision.layers import axial as axial_module
from attnvision.models import create_model
from attnvision.ops import axial_footprint
from conftest import reference_and_fast_grads


def _layer(**kw):
    torch.manual_seed(0)
    kw = {"axis": "width", "length": 6, "num_heads": 4, **kw}
    return AxialAttention(16, 32, **kw).double()


def test_widths_follow_the_authors_layer():
    layer = _layer(length=56)
    # projection 16 -> 2·32 (q, k: 4 channels per head, v: 8), BNs over 64 qkv / 3·4 logits / 2·32 outputs,
    # one table of 4 + 4 + 8 rows and 2·56 - 1 offsets shared by the heads
    assert layer.qkv.weight.shape == (64, 16, 1, 1)
    assert (layer.bn_qkv.num_features, layer.bn_logits.num_features, layer.bn_output.num_features) == (64, 12, 64)
    assert layer.relative.shape == (16, 111)
    assert sum(p.numel() for p in layer.parameters()) == 16 * 64 + 2 * 64 + 2 * 12 + 2 * 64 + 16 * 111
    assert _layer(span=5, length=56).relative.shape == (16, 5)
    assert _layer(position_terms=("q",)).relative.shape == (4, 11)


@pytest.mark.parametrize("size", [4, 6, 9])
def test_any_axis_length_resamples_the_global_table(size):
    layer = _layer(axis="height")
    x = torch.randn(2, 16, size, 5, dtype=torch.float64)
    assert layer(x).shape == (2, 32, size, 5)
    rel = layer.relative_table(size)
    assert rel["v"].shape == (8, 2 * size - 1)
    if size == 6:  # at the configured length the table is read as it is
        assert torch.equal(torch.cat([rel["q"], rel["k"], rel["v"]]), layer.relative)


def test_height_layer_is_the_width_layer_on_the_transposed_map():
    height, width = _layer(axis="height"), _layer(axis="width")
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    assert torch.allclose(height(x), width(x.transpose(2, 3)).transpose(2, 3), atol=1e-12)


def test_span_covering_the_axis_equals_the_global_layer():
    global_layer = _layer(length=5)  # table of 2·5 - 1 = 9 offsets
    local_layer = _layer(length=56, span=9)  # a local 9-window on a 56-long axis, table of 9 offsets
    assert local_layer.window(5) is None and local_layer.window(6) == 9  # 9 >= 2·5 - 1 covers a 5-long axis
    local_layer.load_state_dict(global_layer.state_dict())
    x = torch.randn(2, 16, 3, 5, dtype=torch.float64)
    assert torch.allclose(global_layer(x), local_layer(x), atol=1e-12)
    x = torch.randn(2, 16, 3, 12, dtype=torch.float64)  # on a longer axis the window no longer covers it
    assert not torch.allclose(global_layer(x), local_layer(x), atol=1e-3)


def test_local_span_keeps_the_window():
    layer = _layer(length=56, span=3)
    x = torch.randn(1, 16, 1, 9, dtype=torch.float64)
    y = layer.train()(x)
    x2 = x.clone()
    x2[..., 8] += 1.  # only positions 7 and 8 see position 8 through their 3-window (BN statistics aside)
    layer.eval()
    changed = (layer(x2) - layer(x)).abs().sum((0, 1, 2)) > 0
    assert changed.nonzero().flatten().tolist() == [7, 8] and y.shape == x.shape[:1] + (32,) + x.shape[2:]


def test_without_position_terms_the_layer_is_permutation_equivariant():
    layer = _layer(position_terms=())
    assert layer.relative is None
    x = torch.randn(2, 16, 3, 6, dtype=torch.float64)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert torch.allclose(layer(x[..., perm]), layer(x)[..., perm], atol=1e-12)
    positional = _layer()
    assert not torch.allclose(positional(x[..., perm]), positional(x)[..., perm], atol=1e-3)


def test_gradients_reach_every_parameter():
    layer = _layer()
    layer(torch.randn(2, 16, 3, 6, dtype=torch.float64)).square().sum().backward()
    assert [n for n, p in layer.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


def test_bad_options_name_the_value():
    for bad, match in [(dict(axis="depth"), "axis='depth'"), (dict(span=4), "span=4"),
                       (dict(num_heads=3), "heads=3"), (dict(position_terms=("x",)), "position_terms='x'")]:
        with pytest.raises(ConfigError, match=match):
            AxialAttention(16, 32, **bad)


# The authors' PyTorch models at 224 and 1000 classes: parameters counted by instantiating csrhddlam/axial-deeplab's
# axialnet (its constructor needs no GPU), and its MACs when only conv, linear and attention matmuls are counted.
OFFICIAL = {"axial26s": (5_944_936, 1.81), "axial50s": (11_586_216, 2.84), "axial50m": (25_179_400, 5.96),
            "axial50l": (43_973_480, 10.19)}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_conv_stem_counts_equal_the_authors_code(name):
    depth, width = int(name[5:7]), name[-1]
    c = count_complexity(create_model("axial_resnet", depth, width=width), 224)
    params, gmacs = OFFICIAL[name]
    assert c.params == params
    assert abs(c.macs / 1e9 / gmacs - 1) < 0.03


def test_model_runs_at_32_224_and_320():
    small = create_model("axial_resnet", "test", num_classes=5)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert small.stages[0][0].bn2.__class__.__name__ == "Identity"  # the axial layers end in their own BN
    model = create_model("axial_resnet", 26, width="s", num_classes=3).eval()
    with torch.no_grad():
        for size in (32, 224, 320):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    lengths = [stage[i].conv2[0].length for stage in model.stages for i in range(len(stage))]
    assert lengths == [56, 56, 28, 28, 14, 14, 14, 14]  # each block's input side at 224


@pytest.mark.parametrize("kw,shape", [
    (dict(), (2, 16, 3, 6)),  # global: dense per-line matmuls against the footprint ops
    (dict(axis="height", span=3), (2, 16, 7, 3)),  # local window: fast against reference footprint kernels
    (dict(table_span=9), (2, 16, 3, 7)),  # deeplab2-style fixed table read at its centre
])
def test_axial_fast_and_reference_ops_agree(kw, shape):
    layer = _layer(**kw)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    reference, fast = reference_and_fast_grads(layer, x)
    assert len(reference) == 2 + len(list(layer.parameters()))
    for a, b in zip(reference, fast):
        assert torch.allclose(a, b, atol=1e-10)


def test_fixed_table_is_read_at_its_centre_and_bounds_the_axis():
    layer = _layer(table_span=9, length=56)
    assert layer.relative.shape == (16, 17)  # 2·9 - 1 columns whatever the configured length
    assert torch.equal(layer.relative_table(4)["q"], layer.relative[:4, 5:12])  # offsets -3..3 around column 8
    with pytest.raises(ConfigError, match="table_span=9"):
        layer(torch.randn(1, 16, 2, 10, dtype=torch.float64))


def test_per_axis_striding_pools_each_axis_after_its_layer():
    torch.manual_seed(0)
    pool, axis = AxialSpatial(8, 8, stride=2, num_heads=2, input_size=8), AxialSpatial(
        8, 8, stride=2, num_heads=2, input_size=8, stride_mode="axis")
    axis.load_state_dict(pool.state_dict())
    x = torch.randn(2, 8, 8, 7)
    assert pool(x).shape == axis(x).shape == (2, 8, 4, 4)
    assert [type(m).__name__ for m in axis] == ["AxialAttention", "AvgPool2d", "AxialAttention", "AvgPool2d"]
    assert axis[1].kernel_size == (2, 1) and axis[3].kernel_size == (1, 2)
    assert not torch.allclose(pool(x), axis(x), atol=1e-3)  # the width layer attends over half the rows
    with pytest.raises(ConfigError, match="stride_mode='rows'"):
        AxialSpatial(8, 8, stride_mode="rows")


def _ps(**kw):
    torch.manual_seed(0)
    return PSAttention(16, 32, **{"kernel_size": 3, "num_heads": 4, **kw}).double()


def test_ps_attention_widths_and_terms():
    layer = _ps()
    # SASA's dense q, k, v (3·32 channels), factorised row/column tables of 4 + 4 + 4 rows (q, k: 8/2, v: 8/2)
    assert layer.qkv.weight.shape == (96, 16, 1, 1) and layer.rel_rows.shape == layer.rel_cols.shape == (12, 3)
    assert (layer.bn_logits.num_features, layer.bn_output.num_features) == (12, 64)
    emb = layer.relative_embeddings()
    assert {t: tuple(e.shape) for t, e in emb.items()} == {"q": (8, 9), "k": (8, 9), "v": (8, 9)}
    assert torch.equal(emb["k"][:4, 5], layer.rel_rows[4:8, 1]) and torch.equal(emb["k"][4:, 5], layer.rel_cols[4:8, 2])
    plain = _ps(position_terms=("q",))  # Table 1's "Conv-Stem + Attention" with BN: SASA's terms
    assert plain.bn_logits.num_features == 8 and plain.bn_output.num_features == 32
    assert sum(p.numel() for p in layer.parameters()) - sum(p.numel() for p in plain.parameters()) == (
        2 * (4 + 4) * 3 + 2 * 4 + 2 * 32)  # r^k and r^v tables, one more logit map per head, the r^v output BN


@pytest.mark.parametrize("padding", ["mask", "zero"])
def test_ps_attention_fast_and_reference_ops_agree(padding):
    layer = _ps(padding=padding)
    x = torch.randn(2, 16, 5, 6, dtype=torch.float64, requires_grad=True)
    reference, fast = reference_and_fast_grads(layer, x)
    for a, b in zip(reference, fast):
        assert torch.allclose(a, b, atol=1e-10)
    assert all(g.abs().sum() > 0 for g in fast[2:])  # gradients reach every parameter


def test_ps_attention_is_translation_equivariant_inside_the_image():
    layer = _ps().eval()
    x = torch.randn(1, 16, 9, 9, dtype=torch.float64)
    shifted = torch.roll(x, (1, 2), (2, 3))
    # away from the borders (and the wrapped-around rows/columns) a shift of the input shifts the output
    assert torch.allclose(layer(shifted)[..., 3:7, 4:8], layer(x)[..., 2:6, 2:6], atol=1e-12)


# Axial-DeepLab Table 1 at 224 and 1000 classes: (params M, multiply-adds B) reported, and our exact counts.
TABLE1 = {
    "Conv-Stem + Attention (BN)": (("ps_resnet", 50, dict(position_terms=["q"])), (18.0, 3.5),
                                   (18_038_672, 3_483_158_528)),
    "Conv-Stem + PS-Attention": (("ps_resnet", 50, {}), (18.0, 3.7), (18_053_088, 3_670_013_952)),
    "Conv-Stem + Axial-Attention": (("axial_resnet", 50, dict(width="s", table_span=255)), (12.4, 2.8),
                                    (12_481_000, 2_842_942_464)),
    "Full Axial-Attention": (("axial_resnet", 50, dict(width="s", stem="axial", span=15, table_span=255)),
                             (12.5, 3.3), (12_532_152, 3_168_835_584)),
}


@pytest.mark.parametrize("row", sorted(TABLE1))
def test_table1_rows(row):
    (family, depth, kw), (params_m, gmacs), exact = TABLE1[row]
    c = count_complexity(create_model(family, depth, **kw), 224)
    assert (c.params, c.macs) == exact
    assert abs(c.params / 1e6 / params_m - 1) < 0.05 and abs(c.macs / 1e9 / gmacs - 1) < 0.05


def test_per_axis_striding_counts():
    c = count_complexity(create_model("axial_resnet", 50, width="s", stride_mode="axis"), 224)
    assert (c.params, c.macs) == (11_586_216, 2_637_170_688)  # same weights, fewer multiply-adds than pooling once


def test_full_model_stem_and_sizes():
    model = create_model("axial_resnet", 26, width="s", stem="axial", span=15, num_classes=3).eval()
    assert model.pretrained_cfg["architecture"] == "axial26s_full"
    stem = model.stem
    assert [b.conv2[0].length for b in stem[:3]] == [224, 112, 112] and type(stem[3]).__name__ == "MaxPool2d"
    assert [b.conv3.out_channels for b in stem[:3]] == [64, 64, 64] and stem[0].conv1.in_channels == 3
    with torch.no_grad():
        for size in (32, 224):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    test = create_model("axial_resnet", "test", stem="axial", num_classes=5)
    test(torch.randn(2, 3, 32, 32)).square().sum().backward()
    assert [n for n, p in test.named_parameters() if p.grad is None] == []
    with pytest.raises(ConfigError, match="model.stem='attention'"):
        create_model("axial_resnet", 26, stem="attention")


FOLDABLE = {
    "ps": lambda: PSAttention(16, 16, kernel_size=5, num_heads=2),
    "ps-q-zero": lambda: PSAttention(16, 16, kernel_size=3, num_heads=2, position_terms=("q",), padding="zero"),
    "ps-reflect": lambda: PSAttention(16, 16, kernel_size=3, num_heads=2, padding="reflect"),
    "axial-height": lambda: AxialAttention(16, 16, "height", 20, None, 2),
    "axial-span7": lambda: AxialAttention(16, 16, "width", 20, 7, 2),
    "axial-kv": lambda: AxialAttention(16, 16, "width", 20, None, 2, position_terms=("k", "v"))}


def _foldable(name):
    """A FOLDABLE layer in float64 whose BatchNorms' statistics and affines are far from the identity."""
    torch.manual_seed(0)
    layer = FOLDABLE[name]().double()
    for bn in (layer.bn_qkv, layer.bn_logits, layer.bn_output):
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2), bn.bias.data.uniform_(-1, 1)
    return layer


def _attend_args(layer, x):
    """(q, k, v, footprint, relative embeddings): what ``attend`` and ``fold`` take for ``layer(x)``."""
    height, width = x.shape[-2:]
    if isinstance(layer, AxialAttention):
        length = height if layer.axis == "height" else width
        fp, rel = axial_footprint(length, layer.window(length), layer.axis), layer.relative_table(length)
    else:
        fp, rel = layer.footprint, layer.relative_embeddings()
    return (*layer.project(x), fp, rel)


@pytest.mark.parametrize("name", FOLDABLE)
def test_eval_mode_folds_the_batchnorms_into_one_fused_attention(name):
    """In eval mode the logit and output BatchNorms fold into k, v and the tables (fold): the layer's output
    equals the unfolded computation (K-sized logits, BN, softmax, BN) to float64 rounding."""
    layer = _foldable(name).eval()
    x = torch.randn(2, 16, 20, 20, dtype=torch.float64)
    args = _attend_args(layer, x)
    torch.testing.assert_close(layer(x), layer.attend(*args), rtol=1e-11, atol=1e-11)
    layer.bn_logits.weight.data[0] = 0  # a zero q·k scale cannot be carried by k: the unfolded path runs
    assert layer.fold(*args) is None


@pytest.mark.parametrize("momentum", [0.1, None])
@pytest.mark.parametrize("name", FOLDABLE)
def test_training_mode_folds_batch_statistics_exactly(name, momentum, monkeypatch):
    """In training the logit BN's batch statistics come from the moments of the logit terms and fold into the
    fused attention: outputs, the gradients of the input and of every parameter, and the running statistics (also
    the cumulative ones of momentum=None) equal the unfolded BatchNorms' (the reference ops) to float64 rounding."""
    monkeypatch.setattr(axial_module, "DENSE_TRAINING_BELOW", 0)  # fold the short global axes of the test too
    layer = _foldable(name)
    for bn in (layer.bn_qkv, layer.bn_logits, layer.bn_output):
        bn.momentum = momentum
    folded = copy.deepcopy(layer)
    x = torch.randn(2, 16, 12, 10, dtype=torch.float64, requires_grad=True)
    for _ in range(2):  # the second step averages the first step's running statistics (momentum=None)
        reference, fast = reference_and_fast_grads(layer, x, folded)
        assert len(fast) == 2 + len(list(layer.parameters()))
        for a, b in zip(reference, fast):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)
    for a, b in zip(layer.buffers(), folded.buffers()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert int(folded.bn_logits.num_batches_tracked) == 2
    assert folded.fold(*_attend_args(folded, x)) is not None  # the fast path above was the fold
    folded.bn_logits.weight.data[0] = 0  # a zero q·k scale: the unfolded path, and no statistics tracked twice
    assert folded.fold(*_attend_args(folded, x)) is None
    assert int(folded.bn_logits.num_batches_tracked) == 3
