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
from seg_spark.config import Settings, SourceBase, SourceSettings
from seg_spark.features import products, store
from seg_spark.features.behaviour import features_from_state, mix_keys, with_rfm_scores
from seg_spark.features.side import with_events, with_profiles
from seg_spark.models import clustering, selection
from seg_spark.models.validation import label_agreement
from seg_spark.privacy import pseudonym_key

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
    refresh: store.RefreshResult
    state: store.StateResult
    segment_summary: list[dict[str, Any]]
    selection: dict[str, Any]
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


def default_as_of(daily: DataFrame) -> date:
    """The day after the last day with a clean transaction (from the daily aggregates)."""
    last = daily.agg(F.max("day")).first()[0]
    if last is None:
        raise quality.ReconciliationError("no clean transactions: nothing to build features from")
    return last + timedelta(days=1)


def _segment_summary(segments: DataFrame, features: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = (
        segments.groupBy("segment_id")
        .agg(F.count(F.lit(1)).alias("customers"), *[F.round(F.avg(f), 2).alias(f) for f in features])
        .orderBy("segment_id")
        .collect()
    )
    return [r.asDict() for r in rows]


SIDE_TABLES = {"profiles": "customer_profiles", "events": "events_clean"}


def _ingest_source(
    spark: SparkSession,
    settings: Settings,
    run_id: str,
    name: str,
    raw: DataFrame,
    source: SourceBase,
    key: bytes | None,
    paths: dict[str, str],
) -> quality.IngestResult:
    """Clean one source, write its clean rows, its quarantine and its DQ rows; log to MLflow."""
    if name == "transactions":
        result = quality.ingest(raw, source, settings.quality, run_id, name, key)
        clean_table = "transactions_clean"
    elif name == "profiles":
        result = quality.ingest_profiles(raw, source, run_id, key)
        clean_table = SIDE_TABLES[name]
    else:
        result = quality.ingest_events(raw, source, settings.quality, run_id, key)
        clean_table = SIDE_TABLES[name]
    this_run = f"run_id = '{run_id}' AND source = '{name}'"
    try:
        if name == "transactions":
            _write_transactions(spark, result.clean, paths[clean_table], settings.sources.transactions.mode)
        else:
            io.write_delta(result.clean, paths[clean_table])
        io.write_delta(result.quarantine, paths["transactions_quarantine"], replace_where=this_run)
    finally:
        result.release()
    io.write_delta(quality.quality_rows(spark, result, run_id), paths["data_quality"], replace_where=this_run)
    tracking.log_metrics(quality.quality_metrics(result))
    return result


def _write_transactions(spark: SparkSession, clean: DataFrame, path: str, mode: str) -> None:
    """Write clean lines by day (replacing a snapshot or appending a batch) with the change feed on."""
    clean = store.with_tx_date(clean)
    if mode == "append":
        io.append_delta(clean, path, partition_by=[store.TX_DATE])
    else:
        io.write_delta(clean, path, partition_by=[store.TX_DATE])
    io.enable_change_feed(spark, path)


@dataclass
class FeatureBuild:
    """This run's as-of features (persisted: unpersist after writing) and how they were made."""

    features: DataFrame
    as_of: date
    refresh: store.RefreshResult
    state: store.StateResult
    tables: list[str]


def build_features(
    spark: SparkSession, settings: Settings, run_id: str, paths: dict[str, str], side_tables: list[str]
) -> FeatureBuild:
    """Refresh the daily aggregates and the running state, and derive this as-of date's features."""
    config = settings.features
    clean = io.read_delta(spark, paths["transactions_clean"])
    written = ["customer_daily", "feature_refresh_log", "customer_state"]
    prepare, refresh = (lambda lines: lines), config.refresh
    if products.needs_groups(clean, config.product_groups):
        model_path = settings.storage_path("models/product_groups")
        groups, refitted = products.refresh_groups(
            spark, clean, config.product_groups, paths["product_groups"], model_path
        )
        prepare = products.with_groups_as_categories(groups)
        written.append("product_groups")
        if refitted:
            refresh = "full"  # every product's category may have changed
    refreshed = store.refresh_daily(
        spark,
        paths["transactions_clean"],
        paths["customer_daily"],
        paths["feature_refresh_log"],
        refresh=refresh,
        run_id=run_id,
        prepare=prepare,
    )
    as_of = config.as_of_date or default_as_of(io.read_delta(spark, paths["customer_daily"]))
    state, state_done = store.refresh_state(
        spark, paths["customer_daily"], paths["customer_state"], paths["feature_refresh_log"], as_of, config
    )
    features = features_from_state(state, as_of, config, mix_keys(state, config))
    if "customer_profiles" in side_tables:
        features = with_profiles(features, io.read_delta(spark, paths["customer_profiles"]), as_of)
    if "events_clean" in side_tables:
        features = with_events(features, io.read_delta(spark, paths["events_clean"]), as_of)
    features = features.persist(StorageLevel.MEMORY_AND_DISK)
    features = with_rfm_scores(features, settings.model.prep.quantile_error)
    features = features.select("*", F.lit(as_of).alias("as_of_date"), F.lit(run_id).alias("run_id"))
    return FeatureBuild(features, as_of, refreshed, state_done, written)


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
    if source.path is None and source.table is None:
        source, truth_path = demo_source(spark, settings)
    key = pseudonym_key(settings.privacy) if settings.privacy.pseudonymise_customer_id else None
    raw = io.read_source(spark, source, "transactions")

    with tracking.tracked_run(
        settings,
        run_name=f"pipeline-{run_id[:8]}",
        tags={"seg_spark.run_id": run_id, "spark.master": spark.sparkContext.master},
    ) as mlflow_run_id:
        progress.stage("cleaning: mapping, rules, quarantine, data quality")
        ingested = _ingest_source(spark, settings, run_id, "transactions", raw, source, key, paths)
        counts = ingested.counts
        written = ["transactions_clean", "transactions_quarantine", "data_quality"]
        for side in ("profiles", "events"):
            side_source = getattr(settings.sources, side)
            if side_source is not None:
                side_raw = io.read_source(spark, side_source, side)
                _ingest_source(spark, settings, run_id, side, side_raw, side_source, key, paths)
                written.append(SIDE_TABLES[side])
        # Stop before any model is touched; the quarantine and DQ rows are already written.
        quality.check_thresholds(ingested, settings.quality.thresholds)

        progress.stage("features: daily aggregates (incremental) and as-of features")
        built = build_features(spark, settings, run_id, paths, written)
        as_of, refreshed = built.as_of, built.refresh
        as_of_filter = f"as_of_date = '{as_of.isoformat()}'"
        try:
            io.write_delta(
                built.features, paths["customer_features"], partition_by=["as_of_date"], replace_where=as_of_filter
            )
        finally:
            built.features.unpersist()
        written += built.tables
        state = built.state
        tracking.log_metrics({"feature_refresh_seconds": refreshed.seconds, "feature_state_seconds": state.seconds})
        days = [d.isoformat() for d in refreshed.days]
        tracking.log_summary(
            {
                "daily": {"mode": refreshed.mode, "reason": refreshed.reason, "days": days},
                "state": {"mode": state.mode, "reason": state.reason},
            },
            "feature_refresh.json",
            tags={"feature_refresh_mode": refreshed.mode, "feature_state_mode": state.mode},
        )

        model_settings = settings.model
        sweep = model_settings.selection
        progress.stage(
            f"segmenting: {'/'.join(sweep.algorithms or (model_settings.algorithm,))} "
            + (f"k={sweep.k_min}..{sweep.k_max} (model selection)" if sweep.enabled else f"k={model_settings.k}")
        )
        stored = io.read_delta(spark, paths["customer_features"]).filter(F.col("as_of_date") == F.lit(as_of))
        model_features = clustering.resolve_features(stored.columns, model_settings)
        data = clustering.model_input(stored).persist(StorageLevel.MEMORY_AND_DISK)
        try:
            seg = selection.segment(spark, data, model_features, model_settings)
        finally:
            data.unpersist()
        try:
            metrics = dict(seg.metrics)
            metrics["customers_not_modelled"] = float(stored.count() - metrics["customers_modelled"])
            tracking.log_summary({"features": seg.preparation.report()}, "preparation.json")
            tracking.log_summary(
                {"rule": seg.rule, "reason": seg.reason, "candidates": [c.record() for c in seg.candidates]},
                "model_selection.json",
                tags={"algorithm": seg.algorithm, "k": str(seg.k)},
            )
            tracking.log_summary(seg.stability, "stability.json")
            selection_rows = selection.selection_rows(spark, seg, run_id, as_of)
            io.write_delta(selection_rows, paths["model_selection"], replace_where=f"run_id = '{run_id}'")
            written.append("model_selection")
            if seg.hierarchy is not None:
                tracking.log_summary({"nodes": seg.hierarchy}, "segment_hierarchy.json")
                hierarchy = selection.hierarchy_rows(spark, seg.hierarchy, run_id, as_of)
                io.write_delta(hierarchy, paths["segment_hierarchy"], replace_where=f"run_id = '{run_id}'")
                written.append("segment_hierarchy")
            model_uri = model_version = None
            if mlflow_run_id and settings.tracking.log_model:
                model_uri, model_version = tracking.log_spark_model(
                    seg.model, model_settings.name if settings.tracking.register_model else None
                )
            segments = seg.assignments.select(
                "*",
                F.lit(seg.algorithm).alias("algorithm"),
                F.lit(as_of).alias("as_of_date"),
                F.lit(run_id).alias("run_id"),
                F.lit(model_settings.name).alias("model_name"),
                F.lit(model_version or "unregistered").alias("model_version"),
            )
            progress.stage("publishing customer_segments")
            io.write_delta(
                segments, paths["customer_segments"], partition_by=["as_of_date"], replace_where=as_of_filter
            )
        finally:
            seg.release()

        published = (
            io.read_delta(spark, paths["customer_segments"])
            .filter(as_of_filter)
            .select("customer_id", "segment_id")
            .join(stored.drop("run_id", "as_of_date"), "customer_id")
        )
        summary = _segment_summary(published, seg.preparation.kept)
        truth = None
        if truth_path and key is None:
            truth = spark.read.parquet(truth_path).select("customer_id", F.col("archetype").alias("_truth"))
        elif model_settings.validation_label:
            truth = stored.select("customer_id", F.col(model_settings.validation_label).alias("_truth"))
        if truth is not None:
            labelled = published.join(truth.filter(F.col("_truth").isNotNull()), "customer_id")
            agreement = label_agreement(labelled, "_truth", "segment_id")
            metrics.update({f"truth_{name}": value for name, value in agreement.items()})
        written += ["customer_features", "customer_segments"]
        if settings.storage.database:
            for name in written:
                path = paths[name]
                io.register_table(spark, settings.storage.database, getattr(settings.tables, name), path)
        tracking.log_metrics(metrics)
        tracking.log_summary({"segments": summary}, "segment_summary.json", tags={"as_of_date": as_of.isoformat()})

    seconds = progress.finish()
    metrics["seconds"] = seconds
    return RunResult(
        run_id=run_id,
        as_of_date=as_of,
        tables={name: paths[name] for name in written},
        counts=counts,
        metrics=metrics,
        refresh=refreshed,
        state=state,
        segment_summary=summary,
        selection={
            "algorithm": seg.algorithm,
            "k": seg.k,
            "rule": seg.rule,
            "reason": seg.reason,
            "bootstraps": seg.stability.get("bootstraps", 0),
            "unstable_segments": seg.stability.get("unstable_segments", []),
        },
        mlflow_run_id=mlflow_run_id,
        model_uri=model_uri,
        model_version=model_version,
        tracking_uri=tracking.resolve_tracking_uri(settings.tracking.tracking_uri)[0] if mlflow_run_id else None,
    )
