"""The table store: every Delta table seg-spark reads or writes, by name, through one object.

Table names are the ``Table`` enum (their storage names come from the ``tables`` config
section); locations are ``<storage.root>/<name>``. Every Delta read, write, slice
replacement (``replaceWhere``), history look-up and catalog registration goes through
``TableStore``, so no other module knows a path or a table name literal.

Slices are ``Predicate`` objects built from typed values (strings, dates, integers) and
rendered to SQL here, with string literals escaped, so a value can never widen a
``replaceWhere``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark.config import Settings
from seg_spark.errors import EXIT_CONFIG, SegSparkError, StageInputError
from seg_spark.session import conf_set

log = logging.getLogger(__name__)

_T = TypeVar("_T")
# Pause before the n-th retry of a conflicting commit: n times this, plus jitter so two writers part.
_RETRY_PAUSE_SECONDS = 0.5


class CommitConflictError(SegSparkError):
    """A commit kept conflicting with another writer's after the configured retries (exit code 2)."""

    exit_code = EXIT_CONFIG


def _conflicts() -> tuple[type[BaseException], ...]:
    """Delta's commit-conflict exceptions (the optimistic-concurrency ones, all worth a retry)."""
    import delta.exceptions

    return tuple(getattr(delta.exceptions, name) for name in delta.exceptions.__all__)


class Table(StrEnum):
    """Every table seg-spark owns; the value is its key in the ``tables`` config section."""

    TRANSACTIONS_CLEAN = "transactions_clean"
    TRANSACTIONS_QUARANTINE = "transactions_quarantine"
    DATA_QUALITY = "data_quality"
    CUSTOMER_PROFILES = "customer_profiles"
    EVENTS_CLEAN = "events_clean"
    CUSTOMER_DAILY = "customer_daily"
    FEATURE_REFRESH_LOG = "feature_refresh_log"
    CUSTOMER_STATE = "customer_state"
    PRODUCT_GROUPS = "product_groups"
    CUSTOMER_FEATURES = "customer_features"
    SEGMENT_ASSIGNMENTS = "segment_assignments"
    MODEL_SELECTION = "model_selection"
    SEGMENT_HIERARCHY = "segment_hierarchy"
    CUSTOMER_SEGMENTS = "customer_segments"
    SEGMENTS = "segments"
    SEGMENT_MIGRATION = "segment_migration"
    SEGMENT_MEMBERSHIP_HISTORY = "segment_membership_history"
    SEGMENTS_CURRENT = "segments_current"
    PIPELINE_RUNS = "pipeline_runs"
    FORGET_LOG = "forget_log"
    CUSTOMER_SCORES = "customer_scores"
    SEGMENT_SCORES = "segment_scores"
    CLV_PARAMETERS = "clv_parameters"
    CHURN_EVALUATION = "churn_evaluation"
    SEGMENT_PROFILES = "segment_profiles"


# Each optional side source (its key under ``sources``) and the table its clean rows go to.
SIDE_TABLES: dict[str, Table] = {"profiles": Table.CUSTOMER_PROFILES, "events": Table.EVENTS_CLEAN}

Literal = str | date | int | bool

# Consumer tables: row changes recorded for readers; no deletion vectors, which some
# readers (older delta-rs, engines without the table feature) cannot read.
CONSUMER_TABLE_PROPERTIES = {"delta.enableChangeDataFeed": "true", "delta.enableDeletionVectors": "false"}


@dataclass(frozen=True)
class ConsumerTable:
    """A table consumers read: its columns (with NOT NULL and comments), comment and CHECK constraints."""

    table: Table
    comment: str
    columns: str
    partitioned_by: tuple[str, ...] = ()
    constraints: dict[str, str] = field(default_factory=dict)


