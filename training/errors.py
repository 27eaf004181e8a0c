"""The errors the training tools report as one line (exit status 2), and the shared value checks."""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any

from lambda_keras.cli import UserError


class ConfigError(UserError, ValueError):
    """A config file, key or value is invalid; the message names the dotted key."""


class DataIntegrityError(UserError, ValueError):
    """The input shards do not match their folder's manifest (a file missing, not listed,
    or of another size), or the manifest is unreadable; the message names the files."""


class InputError(UserError, ValueError):
    """The input folders or the labels file do not describe a dataset to convert; the
    message names the first problem. Raised before anything is written."""


class StorageError(UserError, OSError):
    """model_dir has too little free space for the next backup and checkpoints."""


class DivergedError(UserError, ArithmeticError):
    """The loss or a weight became non-finite (NaN or infinite); the message names the
    epoch and step and what was kept."""


class OutOfMemoryError(UserError, MemoryError):
    """The model or a batch does not fit in the memory of the machine or the device;
    the message names the allocation and the settings to lower."""


class StrategyError(UserError, RuntimeError):
    """The requested strategy or devices cannot be had here; the message says why."""


def fail(key: str, value: Any, requirement: str) -> typing.NoReturn:
    """Raises ``ConfigError("Invalid config <key>=<value>: <requirement>.")``."""
    raise ConfigError(f"Invalid config {key}={value!r}: {requirement}.")


def check_finite_numbers(section: str, config: Any) -> None:
    """Fails on the first float field (or float in a tuple field) of a config dataclass
    that is NaN or infinite: no rate, size or range of a run may be."""
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        items = value if isinstance(value, tuple) else (value,)
        if any(isinstance(item, float) and not math.isfinite(item) for item in items):
            fail(f"{section}.{field.name}", value, "must be finite")
