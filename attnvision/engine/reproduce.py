"""``scripts/reproduce.py``: a paper table from its rows, ``configs/experiment/<table>/<row>.yaml``.

Each row composes the train config with ``experiment=<table>/<row>`` (plus any overrides) and is counted, in the
convention of the paper's numbers (``paper.convention``), at the data config's image size and class count; in
``mode=train`` it is also trained with its paper's recipe. The table sets our parameters, multiply-adds (and
top-1) beside the paper's.
"""
import shlex
from pathlib import Path
from typing import List, Sequence, Tuple

import pandas as pd
from hydra.utils import instantiate

from attnvision.config import CONFIG_DIR, compose
from attnvision.errors import ConfigError, check_choice
from attnvision.results import write_table

from .complexity import count_complexity
from .trainer import train

__all__ = ["MODES", "RESULTS_DIR", "parse_args", "reproduce", "table_rows", "tables"]

EXPERIMENTS = CONFIG_DIR / "experiment"
SHARED = "recipe"  # configs/experiment/recipe/: what the rows share (recipes, paper units), no table
MODES = ("count", "train")
RESULTS_DIR = CONFIG_DIR.parent / "results" / "tables"


def tables() -> List[str]:
    return sorted(d.name for d in EXPERIMENTS.iterdir() if d.is_dir() and d.name != SHARED)


def table_rows(table: str) -> List[str]:
    return sorted(p.stem for p in (EXPERIMENTS / table).glob("*.yaml"))


def parse_args(argv: Sequence[str]) -> Tuple[str, str, List[str]]:
    """``table=<name> [mode=count|train] [override ...]`` -> (table, mode, Hydra overrides for every row)."""
    args = {"mode": "count"}
    overrides = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep:
            raise ConfigError(f"{arg!r} is no key=value argument; usage: table=<name> [mode=count|train] "
                              f"[override ...]")
        if key in ("table", "mode"):
            args[key] = value
        else:
            overrides.append(arg)
    if "table" not in args:
        raise ConfigError(f"table is missing; choose one of all, {', '.join(tables())}")
    return args["table"], args["mode"], overrides


def _diff_pct(ours: float, paper) -> float:
    return None if paper is None else round(100 * (ours / paper - 1), 1) + 0.0  # + 0.0: no -0.0


def _compose(table: str, row: str, mode: str, overrides: Sequence[str]):
    """The train config of ``experiment=<table>/<row>``; in ``mode=train`` with its run directory."""
    run_dir = f"paths.output_dir=${{av_unique_dir:${{paths.log_dir}}/reproduce/{table}/{row}}}"
    return compose("train", [f"experiment={table}/{row}", *([run_dir] if mode == "train" else []), *overrides])


def _row(cfg, experiment: str, mode: str) -> dict:
    """One table row: ``cfg`` counted and (``mode=train``) trained, beside its paper numbers."""
    paper = cfg.paper
    model = instantiate(cfg.model)
    c = count_complexity(model, cfg.data.image_size, convention=paper.convention)
    params_m, gmacs = c.params / 1e6, c.macs / 1e9
    record = {"row": paper.row, "experiment": experiment, "model": model.pretrained_cfg["architecture"],
              "params_m ours": round(params_m, 3), "params_m paper": paper.params,
              "params diff %": _diff_pct(params_m, paper.params), "gmacs ours": round(gmacs, 3),
              "gmacs paper": paper.macs, "macs diff %": _diff_pct(gmacs, paper.macs), "convention": paper.convention,
              "top1 paper": paper.top1}
    if mode == "train":
        Path(cfg.paths.output_dir).mkdir(parents=True, exist_ok=True)
        record["top1 ours"] = train(cfg).metrics["top1"]
    return record


def reproduce(table: str, mode: str = "count", overrides: Sequence[str] = (), out_dir=None) -> List[Path]:
    """Write ``<out_dir>/<table>.csv`` and ``.md`` for ``table`` (``all``: every table), rows in file-name order,
    headed by the command; ``out_dir`` defaults to results/tables when counting, ``<paths.log_dir>/tables`` when
    training."""
    check_choice("table", table, ["all", *tables()])
    check_choice("mode", mode, MODES)
    command = shlex.join(["python", "scripts/reproduce.py", f"table={table}",
                          *([f"mode={mode}"] if mode != "count" else []), *overrides])
    written = []
    for name in tables() if table == "all" else [table]:
        cfgs = {row: _compose(name, row, mode, overrides) for row in table_rows(name)}
        frame = pd.DataFrame([_row(cfg, f"{name}/{row}", mode) for row, cfg in cfgs.items()])
        print(f"{name}:\n{frame.to_markdown(index=False, floatfmt='g')}\n")
        log_dir = next(iter(cfgs.values())).paths.log_dir
        folder = out_dir or (RESULTS_DIR if mode == "count" else Path(log_dir) / "tables")
        written += write_table(frame, Path(folder) / name, command)
    return written
