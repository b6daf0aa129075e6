"""The exceptions the CLI turns into one line instead of a traceback (bad values, and runs stopped on purpose) and
the checks of single values that raise them."""

__all__ = ["ConfigError", "RunStopped", "check_choice", "check_number", "check_positive_int", "check_bool",
           "is_number", "is_int"]


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


def is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_number(key: str, value, low=None, high=None, low_open=False, high_open=True, null_ok=False) -> None:
    """``value`` must be a number in [low, high) (bounds as given) or, with ``null_ok``, null."""
    if value is None and null_ok:
        return
    ok = is_number(value) and (low is None or (value > low if low_open else value >= low)) and \
        (high is None or (value < high if high_open else value <= high))
    if not ok:
        lower = "" if low is None else f"{'>' if low_open else '>='} {low}"
        upper = "" if high is None else f"{'<' if high_open else '<='} {high}"
        allowed = " and ".join(part for part in (lower, upper) if part) or "any number"
        raise ConfigError(f"{key}={value!r} must be a number {allowed}" + (", or null" if null_ok else ""))


def check_positive_int(key: str, value, null_ok: bool = False, also: tuple = ()) -> None:
    """``value`` must be a positive integer, one of ``also`` or, with ``null_ok``, null."""
    if (value is None and null_ok) or value in also or (is_int(value) and value > 0):
        return
    extra = "".join(f", {v}" for v in also) + (", or null" if null_ok else "")
    raise ConfigError(f"{key}={value!r} must be a positive integer{extra}")


def check_bool(key: str, value) -> None:
    """``value`` must be true or false."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
