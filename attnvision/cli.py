"""Thin Hydra entry points: composition and one-line errors here, all work in plain functions.

A bad value (ConfigError) or a run stopped on purpose (RunStopped: divergence, SIGTERM) is one line on stderr and an
exit status (2 for bad values, the RunStopped's own otherwise). In a multirun such a job is reported with its number
and overrides and the sweep goes on; a summary line ends the sweep, which exits 1 when any job failed. A run stopped
by a signal ends the whole sweep.
"""
import sys
from typing import Any, Callable, List

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode

from attnvision.config import CONFIG_DIR, check_overrides
from attnvision.errors import ConfigError, RunStopped

__all__ = ["hydra_entry", "report_written"]


def _fail(message: str, status: int) -> None:
    print(message, file=sys.stderr)
    sys.exit(status)


def _reported(err: BaseException):
    """The ConfigError or RunStopped behind ``err`` (hydra.utils.instantiate wraps what a target raises), or None."""
    while err is not None and not isinstance(err, (ConfigError, RunStopped)):
        err = err.__cause__ or err.__context__
    return err


def _line(err) -> str:
    return f"error: {err}" if isinstance(err, ConfigError) else str(err)


def hydra_entry(config_name: str, task: Callable[[Any], Any]) -> Callable[[], None]:
    """A ``main()`` that runs ``task(cfg)`` under ``@hydra.main`` with one-line errors and per-job sweep reports."""
    jobs: List[str] = []  # a multirun's failed jobs, "#<num> (<overrides>)"; finished ones as ""

    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _main(cfg) -> None:
        multirun = HydraConfig.get().mode == RunMode.MULTIRUN
        try:
            task(cfg)
            jobs.append("")
        except Exception as err:
            cause = _reported(err)
            if cause is None:
                raise
            if not multirun:
                _fail(_line(cause), 2 if isinstance(cause, ConfigError) else cause.exit_code)
            job = f"#{HydraConfig.get().job.num} ({' '.join(HydraConfig.get().overrides.task)})"
            jobs.append(job)
            print(f"job {job}: {_line(cause)}", file=sys.stderr)
            if not isinstance(cause, ConfigError) and cause.exit_code > 128:  # a signal: stop the sweep too
                _fail(f"sweep stopped by a signal after {len(jobs)} jobs", cause.exit_code)

    def main() -> None:
        try:
            check_overrides(config_name, sys.argv[1:])
            _main()
        except ConfigError as err:
            _fail(_line(err), 2)
        except KeyboardInterrupt:
            _fail("interrupted (Ctrl-C); checkpoints already written are intact", 130)
        failed = [job for job in jobs if job]
        if len(jobs) > 1 or failed:
            print(f"sweep: {len(jobs)} jobs, {len(jobs) - len(failed)} finished, {len(failed)} failed"
                  + (f": {', '.join(failed)}" if failed else ""), file=sys.stderr if failed else sys.stdout)
        if failed:
            sys.exit(1)

    return main


def report_written(produce: Callable[[], list]) -> int:
    """A script's exit status: print every path ``produce()`` wrote (0), or its ConfigError as one line (2)."""
    try:
        written = produce()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for path in written:
        print(f"wrote {path}")
    return 0
