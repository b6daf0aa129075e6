"""The one exception type the CLI turns into a one-line message instead of a traceback."""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A bad user-facing value: the message names the key, the value and, where there is a choice, the options."""
