"""Tables and plots from result rows.

    python scripts/make_tables.py [--rows DIR] [--out STEM] [--aggregate-seeds] [--plots [--paper TABLE ...]]
    python scripts/make_tables.py --sweep DIR [--keys KEY ...] [--out STEM] [--plots]

Rows are the JSON files that train.py writes under ``<log_dir>/rows`` (one per run). The table (one line per run,
or with --aggregate-seeds one per configuration with mean and std over its seeds) lands in ``<out>.csv`` and
``<out>.md`` (default ``<rows>/../tables/runs``, or ``.../seeds``); --plots adds ``<out>_accuracy.png`` (top-1
against GMACs and against params, beside the papers' points: the rows of each --paper table,
``configs/experiment/<table>/*.yaml``, that give a top-1) and ``<out>_throughput.png``.

--sweep DIR tabulates one multirun (``logs/train/multiruns/<time>`` or ``logs/count_flops/multiruns/<time>``):
one line per combination of the swept overrides (--keys, default those whose values differ) with the mean of
each metric, in ``<out>.csv``/``.md`` (default ``DIR/sweep``) and, with --plots, ``<out>.png``.
Runs whose loss diverged (``status`` diverged) are marked in the per-run table, left out of means (counted in
``n_diverged``, not in ``n_seeds``) and drawn as no point. Every file names the command that made it; a row file
that is no JSON object stops the script with one line naming it.
"""
import argparse
import shlex
import sys
from pathlib import Path

from attnvision.cli import report_written
from attnvision.config import compose
from attnvision.engine.reproduce import table_rows, tables
from attnvision.errors import ConfigError
from attnvision.results import (accuracy_figure, comparison_table, read_rows, read_sweep_rows, save_png,
                                sweep_figure, sweep_table, throughput_figure, write_table)
from attnvision.results.tables import override_frame, swept_keys


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--rows", default="logs/rows", help="folder of per-run JSON rows (default: logs/rows)")
    source.add_argument("--sweep", default=None, help="a multirun's folder: tabulate its jobs against the swept keys")
    parser.add_argument("--out", default=None, help="output path without suffix")
    parser.add_argument("--aggregate-seeds", action="store_true",
                        help="one line per configuration: mean and std of the metrics over its seeds")
    parser.add_argument("--keys", nargs="+", default=None,
                        help="with --sweep: the swept keys, the first on the plots' x axis (default: found)")
    parser.add_argument("--plots", action="store_true", help="also write PNG plots next to the table")
    parser.add_argument("--paper", nargs="+", default=None, choices=tables(), metavar="TABLE", help=(
                        f"with --plots: draw the papers' points of these experiment tables: {', '.join(tables())}"))
    args = parser.parse_args(argv)
    if args.sweep and args.aggregate_seeds:
        parser.error("--aggregate-seeds tabulates --rows; a sweep's rows sharing swept values are averaged")
    if args.keys and not args.sweep:
        parser.error("--keys needs --sweep DIR")
    if args.paper and (args.sweep or not args.plots):
        parser.error("--paper needs --plots, without --sweep")
    return args


def paper_points(names) -> list:
    """The papers' points of these experiment tables: each row config's ``paper`` block (params in M, macs in
    billions) and model family, for the rows that give a top-1."""
    points = []
    for table in names:
        for row in table_rows(table):
            cfg = compose("train", [f"experiment={table}/{row}"])
            if cfg.paper.get("top1") is not None:
                points.append({"family": cfg.model.family, "label": f"{cfg.paper.source}: {cfg.paper.row}",
                               "params": cfg.paper.params, "macs": cfg.paper.macs, "top1": cfg.paper.top1})
    return points


def runs_table(args, command: str) -> list:
    """The comparison table of ``--rows`` (and its plots); the paths written."""
    rows_dir = Path(args.rows)
    rows = read_rows(rows_dir) if rows_dir.is_dir() else []
    if not rows:
        raise ConfigError(f"no result rows in {rows_dir}; train something first (python train.py)")
    out = Path(args.out) if args.out else rows_dir.parent / "tables" / ("seeds" if args.aggregate_seeds else "runs")
    table = comparison_table(rows, aggregate_seeds=args.aggregate_seeds)
    print(table.to_markdown(index=False, floatfmt="g"))
    written = write_table(table, out, command)
    if args.plots:
        paper = paper_points(args.paper) if args.paper else None
        written += [save_png(accuracy_figure(table, paper), out.with_name(out.name + "_accuracy.png"), command),
                    save_png(throughput_figure(table), out.with_name(out.name + "_throughput.png"), command)]
    return written


def sweep_tables(args, command: str) -> list:
    """The table of the multirun in ``--sweep`` (and its plot); the paths written."""
    sweep_dir = Path(args.sweep)
    rows = read_sweep_rows(sweep_dir) if sweep_dir.is_dir() else []
    if not rows:
        raise ConfigError(f"no result rows in {sweep_dir}/rows or {sweep_dir}/*/metrics.json; is it a multirun's "
                          f"folder (logs/<task>/multiruns/<time>)?")
    out = Path(args.out) if args.out else sweep_dir / "sweep"
    keys = args.keys or swept_keys(override_frame(rows))
    table = sweep_table(rows, keys)
    print(table.to_markdown(index=False, floatfmt="g"))
    written = write_table(table, out, command)
    if args.plots:
        written.append(save_png(sweep_figure(table, keys), out.with_suffix(".png"), command))
    return written


def main(argv=None) -> int:
    args = parse_args(argv)
    command = " ".join(["python scripts/make_tables.py",
                        *map(shlex.quote, argv if argv is not None else sys.argv[1:])])
    return report_written(lambda: sweep_tables(args, command) if args.sweep else runs_table(args, command))


if __name__ == "__main__":
    sys.exit(main())
