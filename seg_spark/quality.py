"""Ingestion: column mapping onto the canonical schema, cleaning rules, quarantine, DQ report.

Every input row is accounted for. Exact duplicate lines are collapsed (and counted);
every other row ends either in the clean table or, with its original values and a
machine-readable reason code, in the quarantine table. Each run checks
``input rows = clean + quarantined + duplicates removed`` and fails if it does not hold.

Three kinds of source share the machinery: the transaction log (required), customer
profiles and web/app events (optional, joined by customer id later).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from py4j.protocol import Py4JJavaError
from pyspark import StorageLevel
from pyspark.errors import PySparkException
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T
from pyspark.sql.window import Window

from seg_spark.clock import Clock
from seg_spark.config import (
    EventSourceSettings,
    ProfileSourceSettings,
    QualitySettings,
    SourceSettings,
    Thresholds,
)
from seg_spark.errors import DataError
from seg_spark.io import CORRUPT_RECORD, SourceError, read_error
from seg_spark.privacy import hmac_sha256

log = logging.getLogger(__name__)

# The sources with a column mapping (``columns``), which the shared ingestion core reads.
MappedSource = SourceSettings | ProfileSourceSettings | EventSourceSettings

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
        T.StructField("is_outlier", T.BooleanType()),
    ]
)
PROFILE_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("age_band", T.StringType()),
        T.StructField("gender", T.StringType()),
        T.StructField("signup_date", T.DateType()),
        T.StructField("country", T.StringType()),
        T.StructField("region", T.StringType()),
        T.StructField("city", T.StringType()),
    ]
)
EVENT_SCHEMA = T.StructType(
    [
        T.StructField("customer_id", T.StringType()),
        T.StructField("ts", T.TimestampType()),
        T.StructField("session_id", T.StringType()),
        T.StructField("event_type", T.StringType()),
    ]
)
NUMERIC_COLUMNS = ("quantity", "unit_price", "amount", "discount")

# Reason codes; a row gets the first rule (in this order) that it breaks.
MALFORMED_RECORD = "malformed_record"
MISSING_CUSTOMER_ID = "missing_customer_id"
INVALID_TIMESTAMP = "invalid_timestamp"
FUTURE_TIMESTAMP = "future_timestamp"
BEFORE_MIN_TIMESTAMP = "before_min_timestamp"
INVALID_NUMBER = "invalid_number"
MISSING_AMOUNT = "missing_amount"
NON_POSITIVE_PRICE = "non_positive_price"
NON_PRODUCT = "non_product"
DUPLICATE_CUSTOMER = "duplicate_customer"
INVALID_DATE = "invalid_date"
REASON_CODES: tuple[str, ...] = (
    MALFORMED_RECORD,
    MISSING_CUSTOMER_ID,
    INVALID_TIMESTAMP,
    FUTURE_TIMESTAMP,
    BEFORE_MIN_TIMESTAMP,
    INVALID_NUMBER,
    MISSING_AMOUNT,
    NON_POSITIVE_PRICE,
    NON_PRODUCT,
    DUPLICATE_CUSTOMER,
    INVALID_DATE,
)

# Bookkeeping columns added during ingestion; never part of a row's original values.
_COPIES, _SOURCE_FILE, _BAD_NUMBER = "_copies", "_source_file", "_bad_number"
# A row's original values (a struct) and a malformed line's text, until ``raw_record`` is made of them.
_RAW, _RAW_TEXT = "_raw", "_raw_text"
_INTERNAL = frozenset({_COPIES, _SOURCE_FILE, CORRUPT_RECORD})


class MappingError(DataError):
    """The column mapping does not fit the source; the message says what to change."""


class ReconciliationError(DataError):
    """Rows were lost or invented between the source and the clean/quarantine tables."""


class QualityThresholdError(DataError):
    """The data breaks a configured quality threshold; the run stops before modelling."""


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


@dataclass
class IngestResult:
    """Clean and quarantined rows (cached until ``release``), counts and the DQ profile."""

    source: str
    clean: DataFrame
    quarantine: DataFrame
    counts: IngestCounts
    profile: dict[tuple[str, str], float | str | None]
    _cached: DataFrame

    def release(self) -> None:
        """Drop the cached labelled rows once both tables are written."""
        self._cached.unpersist()


# ---------------------------------------------------------------------------------------
# Mapping and type checks
# ---------------------------------------------------------------------------------------

_TEXT_TYPES = (T.StringType, T.NumericType, T.BooleanType, T.DateType, T.TimestampType, T.TimestampNTZType)
_TIME_TYPES = (T.StringType, T.TimestampType, T.TimestampNTZType, T.DateType, T.NumericType)
_NUMBER_TYPES = (T.StringType, T.NumericType)
_EXPECTED = {
    "text": (_TEXT_TYPES, "text, a number or a date"),
    "time": (_TIME_TYPES, "a timestamp, a date, text in timestamp_format, or epoch seconds"),
    "number": (_NUMBER_TYPES, "a number or text holding a number"),
}


def check_mapping(
    raw: DataFrame,
    mapping: Mapping[str, str | None],
    kinds: Mapping[str, str],
    where: str,
    location: str,
) -> None:
    """Fail with a clear message when mapped columns are missing or of an unusable type.

    Args:
        raw: The source as read.
        mapping: Canonical name -> source column (None: not in the source).
        kinds: Canonical name -> "text", "time" or "number".
        where: The config path of the source, e.g. ``sources.transactions``.
        location: The source's path or table, for the message.

    Raises:
        MappingError: A mapped column is missing or has a type that cannot be used.
    """
    types = {f.name: f.dataType for f in raw.schema.fields}
    available = [c for c in raw.columns if c not in _INTERNAL]
    for canonical, column in mapping.items():
        if column is None:
            continue
        if column not in types:
            # A CSV header naming a column twice: Spark appends each copy's position (qty -> qty4, qty6).
            copies = [c for c in available if re.fullmatch(re.escape(column) + r"\d+", c, re.IGNORECASE)]
            if len(copies) > 1:
                raise MappingError(
                    f"{where} ({location}): {where}.columns.{canonical} maps to column {column!r}, which the "
                    f"source's header names {len(copies)} times (read as {', '.join(copies)}). Rename the "
                    f"duplicates in the export, or map {where}.columns.{canonical} to one of {', '.join(copies)}."
                )
            raise MappingError(
                f"{where} ({location}): {where}.columns.{canonical} maps to column {column!r}, "
                f"which the source does not have. Available columns: {', '.join(available)}. "
                f"Set it to one of these, or to null if the source has no {canonical}."
            )
        allowed, described = _EXPECTED[kinds[canonical]]
        if not isinstance(types[column], allowed):
            raise MappingError(
                f"{where} ({location}): column {column!r} (mapped as {canonical}) has type "
                f"{types[column].simpleString()}, expected {described}. Map {where}.columns.{canonical} "
                "to another column or convert the column in the source."
            )


def _text(raw: DataFrame, column: str | None) -> Column:
    if column is None:
        return F.lit(None).cast("string")
    col = F.col(f"`{column}`")
    if isinstance(raw.schema[column].dataType, (T.FloatType, T.DoubleType, T.DecimalType)):
        # 17850.0 -> "17850": ids stored as floating point keep their integer form.
        col = F.when(col == F.floor(col), F.floor(col).cast("string")).otherwise(col.cast("string"))
    value = F.trim(col.cast("string"))
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
    if isinstance(source_type, T.NumericType):
        return F.timestamp_seconds(col.cast("long"))
    if fmt:
        return F.try_to_timestamp(col.cast("string"), F.lit(fmt))
    return col.cast("string").try_cast("timestamp")


def _bad_numbers(raw: DataFrame, columns: list[str | None]) -> Column:
    bad = F.lit(False)
    for column in columns:
        if column is not None:
            bad = bad | (F.col(f"`{column}`").isNotNull() & _number(raw, column).isNull())
    return bad


def _bookkeeping(raw: DataFrame) -> list[Column]:
    original = [c for c in raw.columns if c not in _INTERNAL]
    malformed_text = F.col(CORRUPT_RECORD) if CORRUPT_RECORD in raw.columns else F.lit(None).cast("string")
    return [
        F.struct(*[F.col(f"`{c}`") for c in original]).alias(_RAW),
        malformed_text.alias(_RAW_TEXT),
        malformed_text.isNotNull().alias("_malformed"),
        F.col(_COPIES) if _COPIES in raw.columns else F.lit(1).cast("long").alias(_COPIES),
        F.col(_SOURCE_FILE) if _SOURCE_FILE in raw.columns else F.lit(None).cast("string").alias(_SOURCE_FILE),
    ]


def raw_record() -> Column:
    """A row's original values as JSON, or the text of a malformed line (its parsed fields are meaningless)."""
    return F.coalesce(F.col(_RAW_TEXT), F.to_json(F.col(_RAW)))


