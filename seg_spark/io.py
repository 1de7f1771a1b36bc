"""Reading the configured sources (seg-spark's own tables are read and written through ``seg_spark.tables``)."""

from __future__ import annotations

import logging
import re

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


# What Hadoop's gzip codec says about a file that is cut short, and about one that is not gzip at all.
_TRUNCATED = ("unexpected end of input stream", "unexpected end of zlib input stream", "eofexception")
_NOT_GZIP = (
    "not a gzip file",
    "not in gzip format",
    "incorrect header check",
    "invalid block type",
    "invalid distance",
    "invalid stored block",
    "crc mismatch",
    "corrupt gzip",
)
_FAILED_FILE = re.compile(r"reading file (\S+?)\.?(?:\s|$)")


def _gzip_problem(exc: BaseException, path: str) -> tuple[str, str] | None:
    """("truncated" or "not gzip", the file) when reading failed on a broken gzip file, else None."""
    text = str(exc)
    named = _FAILED_FILE.search(text)
    file = re.sub(r"^file:(//)?", "", named.group(1)) if named else path
    if not file.lower().endswith((".gz", ".gzip")):
        return None
    lowered = text.lower()
    if any(marker in lowered for marker in _TRUNCATED):
        return "truncated", file
    if any(marker in lowered for marker in _NOT_GZIP):
        return "not gzip", file
    return None


def read_error(exc: BaseException, where: str, source: SourceBase, *, reading_rows: bool) -> SourceError:
    """The ``SourceError`` for a Spark failure while reading a source: what is wrong and what to do.

    Args:
        exc: Spark's exception.
        where: The source's config path, e.g. ``sources.transactions``.
        source: Its settings.
        reading_rows: False while Spark opens the source (path, format, header), True while it reads the rows.
    """
    location = source.location
    problem = _gzip_problem(exc, location)
    if problem is not None:
        kind, file = problem
        if kind == "truncated":
            return SourceError(
                f"{where} at {file!r} is a truncated gzip file: its compressed data ends before the gzip end "
                "marker (an interrupted download or copy?). Copy or download it again (`gzip -t FILE` checks a "
                "file); the lines after the cut cannot be read"
            )
        cause = spark_error_summary(exc).rpartition(" Cause: ")[2]
        return SourceError(
            f"{where} at {file!r} is not a valid gzip file (the gzip reader says: {cause}), and Spark reads a "
            "file ending in .gz as gzip. Re-create or download it again (`gzip -t FILE` checks a file), or "
            "remove the .gz suffix if the file is not compressed"
        )
    summary = spark_error_summary(exc).rstrip(". ")
    if source.format == "delta" and ("DELTA_TABLE_NOT_FOUND" in summary or "DELTA_MISSING_DELTA_TABLE" in summary):
        return SourceError(
            f"{where} at {location!r} is not a Delta table (Delta finds no _delta_log there: {summary}). Point "
            f"{where}.path at the table's folder, or set {where}.format to the files' format (parquet, csv or json)"
        )
    if source.on_malformed == "fail" and "malformed" in summary.lower():
        return SourceError(
            f"{where} ({location}) could not be read: {summary}. Fix the file, or set "
            f"{where}.on_malformed: quarantine to keep going and quarantine bad lines."
        )
    if not reading_rows:
        return SourceError(
            f"cannot read {where} at {location!r} as {source.format}: {summary}. "
            f"Check {where}.path and {where}.format in your YAML."
        )
    return SourceError(
        f"{where} ({location}) could not be read: {summary}. "
        f"Check that the file is complete and is {source.format}, as {where}.format says."
    )


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
        raise read_error(exc, where, source, reading_rows=False) from None
