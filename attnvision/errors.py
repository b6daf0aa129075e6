"""The one exception type the CLI turns into a one-line message instead of a traceback."""

__all__ = ["ConfigError", "check_choice"]


class ConfigError(ValueError):
    """A bad user-facing value: the message names the key, the value and, where there is a choice, the options."""


def check_choice(name: str, value, allowed) -> None:
    """Raise a ConfigError naming ``name=value`` and the allowed values unless ``value`` is one of them."""
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is unknown; choose one of {', '.join(map(str, allowed))}")
