"""Figures of result tables: accuracy against cost beside the papers' points, throughput against cost, and a sweep's
metrics against the swept value. Built with matplotlib's object API (``Figure``, rendered by Agg, no pyplot state)
and written as PNG through an atomic rename, each naming the command that made it."""
import io
import textwrap
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter

from attnvision.errors import ConfigError

from .rows import DIVERGED, atomic_write_bytes

__all__ = ["accuracy_figure", "throughput_figure", "sweep_figure", "save_png", "PAPER_KEYS"]

# A paper point, in the papers' units as configs/experiment/<table>/<row>.yaml write them under ``paper``:
# params in millions, macs in billions of multiply-adds, top-1 in %.
PAPER_KEYS = ("family", "label", "params", "macs", "top1")
MARKERS = "osD^vP*Xph<>"
PAPER_COLUMNS = 3  # of the paper legend
LABELS = {"params_m": "params (M)", "gmacs": "GMACs", "top1": "top-1 (%)", "top5": "top-5 (%)",
          "best_top1": "best top-1 (%)", "train_img_per_s": "train throughput (img/s)"}


def _label(column: str) -> str:
    """An axis label with units for a table column."""
    return LABELS.get(column, column)


def _require(table: pd.DataFrame, columns: Sequence[str], plot: str) -> None:
    """Fail with one line naming the columns a plot needs that ``table`` lacks."""
    missing = [c for c in columns if c not in table]
    if missing:
        raise ConfigError(f"the {plot} plot needs the columns {', '.join(columns)}; the rows lack "
                          f"{', '.join(missing)} (they have {', '.join(map(str, table.columns))})")


def _metric(table: pd.DataFrame, name: str):
    """The column to plot for ``name`` and its error bar: ``<name>_mean`` / ``<name>_std`` of a seed-aggregated
    table, else ``<name>`` and none."""
    return (f"{name}_mean", f"{name}_std") if f"{name}_mean" in table else (name, None)


def _markers(families) -> dict:
    """One marker per model family."""
    return {family: MARKERS[i % len(MARKERS)] for i, family in enumerate(sorted(set(families)))}


def _models(table: pd.DataFrame) -> pd.Series:
    """Each line's model, with its distinguishing overrides (``config``) where a model ran in several."""
    if "config" not in table:
        return table["model"]
    return table["model"] + table["config"].fillna("").map(lambda config: f" ({config})" if config else "")


def _colors(table: pd.DataFrame, paper_families=()) -> tuple:
    """One colour per model (and configuration), and per family that of its first model (the papers' other
    families get the next)."""
    models = {model: f"C{i % 10}" for i, model in enumerate(dict.fromkeys(_models(table)))}
    families = {}
    for model, family in zip(_models(table), table["family"]):
        families.setdefault(family, models[model])
    others = dict.fromkeys(f for f in paper_families if f not in families)
    families.update({family: f"C{(len(models) + i) % 10}" for i, family in enumerate(others)})
    return models, families


def _scatter_models(ax, table: pd.DataFrame, x: str, y: str, yerr: Optional[str], markers: dict,
                    colors: dict) -> None:
    """Our runs: one colour and legend entry per model, the marker of its family, error bars over seeds; diverged
    runs (``status``) are no points."""
    if "status" in table:
        table = table[table["status"] != DIVERGED]
    for model, runs in table.groupby(_models(table), sort=False):
        ax.errorbar(runs[x], runs[y], yerr=runs[yerr] if yerr else None, fmt=markers[runs["family"].iloc[0]],
                    color=colors[model], markersize=7, capsize=3, linestyle="none", label=model)


def _cost_axis(ax, values) -> None:
    """A log axis labelled 0.5, 1, 2, 5... when the values span more than a decade."""
    values = pd.Series(values).dropna()
    if len(values) and values.min() > 0 and values.max() / values.min() > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _paper_frame(points) -> pd.DataFrame:
    """The papers' points, checked, their params and macs named params_m and gmacs like our tables'."""
    for i, point in enumerate(points):
        missing = [k for k in PAPER_KEYS if k not in point]
        if missing:
            raise ConfigError(f"paper point {i} ({point.get('label', dict(point))}) lacks {', '.join(missing)}; "
                              f"each needs {', '.join(PAPER_KEYS)}")
    paper = pd.DataFrame([dict(p) for p in points], columns=list(PAPER_KEYS))
    return paper.rename(columns={"params": "params_m", "macs": "gmacs"})


def _runs_on(table: pd.DataFrame) -> str:
    """What our runs trained on, e.g. ``digits at 32 px``, for titles."""
    data = ", ".join(sorted(map(str, table["data"].unique()))) if "data" in table else "our data"
    sizes = ", ".join(sorted({f"{s:g}" for s in table["image_size"]})) + " px" if "image_size" in table else ""
    return f"{data} at {sizes}" if sizes else data


