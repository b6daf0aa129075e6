"""Thin Hydra entry points: composition and one-line errors here, all work in plain functions."""
import sys
from typing import Any, Callable

import hydra

from attnvision.config import CONFIG_DIR, check_group_overrides
from attnvision.errors import ConfigError

__all__ = ["hydra_entry", "report_written"]


def _fail(err: Exception) -> None:
    print(f"error: {err}", file=sys.stderr)
    sys.exit(2)


def _config_error(err: BaseException):
    """The ConfigError behind ``err`` (hydra.utils.instantiate wraps what a target raises), or None."""
    while err is not None and not isinstance(err, ConfigError):
        err = err.__cause__ or err.__context__
    return err


def hydra_entry(config_name: str, task: Callable[[Any], Any]) -> Callable[[], None]:
    """A ``main()`` that runs ``task(cfg)`` under ``@hydra.main`` and turns ConfigErrors into one line on stderr."""
    @hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name=config_name)
    def _main(cfg) -> None:
        try:
            task(cfg)
        except Exception as err:
            cause = _config_error(err)
            if cause is None:
                raise
            _fail(cause)

    def main() -> None:
        try:
            check_group_overrides(sys.argv[1:])
        except ConfigError as err:
            _fail(err)
        _main()

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
