"""The authors' released ImageNet weights, converted once into an attnvision checkpoint.

    python scripts/convert_checkpoint.py --model san10_patchwise --src san10_patchwise.pth --out san10_patchwise_av.pth
    python scripts/convert_checkpoint.py --model axial26s --src axial26s.pth --out axial26s_av.pth

``--src`` is the file as the authors publish it (SAN: ``{'state_dict': ...}`` from hszhao/SAN's Google Drive;
Axial-DeepLab: ``{'net': ...}``, http://www.cs.jhu.edu/~hwang157/axial26s.pth), ``module.`` prefixes and all. The
output is read by ``python evaluate.py model=... data=imagenet checkpoint=OUT`` and by timm
(``timm.create_model(name, pretrained=True, pretrained_cfg_overlay=dict(file=OUT))``); ``evaluate.py
checkpoint=official:SRC`` reads the authors' file directly, without this step.
"""
import argparse
import sys

from attnvision.cli import report_written
from attnvision.engine.checkpoint import convert_official


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="timm name, e.g. san10_pairwise, san19_patchwise, axial26s")
    parser.add_argument("--src", required=True, help="the authors' checkpoint file")
    parser.add_argument("--out", required=True, help="the attnvision checkpoint to write")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    return report_written(lambda: [convert_official(args.model, args.src, args.out)])


if __name__ == "__main__":
    sys.exit(main())