def to_canonical(raw: DataFrame, source: SourceSettings, quality: QualitySettings) -> DataFrame:
    """Map a raw transaction log onto the canonical schema, keeping the original values alongside.

    Args:
        raw: The source as read, optionally with ``_copies``, ``_source_file`` and
            ``_corrupt_record``.
        source: Source settings with the column mapping and timestamp format.
        quality: Cleaning settings (return detection).

    Returns:
        Canonical columns plus the original values (``raw_record`` makes them the
        quarantine's JSON) and bookkeeping columns.
    """
    m = source.columns
    quantity, unit_price = _number(raw, m.quantity), _number(raw, m.unit_price)
    discount = _number(raw, m.discount)
    customer_id, ts = _text(raw, m.customer_id), _timestamp(raw, m.ts, source.timestamp_format)
    order_id = _text(raw, m.order_id) if m.order_id else F.concat_ws("|", customer_id, ts.cast("string"))
    is_return = F.coalesce(quantity < 0, F.lit(False))
    if quality.cancellation_prefix and m.order_id:
        is_return = is_return | F.coalesce(order_id.startswith(quality.cancellation_prefix), F.lit(False))
    if m.status and quality.return_statuses:
        statuses = [s.lower() for s in quality.return_statuses]
        is_return = is_return | F.coalesce(F.lower(_text(raw, m.status)).isin(statuses), F.lit(False))
    derived = quantity * unit_price - F.coalesce(discount, F.lit(0.0))
    amount = _number(raw, m.amount) if m.amount else derived
    # A return always lowers net value, whichever sign the source used.
    amount = F.when(is_return, -F.abs(amount)).otherwise(amount)
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
        _bad_numbers(raw, [m.quantity, m.unit_price, m.amount, m.discount]).alias(_BAD_NUMBER),
        *_bookkeeping(raw),
    )


