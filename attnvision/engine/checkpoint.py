"""Checkpoints: written atomically (temporary file, then rename) and read back with ``weights_only=True``."""
import io
import random
from pathlib import Path

import numpy as np
import timm
import torch

from attnvision.errors import ConfigError
from attnvision.models import official_filter_fn
from attnvision.results.rows import atomic_write_bytes

__all__ = ["save_checkpoint", "read_saved", "load_checkpoint", "convert_official", "read_official",
           "capture_rng_state", "restore_rng_state", "remove_stale_temporaries"]


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save`` into memory, then an atomic rename: a crash never leaves a truncated checkpoint behind."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def read_saved(path, map_location="cpu", key: str = "checkpoint") -> dict:
    """The dict ``torch.save`` wrote at ``path``, loaded weights-only (no code runs); a missing, truncated, foreign
    or malicious file is a one-line ConfigError that names ``key=path``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{key}={path} does not exist")
    try:
        saved = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # torch.load raises KeyError, RuntimeError, UnpicklingError... for files it can't read
        reason = str(err).strip().splitlines()[0].split(". ")[0] if str(err).strip() else type(err).__name__
        raise ConfigError(f"{key}={path} is not a readable checkpoint (truncated, corrupt or not written by "
                          f"torch.save: {reason})") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{key}={path} holds a {type(saved).__name__}, not a checkpoint's dict")
    return saved


def load_checkpoint(path, map_location="cpu", key: str = "checkpoint") -> dict:
    """The attnvision checkpoint at ``path`` (``read_saved``), which must hold 'model' weights."""
    ckpt = read_saved(path, map_location, key)
    if "model" not in ckpt:
        raise ConfigError(f"{key}={path} holds no attnvision checkpoint (no 'model' weights in it)")
    return ckpt


def convert_official(arch: str, src, out) -> Path:
    """The authors' released weights of timm model ``arch`` (1000 classes) at ``src``, written once to ``out`` as an
    attnvision checkpoint: ``evaluate.py checkpoint=OUT`` reads it, and so does timm (``pretrained=True`` with
    ``pretrained_cfg_overlay=dict(file=OUT)``), whose loader takes its ``model`` entry."""
    state = read_official(arch, src, timm.create_model(arch), "--src")
    return save_checkpoint(out, {"model": state, "model_name": arch, "converted_from": str(src)})


def read_official(arch: str, path, model, key: str) -> dict:
    """The authors' file at ``path`` read into the state_dict of ``model``, timm model ``arch``, by that family's
    ``checkpoint_filter_fn``; errors name ``key=path``."""
    filter_fn = official_filter_fn(arch)
    saved = read_saved(path, key=key)
    try:
        return filter_fn(saved, model)
    except ConfigError as err:
        raise ConfigError(f"{key}={path}: {err}") from None


def remove_stale_temporaries(folder) -> list:
    """Delete the ``.<name>.<random>.tmp`` files an interrupted atomic write left in ``folder`` (a run's own
    directory: no other process writes there); returns their paths."""
    stale = list(Path(folder).glob(".*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


def capture_rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain types so weights_only can load them."""
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": [np_name, torch.from_numpy(np_keys.astype(np.int64)), np_pos, np_has_gauss, np_gauss]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict) -> None:
    py_version, py_state, py_gauss = state["python"]
    random.setstate((py_version, tuple(py_state), py_gauss))
    torch.set_rng_state(state["torch"])
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = state["numpy"]
    np.random.set_state((np_name, np_keys.numpy().astype(np.uint32), np_pos, np_has_gauss, np_gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
