"""The incremental feature store: a Delta table of daily per-customer aggregates, refreshed by day.

``transactions_clean`` (partitioned by ``tx_date``, change data feed on) is the source of truth.
Each refresh records the source version it has aggregated in ``feature_refresh_log``. The
next refresh reads the change feed since that version to find the days that changed (new
days, late rows for old days, deletions), re-aggregates only those days from their
partitions and replaces those days' partitions of ``customer_daily``.

The as-of features come from ``customer_state``, one row per customer, which is advanced
from its previous as-of date by reading only the days entering and leaving the windows
(``refresh_state``). Because every aggregate is exact (decimal and integer sums, min/max,
sets), features derived this way equal a full recompute bit for bit.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seg_spark import io
from seg_spark.config import FeatureSettings
from seg_spark.features.daily import INPUT_COLUMNS, daily_aggregates
from seg_spark.features.state import advance_state, state_from_daily

log = logging.getLogger(__name__)

TX_DATE = "tx_date"
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
    """Add the partition column of ``transactions_clean``: the UTC date of ``ts``."""
    return clean.withColumn(TX_DATE, F.to_date("ts"))


def _last_refresh(spark: SparkSession, log_path: str, daily_path: str) -> int | None:
    if not (io.is_delta_table(spark, log_path) and io.is_delta_table(spark, daily_path)):
        return None
    row = io.read_delta(spark, log_path).agg(F.max("source_version")).first()
    return None if row[0] is None else int(row[0])


def _replaced_between(spark: SparkSession, path: str, first: int, last: int) -> bool:
    """Whether a commit in [first, last] overwrote the table (a snapshot source)."""
    from delta.tables import DeltaTable

    history = DeltaTable.forPath(spark, path).history().filter(F.col("version").between(first, last))
    overwrites = history.filter(
        (F.col("operation") == "WRITE") & (F.col("operationParameters")["mode"] == "Overwrite")
        | (F.col("operation").isin("CREATE OR REPLACE TABLE AS SELECT", "REPLACE TABLE AS SELECT"))
    )
    return overwrites.limit(1).count() > 0


def changed_days(spark: SparkSession, clean_path: str, first: int, last: int) -> list[date]:
    """Days with rows inserted, updated or deleted in versions ``first``..``last`` (change data feed)."""
    changes = (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", first)
        .option("endingVersion", last)
        .load(clean_path)
    )
    days = changes.select(F.to_date("ts").alias("day")).distinct().collect()
    return sorted(r["day"] for r in days if r["day"] is not None)


def _plan(
    spark: SparkSession, clean_path: str, daily_path: str, log_path: str, refresh: str
) -> tuple[str, str, int, int | None]:
    """Decide full, incremental or unchanged: (mode, reason, source version, last refreshed version)."""
    version = io.delta_version(spark, clean_path)
    last = _last_refresh(spark, log_path, daily_path)
    if refresh == "full":
        return "full", "features.refresh is full", version, last
    if last is None:
        return "full", "first refresh: no daily aggregates yet", version, last
    if last == version:
        return "unchanged", f"transactions_clean is still at version {version}", version, last
    if last > version:
        return "full", f"transactions_clean was recreated (version {version} < refreshed {last})", version, last
    if _replaced_between(spark, clean_path, last + 1, version):
        return "full", "transactions_clean was replaced since the last refresh (snapshot source)", version, last
    return "incremental", f"changes of transactions_clean versions {last + 1}..{version}", version, last


def refresh_daily(
    spark: SparkSession,
    clean_path: str,
    daily_path: str,
    log_path: str,
    *,
    refresh: str,
    run_id: str,
    prepare: Callable[[DataFrame], DataFrame] = lambda lines: lines,
) -> RefreshResult:
    """Bring ``customer_daily`` up to date with ``transactions_clean``.

    Args:
        spark: The session.
        clean_path: ``transactions_clean`` (partitioned by ``tx_date``).
        daily_path: ``customer_daily``, partitioned by ``day``.
        log_path: ``feature_refresh_log``, one row per refresh.
        refresh: ``incremental`` (only changed days when possible) or ``full``.
        run_id: Recorded in the refresh log.
        prepare: Applied to the lines before aggregating (e.g. adds product groups as categories).

    Returns:
        What was done, why, and which days were re-aggregated (all of them for a full refresh).
    """
    started = time.monotonic()
    mode, reason, version, last = _plan(spark, clean_path, daily_path, log_path, refresh)
    days: list[date] = []
    if mode == "incremental":
        try:
            days = changed_days(spark, clean_path, last + 1, version)
        except AnalysisException as exc:  # e.g. change feed not on for those versions, or vacuumed
            mode, reason = "full", f"change feed unreadable ({io.spark_error_summary(exc)})"
        else:
            if not days:
                mode, reason = "unchanged", f"versions {last + 1}..{version} changed no rows"
    log.info("feature store refresh: %s (%s)", mode, reason)
    clean = io.read_delta(spark, clean_path)
    if mode == "full":
        fresh = daily_aggregates(prepare(clean.select(*INPUT_COLUMNS)))
        io.write_delta(fresh, daily_path, partition_by=["day"])
        bounds = clean.agg(F.min(TX_DATE), F.max(TX_DATE), F.countDistinct(TX_DATE)).first()
        first_day, last_day, n_days = bounds[0], bounds[1], int(bounds[2])
    elif mode == "incremental":
        lines = clean.filter(F.col(TX_DATE).isin(days)).select(*INPUT_COLUMNS)  # partition pruning
        _replace_days(daily_aggregates(prepare(lines)), daily_path, days)
        first_day, last_day, n_days = days[0], days[-1], len(days)
    else:
        first_day = last_day = None
        n_days = 0
    seconds = time.monotonic() - started
    now = datetime.now(UTC).replace(tzinfo=None)
    entry = (run_id, now, mode, reason, version, n_days, first_day, last_day, seconds)
    io.append_delta(spark.createDataFrame([entry], LOG_SCHEMA), log_path)
    log.info("feature store: %s refresh of %s day(s) in %.1fs", mode, n_days, seconds)
    return RefreshResult(mode=mode, reason=reason, source_version=version, days=tuple(days), seconds=seconds)


def _replace_days(fresh: DataFrame, daily_path: str, days: list[date]) -> None:
    """Replace the re-aggregated days' partitions: rows of those days not re-created disappear.

    A partition-predicate ``replaceWhere`` drops those days' files from the metadata alone,
    where a MERGE that deletes unmatched target rows would scan the whole table.
    """
    in_days = "day IN (" + ", ".join(f"DATE'{d.isoformat()}'" for d in days) + ")"
    io.write_delta(fresh, daily_path, replace_where=in_days)


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


def _state_metadata(spark: SparkSession, state_path: str) -> dict | None:
    """The as-of date, settings and refresh-log version recorded with the state's last commit."""
    from delta.tables import DeltaTable

    if not io.is_delta_table(spark, state_path):
        return None
    row = DeltaTable.forPath(spark, state_path).history(1).select("userMetadata").first()
    try:
        return json.loads(row[0]) if row and row[0] else None
    except ValueError:
        return None