def sql_literal(value: Literal) -> str:
    """A typed value as a SQL literal: strings quoted with quotes and backslashes escaped."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, datetime):
        raise TypeError("timestamps are not used in table slices; pass a date")
    if isinstance(value, date):
        return f"DATE'{value.isoformat()}'"
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        return f"'{escaped}'"
    raise TypeError(f"unsupported literal {value!r} ({type(value).__name__})")


@dataclass(frozen=True)
class Predicate:
    """Rows of a table slice: every ``column = value`` and ``column IN (values)`` holds."""

    equal: tuple[tuple[str, Literal], ...] = ()
    member: tuple[tuple[str, tuple[Literal, ...]], ...] = ()

    def sql(self) -> str:
        """The predicate as SQL (for ``replaceWhere``)."""
        parts = [f"`{column}` = {sql_literal(value)}" for column, value in self.equal]
        for column, values in self.member:
            if not values:
                raise ValueError(f"an empty IN list for {column} selects nothing")
            parts.append(f"`{column}` IN ({', '.join(sql_literal(v) for v in values)})")
        if not parts:
            raise ValueError("an empty predicate would select the whole table")
        return " AND ".join(parts)

    def __and__(self, other: Predicate) -> Predicate:
        """Both slices' conditions."""
        return Predicate(equal=self.equal + other.equal, member=self.member + other.member)

    def column(self) -> Column:
        """The predicate as a Spark column (for filters)."""
        condition = F.lit(True)
        for column, value in self.equal:
            condition = condition & (F.col(column) == F.lit(value))
        for column, values in self.member:
            condition = condition & F.col(column).isin(list(values))
        return condition


def where(**equal: Literal) -> Predicate:
    """A slice by equality: ``where(run_id="abc", source="transactions")``."""
    return Predicate(equal=tuple(equal.items()))


def where_in(column: str, values: Iterable[Literal]) -> Predicate:
    """A slice by membership: ``where_in("day", [date(2026, 1, 1)])``."""
    return Predicate(member=((column, tuple(values)),))


def registration_statements(database: str, locations: Mapping[str, str]) -> list[str]:
    """SQL that registers Delta tables where they lie (name -> location) in a catalog database; idempotent."""
    return [
        f"CREATE DATABASE IF NOT EXISTS `{database}`",
        *(
            f"CREATE TABLE IF NOT EXISTS `{database}`.`{name}` USING DELTA LOCATION {sql_literal(location)}"
            for name, location in locations.items()
        ),
    ]


