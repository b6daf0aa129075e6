"""The papers' ResNet baselines: exact parameter counts, multiply-adds, identity with timm's ResNet-50, timm API."""
import re

import pytest
import timm
import torch

import attnvision  # noqa: F401  (registers the models)
from attnvision.engine.complexity import count_complexity
from attnvision.layers import ConvSpatial, get_spatial_layer
from attnvision.models import create_model, model_name
from attnvision.errors import ConfigError

# At 224 px and 1000 classes. Params: the papers round them to 13.7 / 19.6 / 25.6 M (SASA Table 1, SAN Table 3);
# MACs are pinned to our count, which the papers give as 2.35 (4.7 B FLOPS in SASA) / 3.2 / 4.1 G.
EXACT = {26: (13_696_552, 2_342_256_640), 38: (19_626_792, 3_215_720_448), 50: (25_557_032, 4_089_184_256)}


@pytest.mark.parametrize("depth", [26, 38, 50])
def test_paper_resnet_params_and_macs(depth):
    c = count_complexity(create_model("resnet", depth), 224)
    assert (c.params, c.macs) == EXACT[depth]
    assert sum(m for _, _, m in c.stages) == c.macs
    assert [n for n, _, _ in c.stages] == ["stem", "stages.0", "stages.1", "stages.2", "stages.3", "head"]


def test_kernel_size_widens_every_spatial_conv():
    """``model=resnet model.kernel_size=5`` is SAN Table 7's Conv-ResNet26 5x5 (22.7M, 4.0G in SAN's convention)."""
    model = create_model("resnet", 26, kernel_size=5)
    spatial = [m for m in model.stages.modules() if isinstance(m, ConvSpatial)]
    assert len(spatial) == 8 and all(m.kernel_size == (5, 5) and m.padding == (2, 2) for m in spatial)
    c = count_complexity(model, 224)
    assert (c.params, c.macs) == (22_674_984, 3_986_423_808)


def test_resnet50_is_timm_resnet50():
    """Same weights give the same logits: av_resnet50 is exactly ResNet v1.5 as timm builds it."""
    ours, theirs = create_model("resnet", 50).eval(), timm.create_model("resnet50").eval()
    rename = [(r"^conv1\.", "stem.0."), (r"^bn1\.", "stem.1."), (r"^fc\.", "head.fc."),
              (r"^layer(\d)\.", lambda m: f"stages.{int(m.group(1)) - 1}.")]
    state = {}
    for key, value in theirs.state_dict().items():
        for pattern, repl in rename:
            key = re.sub(pattern, repl, key)
        state[key] = value
    ours.load_state_dict(state, strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-4)


def test_registered_with_timm_under_own_names():
    assert {"av_resnet26", "av_resnet38", "av_resnet50", "test_av_resnet"} <= set(timm.list_models("*av_resnet*"))
    # timm's own resnet26 is [2,2,2,2] and stays untouched
    assert sum(p.numel() for p in timm.create_model("resnet26").parameters()) != EXACT[26][0]


def test_small_stem_keeps_resolution():
    model = create_model("resnet", 26, small_stem=True, num_classes=10)
    assert model.forward_features(torch.randn(1, 3, 32, 32)).shape == (1, 2048, 4, 4)
    model = create_model("resnet", 26, num_classes=10)
    assert model.forward_features(torch.randn(1, 3, 224, 224)).shape == (1, 2048, 7, 7)


def test_tiny_variant_gradients_reach_every_parameter():
    # zero_init_last=False: with bn3's weight at zero the residual branches would (correctly) get no gradient yet
    model = timm.create_model("test_av_resnet", num_classes=10, zero_init_last=False)
    model.train()
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).sum()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_timm_model_api():
    model = timm.create_model("test_av_resnet", num_classes=7, drop_rate=0.1, drop_path_rate=0.1)
    x = torch.randn(2, 3, 32, 32)
    assert model.forward_head(model.forward_features(x), pre_logits=True).shape == (2, model.num_features)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.get_classifier().out_features == 3
    model.set_grad_checkpointing(True)
    model.train()
    model(x).sum().backward()
    assert model.pretrained_cfg["architecture"] == "test_av_resnet"


@pytest.mark.parametrize("stride,kernel,heads", [(1, 3, 1), (2, 3, 1), (1, 5, 4)])
def test_conv_spatial_macs_formula_matches_flop_counter(stride, kernel, heads):
    from torch.utils.flop_counter import FlopCounterMode
    layer = ConvSpatial(16, 32, stride=stride, kernel_size=kernel, num_heads=heads)
    x = torch.randn(1, 16, 12, 12)
    with FlopCounterMode(display=False) as counter:
        y = layer(x)
    assert y.shape[-2:] == (12 // stride, 12 // stride)
    assert counter.get_total_flops() == 2 * layer.macs(tuple(y.shape[-2:]))


def test_unknown_names_give_one_line_errors():
    with pytest.raises(ConfigError, match=r"model.depth=27 .* 26, 38, 50, test"):
        model_name("resnet", 27)
    with pytest.raises(ValueError, match=r"spatial_layer='nope' .* \['axial', 'conv', 'hybrid', 'local_relation'"):
        get_spatial_layer("nope")
