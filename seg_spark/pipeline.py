"""The run: a short loop over the stages, each recorded in ``pipeline_runs`` and tracked in MLflow.

Jobs and the CLI only parse arguments and call ``run_pipeline(spark, settings, stages)``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace

from pyspark.sql import SparkSession

from seg_spark.config import Settings
from seg_spark.context import RunContext
from seg_spark.maintenance import maintain
from seg_spark.runs import StageRecord
from seg_spark.stages import StageResult, entry_point, ordered
from seg_spark.tables import Table

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PipelineResult:
    """What one run of one or more stages produced."""

    run_id: str
    stages: dict[str, StageResult]
    tables: dict[str, str]
    seconds: float
    mlflow_run_id: str | None = None
    tracking_uri: str | None = None


def run_pipeline(spark: SparkSession, settings: Settings, stages: Sequence[str] | None = None) -> PipelineResult:
    """Run the named stages (all when None) of run ``run.run_id`` (a new run when unset), in order.

    Args:
        spark: The session (see ``seg_spark.session.get_spark``).
        settings: Validated configuration.
        stages: Stage names (``seg_spark.stages.STAGE_NAMES``); None or empty runs them all.

    Returns:
        Each stage's result, every table written and where the run is tracked.
    """
    names = ordered(stages)
    ctx = RunContext.create(spark, settings)
    abandoned = ctx.manifest.abandon_unfinished(found_by=ctx.run_id)
    ctx.tracker.mark_failed(sorted({r.mlflow_run_id for r in abandoned if r.mlflow_run_id}))
    started = time.monotonic()
    results: dict[str, StageResult] = {}
    tags = {"seg_spark.run_id": ctx.run_id, "spark.master": str(spark.sparkContext.master)}
    resume = ctx.manifest.mlflow_run_id(ctx.run_id)
    with ctx.tracker.run(f"pipeline-{ctx.run_id[:8]}", tags, resume=resume) as mlflow_run_id:
        ctx = replace(ctx, mlflow_run_id=mlflow_run_id)
        for step, name in enumerate(names, start=1):
            log.info("[%d/%d] %s (run %s)", step, len(names), name, ctx.run_id)
            results[name] = run_stage(ctx, name)
    if settings.storage.maintain_after_run:
        maintain(ctx.store, settings.storage.retention_hours)
    tables = {t.value: ctx.store.path(t) for r in results.values() for t in r.tables}
    return PipelineResult(
        run_id=ctx.run_id,
        stages=results,
        tables=tables,
        seconds=time.monotonic() - started,
        mlflow_run_id=mlflow_run_id,
        tracking_uri=ctx.tracker.tracking_uri(),
    )


def run_stage(ctx: RunContext, name: str) -> StageResult:
    """Run one stage, recorded in ``pipeline_runs`` (running, then succeeded or failed with the error)."""
    run = entry_point(name)
    started = time.monotonic()
    record = ctx.manifest.started(ctx.run_id, name, ctx.mlflow_run_id)
    try:
        result = run(ctx)
    except BaseException as exc:
        _record_failure(ctx, record, exc)
        raise
    ctx.manifest.finished(record, as_of_date=result.as_of_date, rows_in=result.rows_in, rows_out=result.rows_out)
    ctx.tracker.log_metrics(result.metrics)
    ctx.store.register((*result.tables, Table.PIPELINE_RUNS))
    log.info("    %s done in %.1fs", name, time.monotonic() - started)
    return result


def _record_failure(ctx: RunContext, record: StageRecord, exc: BaseException) -> None:
    """Mark the stage failed; a failure to record it must not hide the stage's own error."""
    message = f"{type(exc).__name__}: {exc}".strip()
    try:
        ctx.manifest.finished(record, as_of_date=None, rows_in=None, rows_out=None, error=message)
    except Exception:  # noqa: BLE001 - e.g. the session is gone; the original error matters more
        log.warning("could not record the failure of stage %s in pipeline_runs", record.stage)