def _first(rules: list[tuple[Column, str]]) -> Column:
    reason = F.lit(None).cast("string")
    for condition, code in reversed(rules):
        reason = F.when(condition, F.lit(code)).otherwise(reason)
    return reason


def _time_rules(quality: QualitySettings, clock: datetime) -> list[tuple[Column, str]]:
    latest = clock + timedelta(hours=quality.future_tolerance_hours)
    rules = [
        (F.col("ts").isNull(), INVALID_TIMESTAMP),
        (F.col("ts") > F.lit(latest.replace(tzinfo=None)).cast("timestamp"), FUTURE_TIMESTAMP),
    ]
    if quality.min_timestamp is not None:
        rules.append((F.col("ts") < F.lit(quality.min_timestamp).cast("timestamp"), BEFORE_MIN_TIMESTAMP))
    return rules


def _non_product(quality: QualitySettings) -> Column | None:
    rules = quality.non_product
    conditions: list[Column] = []
    if rules.product_ids:
        conditions.append(F.col("product_id").isin(list(rules.product_ids)))
    if rules.product_id_pattern:
        conditions.append(F.col("product_id").rlike(rules.product_id_pattern))
    if rules.description_pattern:
        conditions.append(F.col("description").rlike(rules.description_pattern))
    for prefix in rules.order_id_prefixes:
        conditions.append(F.col("order_id").startswith(prefix))
    if not conditions:
        return None
    combined = conditions[0]
    for condition in conditions[1:]:
        combined = combined | condition
    return F.coalesce(combined, F.lit(False))


def reject_reason(quality: QualitySettings, clock: datetime, has_unit_price: bool) -> Column:
    """The first cleaning rule a canonical transaction row breaks, as a reason code (null: clean)."""
    rules: list[tuple[Column, str]] = [
        (F.col("_malformed"), MALFORMED_RECORD),
        (F.col("customer_id").isNull(), MISSING_CUSTOMER_ID),
        *_time_rules(quality, clock),
        (F.col(_BAD_NUMBER), INVALID_NUMBER),
        (F.col("amount").isNull(), MISSING_AMOUNT),
    ]
    if has_unit_price:
        rules.append((F.col("unit_price") <= 0, NON_POSITIVE_PRICE))
    non_product = _non_product(quality)
    if non_product is not None:
        rules.append((non_product, NON_PRODUCT))
    return _first(rules)


