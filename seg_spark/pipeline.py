"""The run: a short loop over the stages, each recorded in ``pipeline_runs`` and tracked in MLflow.

Jobs and the CLI only parse arguments and call ``run_pipeline(spark, settings, stages)``.
One call is one attempt: when any of its stages fails, every table the attempt changed is
rolled back (``seg_spark.recovery``), so a consumer never sees a half-published run; an
attempt whose process died is rolled back by the next call. Runs of one warehouse take
turns (``seg_spark.lock``), so that call never mistakes a live run for a dead one.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from functools import partial

from pyspark.sql import SparkSession

from seg_spark.config import Settings
from seg_spark.context import RunContext
from seg_spark.errors import StageInputError
from seg_spark.lock import warehouse_lock
from seg_spark.maintenance import maintain
from seg_spark.recovery import rollback_attempt
from seg_spark.runs import StageRecord
from seg_spark.stages import STAGE_NAMES, StageResult, entry_point, ordered
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
    with warehouse_lock(settings.storage.root, f"run {ctx.run_id} ({', '.join(names)})"):
        started = time.monotonic()
        results, mlflow_run_id = _run_stages(ctx, names)
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


def _run_stages(ctx: RunContext, names: Sequence[str]) -> tuple[dict[str, StageResult], str | None]:
    """Roll back what a dead process left, then run the stages in one MLflow run."""
    recovered = ctx.manifest.abandon_unfinished(ctx.run_id, partial(_roll_back, ctx))
    ctx.tracker.mark_failed(sorted({r.mlflow_run_id for r in recovered if r.mlflow_run_id}))
    results: dict[str, StageResult] = {}
    tags = {"seg_spark.run_id": ctx.run_id, "spark.master": str(ctx.spark.sparkContext.master)}
    resume = ctx.manifest.mlflow_run_id(ctx.run_id)
    with ctx.tracker.run(f"pipeline-{ctx.run_id[:8]}", tags, resume=resume) as mlflow_run_id:
        ctx = replace(ctx, mlflow_run_id=mlflow_run_id)
        record = None  # the next stage's row, when the stage before it wrote it with its own end
        for step, name in enumerate(names, start=1):
            log.info("[%d/%d] %s (run %s)", step, len(names), name, ctx.run_id)
            following = names[step] if step < len(names) else None
            results[name], record = run_stage(ctx, name, record, following)
    return results, mlflow_run_id


def run_stage(
    ctx: RunContext, name: str, record: StageRecord | None = None, following: str | None = None
) -> tuple[StageResult, StageRecord | None]:
    """Run one stage, recorded in ``pipeline_runs`` (running, then succeeded or failed with the error).

    A failure rolls back the whole attempt (this stage and the ones before it in this call). In a
    run of several stages the stage before writes this one's ``running`` row with its own end, in
    one commit (one commit per stage, not two).

    Args:
        ctx: The run.
        name: The stage.
        record: This stage's ``running`` row, when the stage before wrote it.
        following: The stage to run next in this call: its ``running`` row is written with this one's end.

    Returns:
        The stage's result and the following stage's ``running`` row (None: none was written).

    Raises:
        StageInputError: An earlier stage of the run was rolled back, so this one's input is not the run's.
    """
    run = entry_point(name)
    if record is None:
        _check_upstream(ctx, name)
        record = ctx.manifest.started(ctx.run_id, name, ctx.mlflow_run_id, ctx.attempt_id)
    started = time.monotonic()
    stage_ctx = replace(ctx, store=ctx.store.tagged(stage=name))
    try:
        result = run(stage_ctx)
        # Before the stage is recorded succeeded: after that, the next stage may be recorded running.
        ctx.tracker.log_metrics(result.metrics)
        ctx.store.register((*result.tables, Table.PIPELINE_RUNS))
    except BaseException as exc:
        _fail(ctx, record, exc)
        raise
    as_of, rows_in, rows_out = result.as_of_date, result.rows_in, result.rows_out
    handed_to = None
    if following is not None and _undone_upstream(ctx, following) is None:
        handed_to = ctx.manifest.handed_over(record, following, as_of_date=as_of, rows_in=rows_in, rows_out=rows_out)
    else:  # the last stage, or the next one will refuse to start
        ctx.manifest.finished(record, as_of_date=as_of, rows_in=rows_in, rows_out=rows_out)
    log.info("    %s done in %.1fs", name, time.monotonic() - started)
    return result, handed_to


def _undone_upstream(ctx: RunContext, name: str) -> StageRecord | None:
    """The first stage before ``name`` whose row in the run says ``rolled_back`` (None: none does)."""
    return ctx.manifest.rolled_back(ctx.run_id, STAGE_NAMES[: STAGE_NAMES.index(name)])


def _check_upstream(ctx: RunContext, name: str) -> None:
    """Refuse to start ``name`` when an earlier stage of its run was rolled back.

    Raises:
        StageInputError: Its input would be the previous run's tables.
    """
    undone = _undone_upstream(ctx, name)
    if undone is not None:
        raise StageInputError(
            f"the {undone.stage} stage of run {ctx.run_id} was rolled back when its attempt failed, so the "
            f"{name} stage would read the previous run's tables: rerun from {undone.stage} "
            f"(seg-spark run --run-id {ctx.run_id}), or start a new run"
        )


def _roll_back(ctx: RunContext, attempt_id: str) -> str:
    """Undo an attempt: its table commits and the model versions it registered; say what was done.

    This process's own attempt is looked for only in the tables it committed to.
    """
    tables = ctx.store.committed if attempt_id == ctx.attempt_id else None
    outcome = rollback_attempt(ctx.store, attempt_id, tables).summary()
    versions = ctx.tracker.delete_model_versions(attempt_id)
    if versions:
        outcome += f"; registered {', '.join(versions)} deleted"
    return outcome


def _fail(ctx: RunContext, record: StageRecord, exc: BaseException) -> None:
    """Roll the attempt back, then mark the stage failed and the attempt's earlier stages rolled back.

    When the rollback itself fails (the session is gone), the stage stays ``running``, so the
    next start finds it and rolls the attempt back then; neither may hide the stage's own error.
    """
    try:
        outcome = _roll_back(ctx, ctx.attempt_id)
    except Exception:  # noqa: BLE001 - the original error matters more
        log.exception("could not roll back attempt %s; the next run's start will", ctx.attempt_id)
        return
    message = f"{type(exc).__name__}: {exc}".strip()
    try:
        ctx.manifest.finished(record, as_of_date=None, rows_in=None, rows_out=None, error=f"{message}\n{outcome}")
        ctx.manifest.close_attempt(ctx.attempt_id, outcome)
    except Exception:  # noqa: BLE001 - e.g. the session is gone; the original error matters more
        log.warning("could not record the failure of stage %s in pipeline_runs", record.stage)
