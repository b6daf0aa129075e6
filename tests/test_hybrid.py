"""Any weight function on any footprint (layers/hybrid.py, model=hybrid): the square footprint is the family's own
network, windows that cover the image equal larger ones, fast = reference on non-square and dilated windows, every
combination trains, counts are pinned, and the pairs that cannot exist say why in one line."""
import copy
import itertools

import pytest
import timm
import torch

from attnvision.engine.complexity import count_complexity
from attnvision.errors import ConfigError
from attnvision.layers import HybridSpatial
from attnvision.layers.hybrid import FOOTPRINTS, WEIGHT_FUNCTIONS
from attnvision.models import create_model
from conftest import reference_and_fast_grads

ATTENTION = ("sasa", "lr", "san_pairwise", "san_patchwise", "ps")


def _outputs(model, x):
    with torch.no_grad():
        return model.eval()(x)


def test_square_sasa_and_conv_hybrids_are_sasa_resnet_and_resnet():
    """The hybrid skeleton with SASA weights on a 7×7 window is SASA-ResNet, with a 3×3 conv ResNet: the same
    parameters under the same names (the spatial layer one level deeper) give the same logits."""
    x = torch.randn(2, 3, 32, 32)
    for family, hybrid in [("test_sasa_resnet", dict(weights="sasa", kernel_size=7)),
                           ("test_av_resnet", dict(weights="conv", kernel_size=3, widths=(8, 16, 32, 64)))]:
        torch.manual_seed(0)
        theirs = timm.create_model(family)
        ours = timm.create_model("test_hybrid_resnet", **hybrid)
        state = {k.replace(".conv2.", ".conv2.0."): v for k, v in theirs.state_dict().items()}
        ours.load_state_dict(state)
        assert torch.equal(_outputs(ours, x), _outputs(theirs, x)), family


@pytest.mark.parametrize("weights", ["sasa", "san_pairwise", "ps"])
def test_a_window_covering_the_image_is_the_whole_image(weights):
    """An axial span of 2·L + 3 on an L-pixel axis, or a (2·L + 3)² window, attends to what the whole-axis or global
    footprint does: with the in-range position tables copied (their centre columns), the outputs are equal. (LR-Net's
    geometry MLP sees offsets over the window radius and patchwise γ is sized by the window: not the same maps.)"""
    torch.manual_seed(0)
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    for footprint, larger in [("axial", dict(span=15)), ("global", dict(footprint="square", kernel_size=15))]:
        wide = HybridSpatial(16, 16, weights=weights, **{"footprint": footprint, **larger}).double()
        whole = HybridSpatial(16, 16, weights=weights, footprint=footprint, input_size=6).double()
        state = whole.state_dict()
        for key, value in wide.state_dict().items():
            first = (value.shape[-1] - state[key].shape[-1]) // 2 if value.dim() else 0
            state[key] = value[..., first:first + state[key].shape[-1]] if value.dim() else value
        whole.load_state_dict(state)
        torch.testing.assert_close(_outputs(whole, x), _outputs(wide, x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("weights,footprint", itertools.product(ATTENTION, ("axial", "dilated")))
def test_fast_equals_reference_on_axial_and_dilated_windows(weights, footprint):
    torch.manual_seed(0)
    layer = HybridSpatial(16, 16, stride=2, weights=weights, footprint=footprint, span=5, input_size=9).double()
    layer.train()
    x = torch.randn(2, 16, 9, 9, dtype=torch.float64, requires_grad=True)
    reference, fast = reference_and_fast_grads(layer, x, copy.deepcopy(layer))
    for a, b in zip(reference, fast):
        torch.testing.assert_close(b, a, rtol=1e-8, atol=1e-10)


def test_every_combination_trains():
    """Every weight function on every footprint builds and back-propagates into every parameter; se has one."""
    x = torch.randn(2, 3, 32, 32)
    built = 0
    for weights, footprint in itertools.product(WEIGHT_FUNCTIONS, FOOTPRINTS):
        if weights == "se" and footprint != "square":
            continue
        model = timm.create_model("test_hybrid_resnet", num_classes=10, weights=weights, footprint=footprint,
                                  span=7, kernel_size=1 if weights == "se" else 3)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([1, 2]))
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters()), \
            (weights, footprint)
        built += 1
    assert built == 6 * 4 + 1


def test_pairs_that_cannot_exist_say_why():
    for footprint in ("axial", "dilated", "global"):
        with pytest.raises(ConfigError, match=f"weights=se has only its own footprint.* footprint={footprint}"):
            create_model("hybrid", "test", weights="se", footprint=footprint, kernel_size=1)
    with pytest.raises(ConfigError, match="kernel_size=3"):
        create_model("hybrid", "test", weights="se", kernel_size=3)
    with pytest.raises(ConfigError, match="weights='attn' is unknown; choose one of sasa, lr, san_pairwise"):
        create_model("hybrid", "test", weights="attn")
    with pytest.raises(ConfigError, match="footprint='ring' is unknown; choose one of square, dilated, axial"):
        create_model("hybrid", "test", footprint="ring")
    with pytest.raises(ConfigError, match="span=4 must be a positive odd"):
        create_model("hybrid", "test", footprint="axial", span=4)


@pytest.mark.parametrize("name,kwargs,params,macs", [
    # the square SASA and conv hybrids count as SASA-ResNet-26 and ResNet-26 do (tests/test_sasa.py, test_models.py)
    ("hybrid_resnet26", dict(weights="sasa"), 10_331_264, 2_242_155_520),
    ("hybrid_resnet26", dict(weights="conv", kernel_size=3), 13_696_552, 2_342_256_640),
    ("hybrid_resnet26", dict(weights="san_patchwise", footprint="axial", span=15), 10_331_592, 2_100_307_968),
    ("hybrid_resnet26", dict(weights="se", kernel_size=1), 8_718_816, 1_417_483_264),
    ("av_resnet26", dict(se=True), 14_826_744, 2_343_378_944),  # SE-ResNet-26
])
def test_counts_are_pinned(name, kwargs, params, macs):
    counted = count_complexity(timm.create_model(name, **kwargs), 224)
    assert (counted.params, counted.macs) == (params, macs)
