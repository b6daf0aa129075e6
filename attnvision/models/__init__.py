"""Model families. Importing this package registers every model with timm."""
import re
from dataclasses import dataclass, field
from typing import Union

import timm
from torch import nn

from attnvision.errors import ConfigError, is_int
from . import av_resnet, axial, hybrid, lrnet, ps_resnet, san, sasa

__all__ = ["FAMILIES", "Family", "check_kernel_sizes", "create_model", "model_name", "official_filter_fn"]


@dataclass(frozen=True)
class Family:
    """How ``model=<family>`` names its timm variants.

    ``names`` maps ``model.depth`` (and 'test', the tiny CPU-test variant) to a timm name, a pattern whose fields
    are filled from ``choices``: config key -> {allowed value: name part}; ``model.stem=attention`` of
    ``sasa_resnet`` selects ``sasa_resnet26_attn_stem``.
    """

    names: dict
    choices: dict = field(default_factory=dict)


FAMILIES: dict = {
    "resnet": Family({26: "av_resnet26", 38: "av_resnet38", 50: "av_resnet50", "test": "test_av_resnet"}),
    **{f"san_{a}": Family({10: f"san10_{a}", 15: f"san15_{a}", 19: f"san19_{a}", "test": f"test_san_{a}"})
       for a in ("pairwise", "patchwise")},
    "sasa_resnet": Family({**{d: f"sasa_resnet{d}{{stem}}" for d in (26, 38, 50)}, "test": "test_sasa_resnet{stem}"},
                          {"stem": {"conv": "", "attention": "_attn_stem"}}),
    "lrnet": Family({26: "lrnet26{stem}", 50: "lrnet50{stem}", "test": "test_lrnet{stem}"},
                    {"stem": {"relation": "", "conv": "_conv_stem"}}),
    "ps_resnet": Family({26: "ps_resnet26", 38: "ps_resnet38", 50: "ps_resnet50", "test": "test_ps_resnet"}),
    "hybrid": Family({**{d: f"hybrid_resnet{d}" for d in (26, 38, 50)}, "test": "test_hybrid_resnet"}),
    "axial_resnet": Family({26: "axial26{width}{stem}", 50: "axial50{width}{stem}", "test": "test_axial_resnet{stem}"},
                           {"width": {"s": "s", "m": "m", "l": "l"}, "stem": {"conv": "", "axial": "_full"}}),
}


# the architectures whose authors released ImageNet weights (models.official): SAN's six, Axial-ResNet's conv-stem ones
OFFICIAL_WEIGHTS = {r"san(10|15|19)_(pairwise|patchwise)": san.checkpoint_filter_fn,
                    r"axial(26|50)[sml]": axial.checkpoint_filter_fn}


def official_filter_fn(arch: str):
    """The ``checkpoint_filter_fn`` that reads the authors' released weights of timm model ``arch``."""
    for pattern, filter_fn in OFFICIAL_WEIGHTS.items():
        if re.fullmatch(pattern, arch):
            return filter_fn
    raise ConfigError(f"the model builds {arch}, for which no official weights exist; they exist for SAN "
                      f"(san10|15|19_pairwise|patchwise) and conv-stem Axial-ResNets (axial26|50 s|m|l)")


def _allowed(values) -> str:
    return ", ".join(str(v) for v in values)


def model_name(family: str, depth: Union[int, str], **choices) -> str:
    """The timm name for ``model=<family> model.depth=<depth>`` (plus the family's choice keys, e.g. ``stem``),
    or a ConfigError naming the allowed values."""
    if family not in FAMILIES:
        raise ConfigError(f"model.family={family!r} is unknown; choose one of {_allowed(FAMILIES)}")
    spec = FAMILIES[family]
    if depth not in spec.names:
        raise ConfigError(f"model.depth={depth!r} is not a {family} variant; choose one of {_allowed(spec.names)}")
    parts = {}
    for key, options in spec.choices.items():
        value = choices.get(key, next(iter(options)))
        if value not in options:
            raise ConfigError(f"model.{key}={value!r} is not a {family} option; choose one of {_allowed(options)}")
        parts[key] = options[value]
    return spec.names[depth].format(**parts)


def check_kernel_sizes(kwargs: dict) -> None:
    """Every family's windows are centred on their pixel: ``model.kernel_size`` (and SAN's per-stage
    ``model.kernel_sizes``) must be positive odd integers."""
    sizes = {"kernel_size": [kwargs.get("kernel_size")], "kernel_sizes": list(kwargs.get("kernel_sizes") or [])}
    for key, values in sizes.items():
        for k in values:
            if k is not None and (not is_int(k) or k < 1 or k % 2 == 0):
                shown = kwargs[key] if key == "kernel_sizes" else k
                raise ConfigError(f"model.{key}={shown} must be positive odd window sizes (1, 3, 5, 7...): a "
                                  f"window is centred on its pixel")


def create_model(family: str, depth: Union[int, str], **kwargs) -> nn.Module:
    """Build ``model=<family>`` at ``model.depth`` through timm; the family's choice keys pick the variant, every
    other config key goes to the constructor."""
    check_kernel_sizes(kwargs)
    choices = {key: kwargs.pop(key) for key in FAMILIES.get(family, Family({})).choices if key in kwargs}
    return timm.create_model(model_name(family, depth, **choices), **kwargs)
