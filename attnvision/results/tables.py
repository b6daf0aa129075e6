"""Comparison, seed-aggregated and sweep tables from result rows: pandas in, CSV and markdown out."""
import platform
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import pandas as pd
import torch
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from attnvision.config import CONFIG_DIR
from attnvision.errors import ConfigError

from .rows import DIVERGED, FINISHED, atomic_write_bytes

__all__ = ["comparison_table", "sweep_table", "override_frame", "swept_keys", "write_table", "machine",
           "DEFAULT_COLUMNS", "SEED_METRICS", "SWEEP_METRICS"]

DEFAULT_COLUMNS = ("model", "family", "data", "image_size", "epochs", "params_m", "gmacs", "top1", "top5",
                   "best_top1", "status", "train_img_per_s", "wall_s", "seed", "git_commit", "run_dir")
# What varies from seed to seed (averaged by aggregate_seeds) and what names the configuration (grouped on, with
# the overrides that are neither seeds nor locations); the other columns (seed, git_commit, run_dir...) are dropped.
SEED_METRICS = ("top1", "top5", "best_top1", "val_loss", "train_img_per_s", "wall_s")
CONFIG_COLUMNS = ("model", "family", "depth", "data", "image_size", "epochs", "ema", "precision", "device",
                  "world_size", "params", "macs", "params_m", "gmacs")
SWEEP_METRICS = ("top1", "top5", "best_top1", "params_m", "gmacs", "train_img_per_s")
# Overrides that say where or on what a run ran, not what it was: the keys Hydra leaves out of job directory
# names (configs/hydra/default.yaml), and the seed.
RUN_ONLY_OVERRIDES = (*OmegaConf.load(CONFIG_DIR / "hydra" / "default.yaml").job.config.override_dirname.exclude_keys,
                      "trainer.seed")


def _frame(rows: Iterable[dict]) -> pd.DataFrame:
    """The rows as a frame, with parameters in millions, multiply-adds in billions and a status for every row."""
    df = pd.DataFrame(list(rows))
    df["status"] = df["status"].fillna(FINISHED) if "status" in df else FINISHED
    if "params" in df:
        df["params_m"] = (df["params"] / 1e6).round(3)
    if "macs" in df:
        df["gmacs"] = (df["macs"] / 1e9).round(3)
    return df


