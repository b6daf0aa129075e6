"""Model families. Importing this package registers every model with timm."""
from typing import Union

import timm
from torch import nn

from attnvision.errors import ConfigError
from . import resnet, san

__all__ = ["FAMILIES", "create_model", "model_name"]

# family -> {model.depth -> timm model name}; 'test' is each family's tiny CPU-test variant.
FAMILIES: dict = {
    "resnet": {26: "av_resnet26", 38: "av_resnet38", 50: "av_resnet50", "test": "test_av_resnet"},
    **{f"san_{a}": {10: f"san10_{a}", 15: f"san15_{a}", 19: f"san19_{a}", "test": f"test_san_{a}"}
       for a in ("pairwise", "patchwise")},
}


def model_name(family: str, depth: Union[int, str]) -> str:
    """The timm name for ``model=<family> model.depth=<depth>``, or a ConfigError naming the allowed values."""
    if family not in FAMILIES:
        raise ConfigError(f"model.family={family!r} is unknown; choose one of {', '.join(FAMILIES)}")
    variants = FAMILIES[family]
    if depth not in variants:
        allowed = ", ".join(str(d) for d in variants)
        raise ConfigError(f"model.depth={depth!r} is not a {family} variant; choose one of {allowed}")
    return variants[depth]


def create_model(family: str, depth: Union[int, str], **kwargs) -> nn.Module:
    """Build ``model=<family>`` at ``model.depth`` through timm; every other config key goes to the constructor."""
    return timm.create_model(model_name(family, depth), **kwargs)
