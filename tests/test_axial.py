"""Axial-DeepLab's position-sensitive axial attention layer (Wang et al., ECCV 2020): widths, spans, sizes,
equivariance and gradients. The Axial-ResNet models are not built yet (issue 7)."""
import pytest
import torch

from attnvision.errors import ConfigError
from attnvision.layers.axial import AxialAttention


def _layer(**kw):
    torch.manual_seed(0)
    kw = {"axis": "width", "length": 6, "num_heads": 4, **kw}
    return AxialAttention(16, 32, **kw).double()


def test_widths_follow_the_authors_layer():
    layer = _layer(length=56)
    # projection 16 -> 2·32 (q, k: 4 channels per head, v: 8), BNs over 64 qkv / 3·4 logits / 2·32 outputs,
    # one table of 4 + 4 + 8 rows and 2·56 - 1 offsets shared by the heads
    assert layer.qkv.weight.shape == (64, 16, 1)
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
    rel = layer.relative_embeddings(size)
    assert rel["v"].shape == (8, size, size)
    if size == 6:  # at the configured length the table is read as it is: r[p - o]
        assert torch.equal(rel["q"][:, 1, 4], layer.relative[:4, 5 + 3])


def test_height_layer_is_the_width_layer_on_the_transposed_map():
    height, width = _layer(axis="height"), _layer(axis="width")
    x = torch.randn(2, 16, 6, 5, dtype=torch.float64)
    assert torch.allclose(height(x), width(x.transpose(2, 3)).transpose(2, 3), atol=1e-12)


def test_span_covering_the_axis_equals_the_global_layer():
    global_layer = _layer(length=5)  # table of 2·5 - 1 = 9 offsets
    local_layer = _layer(length=56, span=9)  # a local 9-window on a 56-long axis, table of 9 offsets
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
    from attnvision.engine.complexity import count_complexity
    from attnvision.models import create_model
    depth, width = int(name[5:7]), name[-1]
    c = count_complexity(create_model("axial_resnet", depth, width=width), 224)
    params, gmacs = OFFICIAL[name]
    assert c.params == params
    assert abs(c.macs / 1e9 / gmacs - 1) < 0.03


def test_model_runs_at_32_224_and_320():
    from attnvision.models import create_model
    small = create_model("axial_resnet", "test", num_classes=5)
    assert small(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    assert small.stages[0][0].bn2.__class__.__name__ == "Identity"  # the axial layers end in their own BN
    model = create_model("axial_resnet", 26, width="s", num_classes=3).eval()
    with torch.no_grad():
        for size in (32, 224, 320):
            assert model(torch.randn(1, 3, size, size)).shape == (1, 3)
    lengths = [stage[i].conv2[0].length for stage in model.stages for i in range(len(stage))]
    assert lengths == [56, 56, 28, 28, 14, 14, 14, 14]  # each block's input side at 224
