"""``count_flops.py``: parameters, MACs and FLOPs of a configured model, in total and per stage; each job of a
multirun also writes its totals as a result row to ``<sweep dir>/rows/`` (``scripts/make_tables.py --sweep``)."""
import json
from pathlib import Path

import pandas as pd
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import instantiate

from attnvision.data import check_data_cfg
from attnvision.errors import check_choice
from attnvision.results import write_row
from attnvision.results.rows import git_commit

from .checks import check_image_size
from .complexity import count_complexity
from .trainer import command_line_overrides

__all__ = ["count_flops", "write_sweep_row"]

CONVENTION_NOTES = {
    "macs": "MACs = multiply-adds of conv/linear/matmul/attention at batch 1; FLOPs = 2 x MACs",
    "san": "gmacs = SAN's official counter: MACs + bias adds + 2/BN element + 1/ReLU, pool input, subtraction; "
           "gflops = 2 x that",
}


def count_flops(cfg) -> dict:
    """Count ``cfg.model`` at ``cfg.data.image_size`` (batch 1, eval mode) and print a table or one JSON line."""
    check_choice("format", cfg.format, ("table", "json"))
    check_data_cfg(cfg.data)
    check_image_size(cfg.model, cfg.data.image_size)
    model = instantiate(cfg.model)
    arch = model.pretrained_cfg["architecture"]
    c = count_complexity(model, cfg.data.image_size, convention=cfg.convention)
    totals = {"model": arch, "image_size": cfg.data.image_size, "num_classes": cfg.data.num_classes,
              "params": c.params, "macs": c.macs, "flops": c.flops}
    if cfg.convention != "macs":
        totals["convention"] = cfg.convention
    if cfg.format == "table":
        rows = [{"stage": n, "params_m": p / 1e6, "gmacs": m / 1e9, "gflops": 2 * m / 1e9} for n, p, m in c.stages]
        rows.append({"stage": "total", "params_m": c.params / 1e6, "gmacs": c.macs / 1e9, "gflops": c.flops / 1e9})
        unit = CONVENTION_NOTES[cfg.convention]
        print(f"{arch} at {cfg.data.image_size}x{cfg.data.image_size}, {cfg.data.num_classes} classes ({unit})")
        print(pd.DataFrame(rows).to_markdown(index=False, floatfmt=".4f"))
    print(json.dumps(totals))
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        write_sweep_row(cfg, totals)
    return totals


def write_sweep_row(cfg, totals: dict) -> Path:
    """This multirun job's row, ``<sweep dir>/rows/<job dir name>.json``: the totals, the model family, the job's
    command-line overrides and the commit; single runs write none."""
    hydra_cfg = HydraConfig.get()
    row = {**totals, "family": cfg.model.family, "overrides": command_line_overrides(), "git_commit": git_commit()}
    return write_row(Path(hydra_cfg.sweep.dir) / "rows", Path(hydra_cfg.runtime.output_dir).name, row)
