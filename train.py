"""Train a backbone: ``python train.py model=<family> model.depth=<d> data=<dataset> [key=value ...]``."""
from attnvision.cli import hydra_entry
from attnvision.engine import train

main = hydra_entry("train", train)

if __name__ == "__main__":
    main()