class TableStore:
    """Reads and writes seg-spark's Delta tables under ``storage.root``.

    Every commit it makes carries its ``commit_tag`` in Delta's ``userMetadata`` (run,
    attempt and stage), so a table's own history says which attempt wrote what and a failed
    attempt can be rolled back (``seg_spark.recovery``).

    Args:
        spark: The session.
        settings: The configuration (storage root, table names, catalog database).
        commit_tag: Keys added to every commit's ``userMetadata``.
    """

    def __init__(
        self,
        spark: SparkSession,
        settings: Settings,
        commit_tag: Mapping[str, str] | None = None,
        committed: set[Table] | None = None,
    ) -> None:
        self.spark = spark
        self._settings = settings
        self.commit_tag: dict[str, str] = dict(commit_tag or {})
        # Tables this store (and every store tagged from it) committed to: what a rollback must look at.
        self.committed: set[Table] = set() if committed is None else committed

    def tagged(self, **tag: str) -> TableStore:
        """The same store, with ``tag`` added to the tag of every commit it makes (``committed`` is shared)."""
        return TableStore(self.spark, self._settings, {**self.commit_tag, **tag}, self.committed)

    @property
    def tables(self) -> list[Table]:
        """Every table that exists now."""
        return [t for t in Table if self.exists(t)]

    # --- locations ---------------------------------------------------------------------

    def name(self, table: Table) -> str:
        """The table's configured storage name."""
        return str(getattr(self._settings.tables, table.value))

    def path(self, table: Table) -> str:
        """The table's location."""
        return self._settings.storage_path(self.name(table))

    def model_path(self, name: str) -> str:
        """Where a saved helper model (e.g. the product groups' text model) lives."""
        return self._settings.storage_path(f"models/{name}")

    # --- reading -----------------------------------------------------------------------

    def exists(self, table: Table) -> bool:
        """Whether the table has been created."""
        from delta.tables import DeltaTable

        return bool(DeltaTable.isDeltaTable(self.spark, self.path(table)))

    def read(self, table: Table, version: int | None = None) -> DataFrame:
        """The table's current rows (or those of an earlier ``version``)."""
        reader = self.spark.read.format("delta")
        if version is not None:
            reader = reader.option("versionAsOf", version)
        return reader.load(self.path(table))

    def require(self, table: Table, stage: str) -> DataFrame:
        """The table's rows, or a ``StageInputError`` naming the stage that writes it."""
        if not self.exists(table):
            raise StageInputError(
                f"table {self.name(table)} does not exist at {self.path(table)}: "
                f"run the {stage} stage first (seg-spark run --stage {stage}, with the same --config)"
            )
        return self.read(table)

    def changes(self, table: Table, first: int, last: int) -> DataFrame:
        """Rows inserted, updated or deleted in versions ``first``..``last`` (change data feed)."""
        return (
            self.spark.read.format("delta")
            .option("readChangeFeed", "true")
            .option("startingVersion", first)
            .option("endingVersion", last)
            .load(self.path(table))
        )

    def version(self, table: Table) -> int:
        """The table's latest version."""
        return int(self.history(table, 1).select("version").first()[0])  # type: ignore[index]

    def history(self, table: Table, limit: int | None = None) -> DataFrame:
        """The table's commit history, newest first."""
        from delta.tables import DeltaTable

        handle = DeltaTable.forPath(self.spark, self.path(table))
        return handle.history(limit) if limit else handle.history()

    def partition_columns(self, table: Table) -> list[str]:
        """The table's partition columns (empty when it has none or does not exist)."""
        if not self.exists(table):
            return []
        from delta.tables import DeltaTable

        row = DeltaTable.forPath(self.spark, self.path(table)).detail().select("partitionColumns").first()
        return list(row[0]) if row else []

    def rows_written(self, table: Table) -> int | None:
        """Rows the table's last commit wrote (Delta's ``numOutputRows``), without reading the data."""
        row = self.history(table, 1).select(F.col("operationMetrics")["numOutputRows"]).first()
        return None if row is None or row[0] is None else int(row[0])

    def commit_metadata(self, table: Table) -> dict[str, Any] | None:
        """The JSON ``userMetadata`` of the table's last commit (None: no table, none, or not JSON)."""
        if not self.exists(table):
            return None
        row = self.history(table, 1).select("userMetadata").first()
        try:
            return json.loads(row[0]) if row and row[0] else None
        except ValueError:
            return None

    def replaced_between(self, table: Table, first: int, last: int) -> bool:
        """Whether a commit in versions ``first``..``last`` overwrote or restored the whole table."""
        history = self.history(table).filter(F.col("version").between(first, last))
        overwrites = history.filter(
            (F.col("operation") == "WRITE")
            & (F.col("operationParameters")["mode"] == "Overwrite")
            & F.col("operationParameters")["predicate"].isNull()
            # A rollback's RESTORE records no row changes a change-feed reader could follow.
            | (F.col("operation").isin("CREATE OR REPLACE TABLE AS SELECT", "REPLACE TABLE AS SELECT", "RESTORE"))
        )
        return overwrites.limit(1).count() > 0

    # --- writing -----------------------------------------------------------------------

    def overwrite(
        self,
        table: Table,
        df: DataFrame,
        *,
        partition_by: Sequence[str] = (),
        commit_metadata: Mapping[str, Any] | None = None,
        table_properties: Mapping[str, str] | None = None,
    ) -> None:
        """Replace the whole table (its schema may change); earlier versions stay reachable."""
        writer = df.write.format("delta").mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        # A full replace means the whole table, whatever the session's partitionOverwriteMode.
        writer = writer.option("overwriteSchema", "true").option("partitionOverwriteMode", "static")
        self._save(table, writer, commit_metadata, table_properties, "overwrite")

    def replace(
        self,
        table: Table,
        df: DataFrame,
        slice_: Predicate,
        *,
        partition_by: Sequence[str] = (),
        commit_metadata: Mapping[str, Any] | None = None,
    ) -> None:
        """Replace only the rows of ``slice_`` (a rerun of the same slice is idempotent).

        Every row of ``df`` must match the slice (Delta checks). Columns may be added.
        """
        predicate = slice_.sql()
        writer = df.write.format("delta").mode("overwrite")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        writer = writer.option("replaceWhere", predicate).option("mergeSchema", "true")
        self._save(table, writer, commit_metadata, None, f"replace where {predicate}")

    def append(self, table: Table, df: DataFrame, *, partition_by: Sequence[str] = ()) -> None:
        """Add rows (the table is created, partitioned as given, when missing)."""
        writer = df.write.format("delta").mode("append").option("mergeSchema", "true")
        if partition_by:
            writer = writer.partitionBy(*partition_by)
        self._save(table, writer, None, None, "append")

    def _save(
        self,
        table: Table,
        writer: Any,
        commit_metadata: Mapping[str, Any] | None,
        table_properties: Mapping[str, str] | None,
        how: str,
    ) -> None:
        # Optimized writes shuffle rows by partition into files of a useful size: without
        # them every task writes a file into every partition it holds rows for.
        writer = writer.option("optimizeWrite", "true")
        for key, value in (table_properties or {}).items():
            writer = writer.option(key, value)
        metadata = {**(commit_metadata or {}), **self.commit_tag}
        if metadata:
            writer = writer.option("userMetadata", json.dumps(metadata))
        log.debug("writing Delta table %s (%s)", self.name(table), how)
        self.committed.add(table)  # before the commit: a failure during it may still have committed
        self._committing(table, how, lambda: writer.save(self.path(table)))

    def create_table(self, definition: ConsumerTable) -> bool:
        """Create a table from its definition (columns with comments, constraints) unless it exists.

        Returns:
            True when it was created now.
        """
        if self.exists(definition.table):
            return False
        location = self._sql_name(definition.table)
        partitioning = f" PARTITIONED BY ({', '.join(definition.partitioned_by)})" if definition.partitioned_by else ""
        # CHECK constraints as the properties Delta keeps them in: one commit, not one per
        # ALTER TABLE ADD CONSTRAINT (enforced alike; tested).
        constraints = {f"delta.constraints.{name}": check for name, check in definition.constraints.items()}
        properties = {**CONSUMER_TABLE_PROPERTIES, **constraints}
        listed = ", ".join(f"{sql_literal(k)} = {sql_literal(v)}" for k, v in properties.items())
        statement = (
            f"CREATE TABLE {location} ({definition.columns}) USING DELTA{partitioning} "
            f"COMMENT {sql_literal(definition.comment)} TBLPROPERTIES ({listed})"
        )
        self.committed.add(definition.table)
        with self._commit_metadata():
            self._committing(definition.table, "create", lambda: self.spark.sql(statement))
        return True

    def merge(self, table: Table, source: DataFrame, condition: str, clauses: Callable[[Any], Any]) -> dict[str, int]:
        """MERGE ``source`` (alias ``s``) into ``table`` (alias ``t``) in one commit.

        Args:
            table: The target (it must exist).
            source: The rows to merge.
            condition: The match condition.
            clauses: Adds the WHEN clauses to Delta's merge builder.

        Returns:
            The rows the MERGE reports: ``num_affected_rows``, ``num_updated_rows``,
            ``num_deleted_rows``, ``num_inserted_rows``.
        """
        from delta.tables import DeltaTable

        def merge() -> DataFrame | None:
            target = DeltaTable.forPath(self.spark, self.path(table)).alias("t")
            return clauses(target.merge(source.alias("s"), condition)).execute()

        self.committed.add(table)
        with self._commit_metadata():
            outcome = self._committing(table, "merge", merge)
        row = outcome.first() if outcome is not None else None
        return {name: int(value or 0) for name, value in row.asDict().items()} if row is not None else {}

    def _committing(self, table: Table, how: str, commit: Callable[[], _T]) -> _T:
        """Make one commit to ``table``; when another writer's commit conflicts, retry it (bounded).

        Raises:
            CommitConflictError: Still conflicting after ``storage.commit_retries`` retries; names the
                table and the runs behind its latest commits.
        """
        retries, conflicts, attempt = self._settings.storage.commit_retries, _conflicts(), 0
        while True:
            try:
                return commit()
            except conflicts as exc:
                others = self._latest_writers(table)
                if attempt >= retries:
                    raise CommitConflictError(
                        f"table {self.name(table)} at {self.path(table)}: the {how} conflicted with a concurrent "
                        f"commit {attempt + 1} time(s), latest commits by {others} (storage.commit_retries = "
                        f"{retries}). Runs of one warehouse must take turns (e.g. a Databricks job's "
                        "max_concurrent_runs: 1): rerun this one after the other has finished"
                    ) from exc
                attempt += 1
                log.warning(
                    "%s of %s conflicted with %s; retry %d of %d", how, self.name(table), others, attempt, retries
                )
                time.sleep(_RETRY_PAUSE_SECONDS * attempt * (1 + random.random()))

    def _latest_writers(self, table: Table, commits: int = 5) -> str:
        """Who wrote the table's latest commits, other than this store's run: run and stage, and versions."""
        versions: dict[str, list[str]] = {}
        for row in self.history(table, commits).select("version", "userMetadata").collect():
            try:
                tag = json.loads(row["userMetadata"] or "{}")
            except ValueError:
                tag = {}
            run_id = tag.get("run_id")
            if run_id and run_id == self.commit_tag.get("run_id"):
                continue
            who = (
                f"run {run_id}" + (f" ({tag['stage']})" if tag.get("stage") else "") if run_id else "an untagged writer"
            )
            versions.setdefault(who, []).append(str(row["version"]))
        listed = [f"{who} at version{'s' * (len(v) > 1)} {', '.join(v)}" for who, v in versions.items()]
        return "; ".join(listed) or "this run's own earlier attempt"

    @contextmanager
    def _commit_metadata(self) -> Iterator[None]:
        """Tag the commits SQL and the merge builder make in the block, as ``_save`` tags writes."""
        if not self.commit_tag:
            yield
            return
        with conf_set(self.spark, "spark.databricks.delta.commitInfo.userMetadata", json.dumps(self.commit_tag)):
            yield

    def add_columns(self, table: Table, columns: Mapping[str, str], constraints: Mapping[str, str]) -> list[str]:
        """Add the ``columns`` a table lacks (name -> DDL with its comment), then their CHECK ``constraints``.

        Args:
            table: The table (it must exist).
            columns: The columns it should have.
            constraints: CHECK constraints on those columns (name -> condition), added with them.

        Returns:
            The columns added; none (and no commit) when the table has them all.
        """
        present = set(self.read(table).columns)
        missing = {name: ddl for name, ddl in columns.items() if name not in present}
        if not missing:
            return []
        location = self._sql_name(table)
        statements = [f"ALTER TABLE {location} ADD COLUMNS ({', '.join(missing.values())})"]
        statements += [f"ALTER TABLE {location} ADD CONSTRAINT {n} CHECK ({c})" for n, c in constraints.items()]
        self.committed.add(table)
        with self._commit_metadata():
            for statement in statements:
                self._committing(table, "adding columns", partial(self.spark.sql, statement))
        return list(missing)

    def set_property(self, table: Table, key: str, value: str) -> None:
        """Set a Delta table property; no commit when it already has that value."""
        self.set_properties(table, {key: value})

    def set_properties(self, table: Table, properties: Mapping[str, str]) -> None:
        """Set Delta table properties in one commit; no commit when the table has them all already."""
        location = self._sql_name(table)
        current = {r["key"]: r["value"] for r in self.spark.sql(f"SHOW TBLPROPERTIES {location}").collect()}
        missing = {key: value for key, value in properties.items() if current.get(key) != value}
        if not missing:
            return
        listed = ", ".join(f"{sql_literal(key)} = {sql_literal(value)}" for key, value in missing.items())
        statement = f"ALTER TABLE {location} SET TBLPROPERTIES ({listed})"
        self.committed.add(table)
        with self._commit_metadata():
            self._committing(table, f"setting {', '.join(missing)}", lambda: self.spark.sql(statement))

    def _sql_name(self, table: Table) -> str:
        """The table by path in SQL: ``delta.`<location>``` with backquotes escaped."""
        return f"delta.`{self.path(table).replace('`', '``')}`"

    # --- catalog -----------------------------------------------------------------------

    def register(self, tables: Iterable[Table]) -> list[str]:
        """Register existing tables in ``storage.database`` (no-op without one); return their names."""
        database = self._settings.storage.database
        if not database:
            return []
        existing = {self.name(t): self.path(t) for t in tables if self.exists(t)}
        for statement in registration_statements(database, existing):
            self.spark.sql(statement)
        return [f"{database}.{name}" for name in existing]
