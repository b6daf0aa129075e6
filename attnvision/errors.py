"""The exceptions the CLI turns into one line instead of a traceback: bad values, and runs stopped on purpose."""

__all__ = ["ConfigError", "RunStopped", "check_choice"]


class ConfigError(ValueError):
    """A bad user-facing value: the message names the key, the value and, where there is a choice, the options."""


class RunStopped(Exception):
    """A run that stopped before its end for a reason it reports in one line (divergence, a signal), after saving
    what it could; ``exit_code`` is the process's exit status."""

    exit_code = 1


def check_choice(name: str, value, allowed) -> None:
    """Raise a ConfigError naming ``name=value`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is unknown; choose one of {', '.join(map(str, allowed))}")