def accuracy_figure(table: pd.DataFrame, paper: Optional[Sequence[dict]] = None) -> Figure:
    """Top-1 against GMACs (left) and params (right): our runs filled, one marker per family and one colour per
    model; the papers' points (dicts of PAPER_KEYS) hollow in their family's marker and colour, in a legend of
    their own titled "paper" below the plots (the figure grows with it)."""
    y, yerr = _metric(table, "top1")
    _require(table, ["model", "family", "gmacs", "params_m", y], "accuracy")
    paper = _paper_frame(paper or [])
    markers = _markers([*table["family"], *paper["family"]])
    model_colors, family_colors = _colors(table, paper["family"])
    fig = Figure(figsize=(12, 4.5 + 0.2 * -(-len(paper) // PAPER_COLUMNS)), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, x in zip(axes, ("gmacs", "params_m")):
        _scatter_models(ax, table, x, y, yerr, markers, model_colors)
        paper_handles = [ax.scatter(getattr(point, x), point.top1, marker=markers[point.family], s=60,
                                    facecolors="none", edgecolors=family_colors[point.family], linewidths=1.5,
                                    label=point.label) for point in paper.itertuples()]
        _cost_axis(ax, [*table[x], *paper[x]])
        ax.set_xlabel(_label(x))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(_label("top1") + (", mean ± std over seeds" if yerr else ""))
    ours = [(h, label) for h, label in zip(*axes[1].get_legend_handles_labels()) if h not in paper_handles]
    if ours:  # none when every run diverged
        fig.legend(*zip(*ours), loc="outside right upper", fontsize=8, title=f"ours ({_runs_on(table)})",
                   title_fontsize=8)
    if paper_handles:
        fig.legend(paper_handles, paper["label"], loc="outside lower center", ncols=PAPER_COLUMNS, fontsize=8,
                   title="paper", title_fontsize=8)
    fig.suptitle("top-1 against cost" + (": ours filled, the papers' hollow" if len(paper) else ""))
    return fig


def throughput_figure(table: pd.DataFrame) -> Figure:
    """Training images per second against GMACs, one marker per family."""
    y, yerr = _metric(table, "train_img_per_s")
    _require(table, ["model", "family", "gmacs", y], "throughput")
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    _scatter_models(ax, table, "gmacs", y, yerr, _markers(table["family"]), _colors(table)[0])
    _cost_axis(ax, table["gmacs"])
    ax.set_xlabel(_label("gmacs"))
    ax.set_ylabel(_label("train_img_per_s"))
    ax.grid(alpha=0.3)
    if ax.containers:  # none when every run diverged
        ax.legend(fontsize=8, loc="best")
    fig.suptitle(f"training throughput against cost ({_runs_on(table)})")
    return fig


def sweep_figure(table: pd.DataFrame, keys: Sequence[str]) -> Figure:
    """Each metric of a sweep table (its columns besides ``keys`` and ``n_diverged``, one panel each) against the
    first swept key, one line per combination of the other keys; numeric values spanning 8x or more on a log2
    axis."""
    _require(table, keys, "sweep")
    metrics = [c for c in table.columns if c not in (*keys, "n_diverged")]
    x, others = keys[0], list(keys[1:])
    numeric = pd.api.types.is_numeric_dtype(table[x])
    fig = Figure(figsize=(4.2 * len(metrics) + 1.5, 4), layout="constrained")
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    lines = table.groupby(others, dropna=False) if others else [((), table)]
    for values, line in lines:
        label = ", ".join(f"{k}={v}" for k, v in zip(others, values)) or None
        line = line.sort_values(x)
        for ax, metric in zip(axes, metrics):
            ax.plot(line[x] if numeric else line[x].astype(str), line[metric], marker="o", label=label)
    ticks = sorted(table[x].dropna().unique()) if numeric else []
    for ax, metric in zip(axes, metrics):
        if numeric:
            if ticks[0] > 0 and ticks[-1] / ticks[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(ticks, labels=[f"{v:g}" for v in ticks])
            ax.minorticks_off()
        ax.set_xlabel(x)
        ax.set_ylabel(_label(metric))
        ax.grid(alpha=0.3)
    if others:
        fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper", fontsize=8)
    fig.suptitle(f"sweep of {', '.join(keys)}")
    return fig


def save_png(fig: Figure, path, command: str) -> Path:
    """Write ``fig`` to ``path`` as PNG with ``made by: <command>`` above the plot (clear of legends placed below
    or beside it) and in the PNG's metadata."""
    line = textwrap.fill(f"made by: {command}", width=int(16 * fig.get_figwidth()))  # ~16 characters an inch at 7 pt
    fig.text(0.005, 1, line, fontsize=7, color="0.35", va="bottom")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight", metadata={"Description": f"made by: {command}"})
    return atomic_write_bytes(path, buffer.getvalue())
