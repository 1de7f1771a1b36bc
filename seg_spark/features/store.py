"""The incremental feature store: a Delta table of daily per-customer aggregates, refreshed by day.

``transactions_clean`` (partitioned by ``tx_month``, change data feed on) is the source of
truth. Each refresh records the source version it has aggregated in ``feature_refresh_log``.
The next refresh reads the change feed since that version to find the days that changed
(new days, late rows for old days, deletions), re-aggregates only those days (reading only
their months' partitions) and replaces those days' rows of ``customer_daily`` (partitioned
by ``month``).

Both tables are partitioned by month, not by day: a day holds a few thousand lines below
billions of rows a year, and one partition per day meant thousands of tiny files per
version, which made the write 15-20 times slower (``bench/README.md``, ``bench_layout.py``).

The as-of features come from ``customer_state``, one row per customer, which is advanced
from its previous as-of date by reading only the days entering and leaving the windows
(``refresh_state``). Because every aggregate is exact (decimal and integer sums, min/max,
sets), features derived this way equal a full recompute bit for bit.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seg_spark.config import FeatureSettings
from seg_spark.features.daily import INPUT_COLUMNS, daily_aggregates
from seg_spark.features.state import advance_state, state_from_daily
from seg_spark.io import spark_error_summary
from seg_spark.tables import Table, TableStore, where_in

log = logging.getLogger(__name__)

TX_DATE = "tx_date"
TX_MONTH = "tx_month"  # the partition column of transactions_clean
DAILY_MONTH = "month"  # the partition column of customer_daily
# Statistics only on the columns reads filter on (forget: customer_id; the state: day): the day
# rows hold about twenty more (1M lines' 356k day rows, warm: 3.9 s to write against 2.6 s).
DAILY_PROPERTIES = {"delta.dataSkippingStatsColumns": "customer_id,day"}
LOG_SCHEMA = T.StructType(
    [
        T.StructField("run_id", T.StringType()),
        T.StructField("refreshed_at", T.TimestampType()),
        T.StructField("mode", T.StringType()),
        T.StructField("reason", T.StringType()),
        T.StructField("source_version", T.LongType()),
        T.StructField("days_refreshed", T.LongType()),
        T.StructField("first_day", T.DateType()),
        T.StructField("last_day", T.DateType()),
        T.StructField("seconds", T.DoubleType()),
    ]
)


@dataclass(frozen=True)
class RefreshResult:
    """What one refresh of the daily aggregates did."""

    mode: str  # full | incremental | unchanged
    reason: str
    source_version: int
    days: tuple[date, ...]
    seconds: float


def with_tx_date(clean: DataFrame) -> DataFrame:
    """Add ``tx_date`` (the UTC date of ``ts``) and the partition column ``tx_month`` (its month)."""
    return clean.withColumn(TX_DATE, F.to_date("ts")).withColumn(TX_MONTH, F.trunc(TX_DATE, "month"))


def months_of(days: list[date]) -> list[date]:
    """The first days of the months ``days`` fall in (partition values), sorted."""
    return sorted({day.replace(day=1) for day in days})


def _with_month(daily: DataFrame) -> DataFrame:
    return daily.withColumn(DAILY_MONTH, F.trunc("day", "month"))


def _last_refresh(store: TableStore) -> int | None:
    if not (store.exists(Table.FEATURE_REFRESH_LOG) and store.exists(Table.CUSTOMER_DAILY)):
        return None
    row = store.read(Table.FEATURE_REFRESH_LOG).agg(F.max("source_version")).first()
    return None if row is None or row[0] is None else int(row[0])


def changed_days(store: TableStore, first: int, last: int) -> list[date]:
    """Days of ``transactions_clean`` with rows inserted, updated or deleted in versions ``first``..``last``."""
    changes = store.changes(Table.TRANSACTIONS_CLEAN, first, last)
    days = changes.select(F.to_date("ts").alias("day")).distinct().collect()
    return sorted(r["day"] for r in days if r["day"] is not None)


@dataclass(frozen=True)
class _Plan:
    mode: str  # full | incremental | unchanged
    reason: str
    version: int  # of transactions_clean now
    last: int | None  # the version last aggregated


def _plan(store: TableStore, refresh: str) -> _Plan:
    """Decide full, incremental or unchanged."""
    version = store.version(Table.TRANSACTIONS_CLEAN)
    last = _last_refresh(store)
    clean = store.name(Table.TRANSACTIONS_CLEAN)
    if refresh == "full":
        return _Plan("full", "features.refresh is full", version, last)
    if last is None:
        return _Plan("full", "first refresh: no daily aggregates yet", version, last)
    if last == version:
        return _Plan("unchanged", f"{clean} is still at version {version}", version, last)
    if last > version:
        return _Plan("full", f"{clean} was recreated (version {version} < refreshed {last})", version, last)
    if store.partition_columns(Table.CUSTOMER_DAILY) != [DAILY_MONTH]:
        return _Plan("full", f"{store.name(Table.CUSTOMER_DAILY)} has an earlier layout", version, last)
    if store.replaced_between(Table.TRANSACTIONS_CLEAN, last + 1, version):
        return _Plan("full", f"{clean} was replaced since the last refresh (snapshot source)", version, last)
    return _Plan("incremental", f"changes of {clean} versions {last + 1}..{version}", version, last)


def refresh_daily(
    store: TableStore,
    *,
    refresh: str,
    run_id: str,
    now: datetime,
    prepare: Callable[[DataFrame], DataFrame] = lambda lines: lines,
) -> RefreshResult:
    """Bring ``customer_daily`` up to date with ``transactions_clean`` (recorded in ``feature_refresh_log``).

    Args:
        store: The table store.
        refresh: ``incremental`` (only changed days when possible) or ``full``.
        run_id: Recorded in the refresh log.
        now: The run's clock, recorded in the refresh log.
        prepare: Applied to the lines before aggregating (e.g. adds product groups as categories).

    Returns:
        What was done, why, and which days were re-aggregated (all of them for a full refresh).
    """
    started = time.monotonic()
    plan = _plan(store, refresh)
    mode, reason = plan.mode, plan.reason
    days: list[date] = []
    if mode == "incremental" and plan.last is not None:
        try:
            days = changed_days(store, plan.last + 1, plan.version)
        except AnalysisException as exc:  # e.g. change feed not on for those versions, or vacuumed
            mode, reason = "full", f"change feed unreadable ({spark_error_summary(exc)})"
        else:
            if not days:
                mode, reason = "unchanged", f"versions {plan.last + 1}..{plan.version} changed no rows"
    log.info("feature store refresh: %s (%s)", mode, reason)
    clean = store.read(Table.TRANSACTIONS_CLEAN)
    first_day: date | None = None
    last_day: date | None = None
    n_days = 0
    if mode == "full":
        fresh = daily_aggregates(prepare(clean.select(*INPUT_COLUMNS)))
        store.overwrite(
            Table.CUSTOMER_DAILY, _with_month(fresh), partition_by=[DAILY_MONTH], table_properties=DAILY_PROPERTIES
        )
        bounds = clean.agg(F.min(TX_DATE), F.max(TX_DATE), F.countDistinct(TX_DATE)).first()
        if bounds is not None:
            first_day, last_day, n_days = bounds[0], bounds[1], int(bounds[2])
    elif mode == "incremental":
        wanted = where_in(TX_MONTH, months_of(days)) & where_in(TX_DATE, days)  # months: partition pruning
        lines = clean.filter(wanted.column()).select(*INPUT_COLUMNS)
        _replace_days(store, _with_month(daily_aggregates(prepare(lines))), days)
        first_day, last_day, n_days = days[0], days[-1], len(days)
    seconds = time.monotonic() - started
    entry = (run_id, now, mode, reason, plan.version, n_days, first_day, last_day, seconds)
    store.append(Table.FEATURE_REFRESH_LOG, store.spark.createDataFrame([entry], LOG_SCHEMA))
    log.info("feature store: %s refresh of %s day(s) in %.1fs", mode, n_days, seconds)
    return RefreshResult(mode=mode, reason=reason, source_version=plan.version, days=tuple(days), seconds=seconds)


def _replace_days(store: TableStore, fresh: DataFrame, days: list[date]) -> None:
    """Replace the re-aggregated days' rows: rows of those days not re-created disappear.

    The month predicate confines the ``replaceWhere`` to those months' files (partition
    pruning), where a MERGE that deletes unmatched target rows would scan the whole table.
    """
    store.replace(Table.CUSTOMER_DAILY, fresh, where_in(DAILY_MONTH, months_of(days)) & where_in("day", days))


@dataclass(frozen=True)
class StateResult:
    """What one refresh of the per-customer running state did."""

    mode: str  # built | advanced | reused
    reason: str
    since: date | None  # the as-of date of the state it was advanced from
    as_of: date
    seconds: float


def _state_settings(settings: FeatureSettings) -> dict[str, list]:
    """The settings a state's columns depend on: a state built with others is rebuilt."""
    return {"families": sorted(settings.families), "windows_days": list(settings.windows_days)}


