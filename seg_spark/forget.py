"""Right to be forgotten: delete customers from every table, then from the versions kept for time travel.

``seg-spark forget`` finds every table with a ``customer_id`` column (transactions, side
tables, daily aggregates, state, features, assignments, segments, current view, history, and
any table a later stage adds) plus the quarantine, whose rows keep the original record as
text. It deletes the customers' rows in one MERGE per table (the ids are a small source
joined to the table), vacuums the tables it touched with ``forget.retention_hours`` so earlier
versions no longer hold the rows once that time has passed (0: at once; the tables' retention
goes back to ``storage.retention_hours`` after, so later versions can be time-travelled to), and appends one audit
row per customer to ``forget_log``: the SHA-256 of the id as stored, when, the tables touched
and the rows removed. With pseudonymisation on, the ids given are hashed with the same key
first, since the tables hold only pseudonyms.

Left to the operator: the source files themselves (a snapshot source that still holds the
customer brings the rows back on the next run), MLflow (it holds no customer rows), and the
per-file statistics in the Delta log's older JSON commits, which expire with the table's
``delta.logRetentionDuration`` (30 days by default).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seg_spark.clock import Clock
from seg_spark.config import Settings
from seg_spark.errors import ConfigError
from seg_spark.maintenance import vacuum
from seg_spark.privacy import pseudonym_key
from seg_spark.quality import MALFORMED_RECORD
from seg_spark.tables import Table, TableStore

log = logging.getLogger(__name__)

CUSTOMER_COLUMN = "customer_id"
# Characters that cannot sit inside one customer id in a file of ids (one id per line).
_SEPARATORS = re.compile(r"[\s,;]")
# In a malformed quarantined line (raw text) an id is found between characters that cannot continue a word.
_WORD_EDGE = "[^0-9A-Za-z_]"

FORGET_LOG_SCHEMA = T.StructType(
    [
        T.StructField("forget_id", T.StringType(), False),
        T.StructField("forgotten_at", T.TimestampType(), False),
        T.StructField("customer_id_sha256", T.StringType(), False),
        T.StructField("rows_removed", T.LongType(), False),
        T.StructField("tables_touched", T.ArrayType(T.StringType(), False), False),
        T.StructField("rows_by_table", T.MapType(T.StringType(), T.LongType(), False), False),
        T.StructField("retention_hours", T.IntegerType(), False),
    ]
)


class IdsFileError(ConfigError):
    """The file of customer ids cannot be read as one id per line."""


@dataclass(frozen=True)
class ForgetResult:
    """What one ``seg-spark forget`` did."""

    forget_id: str
    # id as given -> table -> rows removed (tables without rows of that id are left out)
    removed: dict[str, dict[str, int]]
    vacuumed: list[str]
    retention_hours: int

    def report(self) -> list[str]:
        """Lines for the console: per customer the rows removed by table, then the vacuum."""
        lines = []
        for customer, tables in self.removed.items():
            if tables:
                listed = ", ".join(f"{name} {rows:,}" for name, rows in sorted(tables.items()))
                lines.append(f"{customer}: {sum(tables.values()):,} rows removed ({listed})")
            else:
                lines.append(f"{customer}: not found in any table (0 rows; recorded in the forget log)")
        if self.vacuumed:
            lines.append(f"vacuumed with retention {self.retention_hours} h: {', '.join(self.vacuumed)}")
        return lines


def read_ids_file(path: str | Path) -> list[str]:
    """Customer ids from a UTF-8 text file, one per line (blank lines and ``#`` comments skipped).

    Raises:
        IdsFileError: The file is missing, not UTF-8, holds several values on a line, or no id.
    """
    try:
        raw = Path(path).read_bytes()
    except OSError as exc:
        raise IdsFileError(f"cannot read the ids file {path}: {exc.strerror}") from None
    ids = []
    for number, line in enumerate(raw.splitlines(), start=1):
        try:
            text = line.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise IdsFileError(f"{path} line {number}: not UTF-8 text; save the file as UTF-8") from None
        if not text or text.startswith("#"):
            continue
        if _SEPARATORS.search(text):
            raise IdsFileError(
                f"{path} line {number}: {text[:60]!r} holds more than one value; write one customer id per line"
            )
        ids.append(text)
    if not ids:
        raise IdsFileError(f"{path} holds no customer id: write one per line")
    return ids


def checked_ids(ids: Sequence[str]) -> list[str]:
    """The ids without surrounding blanks or repeats.

    Raises:
        ConfigError: An id is empty.
    """
    given = list(dict.fromkeys(i.strip() for i in ids))
    if not all(given):
        raise ConfigError("an empty customer id was given: pass each id with --customer-id ID, or list them in --file")
    return given


def stored_ids(settings: Settings, ids: Sequence[str]) -> dict[str, str]:
    """Each id as the tables hold it: the id itself, or its HMAC-SHA256 with pseudonymisation on."""
    if not settings.privacy.pseudonymise_customer_id:
        return {i: i for i in ids}
    key = pseudonym_key(settings.privacy)
    return {i: hmac.new(key, i.encode("utf-8"), hashlib.sha256).hexdigest() for i in ids}


def audit_hash(stored_id: str) -> str:
    """What the forget log keeps of an id: the SHA-256 of the id as stored, never the id."""
    return hashlib.sha256(stored_id.encode("utf-8")).hexdigest()


def ids_frame(spark: SparkSession, stored: dict[str, str]) -> DataFrame:
    """The ids to forget as a small table: as stored, as given, and as a pattern for raw text."""
    rows = [(hashed, given, f"(^|{_WORD_EDGE}){re.escape(given)}($|{_WORD_EDGE})") for given, hashed in stored.items()]
    return spark.createDataFrame(rows, "stored_id string, raw_id string, raw_pattern string")


def forget(store: TableStore, settings: Settings, ids: Sequence[str], clock: Clock | None = None) -> ForgetResult:
    """Delete customers everywhere, vacuum the tables touched and record it in ``forget_log``.

    Args:
        store: The warehouse's table store (hold the warehouse lock: no run may write meanwhile).
        settings: The configuration (privacy key, ``forget.retention_hours``).
        ids: Customer ids as the source holds them.
        clock: The time recorded in the log (default: the wall clock).

    Returns:
        Rows removed per customer and table, and the tables vacuumed.
    """
    given = checked_ids(ids)
    stored = stored_ids(settings, given)
    source = ids_frame(store.spark, stored)
    removed: dict[str, dict[str, int]] = {i: {} for i in given}
    touched = []
    for table in _customer_tables(store):
        target = store.read(table)
        counts = _matches_per_id(target, source, table).collect()
        if not counts:
            continue
        for row in counts:
            removed[row["raw_id"]][store.name(table)] = int(row["rows"])
        metrics = store.merge(table, source, _match_sql(table, "t", "s"), lambda merge: merge.whenMatchedDelete())
        counted = sum(int(row["rows"]) for row in counts)
        if metrics.get("num_deleted_rows") != counted:  # only a writer ignoring the warehouse lock could do this
            log.warning("forget: %s rows counted in %s but %s deleted", counted, store.name(table), metrics)
        log.info("forget: %s rows removed from %s", counted, store.name(table))
        touched.append(table)
    retention = settings.forget.retention_hours
    vacuum(store, touched, retention, then_retain_hours=settings.storage.retention_hours)
    result = ForgetResult(
        forget_id=uuid.uuid4().hex,
        removed=removed,
        vacuumed=[store.name(t) for t in touched],
        retention_hours=retention,
    )
    store.append(Table.FORGET_LOG, _log_rows(store, result, stored, clock or Clock()))
    return result


def _customer_tables(store: TableStore) -> list[Table]:
    """Existing tables that hold customer rows: a ``customer_id`` column, or the quarantine's records."""
    tables: list[Table] = []
    for table in store.tables:
        if table is Table.FORGET_LOG:
            continue
        if table is Table.TRANSACTIONS_QUARANTINE or CUSTOMER_COLUMN in store.read(table).columns:
            tables.append(table)
    return tables


def _match_sql(table: Table, target: str, source: str) -> str:
    """The condition under which a row of ``table`` (alias ``target``) belongs to an id of ``source``."""
    if table is not Table.TRANSACTIONS_QUARANTINE:
        return f"{target}.{CUSTOMER_COLUMN} = {source}.stored_id"
    # A quarantined row keeps its canonical record as JSON; a malformed line only its text,
    # which was never parsed (nor pseudonymised), so the id as given is searched as a word in it.
    return (
        f"get_json_object({target}.canonical_record, '$.{CUSTOMER_COLUMN}') = {source}.stored_id OR "
        f"({target}.reason_code = '{MALFORMED_RECORD}' AND {target}.raw_record RLIKE {source}.raw_pattern)"
    )


def _matches_per_id(target: DataFrame, source: DataFrame, table: Table) -> DataFrame:
    """Rows of ``target`` per id of ``source`` (ids with none are left out)."""
    matched = target.alias("t").join(F.broadcast(source.alias("s")), F.expr(_match_sql(table, "t", "s")))
    return matched.groupBy("s.raw_id").agg(F.count(F.lit(1)).alias("rows"))


def _log_rows(store: TableStore, result: ForgetResult, stored: dict[str, str], clock: Clock) -> DataFrame:
    now = clock.now()
    rows = [
        (
            result.forget_id,
            now,
            audit_hash(stored[customer]),
            sum(tables.values()),
            sorted(tables),
            dict(tables),
            result.retention_hours,
        )
        for customer, tables in result.removed.items()
    ]
    return store.spark.createDataFrame(rows, FORGET_LOG_SCHEMA)