def _why_rebuild(
    spark: SparkSession, metadata: dict | None, log_path: str, as_of: date, settings: FeatureSettings
) -> str | None:
    """Why the stored state cannot be advanced to ``as_of`` (None: it can)."""
    if metadata is None:
        return "no running state yet"
    if metadata.get("settings") != _state_settings(settings):
        return "feature families or windows changed"
    since = date.fromisoformat(metadata["as_of"])
    if as_of < since:
        return f"as-of date {as_of} is before the state's {since}"
    try:
        seen = spark.read.format("delta").option("versionAsOf", metadata["log_version"]).load(log_path)
        later = io.read_delta(spark, log_path).exceptAll(seen)
        stale = later.filter((F.col("mode") == "full") | (F.col("first_day") < F.lit(since))).limit(1).collect()
    except AnalysisException as exc:  # the log was recreated or vacuumed
        return f"refresh log unreadable at version {metadata['log_version']} ({io.spark_error_summary(exc)})"
    if stale:
        return f"daily aggregates before {since} changed since the state was built ({stale[0].mode} refresh)"
    return None


def refresh_state(
    spark: SparkSession,
    daily_path: str,
    state_path: str,
    log_path: str,
    as_of: date,
    settings: FeatureSettings,
) -> tuple[DataFrame, StateResult]:
    """Bring the per-customer running state to ``as_of``: advance it when possible, else rebuild it.

    The state is advanced (reading only the days entering and leaving the windows) when it
    was built with the same families and windows, for an as-of date not after ``as_of``,
    and no refresh since then touched a day before that date (a full refresh or late rows);
    otherwise it is rebuilt from every daily row. Its as-of date, settings and the refresh
    log's version are stored with the commit.

    Args:
        spark: The session.
        daily_path: ``customer_daily``, already refreshed.
        state_path: ``customer_state``, one row per customer.
        log_path: ``feature_refresh_log`` (tells which days changed since the state was built).
        as_of: The as-of date wanted.
        settings: The ``features`` section.

    Returns:
        The state as of ``as_of`` (read from ``state_path``) and what was done.
    """
    started = time.monotonic()
    metadata = _state_metadata(spark, state_path)
    reason = _why_rebuild(spark, metadata, log_path, as_of, settings)
    daily = io.read_delta(spark, daily_path)
    since = None
    if reason is not None:
        mode, state = "built", state_from_daily(daily, as_of, settings)
    else:
        since = date.fromisoformat(metadata["as_of"])
        if since == as_of:
            mode, reason, state = "reused", f"the state is already as of {as_of}", None
        else:
            mode, reason = "advanced", f"days {since}..{as_of - timedelta(days=1)} added, window edges moved"
            state = advance_state(io.read_delta(spark, state_path), daily, since, as_of, settings)
    if state is not None:
        commit = {"as_of": as_of.isoformat(), "settings": _state_settings(settings)}
        commit["log_version"] = io.delta_version(spark, log_path)
        # Only customer_id is ever filtered on: skip min/max statistics of the other columns.
        properties = {"delta.dataSkippingNumIndexedCols": "1"}
        io.write_delta(state, state_path, commit_metadata=json.dumps(commit), table_properties=properties)
    seconds = time.monotonic() - started
    log.info("running state %s as of %s in %.1fs (%s)", mode, as_of, seconds, reason)
    # Read back rather than cached: caching rows with maps costs more than one read of the table.
    return io.read_delta(spark, state_path), StateResult(
        mode=mode, reason=reason, since=since, as_of=as_of, seconds=seconds
    )
