"""The run manifest ``pipeline_runs``: one row per run and stage.

A stage's row is written ``running`` when it starts and replaced by ``succeeded`` or
``failed`` (with the error) when it ends, so operators can query run history with SQL
and a stage started as its own process finds its run's as-of date and MLflow run here.
When an attempt fails its tables are rolled back (``seg_spark.recovery``) and its stages
that had succeeded become ``rolled_back``; a stage whose process died is found ``running``
by the next start, which rolls its attempt back and marks it ``abandoned``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime

from pyspark.sql import functions as F

from seg_spark.clock import utc_now
from seg_spark.tables import Table, TableStore, where, where_in

RUNS_SCHEMA = (
    "run_id string, stage string, status string, as_of_date date, started_at timestamp, ended_at timestamp, "
    "seconds double, rows_in bigint, rows_out bigint, mlflow_run_id string, error string, attempt_id string"
)
RUNNING, SUCCEEDED, FAILED = "running", "succeeded", "failed"
ABANDONED, ROLLED_BACK = "abandoned", "rolled_back"
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
    attempt_id: str | None = None  # None: written before attempts were recorded


def _record(row: dict) -> StageRecord:
    """A row read back: PySpark gives timestamps as naive local times; records hold aware UTC ones."""
    for column in ("started_at", "ended_at"):
        if row[column] is not None:
            row[column] = row[column].astimezone(UTC)
    row.setdefault("attempt_id", None)  # a table from before attempts were recorded
    return StageRecord(**row)


def _row(record: StageRecord) -> tuple:
    """A record as a row of ``RUNS_SCHEMA``."""
    return (
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
        record.attempt_id,
    )


def _ended(
    record: StageRecord,
    ended: datetime,
    as_of_date: date | None,
    rows_in: int | None,
    rows_out: int | None,
    error: str | None,
) -> StageRecord:
    """``record`` ended at ``ended``: failed when ``error`` is given, otherwise succeeded."""
    return replace(
        record,
        status=FAILED if error is not None else SUCCEEDED,
        as_of_date=as_of_date,
        ended_at=ended,
        seconds=(ended - record.started_at).total_seconds(),
        rows_in=rows_in,
        rows_out=rows_out,
        error=error,
    )


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
        known = self._rows(record.run_id)
        df = self._store.spark.createDataFrame([_row(record)], RUNS_SCHEMA)
        if record.stage in known:
            self._store.replace(Table.PIPELINE_RUNS, df, where(run_id=record.run_id, stage=record.stage))
        else:  # an append commits without rewriting anything: a quarter of a replace's cost
            self._store.append(Table.PIPELINE_RUNS, df)
        known[record.stage] = record

    def write_many(self, records: Sequence[StageRecord]) -> None:
        """Insert or replace rows (of any runs) in one commit."""
        if not records:
            return
        run_ids = sorted({r.run_id for r in records})
        runs = where_in("run_id", run_ids)
        stages = where_in("stage", sorted({r.stage for r in records}))
        keys = {(r.run_id, r.stage) for r in records}
        kept: list[StageRecord] = []
        if len(run_ids) > 1:  # the slice is a cross product of runs and stages: keep its other rows as they are
            others = self._store.read(Table.PIPELINE_RUNS).filter((runs & stages).column()).collect()
            kept = [_record(row.asDict()) for row in others if (row["run_id"], row["stage"]) not in keys]
        rows = [_row(r) for r in [*records, *kept]]
        self._store.replace(Table.PIPELINE_RUNS, self._store.spark.createDataFrame(rows, RUNS_SCHEMA), runs & stages)
        for record in records:
            self._rows(record.run_id)[record.stage] = record

    def _rows(self, run_id: str) -> dict[str, StageRecord]:
        """The run's rows by stage: read once, then kept current by ``write``."""
        if run_id not in self._runs:
            rows = []
            if self._store.exists(Table.PIPELINE_RUNS):
                rows = self._store.read(Table.PIPELINE_RUNS).filter(where(run_id=run_id).column()).collect()
            self._runs[run_id] = {row["stage"]: _record(row.asDict()) for row in rows}
        return self._runs[run_id]

    def started(self, run_id: str, stage: str, mlflow_run_id: str | None, attempt_id: str | None) -> StageRecord:
        """Record that a stage started; return the record to finish later."""
        record = StageRecord(run_id, stage, RUNNING, utc_now(), mlflow_run_id=mlflow_run_id, attempt_id=attempt_id)
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
        done = _ended(record, utc_now(), as_of_date, rows_in, rows_out, error)
        self.write(done)
        return done

    def handed_over(
        self, record: StageRecord, following: str, *, as_of_date: date | None, rows_in: int | None, rows_out: int | None
    ) -> StageRecord:
        """Record that a started stage succeeded and ``following`` started, in one commit; return the latter's record.

        A run of several stages in one process changes hands this way: one commit per stage
        rather than two, and never a moment where the run has neither stage running.
        """
        ended = utc_now()
        done = _ended(record, ended, as_of_date, rows_in, rows_out, None)
        started = replace(record, stage=following, started_at=ended)  # same run, attempt and MLflow run
        self.write_many([done, started])
        return started

    def records(self, run_id: str) -> list[StageRecord]:
        """Every stage row of a run, in start order."""
        return sorted(self._rows(run_id).values(), key=lambda r: r.started_at)

    def as_of_date(self, run_id: str) -> date | None:
        """The as-of date a run's stages recorded (the features stage sets it; rolled back ones do not count)."""
        dates = {r.as_of_date for r in self.records(run_id) if r.as_of_date is not None and r.status == SUCCEEDED}
        return max(dates) if dates else None

    def mlflow_run_id(self, run_id: str) -> str | None:
        """The MLflow run a run's stages log to (None: no stage has run yet, or tracking is off)."""
        ids = [r.mlflow_run_id for r in self.records(run_id) if r.mlflow_run_id]
        return ids[0] if ids else None

    def rolled_back(self, run_id: str, stages: Sequence[str]) -> StageRecord | None:
        """The first of ``stages`` whose row in the run says ``rolled_back`` (None: none does)."""
        rows = self._rows(run_id)
        return next((rows[s] for s in stages if s in rows and rows[s].status == ROLLED_BACK), None)

    def close_attempt(self, attempt_id: str, outcome: str) -> list[StageRecord]:
        """After a rollback: the attempt's succeeded stages become ``rolled_back``, with ``outcome``."""
        closed = [
            replace(r, status=ROLLED_BACK, error=outcome)
            for rows in self._runs.values()
            for r in rows.values()
            if r.attempt_id == attempt_id and r.status == SUCCEEDED
        ]
        self.write_many(closed)
        return closed

    def abandon_unfinished(self, found_by: str, roll_back: Callable[[str], str]) -> list[StageRecord]:
        """Roll back and mark ``abandoned`` the stages still ``running`` (their process died).

        Runs of one warehouse are sequential, so a ``running`` row seen when a run starts has
        no live process behind it. The dead process's attempt is rolled back first; its
        stages that had succeeded become ``rolled_back``.

        Args:
            found_by: The run that found them (for the message).
            roll_back: Rolls an attempt back and returns a one-line outcome.

        Returns:
            Every row changed, as it is now.
        """
        if not self._store.exists(Table.PIPELINE_RUNS):
            return []
        runs = self._store.read(Table.PIPELINE_RUNS)
        if "attempt_id" not in runs.columns:  # a table written before attempts were recorded
            runs = runs.withColumn("attempt_id", F.lit(None).cast("string"))
        running = runs.filter(where(status=RUNNING).column()).select("attempt_id").distinct().collect()
        if not running:  # the usual start: nothing to roll back, and no second read
            return []
        attempts = sorted({row["attempt_id"] for row in running if row["attempt_id"]})
        outcomes = {a: roll_back(a) for a in attempts}
        touched = runs.filter(where(status=RUNNING).column() | runs["attempt_id"].isin(attempts)).collect()
        changed = []
        for row in touched:
            record = _record(row.asDict())
            outcome = outcomes.get(record.attempt_id or "", "not rolled back: written before attempts were recorded")
            if record.status == RUNNING:
                why = f"the stage's process ended without recording an outcome; found running when run {found_by} "
                changed.append(replace(record, status=ABANDONED, ended_at=utc_now(), error=f"{why}started; {outcome}"))
            elif record.status == SUCCEEDED:
                changed.append(replace(record, status=ROLLED_BACK, error=outcome))
        self.write_many(changed)
        return changed
