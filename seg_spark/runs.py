"""The run manifest ``pipeline_runs``: one row per run and stage.

A stage's row is written ``running`` when it starts and replaced by ``succeeded`` or
``failed`` (with the error) when it ends, so operators can query run history with SQL
and a stage started as its own process finds its run's as-of date and MLflow run here.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from seg_spark.clock import utc_now
from seg_spark.tables import Table, TableStore, where

RUNS_SCHEMA = (
    "run_id string, stage string, status string, as_of_date date, started_at timestamp, ended_at timestamp, "
    "seconds double, rows_in bigint, rows_out bigint, mlflow_run_id string, error string"
)
RUNNING, SUCCEEDED, FAILED, ABANDONED = "running", "succeeded", "failed", "abandoned"
_MAX_ERROR = 4000


@dataclass(frozen=True)
class StageRecord:
    """One row of ``pipeline_runs``."""

    run_id: str
    stage: str
    status: str
    started_at: datetime
    as_of_date: date | None = None
    ended_at: datetime | None = None
    seconds: float | None = None
    rows_in: int | None = None
    rows_out: int | None = None
    mlflow_run_id: str | None = None
    error: str | None = None


def _record(row: dict) -> StageRecord:
    """A row read back: PySpark gives timestamps as naive local times; records hold aware UTC ones."""
    for column in ("started_at", "ended_at"):
        if row[column] is not None:
            row[column] = row[column].astimezone(UTC)
    return StageRecord(**row)


class RunManifest:
    """Reads and writes ``pipeline_runs`` through the table store.

    A run's rows are read from the table once per process and then kept up to date with
    this process's own writes (runs of one warehouse are sequential), so a stage's start
    appends its row without reading the table first.
    """

    def __init__(self, store: TableStore) -> None:
        self._store = store
        self._runs: dict[str, dict[str, StageRecord]] = {}  # run id -> stage -> its row

    def write(self, record: StageRecord) -> None:
        """Insert or replace the row of (run id, stage)."""
        row = (
            record.run_id,
            record.stage,
            record.status,
            record.as_of_date,
            record.started_at,
            record.ended_at,
            record.seconds,
            record.rows_in,
            record.rows_out,
            record.mlflow_run_id,
            None if record.error is None else record.error[:_MAX_ERROR],
        )
        df = self._store.spark.createDataFrame([row], RUNS_SCHEMA)
        known = self._rows(record.run_id)
        if record.stage in known:
            self._store.replace(Table.PIPELINE_RUNS, df, where(run_id=record.run_id, stage=record.stage))
        else:  # an append commits without rewriting anything: a quarter of a replace's cost
            self._store.append(Table.PIPELINE_RUNS, df)
        known[record.stage] = record

    def _rows(self, run_id: str) -> dict[str, StageRecord]:
        """The run's rows by stage: read once, then kept current by ``write``."""
        if run_id not in self._runs:
            rows = []
            if self._store.exists(Table.PIPELINE_RUNS):
                rows = self._store.read(Table.PIPELINE_RUNS).filter(where(run_id=run_id).column()).collect()
            self._runs[run_id] = {row["stage"]: _record(row.asDict()) for row in rows}
        return self._runs[run_id]

    def started(self, run_id: str, stage: str, mlflow_run_id: str | None) -> StageRecord:
        """Record that a stage started; return the record to finish later."""
        record = StageRecord(run_id, stage, RUNNING, utc_now(), mlflow_run_id=mlflow_run_id)
        self.write(record)
        return record

    def finished(
        self,
        record: StageRecord,
        *,
        as_of_date: date | None,
        rows_in: int | None,
        rows_out: int | None,
        error: str | None = None,
    ) -> StageRecord:
        """Record how a started stage ended (failed when ``error`` is given)."""
        ended = utc_now()
        done = StageRecord(
            run_id=record.run_id,
            stage=record.stage,
            status=FAILED if error is not None else SUCCEEDED,
            started_at=record.started_at,
            as_of_date=as_of_date,
            ended_at=ended,
            seconds=(ended - record.started_at).total_seconds(),
            rows_in=rows_in,
            rows_out=rows_out,
            mlflow_run_id=record.mlflow_run_id,
            error=error,
        )
        self.write(done)
        return done

    def records(self, run_id: str) -> list[StageRecord]:
        """Every stage row of a run, in start order."""
        return sorted(self._rows(run_id).values(), key=lambda r: r.started_at)

    def as_of_date(self, run_id: str) -> date | None:
        """The as-of date a run's stages recorded (the features stage sets it)."""
        dates = {r.as_of_date for r in self.records(run_id) if r.as_of_date is not None}
        return max(dates) if dates else None

    def mlflow_run_id(self, run_id: str) -> str | None:
        """The MLflow run a run's stages log to (None: no stage has run yet, or tracking is off)."""
        ids = [r.mlflow_run_id for r in self.records(run_id) if r.mlflow_run_id]
        return ids[0] if ids else None

    def abandon_unfinished(self, found_by: str) -> list[StageRecord]:
        """Mark stages still ``running`` (their process died: killed, out of memory) as ``abandoned``.

        Runs of one warehouse are sequential, so a ``running`` row seen when a run starts has
        no live process behind it.

        Returns:
            The rows marked, as they are now.
        """
        if not self._store.exists(Table.PIPELINE_RUNS):
            return []
        rows = self._store.read(Table.PIPELINE_RUNS).filter(where(status=RUNNING).column()).collect()
        marked = []
        for row in rows:
            record = replace(
                _record(row.asDict()),
                status=ABANDONED,
                ended_at=utc_now(),
                error=f"the stage's process ended without recording an outcome; found running when run {found_by} "
                "started",
            )
            self.write(record)
            marked.append(record)
        return marked
