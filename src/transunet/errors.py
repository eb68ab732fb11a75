"""User-facing errors.

Every problem a user can fix (bad file, wrong shape, unknown option, mismatched checkpoint) is raised
as a :class:`TransUNetError` (or a subclass of ``ValueError``/``KeyError`` carrying a one-line
message). The CLI turns these into a single ``error: ...`` line and a non-zero exit code.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class TransUNetError(Exception):
    """A problem with the user's input: the message names the file/value, the problem and the fix."""


class DataError(TransUNetError, ValueError):
    """Bad or inconsistent data on disk (corrupt file, shape mismatch, unknown labels, NaNs...)."""


class CheckpointError(TransUNetError, ValueError):
    """A checkpoint that cannot be read or does not fit the requested model."""


class ConfigError(TransUNetError, ValueError):
    """An invalid configuration value or key."""


def did_you_mean(value: str, choices: Iterable[str]) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest choice, or ``""`` when nothing is close.

    Args:
        value: The string the user gave.
        choices: The valid strings.
    """
    choices = [str(c) for c in choices]
    lowered = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(str(value).lower(), list(lowered), n=1, cutoff=0.5)
    return f" Did you mean '{lowered[close[0]]}'?" if close else ""


def check_choice(name: str, value: str, choices: Iterable[str]) -> str:
    """Validate that ``value`` is one of ``choices``; raise a ``ConfigError`` suggesting the closest.

    Args:
        name: What the value is (e.g. ``"train.amp"``), used in the message.
        value: The given value.
        choices: The valid values.
    """
    choices = list(choices)
    if value not in choices:
        raise ConfigError(
            f"{name}={value!r} is not valid; choose one of {', '.join(map(repr, choices))}."
            + did_you_mean(value, choices)
        )
    return value
