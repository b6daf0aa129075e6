"""Hydra plumbing: the config folder, the project's resolvers, composition for tests and checks of group choices."""
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List, Optional

from omegaconf import OmegaConf

from attnvision.errors import ConfigError

__all__ = ["CONFIG_DIR", "GROUPS", "compose", "check_group_overrides", "group_options"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("data", "model", "optim", "sched", "trainer", "paths", "experiment")


@lru_cache(maxsize=None)
def run_stamp() -> str:
    """This invocation's timestamp; under torchrun rank 0's, so that all ranks share one run directory."""
    from attnvision.engine.distributed import broadcast_object, init_distributed
    stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
    if init_distributed().enabled:
        stamp = broadcast_object(stamp)
    return stamp


def main_process_only(value):
    """``value`` on rank 0 and None elsewhere (Hydra then skips writing its .hydra folder on that rank)."""
    from attnvision.engine.distributed import world_from_env
    return value if world_from_env().is_main else None


def architecture(model_cfg) -> str:
    """The timm name ``model`` builds (``av_resnet26``, ``sasa_resnet26_attn_stem``...), without building it; for
    run directory names. Bad values fall back to ``<family><depth>``: they fail, with one line, when the model is
    built (Hydra resolves the run directory before our error handling runs)."""
    from attnvision.models import FAMILIES, model_name
    family = model_cfg.family
    choices = {key: model_cfg[key] for key in getattr(FAMILIES.get(family), "choices", {}) if key in model_cfg}
    try:
        return model_name(family, model_cfg.depth, **choices)
    except ConfigError:
        return f"{family}{model_cfg.depth}"


OmegaConf.register_new_resolver("av_stamp", run_stamp, replace=True)
OmegaConf.register_new_resolver("av_arch", architecture, replace=True)
OmegaConf.register_new_resolver("av_main_only", main_process_only, replace=True)


def group_options(group: str) -> List[str]:
    """The configs of ``group``, those in subfolders as ``sub/name`` (``experiment=sasa_table4/k03``)."""
    root = CONFIG_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def check_group_overrides(overrides: Iterable[str]) -> None:
    """Fail with one line for ``group=value`` overrides that name no config, listing the group's options."""
    for override in overrides:
        key, sep, value = override.lstrip("+~").partition("=")
        if not sep or key not in GROUPS or "(" in value:
            continue
        options = group_options(key)
        for choice in value.split(","):
            if choice not in options and not (key == "experiment" and choice == "null"):
                raise ConfigError(f"{key}={choice} is not a {key} config; choose one of {', '.join(options)}")


def compose(config_name: str = "train", overrides: Optional[List[str]] = None):
    """The config an entry point would see for ``overrides`` (without Hydra's runtime section)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    overrides = list(overrides or [])
    check_group_overrides(overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name=config_name):
        return hydra_compose(config_name=config_name, overrides=overrides)
