"""``count_flops.py``: parameters, MACs and FLOPs of a configured model, in total and per stage."""
import json

import pandas as pd
from hydra.utils import instantiate

from attnvision.errors import ConfigError

from .complexity import count_complexity

__all__ = ["count_flops"]

CONVENTION_NOTES = {
    "macs": "MACs = multiply-adds of conv/linear/matmul/attention at batch 1; FLOPs = 2 x MACs",
    "san": "gmacs = SAN's official counter: MACs + bias adds + 2/BN element + 1/ReLU, pool input, subtraction; "
           "gflops = 2 x that",
}


def count_flops(cfg) -> dict:
    """Count ``cfg.model`` at ``cfg.data.image_size`` (batch 1, eval mode) and print a table or one JSON line."""
    if cfg.format not in ("table", "json"):
        raise ConfigError(f"format={cfg.format!r} is unknown; choose one of table, json")
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
    return totals
