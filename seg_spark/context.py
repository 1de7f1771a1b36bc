"""The run context: what every stage gets.

The session, the settings, the run's identity, one clock, the table store, the run
manifest and the tracker.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import date

from pyspark.sql import SparkSession

from seg_spark.clock import Clock
from seg_spark.config import Settings
from seg_spark.errors import StageInputError
from seg_spark.runs import RunManifest
from seg_spark.tables import TableStore
from seg_spark.tracking import Tracker


@dataclass(frozen=True)
class RunContext:
    """One run of one or more stages.

    Attributes:
        spark: The session.
        settings: Validated configuration.
        run_id: The run's id (``run.run_id``, or a new one); every stage of a run shares it.
        attempt_id: This process's attempt at the run's stages: what a failure rolls back
            (``seg_spark.recovery``).
        clock: What the run treats as now.
        store: The table store.
        manifest: ``pipeline_runs``.
        tracker: MLflow.
        mlflow_run_id: The run's MLflow run (None when tracking is off).
    """

    spark: SparkSession
    settings: Settings
    run_id: str
    attempt_id: str
    clock: Clock
    store: TableStore
    manifest: RunManifest
    tracker: Tracker
    mlflow_run_id: str | None = field(default=None)

    @classmethod
    def create(cls, spark: SparkSession, settings: Settings) -> RunContext:
        """A context for ``settings`` (a new run id unless ``run.run_id`` is set, a new attempt id)."""
        run_id = settings.run.run_id or uuid.uuid4().hex
        attempt_id = uuid.uuid4().hex
        store = TableStore(spark, settings, {"run_id": run_id, "attempt_id": attempt_id})
        return cls(
            spark=spark,
            settings=settings,
            run_id=run_id,
            attempt_id=attempt_id,
            clock=Clock(settings.quality.clock),
            store=store,
            manifest=RunManifest(store),
            tracker=Tracker(settings),
        )

    def as_of_date(self, stage: str) -> date:
        """The run's as-of date: configured, else the one its features stage recorded.

        Configured means ``features.as_of_date`` (or ``--as-of``); recorded means in ``pipeline_runs``.

        Raises:
            StageInputError: Neither is there, so ``stage`` cannot know which features to read.
        """
        configured = self.settings.features.as_of_date or self.manifest.as_of_date(self.run_id)
        if configured is None:
            raise StageInputError(
                f"the {stage} stage needs the as-of date of run {self.run_id}, and pipeline_runs has no "
                f"features stage for it: run --stage features with --run-id {self.run_id} first, "
                "or pass --as-of YYYY-MM-DD"
            )
        return configured
