"""The one clock of a run: UTC, fixed when configured (``run.clock``) so runs can be replayed."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime


def utc_now() -> datetime:
    """The wall-clock time, timezone-aware in UTC."""
    return datetime.now(UTC)


@dataclass(frozen=True)
class Clock:
    """What a run treats as now: a fixed instant (naive means UTC), or the wall clock."""

    fixed: datetime | None = None

    def now(self) -> datetime:
        """The run's 'now', timezone-aware in UTC (rows later than this are in the future)."""
        if self.fixed is None:
            return utc_now()
        return self.fixed.astimezone(UTC) if self.fixed.tzinfo else self.fixed.replace(tzinfo=UTC)

    def today(self) -> date:
        """The run's current UTC date."""
        return self.now().date()
