"""Reading sources and writing Delta tables."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession

from seg_spark.config import SourceSettings

log = logging.getLogger(__name__)


class SourceError(ValueError):
    """A configured source cannot be read as configured; the message says what to change."""


def read_source(spark: SparkSession, source: SourceSettings, name: str) -> DataFrame:
    """Read a configured source as-is (no mapping, no casting).

    Args:
        spark: The session.
        source: The source's settings (path, format, reader options).
        name: The source's key in config, used in error messages.

    Returns:
        The source's rows with the source's own column names and types.

    Raises:
        SourceError: No path is configured, or Spark cannot read the path.
    """
    if not source.path:
        raise SourceError(f"sources.{name}.path is not set: point it at a file, folder or glob")
    reader = spark.read.format(source.format).options(**source.options)
    if source.format == "csv":
        reader = reader.option("header", source.options.get("header", "true"))
    try:
        return reader.load(source.path)
    except AnalysisException as exc:
        first_line = str(exc).strip().splitlines()[0]
        raise SourceError(
            f"cannot read sources.{name} at {source.path!r} as {source.format}: {first_line}. "
            f"Check sources.{name}.path and sources.{name}.format in your YAML."
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
    """
    writer = df.write.format("delta").mode("overwrite")
    if partition_by:
        writer = writer.partitionBy(*partition_by)
    # A full replace may change the schema; a partial one must match the table's.
    writer = writer.option("replaceWhere", replace_where) if replace_where else writer.option("overwriteSchema", "true")
    log.debug("writing Delta table %s (replaceWhere=%s)", path, replace_where)
    writer.save(path)


def register_table(spark: SparkSession, database: str, name: str, path: str) -> str:
    """Make a Delta table at ``path`` queryable as ``database.name`` in the session catalog.

    Returns:
        The qualified table name.
    """
    spark.sql(f"CREATE DATABASE IF NOT EXISTS `{database}`")
    qualified = f"`{database}`.`{name}`"
    spark.sql(f"CREATE TABLE IF NOT EXISTS {qualified} USING DELTA LOCATION '{path}'")
    return f"{database}.{name}"
