"""The authors' released ImageNet checkpoints, read into our models by rule.

Two families publish PyTorch weights whose architecture ours reproduces exactly: SAN (hszhao/SAN, ``model/san.py``;
files saved by its ``tool/train.py`` as ``{'state_dict': DataParallel's state_dict, ...}``) and Axial-DeepLab
(csrhddlam/axial-deeplab, ``lib/models/axialnet.py``; ``{'net': state_dict, 'epoch': ...}``). Each family's
``checkpoint_filter_fn`` (timm's convention, given to ``build_model_with_cfg``, so ``pretrained=True`` with a
``file`` overlay loads them) renames every key by the authors' module names and changes layouts where ours differ;
a key neither renamed nor known, a key of ours left missing, or a shape that differs is a one-line ``ConfigError``
that names them. This module holds what the two share.
"""
import re
from typing import Callable, Dict, Optional

import torch
from torch import nn
from timm.models import clean_state_dict

from attnvision.errors import ConfigError

__all__ = ["official_state_dict", "convert_state_dict", "rename"]

WRAPPERS = ("state_dict", "net", "model")  # SAN's train.py, axial-deeplab's save_model, ours and timm's


def official_state_dict(checkpoint: dict) -> Dict[str, torch.Tensor]:
    """The state_dict inside a saved file (under one of ``WRAPPERS`` or at the top), without DataParallel's
    ``module.`` prefix."""
    for key in WRAPPERS:
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return clean_state_dict(checkpoint)


def rename(key: str, rules) -> Optional[str]:
    """``key`` rewritten by the first of ``rules`` ((pattern, replacement) for ``re.fullmatch``) that matches it."""
    for pattern, replacement in rules:
        match = re.fullmatch(pattern, key)
        if match:
            return replacement(match) if callable(replacement) else match.expand(replacement)
    return None


def _some(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def convert_state_dict(state_dict: Dict[str, torch.Tensor], model: nn.Module, new_key: Callable[[str], Optional[str]],
                       layout: Callable[[str, torch.Tensor], torch.Tensor] = lambda key, value: value,
                       derived: tuple = ()) -> Dict[str, torch.Tensor]:
    """The authors' saved ``state_dict`` (``official_state_dict`` unwraps it) in ``model``'s keys: ``new_key``
    renames (None: not a key it knows), ``layout`` rewrites a value under its new key, ``derived`` names the
    authors' buffers that ours compute (dropped). A state_dict already in our keys (a converted file) passes through.
    Strict: unknown keys, missing keys and shape mismatches raise one ConfigError naming them."""
    state_dict, ours = official_state_dict(state_dict), model.state_dict()
    if next(iter(ours)) in state_dict:
        return state_dict
    converted, unknown = {}, []
    for key, value in state_dict.items():
        if key.rsplit(".", 1)[-1] in derived:
            continue
        target = new_key(key)
        if target is None or target not in ours:
            unknown.append(key)
            continue
        converted[target] = layout(target, value)
    missing = set(ours) - set(converted)
    shapes = [f"{k} {tuple(v.shape)} (ours {tuple(ours[k].shape)})" for k, v in converted.items()
              if v.shape != ours[k].shape]
    problems = [f"{what}{_some(keys)}" for what, keys in
                (("unknown keys ", unknown), ("missing keys ", missing), ("shapes differ: ", shapes)) if keys]
    if problems:
        name = getattr(model, "pretrained_cfg", {}).get("architecture", type(model).__name__)
        raise ConfigError(f"the checkpoint does not fit {name} as configured: " + "; ".join(problems))
    return converted