def collapse_duplicates(raw: DataFrame) -> DataFrame:
    """One row per distinct input line, with ``_copies`` = how many times it occurred."""
    columns = [F.col(f"`{c}`") for c in raw.columns if c not in (_SOURCE_FILE,)]
    return raw.groupBy(*columns).agg(F.count(F.lit(1)).alias(_COPIES), F.min(_SOURCE_FILE).alias(_SOURCE_FILE))


# ---------------------------------------------------------------------------------------
# The shared ingestion core
# ---------------------------------------------------------------------------------------


def _prepare(raw: DataFrame, source: MappedSource, where: str, pseudonym_key: bytes | None) -> DataFrame:
    """Drop PII columns and pseudonymise the customer id, before anything else sees them."""
    missing = [c for c in source.drop_columns if c not in raw.columns]
    if missing:
        raise MappingError(
            f"{where} ({source.location}): {where}.drop_columns names {missing}, which the source does not "
            f"have. Available columns: {', '.join(c for c in raw.columns if c not in _INTERNAL)}."
        )
    prepared = raw.drop(*source.drop_columns)
    customer_column = source.columns.customer_id
    if pseudonym_key is not None and customer_column in prepared.columns:
        value = _text(prepared, customer_column)
        prepared = prepared.withColumn(customer_column, hmac_sha256(value, pseudonym_key))
    return prepared


@contextmanager
def _reading(where: str, source: MappedSource) -> Iterator[None]:
    """Turn a Spark failure while reading a source's rows into a SourceError that says what to do."""
    try:
        yield
    except (PySparkException, Py4JJavaError) as exc:
        raise read_error(exc, where, source, reading_rows=True) from None


def _count_input(raw: DataFrame, where: str, source: MappedSource) -> int:
    with _reading(where, source):
        rows = raw.count()
    if rows == 0:
        raise SourceError(
            f"{where} ({source.location}) has no rows: check that {where}.path matches files holding data "
            "(and, for CSV, that the header line is not the only line)."
        )
    return rows


def _ingest(
    raw: DataFrame,
    source: MappedSource,
    name: str,
    canonical: Callable[[DataFrame], DataFrame],
    reason: Column,
    *,
    drop_duplicates: bool,
    pseudonym_key: bytes | None,
    kinds: Mapping[str, str],
) -> tuple[DataFrame, IngestCounts]:
    """Prepare, check, count, de-duplicate, map and label a source; reconcile the counts."""
    where = f"sources.{name}"
    prepared = _prepare(raw, source, where, pseudonym_key)
    check_mapping(prepared, source.columns.model_dump(), kinds, where, source.location)
    input_rows = _count_input(prepared, where, source)
    with_file = prepared.withColumn(_SOURCE_FILE, F.input_file_name())
    deduped = collapse_duplicates(with_file) if drop_duplicates else with_file
    labelled = (
        canonical(deduped)
        .withColumn("reason_code", reason)
        # Only quarantined rows keep their original values as JSON. Made for every line, it cost the
        # labelling pass of the 1M-line log 13-24% of its CPU (11.9 s against 9.0-10.3 s), and the
        # cache held it for every clean line.
        .withColumn("raw_record", F.when(F.col("reason_code").isNotNull(), raw_record()))
        .drop(_RAW, _RAW_TEXT)
        .persist(StorageLevel.MEMORY_AND_DISK)
    )
    with _reading(where, source):
        summary = (
            labelled.groupBy("reason_code")
            .agg(F.count(F.lit(1)).alias("rows"), F.sum(_COPIES).alias("input_rows"))
            .collect()
        )
    by_reason = {r["reason_code"]: r["rows"] for r in summary if r["reason_code"] is not None}
    counts = IngestCounts(
        input_rows=input_rows,
        clean_rows=next((r["rows"] for r in summary if r["reason_code"] is None), 0),
        quarantined_rows=sum(by_reason.values()),
        duplicates_removed=sum(r["input_rows"] for r in summary) - sum(r["rows"] for r in summary),
        by_reason=by_reason,
    )
    counts.check(f"{where} ({source.location})")
    log.info(
        "%s: %s input rows, %s clean, %s quarantined %s, %s exact duplicates removed",
        where,
        counts.input_rows,
        counts.clean_rows,
        counts.quarantined_rows,
        by_reason,
        counts.duplicates_removed,
    )
    return labelled, counts