def _why_rebuild(store: TableStore, metadata: dict | None, as_of: date, settings: FeatureSettings) -> str | None:
    """Why the stored state cannot be advanced to ``as_of`` (None: it can)."""
    if metadata is None:
        return "no running state yet"
    if metadata.get("settings") != _state_settings(settings):
        return "feature families or windows changed"
    since = date.fromisoformat(metadata["as_of"])
    if as_of < since:
        return f"as-of date {as_of} is before the state's {since}"
    try:
        seen = store.read(Table.FEATURE_REFRESH_LOG, version=metadata["log_version"])
        later = store.read(Table.FEATURE_REFRESH_LOG).exceptAll(seen)
        stale = later.filter((F.col("mode") == "full") | (F.col("first_day") < F.lit(since))).limit(1).collect()
    except AnalysisException as exc:  # the log was recreated or vacuumed
        return f"refresh log unreadable at version {metadata['log_version']} ({spark_error_summary(exc)})"
    if stale:
        return f"daily aggregates before {since} changed since the state was built ({stale[0].mode} refresh)"
    return None


def refresh_state(store: TableStore, as_of: date, settings: FeatureSettings) -> tuple[DataFrame, StateResult]:
    """Bring the per-customer running state ``customer_state`` to ``as_of``: advance it, or rebuild it.

    The state is advanced (reading only the days entering and leaving the windows) when it
    was built with the same families and windows, for an as-of date not after ``as_of``,
    and no refresh since then touched a day before that date (a full refresh or late rows,
    told by ``feature_refresh_log``); otherwise it is rebuilt from every row of
    ``customer_daily`` (already refreshed). Its as-of date, settings and the refresh log's
    version are stored with the commit.

    Args:
        store: The table store.
        as_of: The as-of date wanted.
        settings: The ``features`` section.

    Returns:
        The state as of ``as_of`` (read from the table) and what was done.
    """
    started = time.monotonic()
    metadata = store.commit_metadata(Table.CUSTOMER_STATE)
    reason = _why_rebuild(store, metadata, as_of, settings)
    daily = store.read(Table.CUSTOMER_DAILY)
    since = None
    state: DataFrame | None
    if reason is not None or metadata is None:
        mode, state = "built", state_from_daily(daily, as_of, settings)
        reason = reason or "no running state yet"
    else:
        since = date.fromisoformat(metadata["as_of"])
        if since == as_of:
            mode, reason, state = "reused", f"the state is already as of {as_of}", None
        else:
            mode, reason = "advanced", f"days {since}..{as_of - timedelta(days=1)} added, window edges moved"
            state = advance_state(store.read(Table.CUSTOMER_STATE), daily, since, as_of, settings)
    if state is not None:
        commit = {
            "as_of": as_of.isoformat(),
            "settings": _state_settings(settings),
            "log_version": store.version(Table.FEATURE_REFRESH_LOG),
        }
        # Only customer_id is ever filtered on: skip min/max statistics of the other columns.
        properties = {"delta.dataSkippingNumIndexedCols": "1"}
        store.overwrite(Table.CUSTOMER_STATE, state, commit_metadata=commit, table_properties=properties)
    seconds = time.monotonic() - started
    log.info("running state %s as of %s in %.1fs (%s)", mode, as_of, seconds, reason)
    # Read back rather than cached: caching rows with maps costs more than one read of the table.
    return store.read(Table.CUSTOMER_STATE), StateResult(
        mode=mode, reason=reason, since=since, as_of=as_of, seconds=seconds
    )
