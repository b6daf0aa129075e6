"""Evaluate a checkpoint: ``python evaluate.py model=... data=... checkpoint=PATH``."""
from attnvision.cli import hydra_entry
from attnvision.engine.evaluate import evaluate

main = hydra_entry("evaluate", evaluate)

if __name__ == "__main__":
    main()
