"""Merge every run's result row into one comparison table: ``python scripts/make_tables.py [--rows DIR] [--out STEM]``.

Rows are the JSON files that train.py writes under ``<log_dir>/rows`` (one per run); the table lands in
``<out>.csv`` and ``<out>.md`` (default ``<log_dir>/tables/runs``), headed by this command.
"""
import argparse
import shlex
import sys
from pathlib import Path

from attnvision.results import comparison_table, read_rows, write_table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="logs/rows", help="folder of per-run JSON rows (default: logs/rows)")
    parser.add_argument("--out", default=None, help="output path without suffix (default: <rows>/../tables/runs)")
    args = parser.parse_args(argv)
    rows_dir = Path(args.rows)
    rows = read_rows(rows_dir) if rows_dir.is_dir() else []
    if not rows:
        print(f"error: no result rows in {rows_dir}; train something first (python train.py)", file=sys.stderr)
        return 2
    out = Path(args.out) if args.out else rows_dir.parent / "tables" / "runs"
    command = "python scripts/make_tables.py " + " ".join(map(shlex.quote, argv if argv is not None else
                                                               sys.argv[1:]))
    table = comparison_table(rows)
    for path in write_table(table, out, command.strip()):
        print(f"wrote {path}")
    print(table.to_markdown(index=False, floatfmt="g"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
