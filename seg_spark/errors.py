"""One error hierarchy: every expected failure carries the process exit code it ends with.

0 success, 1 anything unexpected, 2 configuration error, 3 data error. The CLI prints the
message of a ``SegSparkError`` as one line and exits with its code; anything else is a bug.
"""

from __future__ import annotations

EXIT_OK, EXIT_UNEXPECTED, EXIT_CONFIG, EXIT_DATA = 0, 1, 2, 3


class SegSparkError(Exception):
    """Base class of expected failures; ``exit_code`` is what the process exits with."""

    exit_code = EXIT_UNEXPECTED


class ConfigError(SegSparkError, ValueError):
    """Unreadable, unknown or invalid configuration (exit code 2)."""

    exit_code = EXIT_CONFIG


class DataError(SegSparkError, ValueError):
    """The data cannot support what was asked; the message says what to change (exit code 3)."""

    exit_code = EXIT_DATA


class StageInputError(DataError):
    """A stage's input table (or the run it belongs to) is missing: an earlier stage must run first."""
