"""Ingest: read every configured source, map, clean, quarantine, reconcile and profile it.

Writes this run's data-quality rows first; then checks the quality thresholds and that the
clean lines hold enough customers for the segmentation; only then replaces
``transactions_clean`` (by month, change data feed on), the quarantine and the cleaned side
tables, so a bad source stops the run before anything a consumer reads changes.

A snapshot source replaces only the months whose clean lines changed (compared by a digest
of each month's rows): an unchanged snapshot commits nothing to ``transactions_clean``, so
the features stage has nothing to re-aggregate and the table does not grow with reruns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from functools import partial

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark import io, quality, synth
from seg_spark.config import EventSourceSettings, ModelSettings, ProfileSourceSettings, Settings, SourceSettings
from seg_spark.context import RunContext
from seg_spark.errors import DataError
from seg_spark.features.store import TX_DATE, TX_MONTH, with_tx_date
from seg_spark.privacy import pseudonym_key
from seg_spark.stages import StageResult
from seg_spark.tables import SIDE_TABLES, Predicate, Table, TableStore, where, where_in

log = logging.getLogger(__name__)
# Lineage, not content: a line that did not change keeps the run and the file that first wrote it
# (a snapshot exported daily under a new file name is still the same lines).
LINEAGE_COLUMNS = ("ingest_run_id", "source_file")
CHANGE_FEED = {"delta.enableChangeDataFeed": "true"}
# Statistics only on the columns reads filter on (forget: customer_id; the daily refresh: tx_date
# within a month partition): collecting them for all 32 leading columns made the write about a
# quarter slower (1M lines by month, warm, bench_layout.py: 6.3-9.3 s against 5.1-6.7 s).
CLEAN_PROPERTIES = {**CHANGE_FEED, "delta.dataSkippingStatsColumns": f"customer_id,ts,{TX_DATE}"}


@dataclass(frozen=True, kw_only=True)
class IngestStageResult(StageResult):
    """Counts of the transaction log, and of each side source by name."""

    counts: quality.IngestCounts
    side_counts: dict[str, quality.IngestCounts] = field(default_factory=dict)

    def report(self) -> list[str]:
        """Where every input row went, per source."""
        return [_accounting(name, counts) for name, counts in {"transactions": self.counts, **self.side_counts}.items()]


def _accounting(source: str, counts: quality.IngestCounts) -> str:
    return (
        f"{source}: input rows {counts.input_rows:,}: clean {counts.clean_rows:,}, quarantined "
        f"{counts.quarantined_rows:,} {counts.by_reason or ''}, duplicates removed {counts.duplicates_removed:,}"
    )


def run(ctx: RunContext) -> IngestStageResult:
    """Ingest the transaction log and the configured side sources: validate everything, then commit.

    Every source is read, cleaned and counted first and this run's data-quality rows are
    written (a slice of their own, for diagnosis); only when the thresholds hold are the
    clean tables and the quarantine replaced, so a failed run leaves them as they were.

    Raises:
        SourceError, MappingError, ReconciliationError, PrivacyError: A source cannot be used.
        QualityThresholdError: The transactions break a configured threshold.
        TooFewCustomersError: The clean lines hold fewer customers than the segmentation needs.
    """
    settings = ctx.settings
    source, transactions = clean_transactions(ctx.spark, settings, ctx.clock.today(), ctx.run_id)
    key = _pseudonym_key(settings)
    results: list[tuple[quality.IngestResult, Table, Callable[[DataFrame], None]]] = [
        (transactions, Table.TRANSACTIONS_CLEAN, partial(_write_transactions, ctx, mode=source.mode))
    ]
    try:
        for name, table in SIDE_TABLES.items():
            side = getattr(settings.sources, name)
            if side is not None:
                results.append((_clean_side(ctx, name, side, key), table, partial(ctx.store.overwrite, table)))
        for result, _, _ in results:
            ctx.store.replace(
                Table.DATA_QUALITY,
                quality.quality_rows(ctx.spark, result, ctx.run_id),
                where(run_id=ctx.run_id, source=result.source),
            )
        # Stop before anything a consumer reads changes.
        quality.check_thresholds(transactions, settings.quality.thresholds)
        check_customers(ctx, transactions)
        for result, _, write_clean in results:
            write_clean(result.clean)
            ctx.store.replace(Table.TRANSACTIONS_QUARANTINE, result.quarantine, _quarantine_slice(ctx, result.source))
    finally:
        for result, _, _ in results:
            result.release()
    metrics = {name: value for result, _, _ in results for name, value in quality.quality_metrics(result).items()}
    counts = transactions.counts
    return IngestStageResult(
        stage="ingest",
        rows_in=counts.input_rows,
        rows_out=counts.clean_rows,
        tables=(Table.DATA_QUALITY, Table.TRANSACTIONS_QUARANTINE, *(table for _, table, _ in results)),
        metrics=metrics,
        counts=counts,
        side_counts={result.source: result.counts for result, _, _ in results[1:]},
    )


def clean_transactions(
    spark: SparkSession, settings: Settings, today: date, run_id: str
) -> tuple[SourceSettings, quality.IngestResult]:
    """Read the transaction log and clean it by the ingest rules (nothing is written).

    Args:
        spark: The session.
        settings: The configuration (source, cleaning rules, pseudonymisation).
        today: The current date, which ends the demo log when no source is configured.
        run_id: Lineage id stamped on the rows.

    Returns:
        The source read (the generated demo log when none is configured) and the cleaned lines.
    """
    source = settings.sources.transactions
    if synth.is_demo(settings):
        source = synth.ensure_demo_log(spark, settings.demo, today)
    raw = io.read_source(spark, source, "transactions")
    return source, quality.ingest(raw, source, settings.quality, run_id, "transactions", _pseudonym_key(settings))


def _pseudonym_key(settings: Settings) -> bytes | None:
    return pseudonym_key(settings.privacy) if settings.privacy.pseudonymise_customer_id else None


class TooFewCustomersError(DataError):
    """The clean transaction lines hold fewer customers than the configured segmentation needs."""


def customers_needed(model: ModelSettings) -> tuple[int, str]:
    """The fewest customers the segment stage accepts, and the settings that make it so.

    The same rule as ``seg_spark.models.selection.refuse_degenerate`` (which stays the final
    check): k segments need k x ``model.min_customers_per_segment`` customers, and a sweep
    needs its smallest k, ``model.selection.k_min``.
    """
    minimum = model.min_customers_per_segment
    if model.selection.enabled:
        k, setting = model.selection.k_min, "model.selection.k_min"
    else:
        k, setting = model.k, "model.k"
    return k * minimum, f"{setting} = {k} x model.min_customers_per_segment = {minimum}"


def check_customers(ctx: RunContext, transactions: quality.IngestResult) -> None:
    """Refuse, before anything is committed, clean lines of too few customers for the segmentation.

    Without this check the features would be committed and only the segment stage would stop.

    Raises:
        TooFewCustomersError: Naming the count, the need and the settings.
    """
    needed, why = customers_needed(ctx.settings.model)
    customers = int(transactions.profile.get(("customers_clean", ""), 0) or 0)  # counted by the quality profile
    if customers < needed and ctx.settings.sources.transactions.mode == "append":
        # A batch adds to the lines already there: count the customers of both (only when the batch alone is short).
        clean = transactions.clean.select("customer_id")
        if ctx.store.exists(Table.TRANSACTIONS_CLEAN):
            clean = clean.unionByName(ctx.store.read(Table.TRANSACTIONS_CLEAN).select("customer_id"))
        customers = clean.distinct().count()
    if customers >= needed:
        return
    selection = ctx.settings.model.selection
    lower = "model.selection.k_min" if selection.enabled else "model.k"
    raise TooFewCustomersError(
        f"sources.transactions holds {customers:,} customer{'' if customers == 1 else 's'} with clean lines; "
        f"the segmentation needs at least {needed:,} ({why}): nothing was written to the tables a consumer "
        f"reads. Point sources.transactions at a log with more customers, or lower {lower} or "
        "model.min_customers_per_segment"
    )


def _quarantine_slice(ctx: RunContext, source: str) -> Predicate:
    """The quarantine slice a source's bad rows replace: one current quarantine per source.

    A snapshot source's rows replace its previous ones (history stays in time travel); an
    appended batch keeps its own slice next to the earlier batches.
    """
    if source == "transactions" and ctx.settings.sources.transactions.mode == "append":
        return where(run_id=ctx.run_id, source=source)
    return where(source=source)


def _clean_side(
    ctx: RunContext, name: str, side: ProfileSourceSettings | EventSourceSettings, key: bytes | None
) -> quality.IngestResult:
    """Read and clean one side source (profiles or events)."""
    raw = io.read_source(ctx.spark, side, name)
    if isinstance(side, ProfileSourceSettings):
        return quality.ingest_profiles(raw, side, ctx.run_id, key)
    return quality.ingest_events(raw, side, ctx.settings.quality, ctx.run_id, key)


def _write_transactions(ctx: RunContext, clean: DataFrame, *, mode: str) -> None:
    """Write clean lines by month (replacing a snapshot or appending a batch) with ``CLEAN_PROPERTIES``."""
    dated = with_tx_date(clean)
    store = ctx.store
    if mode == "append":
        # A table written by an earlier version (by day) is rewritten once by month, rows unchanged;
        # a snapshot replaces the whole table anyway. [] is no table yet.
        if store.partition_columns(Table.TRANSACTIONS_CLEAN) not in ([], [TX_MONTH]):
            earlier = with_tx_date(store.read(Table.TRANSACTIONS_CLEAN).drop(TX_DATE))
            store.overwrite(Table.TRANSACTIONS_CLEAN, earlier, partition_by=[TX_MONTH])
        if store.exists(Table.TRANSACTIONS_CLEAN):
            store.append(Table.TRANSACTIONS_CLEAN, dated, partition_by=[TX_MONTH])
        else:  # the first batch creates the table with its properties in the same commit
            store.overwrite(Table.TRANSACTIONS_CLEAN, dated, partition_by=[TX_MONTH], table_properties=CLEAN_PROPERTIES)
    elif not _replace_changed_months(store, dated):
        return
    # A table written before a property was set gets it (no commit when it has them all already).
    store.set_properties(Table.TRANSACTIONS_CLEAN, CLEAN_PROPERTIES)


def month_digests(lines: DataFrame) -> DataFrame:
    """One row per ``tx_month``: its line count and an order-free digest of its lines' content.

    The digest is the exact (decimal) sum of a 64-bit hash of every content column, so two
    months with the same lines, in any order, have the same digest; lineage columns are left out.
    """
    content = [c for c in lines.columns if c not in (*LINEAGE_COLUMNS, TX_MONTH)]
    row_hash = F.xxhash64(*[F.col(c) for c in sorted(content)]).cast("decimal(20,0)")
    return lines.groupBy(TX_MONTH).agg(F.count(F.lit(1)).alias("lines"), F.sum(row_hash).alias("digest"))


def _digests(lines: DataFrame) -> dict[date, tuple[int, object]]:
    return {r[TX_MONTH]: (r["lines"], r["digest"]) for r in month_digests(lines).collect()}  # a row per month


def changed_months(new: DataFrame, stored: DataFrame) -> list[date]:
    """Months whose lines differ between ``new`` and ``stored`` (added, changed or gone), sorted."""
    now, before = _digests(new), _digests(stored)
    return sorted(m for m in now.keys() | before.keys() if now.get(m) != before.get(m))


def _columns(df: DataFrame) -> set[tuple[str, object]]:
    return {(f.name, f.dataType) for f in df.schema.fields}


def _replace_changed_months(store: TableStore, dated: DataFrame) -> bool:
    """Make ``transactions_clean`` equal a snapshot's lines, rewriting only the months that changed.

    Returns:
        Whether anything was committed.
    """
    by_month = store.partition_columns(Table.TRANSACTIONS_CLEAN) == [TX_MONTH]  # [] when there is no table yet
    stored = store.read(Table.TRANSACTIONS_CLEAN) if by_month else None
    if stored is None or _columns(stored) != _columns(dated):  # no table, an earlier layout or other columns
        # Written whole, with the change feed on in the same commit (rather than in one of its own after it).
        store.overwrite(Table.TRANSACTIONS_CLEAN, dated, partition_by=[TX_MONTH], table_properties=CLEAN_PROPERTIES)
        return True
    months = changed_months(dated, stored)
    if not months:
        log.info("%s: the snapshot's clean lines are unchanged; nothing written", store.name(Table.TRANSACTIONS_CLEAN))
        return False
    log.info("%s: replacing %d changed month(s) of the snapshot", store.name(Table.TRANSACTIONS_CLEAN), len(months))
    slice_ = where_in(TX_MONTH, months)
    store.replace(Table.TRANSACTIONS_CLEAN, dated.filter(slice_.column()), slice_, partition_by=[TX_MONTH])
    return True
