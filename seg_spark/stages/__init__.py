"""The pipeline's stages, in order. Each is a package with one ``run(ctx) -> StageResult``.

Stages meet only in tables (through ``ctx.store``) and the model registry: a stage never
reads another stage's memory, so each can run as its own process (``seg-spark run --stage``,
``jobs/<stage>.py``, one Databricks task per stage).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import TYPE_CHECKING, Any

from seg_spark.errors import ConfigError, StageInputError
from seg_spark.tables import Table, where

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row

    from seg_spark.context import RunContext

STAGE_NAMES: tuple[str, ...] = ("ingest", "features", "segment", "predict", "explain", "publish")


@dataclass(frozen=True, kw_only=True)
class StageResult:
    """What every stage returns: rows in and out, the tables it wrote, the as-of date it worked on."""

    stage: str
    rows_in: int | None
    rows_out: int | None
    tables: tuple[Table, ...]
    as_of_date: date | None = None
    metrics: dict[str, float] = field(default_factory=dict)

    def report(self) -> list[str]:
        """Lines a person reads at the end of a run (the CLI prints them)."""
        rows = f"{self.rows_out:,} rows out" if self.rows_out is not None else "done"
        return [f"{self.stage}: {rows}"]

    def closing(self) -> list[str]:
        """Lines that end the run's output, after the tables (what a person looks at next)."""
        return []


def entry_point(name: str) -> Callable[[Any], StageResult]:
    """The ``run`` function of the stage called ``name``."""
    if name not in STAGE_NAMES:
        raise ConfigError(f"unknown stage {name!r}; stages are, in order: {', '.join(STAGE_NAMES)}")
    module = importlib.import_module(f"seg_spark.stages.{name}")
    run: Callable[[Any], StageResult] = module.run
    return run


def ordered(names: Sequence[str] | None) -> tuple[str, ...]:
    """The named stages (all when None or empty) in pipeline order, each once."""
    if not names:
        return STAGE_NAMES
    unknown = sorted(set(names) - set(STAGE_NAMES))
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}; stages are, in order: {', '.join(STAGE_NAMES)}")
    return tuple(name for name in STAGE_NAMES if name in names)


def features_of(ctx: RunContext, as_of: date) -> DataFrame:
    """The as-of date's partition of ``customer_features``, the input of the stages after features.

    Raises:
        StageInputError: The table or the partition is missing (the message names the stage to run).
    """
    stored = ctx.store.require(Table.CUSTOMER_FEATURES, "features").filter(where(as_of_date=as_of).column())
    if stored.isEmpty():
        raise StageInputError(
            f"{ctx.store.name(Table.CUSTOMER_FEATURES)} has no rows for as-of date {as_of}: "
            "run the features stage for it first "
            f"(seg-spark run --stage features --run-id {ctx.run_id})"
        )
    return stored


def assignments_of(ctx: RunContext, as_of: date) -> DataFrame:
    """The run's ``segment_assignments`` at the as-of date, the input of the stages after segment."""
    return ctx.store.require(Table.SEGMENT_ASSIGNMENTS, "segment").filter(
        where(as_of_date=as_of, run_id=ctx.run_id).column()
    )


def model_of(ctx: RunContext, as_of: date, assignments: DataFrame) -> Row:
    """The model columns (``model_name``, ``model_version``, ``algorithm``, ``k``) of the run's assignments.

    Raises:
        StageInputError: The run has no assignments at the date (the message names the stage to run).
    """
    first = assignments.select("model_name", "model_version", "algorithm", "k").first()
    if first is None:
        raise StageInputError(
            f"{ctx.store.name(Table.SEGMENT_ASSIGNMENTS)} has no rows of run {ctx.run_id} for {as_of}: "
            f"run the segment stage first (seg-spark run --stage segment --run-id {ctx.run_id})"
        )
    return first
