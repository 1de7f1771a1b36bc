"""Housekeeping of the warehouse: compact small files and remove files no version needs any more.

``seg-spark maintain`` (and ``storage.maintain_after_run``) runs, for every table that exists,
Delta's ``OPTIMIZE`` (bin-packing compaction) and then ``VACUUM`` with
``storage.retention_hours`` (set as the table's ``delta.deletedFileRetentionDuration``).
Time travel reaches back only as far as the retention: files of versions older than that are
deleted, so keep it longer than any reader or job runs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pyspark.sql import SparkSession

from seg_spark.session import conf_set
from seg_spark.tables import Table, TableStore

if TYPE_CHECKING:
    from delta.tables import DeltaTable

log = logging.getLogger(__name__)

# Delta refuses a VACUUM retention below its own default (7 days) unless this check is off.
DELTA_DEFAULT_RETENTION_HOURS = 168
_RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"
RETENTION_PROPERTY = "delta.deletedFileRetentionDuration"


@dataclass(frozen=True)
class TableMaintenance:
    """One table's current version before and after compaction."""

    table: Table
    files_before: int
    files_after: int
    bytes_after: int

    def report(self) -> str:
        """One line: files of the current version before and after, and its size."""
        return (
            f"{self.table.value:<24} files {self.files_before:,} -> {self.files_after:,}, "
            f"{self.bytes_after / 2**20:,.1f} MiB"
        )


def maintain(store: TableStore, retention_hours: int) -> list[TableMaintenance]:
    """Compact and vacuum every existing table of the store.

    Args:
        store: The warehouse's table store.
        retention_hours: Files no longer referenced by a version younger than this are deleted.

    Returns:
        What happened to each table that exists, in ``Table`` order.
    """
    from delta.tables import DeltaTable

    done = []
    with _retention_allowed(store.spark, retention_hours):
        for table in store.tables:
            handle = DeltaTable.forPath(store.spark, store.path(table))
            before = _files_and_bytes(handle)[0]
            handle.optimize().executeCompaction()
            _vacuum(store, handle, table, retention_hours)
            files, size = _files_and_bytes(handle)
            done.append(TableMaintenance(table, before, files, size))
            log.info("maintained %s", done[-1].report())
    return done


def vacuum(store: TableStore, tables: Iterable[Table], retention_hours: int, then_retain_hours: int) -> None:
    """Delete the files of ``tables`` that no version younger than ``retention_hours`` needs, once.

    Args:
        store: The warehouse's table store.
        tables: Existing tables to vacuum.
        retention_hours: The retention of this vacuum (0 keeps only the files of the current version).
        then_retain_hours: The tables' retention afterwards: Delta refuses time travel further back
            than a table's retention, so a retention of 0 left on a table would forbid it for good.
    """
    from delta.tables import DeltaTable

    with _retention_allowed(store.spark, retention_hours):
        for table in tables:
            handle = DeltaTable.forPath(store.spark, store.path(table))
            if retention_hours == 0:  # an argument of 0 is honoured: no property to set and put back
                handle.vacuum(0)
                log.info("vacuumed %s (retention 0 h)", store.name(table))
                continue
            _vacuum(store, handle, table, retention_hours)
            if then_retain_hours != retention_hours:
                store.set_property(table, RETENTION_PROPERTY, _interval(then_retain_hours))


def _vacuum(store: TableStore, handle: DeltaTable, table: Table, retention_hours: int) -> None:
    # Delta takes a VACUUM's retention from the table (an argument other than 0 is ignored).
    store.set_property(table, RETENTION_PROPERTY, _interval(retention_hours))
    handle.vacuum()
    log.info("vacuumed %s (retention %d h)", store.name(table), retention_hours)


def _interval(hours: int) -> str:
    return f"interval {hours} hours"


def _files_and_bytes(handle: DeltaTable) -> tuple[int, int]:
    """Files and bytes of the table's current version (from its metadata, no data read)."""
    row = handle.detail().select("numFiles", "sizeInBytes").first()
    return (int(row[0] or 0), int(row[1] or 0)) if row else (0, 0)


@contextmanager
def _retention_allowed(spark: SparkSession, retention_hours: int) -> Iterator[None]:
    """Lift Delta's minimum-retention check for this call only, when the configured retention is shorter."""
    if retention_hours >= DELTA_DEFAULT_RETENTION_HOURS:
        yield
        return
    with conf_set(spark, _RETENTION_CHECK, "false"):
        yield
