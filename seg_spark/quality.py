"""Ingestion: column mapping onto the canonical schema, cleaning rules, quarantine.

Every input row is accounted for. Exact duplicate lines are collapsed (and counted);
every other row ends either in ``transactions_clean`` or, with the original values and
a machine-readable reason code, in ``transactions_quarantine``. The run checks
``input rows = clean + quarantined + duplicates removed`` and fails if it does not hold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seg_spark.config import ColumnMapping, QualitySettings, SourceSettings

log = logging.getLogger(__name__)

CLEAN_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("order_id", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("product_id", T.StringType()),
        T.StructField("description", T.StringType()),
        T.StructField("category", T.StringType()),
        T.StructField("channel", T.StringType()),
        T.StructField("quantity", T.DoubleType()),
        T.StructField("unit_price", T.DoubleType()),
        T.StructField("amount", T.DoubleType()),
        T.StructField("currency", T.StringType()),
        T.StructField("discount", T.DoubleType()),
        T.StructField("country", T.StringType()),
        T.StructField("is_return", T.BooleanType()),
    ]
)
NUMERIC_COLUMNS = ("quantity", "unit_price", "amount", "discount")
# Bookkeeping columns added during ingestion; never part of a row's original values.
_COPIES, _SOURCE_FILE = "_copies", "_source_file"
_INTERNAL = frozenset({_COPIES, _SOURCE_FILE})

# Reason codes, in the order the rules are checked; a row gets the first that applies.
MISSING_CUSTOMER_ID = "missing_customer_id"
INVALID_TIMESTAMP = "invalid_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
BEFORE_MIN_TIMESTAMP = "before_min_timestamp"
INVALID_NUMBER = "invalid_number"
MISSING_AMOUNT = "missing_amount"
NON_POSITIVE_PRICE = "non_positive_price"
REASON_CODES: tuple[str, ...] = (
    MISSING_CUSTOMER_ID,
    INVALID_TIMESTAMP,
    FUTURE_TIMESTAMP,
    BEFORE_MIN_TIMESTAMP,
    INVALID_NUMBER,
    MISSING_AMOUNT,
    NON_POSITIVE_PRICE,
)


class MappingError(ValueError):
    """The column mapping does not fit the source; the message says what to change."""


class ReconciliationError(RuntimeError):
    """Rows were lost or invented between the source and the clean/quarantine tables."""


@dataclass(frozen=True)
class IngestCounts:
    """How every input row was accounted for."""

    input_rows: int
    clean_rows: int
    quarantined_rows: int
    duplicates_removed: int
    by_reason: dict[str, int] = field(default_factory=dict)

    def check(self, source: str) -> None:
        """Fail loudly unless input = clean + quarantined + duplicates removed."""
        accounted = self.clean_rows + self.quarantined_rows + self.duplicates_removed
        if accounted != self.input_rows:
            raise ReconciliationError(
                f"{source}: {self.input_rows} input rows but {accounted} accounted for "
                f"({self.clean_rows} clean + {self.quarantined_rows} quarantined + "
                f"{self.duplicates_removed} duplicates removed)"
            )


def check_mapping(raw: DataFrame, mapping: ColumnMapping, source: str) -> None:
    """Fail with a clear message when the mapping names columns the source lacks.

    Raises:
        MappingError: A mapped column is missing, or no amount can be derived.
    """
    available = raw.columns
    for canonical, column in mapping.model_dump().items():
        if column is not None and column not in available:
            raise MappingError(
                f"{source}: sources.transactions.columns.{canonical} maps to column {column!r}, "
                f"which the source does not have. Available columns: {', '.join(available)}. "
                f"Set it to one of these, or to null if the source has no {canonical}."
            )
    if mapping.amount is None and (mapping.quantity is None or mapping.unit_price is None):
        raise MappingError(
            f"{source}: no line amount can be derived: map sources.transactions.columns.amount, "
            "or both quantity and unit_price."
        )


def _text(raw: DataFrame, column: str | None) -> Column:
    if column is None:
        return F.lit(None).cast("string")
    value = F.trim(F.col(f"`{column}`").cast("string"))
    return F.when(value == "", F.lit(None)).otherwise(value)


def _number(raw: DataFrame, column: str | None) -> Column:
    if column is None:
        return F.lit(None).cast("double")
    return F.col(f"`{column}`").try_cast("double")


def _timestamp(raw: DataFrame, column: str, fmt: str | None) -> Column:
    source_type = raw.schema[column].dataType
    col = F.col(f"`{column}`")
    if isinstance(source_type, (T.TimestampType, T.TimestampNTZType, T.DateType)):
        return col.cast("timestamp")
    if fmt:
        return F.try_to_timestamp(col.cast("string"), F.lit(fmt))
    return col.cast("string").try_cast("timestamp")


def to_canonical(raw: DataFrame, source: SourceSettings, quality: QualitySettings) -> DataFrame:
    """Map a raw source onto the canonical schema, keeping the original values alongside.

    Args:
        raw: The source as read, optionally with ``_copies`` and ``_source_file``.
        source: Source settings with the column mapping and timestamp format.
        quality: Cleaning settings (cancellation prefix).

    Returns:
        Canonical columns, ``raw_record`` (the original values as JSON) and
        ``_bad_number`` (a mapped numeric column held a non-number).
    """
    m = source.columns
    original = [c for c in raw.columns if c not in _INTERNAL]
    quantity, unit_price = _number(raw, m.quantity), _number(raw, m.unit_price)
    discount = _number(raw, m.discount)
    customer_id, ts = _text(raw, m.customer_id), _timestamp(raw, m.ts, source.timestamp_format)
    order_id = _text(raw, m.order_id) if m.order_id else F.concat_ws("|", customer_id, ts.cast("string"))
    prefix = quality.cancellation_prefix
    is_return = F.coalesce(quantity < 0, F.lit(False))
    if prefix and m.order_id:
        is_return = is_return | F.coalesce(order_id.startswith(prefix), F.lit(False))
    derived = quantity * unit_price - F.coalesce(discount, F.lit(0.0))
    amount = _number(raw, m.amount) if m.amount else derived
    # A return always lowers net value, whichever sign the source used.
    amount = F.when(is_return, -F.abs(amount)).otherwise(amount)
    bad_number = F.lit(False)
    for canonical in NUMERIC_COLUMNS:
        column = getattr(m, canonical)
        if column is not None:
            bad_number = bad_number | (F.col(f"`{column}`").isNotNull() & _number(raw, column).isNull())
    return raw.select(
        customer_id.alias("customer_id"),
        order_id.alias("order_id"),
        ts.alias("ts"),
        _text(raw, m.product_id).alias("product_id"),
        _text(raw, m.description).alias("description"),
        _text(raw, m.category).alias("category"),
        _text(raw, m.channel).alias("channel"),
        quantity.alias("quantity"),
        unit_price.alias("unit_price"),
        amount.alias("amount"),
        _text(raw, m.currency).alias("currency"),
        discount.alias("discount"),
        _text(raw, m.country).alias("country"),
        is_return.alias("is_return"),
        F.to_json(F.struct(*[F.col(f"`{c}`") for c in original])).alias("raw_record"),
        bad_number.alias("_bad_number"),
        F.col(_COPIES) if _COPIES in raw.columns else F.lit(1).cast("long").alias(_COPIES),
        F.col(_SOURCE_FILE) if _SOURCE_FILE in raw.columns else F.lit(None).cast("string").alias(_SOURCE_FILE),
    )


def reject_reason(quality: QualitySettings, clock: datetime, has_unit_price: bool) -> Column:
    """The first cleaning rule a canonical row breaks, as a reason code (null: clean)."""
    latest = clock + timedelta(hours=quality.future_tolerance_hours)
    rules: list[tuple[Column, str]] = [
        (F.col("customer_id").isNull(), MISSING_CUSTOMER_ID),
        (F.col("ts").isNull(), INVALID_TIMESTAMP),
        (F.col("ts") > F.lit(latest.replace(tzinfo=None)).cast("timestamp"), FUTURE_TIMESTAMP),
    ]
    if quality.min_timestamp is not None:
        rules.append((F.col("ts") < F.lit(quality.min_timestamp).cast("timestamp"), BEFORE_MIN_TIMESTAMP))
    rules += [(F.col("_bad_number"), INVALID_NUMBER), (F.col("amount").isNull(), MISSING_AMOUNT)]
    if has_unit_price:
        rules.append((F.col("unit_price") <= 0, NON_POSITIVE_PRICE))
    reason = F.lit(None).cast("string")
    for condition, code in reversed(rules):
        reason = F.when(condition, F.lit(code)).otherwise(reason)
    return reason


def collapse_duplicates(raw: DataFrame) -> DataFrame:
    """One row per distinct input line, with ``_copies`` = how many times it occurred."""
    columns = [F.col(f"`{c}`") for c in raw.columns if c not in _INTERNAL]
    return raw.groupBy(*columns).agg(F.count(F.lit(1)).alias(_COPIES), F.min(_SOURCE_FILE).alias(_SOURCE_FILE))


@dataclass
class IngestResult:
    """Clean and quarantined rows (both cached until ``release``) and their counts."""

    clean: DataFrame
    quarantine: DataFrame
    counts: IngestCounts
    _cached: DataFrame

    def release(self) -> None:
        """Drop the cached labelled rows once both tables are written."""
        self._cached.unpersist()


def ingest(
    raw: DataFrame,
    source: SourceSettings,
    quality: QualitySettings,
    run_id: str,
    source_name: str = "transactions",
) -> IngestResult:
    """Apply mapping and cleaning rules to a raw source and account for every row.

    Args:
        raw: The source as read.
        source: Its settings (mapping, formats).
        quality: Cleaning rules.
        run_id: Lineage id stamped on every output row.
        source_name: Name used in messages.

    Returns:
        The clean rows (canonical schema + lineage), the quarantined rows (reason code +
        original values) and the reconciled counts.

    Raises:
        MappingError: The mapping does not fit the source.
        ReconciliationError: Rows were lost.
    """
    check_mapping(raw, source.columns, f"sources.{source_name} ({source.path})")
    input_rows = raw.count()
    with_file = raw.withColumn(_SOURCE_FILE, F.input_file_name())
    deduped = collapse_duplicates(with_file) if quality.drop_exact_duplicates else with_file
    clock = quality.clock or datetime.now(UTC)
    canonical = to_canonical(deduped, source, quality)
    labelled = canonical.withColumn(
        "reason_code", reject_reason(quality, clock, source.columns.unit_price is not None)
    ).persist(StorageLevel.MEMORY_AND_DISK)
    summary = (
        labelled.groupBy("reason_code")
        .agg(F.count(F.lit(1)).alias("rows"), F.sum(_COPIES).alias("input_rows"))
        .collect()
    )
    by_reason = {r["reason_code"]: r["rows"] for r in summary if r["reason_code"] is not None}
    distinct_rows = sum(r["rows"] for r in summary)
    counts = IngestCounts(
        input_rows=input_rows,
        clean_rows=next((r["rows"] for r in summary if r["reason_code"] is None), 0),
        quarantined_rows=sum(by_reason.values()),
        duplicates_removed=sum(r["input_rows"] for r in summary) - distinct_rows,
        by_reason=by_reason,
    )
    counts.check(f"sources.{source_name} ({source.path})")
    lineage = [F.col(_SOURCE_FILE).alias("source_file"), F.lit(run_id).alias("ingest_run_id")]
    clean = labelled.filter(F.col("reason_code").isNull()).select(
        *[F.col(f.name).cast(f.dataType) for f in CLEAN_SCHEMA.fields], *lineage
    )
    quarantine = labelled.filter(F.col("reason_code").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        F.lit(source_name).alias("source"),
        "reason_code",
        "raw_record",
        F.col(_COPIES).alias("occurrences"),
        F.col(_SOURCE_FILE).alias("source_file"),
        *[F.col(f.name) for f in CLEAN_SCHEMA.fields],
    )
    log.info(
        "ingested %s rows: %s clean, %s quarantined %s, %s exact duplicates removed",
        counts.input_rows,
        counts.clean_rows,
        counts.quarantined_rows,
        by_reason,
        counts.duplicates_removed,
    )
    return IngestResult(clean=clean, quarantine=quarantine, counts=counts, _cached=labelled)


def quality_rows(spark: SparkSession, counts: IngestCounts, run_id: str, source_name: str) -> DataFrame:
    """The data-quality table rows for one run: one row per rule plus the totals."""
    metrics: list[tuple[str, int]] = [
        ("input_rows", counts.input_rows),
        ("clean_rows", counts.clean_rows),
        ("quarantined_rows", counts.quarantined_rows),
        ("duplicates_removed", counts.duplicates_removed),
    ]
    metrics += [(f"rule:{code}", counts.by_reason.get(code, 0)) for code in REASON_CODES]
    rows = [
        (run_id, source_name, name, int(value), float(value) / max(counts.input_rows, 1)) for name, value in metrics
    ]
    return spark.createDataFrame(
        rows, "run_id string, source string, metric string, value long, share_of_input double"
    ).withColumn("recorded_at", F.current_timestamp())
