"""Reading the configured sources (seg-spark's own tables are read and written through ``seg_spark.tables``)."""

from __future__ import annotations

import logging

from py4j.protocol import Py4JJavaError
from pyspark.errors import AnalysisException, PySparkException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import types as T

from seg_spark.config import SourceBase
from seg_spark.errors import DataError

log = logging.getLogger(__name__)


CORRUPT_RECORD = "_corrupt_record"


class SourceError(DataError):
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


OTHER_DELIMITERS = (";", "\t", "|", ",")
PARQUET_MAGIC = "PAR1"


def check_csv_header(header: list[str], where: str, path: str, options: dict[str, str]) -> None:
    """Refuse a CSV header that shows the file is empty, uses another delimiter or is not text.

    Raises:
        SourceError: Naming what the header shows and the setting that fixes it.
    """
    if not header:
        raise SourceError(
            f"{where} at {path!r} is empty (no header line, no rows): check {where}.path points at the export, "
            "not at a file still being written"
        )
    text = "".join(header)
    if PARQUET_MAGIC in text[:8] or any(not (ch.isprintable() or ch == "\t") for ch in text):
        raise SourceError(
            f"{where} at {path!r} does not look like CSV: its first line holds binary bytes "
            f"({text[:20]!r}...). Set {where}.format to the file's format (parquet, json or delta)"
        )
    sep = options.get("sep", options.get("delimiter", ","))
    if len(header) == 1:
        found = [d for d in OTHER_DELIMITERS if d != sep and d in header[0]]
        if found:
            shown = found[0].replace("\t", "\\t")  # as it is written in YAML
            raise SourceError(
                f"{where} at {path!r} has a single column {header[0][:80]!r} that contains '{shown}': the file "
                f"looks '{shown}'-delimited. Set {where}.options.sep: \"{shown}\" in your YAML"
            )


def _csv_schema(header: list[str]) -> T.StructType:
    """All columns of the CSV header as strings, plus the corrupt-record column."""
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
            header = reader.csv(source.path).columns  # reads the first line only
            check_csv_header(header, where, source.path, options)
            if source.on_malformed == "fail":
                return reader.option("mode", "FAILFAST").csv(source.path)
            schema = _csv_schema(header)
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
