"""Every config composes, every model config instantiates, and the names in the user contract exist."""
import pytest
from hydra.utils import instantiate

from attnvision.config import group_options
from attnvision.errors import ConfigError

def test_groups_have_the_contract_options():
    assert set(group_options("data")) == {"digits", "cifar10", "cifar100", "imagenet", "synthetic"}
    families = {"resnet", "san_pairwise", "san_patchwise", "sasa_resnet", "lrnet", "axial_resnet"}
    assert families <= set(group_options("model"))
    assert {"sgd", "nesterov", "adamw"} <= set(group_options("optim"))
    assert {"cosine", "step"} <= set(group_options("sched"))


@pytest.mark.parametrize("data", group_options("data"))
@pytest.mark.parametrize("model", group_options("model"))
def test_train_config_composes(make_cfg, model, data):
    cfg = make_cfg(f"model={model}", f"data={data}")
    assert cfg.model.family == model and cfg.data.name == data
    assert cfg.model.num_classes == cfg.data.num_classes
    assert cfg.model.small_stem == (cfg.data.image_size <= 64)
    for key in ("epochs", "limit_train_batches", "limit_val_batches", "seed"):
        assert key in cfg.trainer
    for key in ("root", "image_size", "batch_size"):
        assert key in cfg.data


@pytest.mark.parametrize("model", group_options("model"))
def test_every_model_config_instantiates(make_cfg, model):
    import torch
    cfg = make_cfg(f"model={model}", "model.depth=test", "data=synthetic")
    net = instantiate(cfg.model)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, cfg.data.num_classes)


@pytest.mark.parametrize("name", ["evaluate", "count_flops"])
def test_other_entry_configs_compose(make_cfg, name):
    extra = ["checkpoint=x.pt"] if name == "evaluate" else []
    cfg = make_cfg(*extra, config_name=name)
    assert cfg.model.family == make_cfg().model.family == "san_patchwise"  # one default model everywhere
    if name == "count_flops":
        assert (cfg.data.image_size, cfg.data.num_classes) == (224, 1000)


@pytest.mark.parametrize("opt", ["sgd", "nesterov", "adamw"])
@pytest.mark.parametrize("sched", ["cosine", "step"])
def test_optim_and_sched_configs_build_timm_objects(make_cfg, opt, sched):
    import torch
    cfg = make_cfg(f"optim={opt}", f"sched={sched}")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    optimizer = instantiate(cfg.optim)(model)
    scheduler, epochs = instantiate(cfg.sched)(optimizer, num_epochs=3, updates_per_epoch=5)
    assert epochs == 3
    # norm and bias parameters sit in their own group without weight decay
    assert sorted(g["weight_decay"] for g in optimizer.param_groups) == [0.0, cfg.optim.weight_decay]
    assert isinstance(optimizer, torch.optim.SGD if opt != "adamw" else torch.optim.AdamW)
    if opt != "adamw":
        assert optimizer.param_groups[0]["nesterov"] == (opt == "nesterov")


def test_unknown_keys_are_named_and_hydra_overrides_pass():
    from attnvision.config import check_overrides
    check_overrides("train", ["hydra/job_logging=disabled", "hydra.verbose=true", "model=resnet", "model.depth=test",
                              "+model.extra=1"])
    with pytest.raises(ConfigError, match=r"^model.kernal_size is not a config key with model=resnet; "
                                          r"did you mean model.kernel_size\?"):
        check_overrides("train", ["model=resnet", "model.kernal_size=3"])
    check_overrides("train", ["model=sasa_resnet", "model.heads=2"])
    with pytest.raises(ConfigError, match=r"^model.heads is not a config key with model=resnet"):
        check_overrides("train", ["-m", "model=sasa_resnet,resnet", "model.heads=2"])  # every swept choice
