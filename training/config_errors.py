"""The error every config section raises, and its message format."""

from __future__ import annotations

import typing
from typing import Any


class ConfigError(ValueError):
    """A config file, key or value is invalid; the message names the dotted key."""


def fail(key: str, value: Any, requirement: str) -> typing.NoReturn:
    """Raises ``ConfigError("Invalid config <key>=<value>: <requirement>.")``."""
    raise ConfigError(f"Invalid config {key}={value!r}: {requirement}.")