def _split(name: str, labelled: DataFrame, schema: T.StructType, run_id: str) -> tuple[DataFrame, DataFrame]:
    """Clean rows in ``schema`` with lineage; quarantined rows with reason and original values."""
    canonical = [F.col(f.name).cast(f.dataType).alias(f.name) for f in schema.fields]
    clean = labelled.filter(F.col("reason_code").isNull()).select(
        *canonical, F.col(_SOURCE_FILE).alias("source_file"), F.lit(run_id).alias("ingest_run_id")
    )
    quarantine = labelled.filter(F.col("reason_code").isNotNull()).select(
        F.lit(run_id).alias("run_id"),
        F.lit(name).alias("source"),
        "reason_code",
        "raw_record",
        F.to_json(F.struct(*canonical)).alias("canonical_record"),
        F.col(_COPIES).alias("occurrences"),
        F.col(_SOURCE_FILE).alias("source_file"),
    )
    return clean, quarantine


def ingest(
    raw: DataFrame,
    source: SourceSettings,
    quality: QualitySettings,
    run_id: str,
    source_name: str = "transactions",
    pseudonym_key: bytes | None = None,
) -> IngestResult:
    """Apply mapping and cleaning rules to a raw transaction log and account for every row.

    Args:
        raw: The source as read (see ``seg_spark.io.read_source``).
        source: Its settings (mapping, formats, PII columns).
        quality: Cleaning rules.
        run_id: Lineage id stamped on every output row.
        source_name: The source's key under ``sources``, used in messages.
        pseudonym_key: When given, customer ids are replaced by their HMAC-SHA256.

    Returns:
        Clean rows (canonical schema + ``is_outlier`` + lineage), quarantined rows (reason
        code + original values), reconciled counts and the data-quality profile.

    Raises:
        MappingError: The mapping does not fit the source.
        SourceError: The source is empty or cannot be parsed.
        ReconciliationError: Rows were lost.
    """
    m = source.columns
    kinds = {c: "number" if c in NUMERIC_COLUMNS else "text" for c in m.model_fields}
    kinds["ts"] = "time"
    where = f"sources.{source_name}"
    if m.amount is None and (m.quantity is None or m.unit_price is None):
        raise MappingError(
            f"{where} ({source.location}): no line amount can be derived: map {where}.columns.amount, "
            "or both quantity and unit_price."
        )
    unmapped = [c for c, column in m.model_dump().items() if column is None]
    if unmapped:
        log.info("%s maps no %s: features that need them are skipped", where, ", ".join(unmapped))
    clock = Clock(quality.clock).now()
    labelled, counts = _ingest(
        raw,
        source,
        source_name,
        lambda df: to_canonical(df, source, quality),
        reject_reason(quality, clock, m.unit_price is not None),
        drop_duplicates=quality.drop_exact_duplicates,
        pseudonym_key=pseudonym_key,
        kinds=kinds,
    )
    threshold = _outlier_threshold(labelled, quality)
    flagged = labelled.withColumn(
        "is_outlier",
        F.lit(False)
        if threshold is None
        else F.coalesce(F.abs(F.col(quality.outliers.column)) > threshold, F.lit(False)),
    )
    clean, quarantine = _split(source_name, flagged, CLEAN_SCHEMA, run_id)
    profile = transaction_profile(flagged, threshold)
    undecoded = int(profile.get(("invalid_encoding", ""), 0) or 0)
    if undecoded:
        log.warning(
            "sources.%s: %s rows hold characters that could not be decoded (shown as U+FFFD); the file is "
            "probably not %s: set sources.%s.options.encoding (e.g. ISO-8859-1 or windows-1252)",
            source_name,
            f"{undecoded:,}",
            source.options.get("encoding", source.options.get("charset", "UTF-8")),
            source_name,
        )
    return IngestResult(source_name, clean, quarantine, counts, profile, labelled)


