"""Reading sources and writing Delta tables."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from seg_spark.config import SourceBase

log = logging.getLogger(__name__)


CORRUPT_RECORD = "_corrupt_record"


class SourceError(ValueError):
    """A configured source cannot be read as configured; the message says what to change."""


def spark_error_summary(exc: BaseException) -> str:
    """The headline and the root cause of a Spark/Java error, without the JVM stack trace."""
    lines = [ln.strip() for ln in str(exc).strip().splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith(("at ", "...", "JVM stacktrace"))]
    headline = next((ln for ln in lines if not ln.startswith("An error occurred while calling")), "")
    causes = [ln.removeprefix("Caused by: ") for ln in lines if ln.startswith("Caused by:")]
    parts = [headline] + causes[-1:]
    text = " Cause: ".join(_drop_class(p) for p in parts if p)
    return text[:800]


def _drop_class(line: str) -> str:
    """'org.apache.spark.SparkException: [X] msg' -> '[X] msg'."""
    head, sep, rest = line.lstrip(": ").partition(": ")
    return rest if sep and "." in head and " " not in head else line.lstrip(": ")


def _csv_string_schema(spark: SparkSession, source: SourceBase, options: dict[str, str]) -> T.StructType:
    """All columns of the CSV header as strings, plus the corrupt-record column."""
    header = spark.read.options(**options).csv(source.path).columns
    return T.StructType(
        [T.StructField(c, T.StringType()) for c in header] + [T.StructField(CORRUPT_RECORD, T.StringType())]
    )


def read_source(spark: SparkSession, source: SourceBase, name: str) -> DataFrame:
    """Read a configured source as-is (no mapping, no casting).

    CSV is read with every column as text so that nothing is lost to type inference;
    with ``on_malformed: quarantine`` lines that cannot be parsed keep their text in a
    ``_corrupt_record`` column (CSV and JSON) for the quarantine.

    Args:
        spark: The session.
        source: The source's settings (path or table, format, reader options).
        name: The source's key in config, used in error messages.

    Returns:
        The source's rows with the source's own column names.

    Raises:
        SourceError: No location is configured, or Spark cannot read it.
    """
    where = f"sources.{name}"
    if source.table:
        try:
            return spark.read.table(source.table)
        except AnalysisException as exc:
            raise SourceError(
                f"cannot read {where}.table {source.table!r}: {spark_error_summary(exc)}. "
                f"Check the table name (database.table) or use {where}.path instead."
            ) from None
    if not source.path:
        raise SourceError(f"{where}.path is not set: point it at a file, folder or glob (or set {where}.table)")
    options = dict(source.options)
    try:
        if source.format == "csv":
            options.setdefault("header", "true")
            reader = spark.read.options(**options)
            if source.on_malformed == "fail":
                return reader.option("mode", "FAILFAST").csv(source.path)
            schema = _csv_string_schema(spark, source, options)
            return (
                reader.schema(schema)
                .option("mode", "PERMISSIVE")
                .option("columnNameOfCorruptRecord", CORRUPT_RECORD)
                .csv(source.path)
            )
        if source.format == "json":
            mode = "FAILFAST" if source.on_malformed == "fail" else "PERMISSIVE"
            options.setdefault("columnNameOfCorruptRecord", CORRUPT_RECORD)
            return spark.read.options(**options).option("mode", mode).json(source.path)
        return spark.read.format(source.format).options(**options).load(source.path)
    except (AnalysisException, PySparkException, Py4JJavaError) as exc:
        raise SourceError(
            f"cannot read {where} at {source.path!r} as {source.format}: {spark_error_summary(exc)}. "
            f"Check {where}.path and {where}.format in your YAML."
        ) from None


def read_delta(spark: SparkSession, path: str) -> DataFrame:
    """Read a Delta table by path."""
    return spark.read.format("delta").load(path)


def write_delta(
    df: DataFrame,
    path: str,
    *,
    partition_by: Sequence[str] = (),
    replace_where: str | None = None,
    commit_metadata: str | None = None,
    table_properties: dict[str, str] | None = None,
) -> None:
    """Write ``df`` to a Delta table, replacing all of it or only the rows matching a predicate.

    Replacing by predicate (``replace_where``) makes a rerun for the same slice (e.g. the
    same as-of date or run id) idempotent while keeping every other slice, and keeps
    time travel over earlier versions.

    Args:
        df: Rows to write.
        path: The table's location.
        partition_by: Partition columns (used when the table is created).
        replace_where: SQL predicate selecting the rows this write replaces; None
            replaces the whole table.
        commit_metadata: Stored with the commit (``userMetadata`` in the table's history).
        table_properties: Delta table properties (``delta.*``) set when the write creates the table.
    """
    writer = df.write.format("delta").mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    # A full replace may change the schema; a partial one may add columns (new side tables).
    if replace_where:
        writer = writer.option("replaceWhere", replace_where).option("mergeSchema", "true")
    else:
        # A full replace means the whole table, whatever the session's partitionOverwriteMode.
        writer = writer.option("overwriteSchema", "true").option("partitionOverwriteMode", "static")
    for name, value in (table_properties or {}).items():
        writer = writer.option(name, value)
    if commit_metadata is not None:
        writer = writer.option("userMetadata", commit_metadata)
    log.debug("writing Delta table %s (replaceWhere=%s)", path, replace_where)
    writer.save(path)


def append_delta(df: DataFrame, path: str, *, partition_by: Sequence[str] = ()) -> None:
    """Append ``df`` to a Delta table (created, partitioned as given, when missing)."""
    writer = df.write.format("delta").mode("append").option("mergeSchema", "true")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    writer.save(path)


def is_delta_table(spark: SparkSession, path: str) -> bool:
    """Whether a Delta table exists at ``path``."""
    from delta.tables import DeltaTable

    return DeltaTable.isDeltaTable(spark, path)


def delta_version(spark: SparkSession, path: str) -> int:
    """The latest version of the Delta table at ``path``."""
    from delta.tables import DeltaTable

    return int(DeltaTable.forPath(spark, path).history(1).select("version").first()[0])


def enable_change_feed(spark: SparkSession, path: str) -> None:
    """Record row changes of the Delta table at ``path`` (for incremental readers); no-op when on."""
    properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
    if any(r["key"] == "delta.enableChangeDataFeed" and r["value"] == "true" for r in properties):
        return
    spark.sql(f"ALTER TABLE delta.`{path}` SET TBLPROPERTIES (delta.enableChangeDataFeed = true)")


def register_table(spark: SparkSession, database: str, name: str, path: str) -> str:
    """Make a Delta table at ``path`` queryable as ``database.name`` in the session catalog.

    Returns:
        The qualified table name.
    """
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    qualified = f"`{database}`.`{name}`"
    spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{path}'")
    return f"{database}.{name}"
