"""Hydra plumbing: the config folder, the project's resolvers, composition for tests and checks of overrides."""
import difflib
import importlib.util
import itertools
import os
import secrets
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from typing import Iterable, List, Optional

from omegaconf import OmegaConf

from attnvision.errors import ConfigError

__all__ = ["CONFIG_DIR", "GROUPS", "compose", "check_overrides", "check_group_overrides", "group_options",
           "unique_dir", "small_stem_for"]

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
GROUPS = ("data", "model", "optim", "sched", "trainer", "paths", "experiment")
SMALL_IMAGE = 128  # images under this many pixels get the small-image stem unless data.small_stem is set


@lru_cache(maxsize=None)
def unique_dir(parent: str) -> str:
    """``<parent>/<time>_<random>``, created here with an exclusive ``mkdir``, so that no two processes ever share
    a run or sweep directory, even when started in the same second. Cached per ``parent``: every resolution in this
    process (all jobs of a multirun) gets the same one; under torchrun rank 0 makes it and the others take its name.
    """
    from attnvision.engine.distributed import broadcast_object, init_distributed, world_from_env
    path = None
    if world_from_env().is_main:
        try:
            os.makedirs(parent, exist_ok=True)
            while path is None:
                candidate = Path(parent) / f"{datetime.now():%Y-%m-%d_%H-%M-%S}_{secrets.token_hex(3)}"
                try:
                    candidate.mkdir()
                    path = str(candidate)
                except FileExistsError:
                    continue
        except OSError as err:
            raise ConfigError(f"paths.log_dir: cannot create a run directory in {parent} ({err.strerror}); "
                              f"choose a writable paths.log_dir") from None
    return broadcast_object(path) if init_distributed().enabled else path


def small_stem_for(image_size) -> bool:
    """``data.small_stem``'s default: the small-image stem for images under SMALL_IMAGE pixels."""
    return isinstance(image_size, int) and image_size < SMALL_IMAGE


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


# cached in the config too: Hydra copies a sweep's resolver cache into every job, also in a launcher's own processes
OmegaConf.register_new_resolver("av_unique_dir", unique_dir, replace=True, use_cache=True)
OmegaConf.register_new_resolver("av_small_stem", small_stem_for, replace=True)
OmegaConf.register_new_resolver("av_arch", architecture, replace=True)
OmegaConf.register_new_resolver("av_main_only", main_process_only, replace=True)


def group_options(group: str) -> List[str]:
    """The configs of ``group``, those in subfolders as ``sub/name`` (``experiment=sasa_table4/k03``)."""
    root = CONFIG_DIR / group
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def _key_values(overrides: Iterable[str]):
    """``(key, [values])`` of the plain ``key=value[,value...]`` overrides: no ``+``/``~``, no flags, no function
    syntax."""
    for override in overrides:
        key, sep, value = override.partition("=")
        if sep and not key.startswith(("-", "+", "~")) and "(" not in value:
            yield key, value.split(",")


def launcher_options() -> List[str]:
    """``hydra/launcher`` choices: Hydra's ``basic``, and where Hydra's submitit launcher is installed (the
    ``cluster`` extra) its ``submitit_local`` / ``submitit_slurm`` and ours (``slurm``)."""
    if importlib.util.find_spec("hydra_plugins.hydra_submitit_launcher") is None:
        return ["basic"]
    return ["basic", *group_options("hydra/launcher"), "submitit_local", "submitit_slurm"]


def check_group_overrides(overrides: Iterable[str]) -> None:
    """Fail with one line for ``group=value`` overrides that name no config, listing the group's options."""
    for key, values in _key_values(overrides):
        if key == "hydra/launcher":
            options = launcher_options()
            for choice in values:
                if choice not in options:
                    extra = "" if len(options) > 1 else " (the cluster ones need pip install -e '.[cluster]')"
                    raise ConfigError(f"hydra/launcher={choice} is not a launcher; choose one of "
                                      f"{', '.join(options)}{extra}")
        if key not in GROUPS:
            continue
        options = group_options(key)
        for choice in values:
            if choice not in options and not (key == "experiment" and choice == "null"):
                article = "an" if key[0] in "aeiou" else "a"
                raise ConfigError(f"{key}={choice} is not {article} {key} config; choose one of {', '.join(options)}")


def _leaf_keys(cfg) -> List[str]:
    """Every dotted key of ``cfg``, inner nodes included (``model``, ``model.depth``...)."""
    container = OmegaConf.to_container(cfg, resolve=False)
    keys, stack = [], [("", container)]
    while stack:
        prefix, node = stack.pop()
        for name, value in node.items():
            keys.append(prefix + str(name))
            if isinstance(value, dict):
                stack.append((f"{prefix}{name}.", value))
    return keys


def check_overrides(config_name: str, overrides: Iterable[str]) -> None:
    """Fail with one line for overrides Hydra would reject with a wall of text: unknown group options, and keys
    that are not in the config (naming the closest key; ``+key=value`` adds a new one). Keys are checked against
    the config of every combination of the group choices a multirun sweeps."""
    overrides = list(overrides)
    check_group_overrides(overrides)
    pairs = list(_key_values(overrides))
    groups = [[f"{key}={value}" for value in values] for key, values in pairs if key in GROUPS]
    # Hydra's own keys, group paths and packages (hydra/launcher=..., a/b=..., a@b=...) are Hydra's to check
    keys = [key for key, _ in pairs if key not in GROUPS and not key.startswith("hydra.")
            and "/" not in key and "@" not in key]
    if not keys:
        return
    for choice in itertools.islice(itertools.product(*groups), 16):
        cfg = compose(config_name, list(choice))
        known = set(_leaf_keys(cfg))
        for key in keys:
            if key not in known:
                where = f" with {' '.join(choice)}" if choice else ""
                close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
                hint = f"; did you mean {close[0]}?" if close else ""
                raise ConfigError(f"{key} is not a config key{where}{hint} (+{key}=VALUE adds a new key)")


def compose(config_name: str = "train", overrides: Optional[List[str]] = None):
    """The config an entry point would see for ``overrides`` (without Hydra's runtime section)."""
    from hydra import compose as hydra_compose, initialize_config_dir
    overrides = list(overrides or [])
    check_group_overrides(overrides)
    with initialize_config_dir(version_base="1.3", config_dir=str(CONFIG_DIR), job_name=config_name):
        return hydra_compose(config_name=config_name, overrides=overrides)