def _outlier_threshold(labelled: DataFrame, quality: QualitySettings) -> float | None:
    rule = quality.outliers
    if not rule.enabled:
        return None
    clean = labelled.filter(F.col("reason_code").isNull()).select(F.abs(F.col(rule.column)).alias("v"))
    quantiles = clean.approxQuantile("v", [rule.quantile], 0.0001)
    if not quantiles or quantiles[0] is None or quantiles[0] <= 0:
        return None
    return float(quantiles[0]) * rule.multiplier


REPLACEMENT_CHARACTER = "\ufffd"  # what a decoder writes for bytes it cannot decode


def _replacement_rows(labelled: DataFrame) -> Column:
    """Rows whose text holds the replacement character: bytes the configured encoding could not decode.

    It looks at the mapped text columns of every row, and at the original values only of the
    quarantined rows (the others keep no ``raw_record``): undecodable bytes in a column no
    mapping reads are not counted on a clean row.
    """
    text = [f.name for f in labelled.schema.fields if isinstance(f.dataType, T.StringType) and f.name != "reason_code"]
    any_hit = F.lit(False)
    for column in text:
        any_hit = any_hit | F.coalesce(F.col(column).contains(REPLACEMENT_CHARACTER), F.lit(False))
    return F.sum(any_hit.cast("long"))


def transaction_profile(
    labelled: DataFrame, outlier_threshold: float | None
) -> dict[tuple[str, str], float | str | None]:
    """Null rates, value ranges, date coverage and customers in/out, in one aggregation."""
    clean = F.col("reason_code").isNull()
    columns = [f.name for f in CLEAN_SCHEMA.fields if f.name not in ("is_return", "is_outlier")]
    aggs = [F.count(F.lit(1)).alias("rows")]
    aggs += [F.sum(F.col(c).isNull().cast("long")).alias(f"null:{c}") for c in columns]
    for c in ("amount", "quantity", "unit_price"):
        aggs += [F.min(F.when(clean, F.col(c))).alias(f"min:{c}"), F.max(F.when(clean, F.col(c))).alias(f"max:{c}")]
    aggs += [
        F.min(F.when(clean, F.col("ts"))).alias("min:ts"),
        F.max(F.when(clean, F.col("ts"))).alias("max:ts"),
        F.countDistinct(F.when(clean, F.to_date("ts"))).alias("days_covered"),
        F.countDistinct("customer_id").alias("customers_in"),
        F.countDistinct(F.when(clean, F.col("customer_id"))).alias("customers_clean"),
        F.sum((clean & F.col("is_outlier")).cast("long")).alias("outliers_flagged"),
        F.sum((clean & F.col("is_return")).cast("long")).alias("returns_kept"),
        _replacement_rows(labelled).alias("invalid_encoding"),
    ]
    first = labelled.agg(*aggs).first()
    if first is None:  # a global aggregation always has exactly one row
        raise RuntimeError("the data-quality profile aggregation returned no row")
    row = first.asDict()
    rows = max(int(row.pop("rows")), 1)
    profile: dict[tuple[str, str], float | str | None] = {}
    for key, value in row.items():
        kind, _, column = key.partition(":")
        if kind == "null":
            profile[("null_rate", column)] = value / rows
        elif column == "ts":
            profile[(kind, column)] = value.isoformat() if value else None
        else:
            profile[(kind, column)] = None if value is None else float(value)
    profile[("customers_lost", "")] = float(row["customers_in"] - row["customers_clean"])
    profile[("outlier_threshold", "")] = outlier_threshold
    return profile


def ingest_profiles(
    raw: DataFrame, source: ProfileSourceSettings, run_id: str, pseudonym_key: bytes | None = None
) -> IngestResult:
    """Clean customer profiles: one row per customer; others quarantined with a reason."""
    m = source.columns
    kinds = {c: "time" if c == "signup_date" else "text" for c in m.model_fields}

    def canonical(df: DataFrame) -> DataFrame:
        signup = _timestamp(df, m.signup_date, source.timestamp_format) if m.signup_date else F.lit(None)
        mapped = df.select(
            _text(df, m.customer_id).alias("customer_id"),
            *[_text(df, getattr(m, c)).alias(c) for c in ("age_band", "gender")],
            F.to_date(signup).alias("signup_date"),
            (F.col(f"`{m.signup_date}`").isNotNull() & signup.isNull() if m.signup_date else F.lit(False)).alias(
                "_bad_date"
            ),
            *[_text(df, getattr(m, c)).alias(c) for c in ("country", "region", "city")],
            *_bookkeeping(df),
        )
        # More than one distinct row for a customer: keep the first by its original values.
        rank = F.row_number().over(Window.partitionBy("customer_id").orderBy(raw_record()))
        return mapped.withColumn("_rank", F.when(F.col("customer_id").isNotNull(), rank))

    reason = _first(
        [
            (F.col("_malformed"), MALFORMED_RECORD),
            (F.col("customer_id").isNull(), MISSING_CUSTOMER_ID),
            (F.col("_bad_date"), INVALID_DATE),
            (F.col("_rank") > 1, DUPLICATE_CUSTOMER),
        ]
    )
    labelled, counts = _ingest(
        raw, source, "profiles", canonical, reason, drop_duplicates=True, pseudonym_key=pseudonym_key, kinds=kinds
    )
    clean, quarantine = _split("profiles", labelled, PROFILE_SCHEMA, run_id)
    return IngestResult("profiles", clean, quarantine, counts, {}, labelled)


