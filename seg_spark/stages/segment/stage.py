"""Segment: prepare, select, fit, check stability, register the model and assign every customer.

Reads the run's as-of partition of ``customer_features``; writes ``model_selection``,
``segment_hierarchy`` (bisecting K-Means), the model (MLflow registry) and the as-of
partition of ``segment_assignments`` (the model's own segment ids; the publish stage gives
them stable ids in ``customer_segments``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark import synth
from seg_spark.context import RunContext
from seg_spark.models import clustering, selection
from seg_spark.models.validation import label_agreement
from seg_spark.stages import StageResult, features_of
from seg_spark.tables import Table, where

TRUTH = "_truth"
NAN = float("nan")


@dataclass(frozen=True, kw_only=True)
class SegmentStageResult(StageResult):
    """The chosen model, where it is registered, and a small per-segment summary."""

    algorithm: str
    k: int
    rule: str
    reason: str
    bootstraps: int
    unstable_segments: tuple[int, ...]
    segment_summary: tuple[dict[str, Any], ...]
    model_uri: str | None
    model_version: str | None

    def report(self) -> list[str]:
        """The chosen model, its quality, stability, agreement with known labels and the segments."""
        m = self.metrics
        lines = [f"model: {self.algorithm} k={self.k} ({self.reason})"]
        if self.model_uri:
            lines.append(f"       {self.model_uri} (registered version {self.model_version})")
        lines.append(
            f"fit on a sample of {int(m['selection_sample_rows']):,}: silhouette {m.get('silhouette', NAN):.3f}, "
            f"Calinski-Harabasz {m.get('calinski_harabasz', NAN):.1f}, Davies-Bouldin "
            f"{m.get('davies_bouldin', NAN):.3f}; {int(m['customers_modelled']):,} customers"
        )
        if "stability_mean_ari" in m:
            unstable = list(self.unstable_segments)
            lines.append(
                f"stability: mean adjusted Rand {m['stability_mean_ari']:.3f} over {self.bootstraps} bootstraps; "
                + (f"unstable segments {unstable}" if unstable else "no unstable segment")
            )
        if "truth_adjusted_rand_index" in m:
            lines.append(
                f"vs known labels: adjusted Rand {m['truth_adjusted_rand_index']:.3f}, "
                f"V-measure {m['truth_v_measure']:.3f}"
            )
        if self.segment_summary:
            columns = list(self.segment_summary[0])
            lines.append("segments:")
            lines.append("  " + "  ".join(f"{c:>15}" for c in columns))
            lines += ["  " + "  ".join(f"{row[c]:>15}" for c in columns) for row in self.segment_summary]
        return lines


def run(ctx: RunContext) -> SegmentStageResult:
    """Segment the customers of the run's as-of date and publish their segments.

    Raises:
        StageInputError: The features of the as-of date are missing.
        ModelInputError, PreparationError, FitTimeoutError: The data cannot support the model.
        DegenerateSegmentationError: The fitted segmentation is degenerate (nothing is written then).
    """
    as_of = ctx.as_of_date("segment")
    stored = features_of(ctx, as_of)
    model_settings = ctx.settings.model
    model_features = clustering.resolve_features(stored.columns, model_settings)
    data = clustering.model_input(stored).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        seg = selection.segment(ctx.spark, data, model_features, model_settings)
    finally:
        data.unpersist()
    try:
        selection.refuse_degenerate(seg, model_settings)
        tables = _record_selection(ctx, seg, as_of)
        model_uri, model_version = ctx.tracker.log_spark_model(seg.model, model_settings.name, ctx.attempt_id)
        segments = seg.assignments.select(
            "*",
            F.lit(seg.algorithm).alias("algorithm"),
            F.lit(seg.k).alias("k"),
            F.lit(as_of).alias("as_of_date"),
            F.lit(ctx.run_id).alias("run_id"),
            F.lit(model_settings.name).alias("model_name"),
            F.lit(model_version or "unregistered").alias("model_version"),
        )
        ctx.store.replace(Table.SEGMENT_ASSIGNMENTS, segments, where(as_of_date=as_of), partition_by=["as_of_date"])
        tables.append(Table.SEGMENT_ASSIGNMENTS)
    finally:
        seg.release()
    published = (
        ctx.store.read(Table.SEGMENT_ASSIGNMENTS)
        .filter(where(as_of_date=as_of).column())
        .select("customer_id", "segment_id")
        .join(stored.drop("run_id", "as_of_date"), "customer_id")
    )
    summary = _segment_summary(published, seg.preparation.kept)
    customers = stored.count()
    metrics = dict(seg.metrics)
    metrics["customers_not_modelled"] = float(customers - metrics["customers_modelled"])
    metrics.update(_truth_agreement(ctx, published, stored))
    ctx.tracker.log_summary({"segments": summary}, "segment_summary.json", tags={"as_of_date": as_of.isoformat()})
    return SegmentStageResult(
        stage="segment",
        rows_in=customers,
        rows_out=int(metrics["customers_modelled"]),
        tables=tuple(tables),
        as_of_date=as_of,
        metrics=metrics,
        algorithm=seg.algorithm,
        k=seg.k,
        rule=seg.rule,
        reason=seg.reason,
        bootstraps=int(seg.stability.get("bootstraps", 0)),
        unstable_segments=tuple(seg.stability.get("unstable_segments", ())),
        segment_summary=tuple(summary),
        model_uri=model_uri,
        model_version=model_version,
    )


def _record_selection(ctx: RunContext, seg: selection.Segmentation, as_of: date) -> list[Table]:
    """Log the preparation, the candidates (one nested MLflow run each) and stability; write their tables."""
    tracker, this_run = ctx.tracker, where(run_id=ctx.run_id)
    swept = seg.candidates if seg.rule != selection.FIXED_RULE else []
    for candidate in swept:
        params = {"algorithm": candidate.algorithm, "k": candidate.k, "seed": seg.seed}
        with tracker.child(f"{candidate.algorithm} k={candidate.k}", params):
            tracker.log_metrics(candidate.metrics)
            tracker.log_summary({"status": candidate.status, "sizes": candidate.sizes}, "candidate.json")
    tracker.log_summary({"features": seg.preparation.report()}, "preparation.json")
    tracker.log_summary(
        {"rule": seg.rule, "reason": seg.reason, "candidates": [c.record() for c in seg.candidates]},
        "model_selection.json",
        tags={"algorithm": seg.algorithm, "k": str(seg.k)},
    )
    tracker.log_summary(seg.stability, "stability.json")
    ctx.store.replace(Table.MODEL_SELECTION, selection.selection_rows(ctx.spark, seg, ctx.run_id, as_of), this_run)
    tables = [Table.MODEL_SELECTION]
    if seg.hierarchy is not None:
        tracker.log_summary({"nodes": seg.hierarchy}, "segment_hierarchy.json")
        hierarchy = selection.hierarchy_rows(ctx.spark, seg.hierarchy, ctx.run_id, as_of)
        ctx.store.replace(Table.SEGMENT_HIERARCHY, hierarchy, this_run)
        tables.append(Table.SEGMENT_HIERARCHY)
    return tables


def _segment_summary(segments: DataFrame, features: tuple[str, ...]) -> list[dict[str, Any]]:
    """Customers and the mean of each model feature per segment (k rows)."""
    rows = (
        segments.groupBy("segment_id")
        .agg(F.count(F.lit(1)).alias("customers"), *[F.round(F.avg(f), 2).alias(f) for f in features])
        .orderBy("segment_id")
        .collect()
    )
    return [r.asDict() for r in rows]


def _truth_agreement(ctx: RunContext, published: DataFrame, stored: DataFrame) -> dict[str, float]:
    """Agreement with known labels: the demo's planted archetypes, or ``model.validation_label``."""
    settings = ctx.settings
    truth = None
    if synth.is_demo(settings) and not settings.privacy.pseudonymise_customer_id:
        truth = ctx.spark.read.parquet(synth.demo_paths(settings.demo)["truth"])
        truth = truth.select("customer_id", F.col("archetype").alias(TRUTH))
    elif settings.model.validation_label:
        truth = stored.select("customer_id", F.col(settings.model.validation_label).alias(TRUTH))
    if truth is None:
        return {}
    labelled = published.join(truth.filter(F.col(TRUTH).isNotNull()), "customer_id")
    return {f"truth_{name}": value for name, value in label_agreement(labelled, TRUTH, "segment_id").items()}
