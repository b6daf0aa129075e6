"""Comparison tables from result rows: pandas in, CSV and markdown out."""
import platform
from pathlib import Path
from typing import Iterable, Optional, Sequence

import pandas as pd
import torch

from .rows import atomic_write_bytes

__all__ = ["comparison_table", "write_table", "machine", "DEFAULT_COLUMNS"]

DEFAULT_COLUMNS = ("model", "data", "image_size", "epochs", "params_m", "gmacs", "top1", "top5", "best_top1",
                   "train_img_per_s", "wall_s", "seed", "git_commit", "run_dir")


def comparison_table(rows: Iterable[dict], columns: Optional[Sequence[str]] = DEFAULT_COLUMNS) -> pd.DataFrame:
    """One line per run with parameters in millions and multiply-adds in billions."""
    df = pd.DataFrame(list(rows))
    if df.empty:
        return df
    if "params" in df:
        df["params_m"] = (df["params"] / 1e6).round(3)
    if "macs" in df:
        df["gmacs"] = (df["macs"] / 1e9).round(3)
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df


def write_table(df: pd.DataFrame, stem, command: str) -> list:
    """Write ``<stem>.csv`` and ``<stem>.md``, each headed by the command that produced it."""
    stem = Path(stem)
    csv = f"# made by: {command}\n" + df.to_csv(index=False)
    md = f"<!-- made by: {command} -->\n\n" + df.to_markdown(index=False, floatfmt="g") + "\n"
    return [atomic_write_bytes(stem.with_suffix(".csv"), csv.encode()),
            atomic_write_bytes(stem.with_suffix(".md"), md.encode())]


def machine(device: torch.device) -> str:
    """What a benchmark ran on, for its table's header: torch version, CPU threads, and the GPU or CPU model."""
    if device.type == "cuda":
        hardware = torch.cuda.get_device_name(device)
    else:
        cpuinfo = Path("/proc/cpuinfo")
        lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
        hardware = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                        platform.processor() or platform.machine())
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, {hardware}"
