"""timm's own model checks (``tests/test_models.py`` of pytorch-image-models, which the wheel does not ship),
restated for every family's tiny variant: forward, backward, default cfgs, ``features_only``,
``forward_intermediates``, FX tracing, meta-device construction, bf16, DropBlock and ``torch.export``."""
import math

import pytest
import timm
import torch
from timm.models import FeatureInfo, get_notrace_functions, get_notrace_modules

import attnvision  # noqa: F401  (registers the models)
from attnvision.models import FAMILIES

MODELS = sorted(family.names["test"].format(**{key: next(iter(options.values()))
                                               for key, options in family.choices.items()})
                for family in FAMILIES.values())
MODELS += ["test_sasa_resnet_attn_stem", "test_lrnet_conv_stem", "test_axial_resnet_full"]


def _input(model, batch=1, dtype=torch.float32):
    torch.manual_seed(0)
    return torch.randn(batch, *model.pretrained_cfg["input_size"], dtype=dtype)


def test_every_family_is_checked():
    assert len(MODELS) == len(set(MODELS)) == 11
    assert set(MODELS) <= set(timm.list_models("test_*"))


@pytest.mark.parametrize("name", MODELS)
def test_forward_backward_and_default_cfg(name):
    """timm's test_model_forward / _backward / _default_cfgs, on one model."""
    model = timm.create_model(name).eval()
    cfg, x = model.pretrained_cfg, _input(model)
    with torch.no_grad():
        logits = model(x)
        model.set_grad_checkpointing()
        torch.testing.assert_close(model(x), logits, rtol=1e-4, atol=1e-5)
        features = model.forward_features(x)
        assert features.shape[-2:] == cfg["pool_size"] and features.shape[1] == model.num_features
        pre_logits = model.forward_head(features, pre_logits=True)
        assert pre_logits.shape == (1, model.head_hidden_size)
        model.reset_classifier(0)
        assert model.num_classes == 0 and model(x).shape == pre_logits.shape
        model.reset_classifier(0, "")
        assert model(x).shape == features.shape
        assert timm.create_model(name, num_classes=0, global_pool="").eval()(x).shape == features.shape
    assert cfg["first_conv"] + ".weight" in model.state_dict()
    assert cfg["classifier"] + ".weight" in timm.create_model(name).state_dict()
    assert model.in_chans == 3

    model = timm.create_model(name, num_classes=42).train()
    out = model(_input(model, batch=2))
    out.mean().backward()
    assert out.shape == (2, 42)
    assert [n for n, p in model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", MODELS)
def test_features_only_and_forward_intermediates(name):
    """timm's test_model_forward_features, _forward_intermediates and _forward_intermediates_features."""
    model = timm.create_model(name).eval()
    x = _input(model)
    info = FeatureInfo(model.feature_info, len(model.feature_info))
    with torch.no_grad():
        final, intermediates = model.forward_intermediates(x)
        torch.testing.assert_close(final, model.forward_features(x))
        assert len(intermediates) == len(info.channels()) >= 5
        for channels, reduction, feature in zip(info.channels(), info.reduction(), intermediates):
            assert feature.shape[:2] == (1, channels)
            assert feature.shape[-1] <= math.ceil(x.shape[-1] / reduction) + 1
        last_two = model.forward_intermediates(x, indices=2, intermediates_only=True)
        assert [f.shape for f in last_two] == [f.shape for f in intermediates[-2:]]

        default = timm.create_model(name, features_only=True)  # every level: SAN's 6, not timm's default 5
        assert default.feature_info.channels() == info.channels() and len(default.model.stages) == len(model.stages)
        backbone = timm.create_model(name, features_only=True, out_indices=(1, 2, 3)).eval()
        missing, unexpected = backbone.model.load_state_dict(model.state_dict(), strict=False)
        assert missing == [] and unexpected and all(k.startswith(("stages.3", "stages.4", "head")) for k in unexpected)
        maps = backbone(x)
        assert backbone.feature_info.channels() == [info.channels()[i] for i in (1, 2, 3)]
        for got, want in zip(maps, [intermediates[i] for i in (1, 2, 3)]):
            torch.testing.assert_close(got, want)
    # pruned: the stages after index 3 and the classifier are gone
    assert len(backbone.model.stages) == 3 and backbone.model.num_classes == 0


@pytest.mark.parametrize("name", MODELS)
def test_fx_feature_extraction(name):
    """timm's test_model_forward_fx / _backward_fx: torchvision's FX feature extractor, with timm's leaf modules
    (the attention layers register themselves as leaves), gives the model's own output and every gradient."""
    from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

    tracer_kwargs = dict(leaf_modules=get_notrace_modules(), autowrap_functions=get_notrace_functions(),
                         param_shapes_constant=True)
    model = timm.create_model(name).eval()
    train_nodes, eval_nodes = get_graph_node_names(model, tracer_kwargs=tracer_kwargs)
    fx_model = create_feature_extractor(model, train_return_nodes=[train_nodes[-1]],
                                        eval_return_nodes=[eval_nodes[-1]], tracer_kwargs=tracer_kwargs)
    x = _input(model)
    with torch.no_grad():
        assert torch.equal(next(iter(fx_model(x).values())), model(x))
    fx_model.train()
    next(iter(fx_model(_input(model, batch=2)).values())).mean().backward()
    assert [n for n, p in fx_model.named_parameters() if p.grad is None] == []


@pytest.mark.parametrize("name", MODELS)
def test_meta_device_bf16_and_export(name):
    """``device='meta'`` (with ``dtype``) builds without memory; ``model.to(torch.bfloat16)`` runs forward and backward in bf16 close
    to float32; ``torch.export`` of the eval model reproduces its output."""
    meta = timm.create_model(name, device="meta", dtype=torch.bfloat16)
    model = timm.create_model(name).eval()
    assert all(p.is_meta and p.dtype == torch.bfloat16 for p in meta.parameters())
    assert [(n, p.shape) for n, p in meta.named_parameters()] == [(n, p.shape) for n, p in model.named_parameters()]

    x = _input(model)
    with torch.no_grad():
        want = model(x)
        exported = torch.export.export(model, (x,)).module()
        torch.testing.assert_close(exported(x), want, rtol=1e-4, atol=1e-4)
        half = timm.create_model(name).eval()
        half.load_state_dict(model.state_dict())
        half.to(torch.bfloat16)
        got = half(x.to(torch.bfloat16))
    assert got.dtype == torch.bfloat16
    assert (got.float() - want).abs().max() <= 0.1 * want.abs().max()
    half.train()
    half(_input(half, batch=2, dtype=torch.bfloat16)).float().logsumexp(1).mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in half.parameters())


