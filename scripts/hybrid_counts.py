"""Parameters and multiply-adds of every weight function on the footprints the papers compare, at 224 px.

    python scripts/hybrid_counts.py                      # results/hybrids/counts.{csv,md}
    python scripts/hybrid_counts.py --depth 50 --out /tmp/counts50

Rows: ``hybrid_resnet<depth>`` with each weight function (``layers/hybrid.py``) on a 7×7 window, an axial span of
15 and a global axial window (the whole axis), SE's own footprint (the pixel), and the two baselines ResNet and
SE-ResNet (``av_resnet<depth>`` with ``se=true``); 1000 classes, counted by ``engine.complexity`` (multiply-adds
of one 224×224 image, parameters exact).
"""
import argparse
import sys

import pandas as pd
import timm

import attnvision.models  # noqa: F401  (registers the models with timm)
from attnvision.engine.complexity import count_complexity
from attnvision.layers.hybrid import WEIGHT_FUNCTIONS
from attnvision.results import write_table

FOOTPRINTS = {"7x7": dict(footprint="square", kernel_size=7), "axial span 15": dict(footprint="axial", span=15),
              "axial global": dict(footprint="axial")}


def rows(depth: int, image_size: int) -> list:
    """(model, weights, footprint, params, MACs) of every counted network."""
    configs = [(f"av_resnet{depth}", "conv (ResNet, 3x3)", "3x3", {}),
               (f"av_resnet{depth}", "conv (ResNet) + SE", "3x3", dict(se=True))]
    configs += [(f"hybrid_resnet{depth}", weights, name, dict(weights=weights, img_size=image_size, **footprint))
                for weights in WEIGHT_FUNCTIONS if weights != "se" for name, footprint in FOOTPRINTS.items()]
    configs.append((f"hybrid_resnet{depth}", "se", "pixel", dict(weights="se", kernel_size=1)))
    out = []
    for model, weights, footprint, kwargs in configs:
        counted = count_complexity(timm.create_model(model, **kwargs), image_size)
        out.append({"model": model, "weights": weights, "footprint": footprint,
                    "params_m": round(counted.params / 1e6, 3), "gmacs": round(counted.macs / 1e9, 3)})
        print(out[-1], flush=True)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--depth", type=int, default=26, choices=[26, 38, 50])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--out", default="results/hybrids/counts", help="output stem")
    args = parser.parse_args(argv)
    df = pd.DataFrame(rows(args.depth, args.image_size))
    command = "python scripts/hybrid_counts.py " + " ".join(argv if argv is not None else sys.argv[1:])
    for path in write_table(df, args.out, command.strip()):
        print(f"wrote {path}")
    print(df.to_markdown(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
