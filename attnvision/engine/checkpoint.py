"""Checkpoints: written atomically (temporary file, then rename) and read back with ``weights_only=True``."""
import io
import random
from pathlib import Path

import numpy as np
import torch

from attnvision.errors import ConfigError
from attnvision.results.rows import atomic_write_bytes

__all__ = ["save_checkpoint", "load_checkpoint", "capture_rng_state", "restore_rng_state", "resolve_resume"]


def save_checkpoint(path, state: dict) -> Path:
    """``torch.save`` into memory, then an atomic rename: a crash never leaves a truncated checkpoint behind."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_checkpoint(path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"checkpoint={path} does not exist")
    return torch.load(path, map_location=map_location, weights_only=True)


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


def resolve_resume(resume, run_dir: Path):
    """``trainer.resume``: null (fresh run), ``auto`` or a checkpoint path.

    ``auto`` takes this run dir's ``last.pt`` if there is one, else the newest ``last.pt`` of a sibling run
    directory (runs are grouped by ``run_name``, i.e. model and data), else starts fresh.
    """
    if resume in (None, False, ""):
        return None
    if resume == "auto":
        candidates = [run_dir / "last.pt"] if (run_dir / "last.pt").is_file() else \
            sorted(run_dir.parent.glob("*/last.pt"), key=lambda p: p.stat().st_mtime)[-1:]
        return candidates[0] if candidates else None
    path = Path(resume)
    if not path.is_file():
        raise ConfigError(f"trainer.resume={resume} is not a file; use auto, null or a checkpoint path")
    return path
