"""A paper's table from its experiment configs: ``python scripts/reproduce.py table=<name> [mode=count|train] [...]``.

    python scripts/reproduce.py table=sasa_table4                   # count every row at 224 px, 1000 classes
    python scripts/reproduce.py table=all                           # every table
    python scripts/reproduce.py table=sasa_table4 mode=train data=digits trainer.epochs=1   # scaled-down training

Tables are the folders of configs/experiment/ (one YAML per paper row); every other key=value is a Hydra override
applied to each row. Counting writes results/tables/<table>.{csv,md}, training <log_dir>/tables/<table>.{csv,md}
with our top-1 added; both name the command that made them.
"""
import sys

from attnvision.cli import report_written
from attnvision.engine.reproduce import parse_args, reproduce


def main(argv=None) -> int:
    def produce():
        return reproduce(*parse_args(sys.argv[1:] if argv is None else argv))
    return report_written(produce)


if __name__ == "__main__":
    sys.exit(main())