def ingest_events(
    raw: DataFrame,
    source: EventSourceSettings,
    quality: QualitySettings,
    run_id: str,
    pseudonym_key: bytes | None = None,
) -> IngestResult:
    """Clean web/app events; bad ones quarantined with a reason."""
    m = source.columns
    kinds = {c: "time" if c == "ts" else "text" for c in m.model_fields}
    clock = Clock(quality.clock).now()

    def canonical(df: DataFrame) -> DataFrame:
        return df.select(
            _text(df, m.customer_id).alias("customer_id"),
            _timestamp(df, m.ts, source.timestamp_format).alias("ts"),
            _text(df, m.session_id).alias("session_id"),
            _text(df, m.event_type).alias("event_type"),
            *_bookkeeping(df),
        )

    reason = _first(
        [
            (F.col("_malformed"), MALFORMED_RECORD),
            (F.col("customer_id").isNull(), MISSING_CUSTOMER_ID),
            *_time_rules(quality, clock),
        ]
    )
    labelled, counts = _ingest(
        raw,
        source,
        "events",
        canonical,
        reason,
        drop_duplicates=quality.drop_exact_duplicates,
        pseudonym_key=pseudonym_key,
        kinds=kinds,
    )
    clean, quarantine = _split("events", labelled, EVENT_SCHEMA, run_id)
    return IngestResult("events", clean, quarantine, counts, {}, labelled)


# ---------------------------------------------------------------------------------------
# Report and thresholds
# ---------------------------------------------------------------------------------------


def check_thresholds(result: IngestResult, thresholds: Thresholds) -> None:
    """Stop the run with every breached threshold named, before any model is touched.

    Raises:
        QualityThresholdError: At least one threshold is breached.
    """
    counts, where = result.counts, f"sources.{result.source}"
    unknown = sorted(set(thresholds.max_rule_share) - set(REASON_CODES))
    if unknown:
        raise QualityThresholdError(
            f"quality.thresholds.max_rule_share names unknown rule(s) {unknown}; known: {', '.join(REASON_CODES)}"
        )
    total = max(counts.input_rows, 1)
    breaches = []
    share = counts.quarantined_rows / total
    if share > thresholds.max_quarantined_share:
        breaches.append(
            f"{share:.1%} of input rows quarantined ({counts.quarantined_rows:,} of {counts.input_rows:,}), "
            f"more than quality.thresholds.max_quarantined_share = {thresholds.max_quarantined_share:.1%}"
        )
    for rule, limit in sorted(thresholds.max_rule_share.items()):
        rule_share = counts.by_reason.get(rule, 0) / total
        if rule_share > limit:
            breaches.append(
                f"rule {rule} quarantined {rule_share:.1%} of input rows, more than "
                f"quality.thresholds.max_rule_share.{rule} = {limit:.1%}"
            )
    if counts.clean_rows < thresholds.min_clean_rows:
        breaches.append(
            f"{counts.clean_rows:,} clean rows, fewer than "
            f"quality.thresholds.min_clean_rows = {thresholds.min_clean_rows:,}"
        )
    customers = result.profile.get(("customers_clean", ""))
    if isinstance(customers, (int, float)) and customers < thresholds.min_clean_customers:
        breaches.append(
            f"{int(customers):,} customers with clean rows, fewer than "
            f"quality.thresholds.min_clean_customers = {thresholds.min_clean_customers:,}"
        )
    if breaches:
        raise QualityThresholdError(
            f"{where} ({counts.input_rows:,} rows) fails its quality thresholds; nothing was modelled. "
            "See the transactions_quarantine and data_quality tables for the rows and counts.\n  - "
            + "\n  - ".join(breaches)
            + _top_rules(result)
        )