def _drop_diverged(df: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """``df`` with the ``metrics`` of its diverged rows blanked, so that means and stds skip them, and a column
    ``n_diverged`` (1 for a diverged row, else 0) to sum."""
    diverged = df["status"] == DIVERGED
    return df.assign(**{m: df[m].astype(float).mask(diverged) for m in metrics}, n_diverged=diverged.astype(int))


def comparison_table(rows: Iterable[dict], columns: Optional[Sequence[str]] = DEFAULT_COLUMNS,
                     aggregate_seeds: bool = False) -> pd.DataFrame:
    """One line per run with parameters in millions, multiply-adds in billions and its ``status`` (rows without one
    finished); with ``aggregate_seeds``, one line per configuration: ``<metric>_mean`` / ``<metric>_std`` (sample
    std) over its finished seeds, ``n_seeds`` (those finished) and ``n_diverged`` (those left out). Where one model
    ran in several configurations, a ``config`` column after ``model`` names the overrides that tell them apart."""
    df = _frame(rows)
    if df.empty:
        return df
    if aggregate_seeds:
        df = _aggregate_seeds(df)
        if columns is not None:
            columns = [name for c in columns for name in ([f"{c}_mean", f"{c}_std"] if c in SEED_METRICS else
                                                          ["n_seeds", "n_diverged"] if c == "seed" else [c])]
    config = _distinguishing_overrides(df)
    if config is not None:
        df = df.assign(config=config)
        columns = None if columns is None else [name for c in columns for name in ([c, "config"] if c == "model"
                                                                                   else [c])]
    if columns is not None:
        df = df[[c for c in columns if c in df.columns]]
    return df


def _distinguishing_overrides(df: pd.DataFrame) -> Optional[pd.Series]:
    """Per line, the overrides (seeds and locations aside) whose values differ among the lines of its model, as
    ``key=value`` separated by spaces; None when no model has lines that differ in them."""
    if "config_overrides" in df:
        configs = df["config_overrides"]
    elif "overrides" in df:
        configs = df["overrides"].map(_config_overrides)
    else:
        return None
    parsed = configs.map(lambda text: dict(o.partition("=")[::2] for o in text.split()))
    labels = pd.Series("", index=df.index)
    for _, lines in parsed.groupby(df["model"], sort=False):
        keys = sorted({k for d in lines for k in d if len({str(e.get(k)) for e in lines}) > 1})
        labels[lines.index] = [" ".join(f"{k}={d[k]}" for k in keys if k in d) for d in lines]
    return labels if (labels != "").any() else None


def _config_overrides(overrides) -> str:
    """A run's overrides without seeds and locations, as one string to group on."""
    if not isinstance(overrides, list):
        return ""
    kept = [o for o in OverridesParser.create().parse_overrides(overrides) if o.key_or_group not in RUN_ONLY_OVERRIDES]
    return " ".join(sorted(o.input_line for o in kept))


def _aggregate_seeds(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample standard deviation of SEED_METRICS over the finished rows that differ only in seed (and
    run), their number ``n_seeds`` and that of the diverged ones, ``n_diverged``; a configuration whose every seed
    diverged keeps its line, with n_seeds 0 and no means."""
    df = df.assign(config_overrides=df["overrides"].map(_config_overrides) if "overrides" in df else "")
    keys = [c for c in (*CONFIG_COLUMNS, "config_overrides") if c in df]
    metrics = [c for c in SEED_METRICS if c in df]
    grouped = _drop_diverged(df, metrics).groupby(keys, dropna=False, sort=False)
    stats = grouped[metrics].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    n_diverged = grouped["n_diverged"].sum()
    return stats.assign(n_seeds=grouped.size() - n_diverged, n_diverged=n_diverged).reset_index()


def _override_value(override):
    """An override's value as Hydra parses it (int, float, bool, str, None); lists and dicts as their text."""
    value = override.value()
    return value if value is None or isinstance(value, (bool, int, float, str)) else \
        override.get_value_element_as_str()


def override_frame(rows: Sequence[dict]) -> pd.DataFrame:
    """One column per override key (``model``, ``model.heads``...), one line per row, NaN where a row lacks it."""
    parse = OverridesParser.create().parse_overrides
    return pd.DataFrame([{o.key_or_group: _override_value(o) for o in parse(row.get("overrides") or [])}
                         for row in rows], index=range(len(rows)))


def swept_keys(overrides: pd.DataFrame) -> List[str]:
    """The override keys whose values differ across rows (seeds and locations included only if nothing else is)."""
    differing = [k for k in overrides.columns if overrides[k].astype(str).nunique() > 1]
    return [k for k in differing if k not in RUN_ONLY_OVERRIDES] or differing


def sweep_table(rows: Sequence[dict], keys: Optional[Sequence[str]] = None,
                metrics: Optional[Sequence[str]] = None) -> pd.DataFrame:
    """One line per combination of the swept ``keys`` (default: the override keys whose values differ across rows;
    a key may also name a row column such as ``model``) with the mean of each metric over the finished rows that
    share it (``metrics`` default: those of SWEEP_METRICS the rows have) and ``n_diverged``, the number of its rows
    left out because they diverged."""
    rows = list(rows)
    if not rows:
        raise ConfigError("no rows to tabulate")
    overrides = override_frame(rows)
    df = _frame(rows)
    df = pd.concat([df.drop(columns=[c for c in overrides.columns if c in df.columns]), overrides], axis=1)
    keys = list(keys) if keys else swept_keys(overrides)
    if not keys:
        raise ConfigError(f"no override differs across these {len(rows)} rows"
                          f"{'' if len(overrides.columns) else ' (they record none)'}; pass keys, choose from "
                          f"{', '.join(map(str, df.columns))}")
    for key in keys:
        if key not in df:
            raise ConfigError(f"sweep key {key!r} is in no row; choose from {', '.join(map(str, df.columns))}")
    metrics = list(metrics) if metrics else [m for m in SWEEP_METRICS if m in df and df[m].notna().any()]
    for metric in metrics:
        if metric not in df or not pd.api.types.is_numeric_dtype(df[metric]):
            numeric = [str(c) for c in df.columns if pd.api.types.is_numeric_dtype(df[c])]
            raise ConfigError(f"metric {metric!r} is no numeric column of these rows; choose from {', '.join(numeric)}")
    if not metrics:
        raise ConfigError(f"these rows have none of the metrics {', '.join(SWEEP_METRICS)}")
    grouped = _drop_diverged(df, metrics).groupby(keys, dropna=False)
    return grouped[metrics].mean().assign(n_diverged=grouped["n_diverged"].sum()).reset_index()


def _mean_pm_std(df: pd.DataFrame) -> pd.DataFrame:
    """``<m>_mean`` and ``<m>_std`` merged into one ``<m>`` column of ``98.12 ± 0.34`` (the mean alone when one
    seed leaves the std undefined), for markdown."""
    df = df.copy()
    for mean in [c for c in df.columns if c.endswith("_mean") and f"{c[:-5]}_std" in df]:
        metric, std = mean[:-5], f"{mean[:-5]}_std"
        text = [f"{m:.2f}" if pd.isna(s) else f"{m:.2f} ± {s:.2f}" for m, s in zip(df[mean], df[std])]
        df.insert(df.columns.get_loc(mean), metric, text)
        df = df.drop(columns=[mean, std])
    return df


def write_table(df: pd.DataFrame, stem, command: str) -> list:
    """Write ``<stem>.csv`` and ``<stem>.md``, each headed by the command that produced it; in markdown, mean and
    std columns read ``mean ± std``."""
    stem = Path(stem)
    csv = f"# made by: {command}\n" + df.to_csv(index=False)
    md = f"<!-- made by: {command} -->\n\n" + _mean_pm_std(df).to_markdown(index=False, floatfmt="g") + "\n"
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
