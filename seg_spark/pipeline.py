"""The end-to-end run: ingest -> features -> segment -> publish, tracked in MLflow.

Jobs and the CLI only parse arguments and call ``run_pipeline(spark, settings)``.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from seg_spark import io, quality, synth, tracking
from seg_spark.config import Settings, SourceSettings
from seg_spark.features.rfm import rfm_features
from seg_spark.models import clustering
from seg_spark.models.validation import adjusted_rand_index

log = logging.getLogger(__name__)


class Progress:
    """Numbered stage messages with elapsed time, for long runs."""

    def __init__(self, total: int) -> None:
        self.total, self.step, self.started = total, 0, time.monotonic()
        self._stage_start = self.started

    def stage(self, message: str) -> None:
        """Announce the next stage (and how long the previous one took)."""
        now = time.monotonic()
        if self.step:
            log.info("    done in %.1fs", now - self._stage_start)
        self.step += 1
        self._stage_start = now
        log.info("[%d/%d] %s", self.step, self.total, message)

    def finish(self) -> float:
        """Close the last stage; return the total seconds."""
        now = time.monotonic()
        log.info("    done in %.1fs", now - self._stage_start)
        return now - self.started


@dataclass
class RunResult:
    """What a run produced and where."""

    run_id: str
    as_of_date: date
    tables: dict[str, str]
    counts: quality.IngestCounts
    metrics: dict[str, float]
    segment_summary: list[dict[str, Any]]
    mlflow_run_id: str | None = None
    model_uri: str | None = None
    model_version: str | None = None
    tracking_uri: str | None = None


def demo_source(spark: SparkSession, settings: Settings) -> tuple[SourceSettings, str]:
    """Generate the demo log (once per generator settings) and describe it as a source.

    Returns:
        The source settings for the generated transactions and the truth table's path.
    """
    out = Path(settings.demo.out).expanduser().resolve()
    generator = settings.demo.generator
    if generator.end_date is None:
        generator = generator.model_copy(update={"end_date": date.today()})
    marker = out / "_generator.json"
    wanted = generator.model_dump_json()
    if not (marker.is_file() and marker.read_text() == wanted):
        log.info("no transaction source configured: generating a demo log in %s", out)
        synth.write_generated(spark, generator, str(out))
        marker.write_text(wanted)
    else:
        log.info("no transaction source configured: reusing the demo log in %s", out)
    source = SourceSettings(path=str(out / "transactions"), format="parquet")
    return source, str(out / "truth")


def default_as_of(clean: DataFrame) -> date:
    """The day after the last clean transaction."""
    last = clean.agg(F.max("ts")).first()[0]
    if last is None:
        raise quality.ReconciliationError("no clean transactions: nothing to build features from")
    return last.date() + timedelta(days=1)


def _segment_summary(segments: DataFrame, features: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = (
        segments.groupBy("segment_id")
        .agg(F.count(F.lit(1)).alias("customers"), *[F.round(F.avg(f), 2).alias(f) for f in features])
        .orderBy("segment_id")
        .collect()
    )
    return [r.asDict() for r in rows]


def run_pipeline(spark: SparkSession, settings: Settings) -> RunResult:
    """Run ingest, features, segmentation and publishing once.

    Rerunning for the same as-of date replaces that date's rows in the feature and
    segment tables rather than adding to them.

    Args:
        spark: The session (see ``seg_spark.session.get_spark``).
        settings: Validated configuration.

    Returns:
        Where everything went, the counts, metrics and a small per-segment summary.
    """
    run_id = settings.run.run_id or uuid.uuid4().hex
    progress = Progress(total=5)
    paths = {name: settings.table_path(name) for name in type(settings.tables).model_fields}

    progress.stage("reading the transaction source")
    source, truth_path = settings.sources.transactions, None
    if source.path is None:
        source, truth_path = demo_source(spark, settings)
    raw = io.read_source(spark, source, "transactions")

    with tracking.tracked_run(
        settings,
        run_name=f"pipeline-{run_id[:8]}",
        tags={"seg_spark.run_id": run_id, "spark.master": spark.sparkContext.master},
    ) as mlflow_run_id:
        progress.stage("cleaning: mapping, rules, quarantine")
        ingested = quality.ingest(raw, source, settings.quality, run_id)
        io.write_delta(ingested.clean, paths["transactions_clean"])
        io.write_delta(ingested.quarantine, paths["transactions_quarantine"], replace_where=f"run_id = '{run_id}'")
        ingested.release()
        counts = ingested.counts
        io.write_delta(
            quality.quality_rows(spark, counts, run_id, "transactions"),
            paths["data_quality"],
            replace_where=f"run_id = '{run_id}'",
        )
        tracking.log_metrics(
            {
                "input_rows": counts.input_rows,
                "clean_rows": counts.clean_rows,
                "quarantined_rows": counts.quarantined_rows,
                "duplicates_removed": counts.duplicates_removed,
                **{f"quarantined.{k}": v for k, v in counts.by_reason.items()},
            }
        )

        progress.stage("features: RFM per customer")
        clean = io.read_delta(spark, paths["transactions_clean"])
        as_of = settings.features.as_of_date or default_as_of(clean)
        as_of_filter = f"as_of_date = '{as_of.isoformat()}'"
        features = rfm_features(clean, as_of).select(
            "*", F.lit(as_of).alias("as_of_date"), F.lit(run_id).alias("run_id")
        )
        io.write_delta(features, paths["customer_features"], partition_by=["as_of_date"], replace_where=as_of_filter)

        progress.stage(f"segmenting: k-means, k={settings.model.k}")
        stored = io.read_delta(spark, paths["customer_features"]).filter(F.col("as_of_date") == F.lit(as_of))
        data = clustering.model_input(stored, settings.model).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            fitted = clustering.fit(data, settings.model)
            metrics = dict(fitted.metrics)
            metrics["customers_not_modelled"] = float(stored.count() - metrics["customers_modelled"])
            model_uri = model_version = None
            if mlflow_run_id and settings.tracking.log_model:
                model_uri, model_version = tracking.log_spark_model(
                    fitted.model, settings.model.name if settings.tracking.register_model else None
                )
            scored = fitted.model.transform(data)
            segments = scored.select(
                "customer_id",
                F.col(clustering.SEGMENT_COL).cast("int").alias("segment_id"),
                F.lit(as_of).alias("as_of_date"),
                F.lit(run_id).alias("run_id"),
                F.lit(settings.model.name).alias("model_name"),
                F.lit(model_version or "unregistered").alias("model_version"),
            )
            progress.stage("publishing customer_segments")
            io.write_delta(
                segments, paths["customer_segments"], partition_by=["as_of_date"], replace_where=as_of_filter
            )
        finally:
            data.unpersist()

        published = (
            io.read_delta(spark, paths["customer_segments"])
            .filter(as_of_filter)
            .join(stored.drop("run_id", "as_of_date"), "customer_id")
        )
        summary = _segment_summary(published, settings.model.features)
        if truth_path:
            truth = spark.read.parquet(truth_path)
            metrics["ari_vs_planted"] = adjusted_rand_index(
                published.join(truth, "customer_id"), "archetype", "segment_id"
            )
        if settings.storage.database:
            for name, path in paths.items():
                io.register_table(spark, settings.storage.database, getattr(settings.tables, name), path)
        tracking.log_metrics(metrics)
        tracking.log_summary({"segments": summary}, "segment_summary.json", tags={"as_of_date": as_of.isoformat()})

    seconds = progress.finish()
    metrics["seconds"] = seconds
    return RunResult(
        run_id=run_id,
        as_of_date=as_of,
        tables=paths,
        counts=counts,
        metrics=metrics,
        segment_summary=summary,
        mlflow_run_id=mlflow_run_id,
        model_uri=model_uri,
        model_version=model_version,
        tracking_uri=tracking.resolve_tracking_uri(settings.tracking.tracking_uri)[0] if mlflow_run_id else None,
    )