def _rule_hints(where: str) -> dict[str, str]:
    """The setting that usually fixes each rule's rows."""
    return {
        MALFORMED_RECORD: f"lines that do not parse: check {where}.format and {where}.options (sep, quote, encoding)",
        MISSING_CUSTOMER_ID: f"check {where}.columns.customer_id; guest lines are expected in some logs "
        "(then raise quality.thresholds.max_quarantined_share)",
        INVALID_TIMESTAMP: f"set {where}.timestamp_format to the pattern of these values (e.g. dd/MM/yyyy HH:mm)",
        FUTURE_TIMESTAMP: f"after quality.clock (default: now): day and month swapped? check {where}.timestamp_format, "
        "or set quality.clock for a historical log",
        BEFORE_MIN_TIMESTAMP: "before quality.min_timestamp: lower it for an older log",
        INVALID_NUMBER: "numbers that do not parse (a decimal comma such as 1.234,56?): export them with a decimal "
        "point",
        MISSING_AMOUNT: f"map {where}.columns.amount, or quantity and unit_price",
        NON_POSITIVE_PRICE: "zero or negative unit prices (free items, adjustments): expected in some logs",
        NON_PRODUCT: "quality.non_product lists these products",
    }


def _top_rules(result: IngestResult, top: int = 3, samples: int = 3) -> str:
    """The most frequent rules, each with sample original values and the setting that usually fixes them."""
    where = f"sources.{result.source}"
    ranked = sorted(result.counts.by_reason.items(), key=lambda item: (-item[1], item[0]))[:top]
    if not ranked:
        return ""
    hints = _rule_hints(where)
    lines = []
    for rule, count in ranked:
        rows = result.quarantine.filter(F.col("reason_code") == rule).select("raw_record").limit(samples).collect()
        shown = "; ".join(str(r["raw_record"])[:160] for r in rows)
        hint = hints.get(rule, "")
        lines.append(f"{rule}: {count:,} rows, e.g. {shown}" + (f" -> {hint}" if hint else ""))
    return "\nMost frequent rules:\n  - " + "\n  - ".join(lines)


def quality_rows(spark: SparkSession, result: IngestResult, run_id: str) -> DataFrame:
    """The data-quality table rows for one source in one run."""
    counts = result.counts
    total = max(counts.input_rows, 1)
    rows: list[tuple[str, str, float | None, str | None]] = [
        ("input_rows", "", float(counts.input_rows), None),
        ("clean_rows", "", float(counts.clean_rows), None),
        ("quarantined_rows", "", float(counts.quarantined_rows), None),
        ("duplicates_removed", "", float(counts.duplicates_removed), None),
    ]
    rows += [("rule", code, float(counts.by_reason.get(code, 0)), None) for code in REASON_CODES]
    rows += [("rule_share", code, counts.by_reason.get(code, 0) / total, None) for code in REASON_CODES]
    for (metric, column), value in sorted(result.profile.items()):
        if isinstance(value, str):
            rows.append((metric, column, None, value))
        else:
            rows.append((metric, column, value, None))
    return spark.createDataFrame(
        [(run_id, result.source, *row) for row in rows],
        "run_id string, source string, metric string, column string, value double, text string",
    ).withColumn("recorded_at", F.current_timestamp())


def quality_metrics(result: IngestResult) -> dict[str, float]:
    """Counts and profile numbers as flat MLflow metric names."""
    counts = result.counts
    prefix = result.source
    metrics: dict[str, float] = {
        f"{prefix}.input_rows": counts.input_rows,
        f"{prefix}.clean_rows": counts.clean_rows,
        f"{prefix}.quarantined_rows": counts.quarantined_rows,
        f"{prefix}.duplicates_removed": counts.duplicates_removed,
        **{f"{prefix}.quarantined.{k}": v for k, v in counts.by_reason.items()},
    }
    for (metric, column), value in result.profile.items():
        if isinstance(value, (int, float)):
            metrics[f"{prefix}.{metric}{'.' + column if column else ''}"] = value
    return metrics