@pytest.mark.parametrize("name", ["test_av_resnet", "test_san_patchwise"])
def test_drop_block_in_the_last_two_stages(name):
    """timm's ``--drop-block`` reaches the model: DropBlock (timm's, block 5 then 3) in the last two stages only,
    active in training."""
    model = timm.create_model(name, drop_block_rate=0.2, zero_init_last=False)  # live residual branches
    blocks = [n for n, m in model.named_modules() if isinstance(m, timm.layers.DropBlock2d)]
    last_two = {f"stages.{len(model.stages) - 2}", f"stages.{len(model.stages) - 1}"}
    assert blocks and all(".".join(n.split(".")[:2]) in last_two for n in blocks)
    assert len(blocks) == sum(len([b for b in stage if hasattr(b, "drop_block")])
                              for i, stage in enumerate(model.stages) if f"stages.{i}" in last_two)
    x = _input(model, batch=2)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))
        model.train()
        torch.manual_seed(1)
        first = model(x)
        torch.manual_seed(2)
        assert not torch.allclose(first, model(x))


def test_timm_conventions():
    """Our ResNets list under their own module, not timm's ``resnet``; SAN declares its smallest ImageNet input;
    a new classifier follows the model's dtype; in_chans reaches the stem."""
    ours = {"av_resnet26", "av_resnet38", "av_resnet50", "test_av_resnet"}
    assert ours == set(timm.list_models(module="av_resnet"))
    assert not ours & set(timm.list_models(module="resnet"))
    assert timm.create_model("san10_pairwise", pretrained=False).pretrained_cfg["min_input_size"] == (3, 128, 128)
    model = timm.create_model("test_sasa_resnet", in_chans=1).double()
    model.reset_classifier(5)
    assert model.in_chans == 1 and model.get_classifier().weight.dtype == torch.float64
    assert model(torch.randn(1, 1, 32, 32, dtype=torch.float64)).shape == (1, 5)


@pytest.mark.parametrize("name", ["test_sasa_resnet", "test_lrnet", "test_san_pairwise", "test_san_patchwise",
                                  "test_ps_resnet", "test_axial_resnet"])
def test_compiled_training_step_is_one_graph_and_matches_eager(name):
    """``torch.compile(fullgraph=True)`` traces a training step of every family as one graph (the custom ops carry
    fake kernels and registered autograd, the backward kernels are ops too) and gives eager's loss and gradients.
    AOTAutograd without Inductor's code generation, which the same graph feeds on a GPU or with a C++ compiler."""
    torch.manual_seed(0)
    eager = timm.create_model(name, num_classes=10, zero_init_last=False).train()
    compiled = timm.create_model(name, num_classes=10, zero_init_last=False).train()
    compiled.load_state_dict(eager.state_dict())
    x, target = _input(eager, batch=2), torch.tensor([1, 7])
    step = torch.compile(lambda model: torch.nn.functional.cross_entropy(model(x), target), backend="aot_eager",
                         fullgraph=True)
    losses = [torch.nn.functional.cross_entropy(eager(x), target), step(compiled)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-5)
    for (n, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=n)
