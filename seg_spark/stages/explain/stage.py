"""Explain: profiles, names, drivers and the HTML report of the run's segments.

Reads the run's ``segment_assignments``, the as-of partition of ``customer_features`` and, when
the predict stage ran, ``segment_scores``; writes the run's rows of ``segment_profiles`` (one
per segment: profile, name, description, surrogate rules) and the report
(``<storage.root>/reports/<run_id>/report.html``, also logged to MLflow). The publish stage
carries the names into the consumer tables.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from datetime import date
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame

from seg_spark.context import RunContext
from seg_spark.models import clustering
from seg_spark.stages import StageResult, assignments_of, features_of, model_of
from seg_spark.stages.explain import drivers, naming, profiles, report
from seg_spark.stages.explain.schema import PROFILES_TABLE
from seg_spark.tables import Table, where

log = logging.getLogger(__name__)

PROFILE_COLUMNS = (
    "model_segment_id int, segment_name string, description string, customers bigint, share double, "
    "revenue_share double, suppressed boolean, features map<string, struct<mean: double, median: double, "
    "p10: double, p90: double, lift: double, std_diff: double>>, top_values map<string, array<struct<value: "
    "string, share: double>>>, rfm_segments map<string, double>, membership map<string, double>, "
    "rules array<struct<rule: string, precision: double, coverage: double>>, mean_clv double, clv_share double, "
    "mean_p_alive double, mean_churn_probability double, surrogate_accuracy double, "
    "surrogate_importances map<string, double>, algorithm string, k int, model_version string, run_id string, "
    "as_of_date date"
)
SCORE_COLUMNS = ("mean_clv", "clv_share", "mean_p_alive", "mean_churn_probability")


@dataclass(frozen=True, kw_only=True)
class ExplainStageResult(StageResult):
    """The segments' names and descriptions, the surrogate's accuracy and where the report is."""

    names: tuple[naming.SegmentName, ...]
    surrogate_accuracy: float | None
    report_path: str | None

    def report(self) -> list[str]:
        """Each segment's name and description, and the report's path."""
        accuracy = "n/a" if self.surrogate_accuracy is None else f"{self.surrogate_accuracy:.1%}"
        lines = [f"explain: {len(self.names)} segments named; surrogate tree accuracy {accuracy}"]
        lines += [f"  {n.segment_id}: {n.name} - {n.description}" for n in self.names]
        if self.report_path:
            lines.append(f"report: {self.report_path}")
        return lines

    def closing(self) -> list[str]:
        """The segment names and the report's path, last in the run's output."""
        if not self.report_path:
            return []
        return ["Segments:", *[f"  {n.segment_id}: {n.name}" for n in self.names], f"Report: {self.report_path}"]


def run(ctx: RunContext) -> ExplainStageResult:
    """Profile, name and explain the run's segments; write ``segment_profiles`` and the report.

    Raises:
        StageInputError: The run's segments or the features of its as-of date are missing.
    """
    as_of = ctx.as_of_date("explain")
    if not ctx.settings.explain.enabled:
        log.info("explain.enabled is false: no profiles, names or report")
        return ExplainStageResult(
            stage="explain", rows_in=None, rows_out=None, tables=(), as_of_date=as_of,
            names=(), surrogate_accuracy=None, report_path=None,
        )  # fmt: skip
    assignments = assignments_of(ctx, as_of)
    model = model_of(ctx, as_of, assignments)
    features = features_of(ctx, as_of).drop("run_id", "as_of_date")
    labelled = assignments.select("customer_id", "segment_id", "segment_probability").join(features, "customer_id")
    labelled = labelled.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        found, surrogate = _explain(ctx, labelled, features, model["algorithm"])
    finally:
        labelled.unpersist()
    names = naming.name_segments(found, ctx.settings.explain.naming)
    rows = _profile_rows(ctx, as_of, found, names, surrogate, model.asDict(), _segment_scores(ctx, as_of))
    ctx.store.create_table(PROFILES_TABLE)
    ctx.store.replace(Table.SEGMENT_PROFILES, rows, where(as_of_date=as_of))
    written = report.build(ctx.store, ctx.settings, ctx.run_id)
    for name, figure in written.figures.items():
        ctx.tracker.log_figure(figure, f"explain/{name}.png")
    ctx.tracker.log_artifact(written.path, "explain")
    metrics = {"segments_suppressed": float(sum(p.suppressed for p in found))}
    if surrogate.accuracy is not None:
        metrics["surrogate_accuracy"] = surrogate.accuracy
    return ExplainStageResult(
        stage="explain",
        rows_in=sum(p.customers for p in found),
        rows_out=len(found),
        tables=(Table.SEGMENT_PROFILES,),
        as_of_date=as_of,
        metrics=metrics,
        names=tuple(names),
        surrogate_accuracy=surrogate.accuracy,
        report_path=str(written.path),
    )


def _explain(
    ctx: RunContext, labelled: DataFrame, features: DataFrame, algorithm: str
) -> tuple[list[profiles.SegmentProfile], drivers.Surrogate]:
    """Profiles (one aggregation, label counts, mixture memberships) and the surrogate tree."""
    settings = ctx.settings.explain
    columns = profiles.Columns.of(features)
    stats = profiles.statistics(labelled, columns, settings.quantile_accuracy)
    labels = profiles.label_counts(labelled, columns.labels)
    membership = (
        profiles.membership_quantiles(labelled, settings.quantile_accuracy) if algorithm == "gaussian_mixture" else {}
    )
    found = profiles.build_profiles(
        stats,
        columns,
        labels,
        membership,
        min_customers=settings.min_profile_customers,
        top_values=settings.top_values,
    )
    model_features = clustering.resolve_features(features.columns, ctx.settings.model)
    base = stats[None]
    medians = {f: q[1] for f in model_features if (q := base.get(f"quantiles:{f}")) and q[1] is not None}
    surrogate = drivers.surrogate(
        labelled,
        model_features,
        medians,
        max_depth=settings.surrogate_max_depth,
        max_rows=settings.surrogate_sample_rows,
        rules_per_segment=settings.rules_per_segment,
        seed=ctx.settings.model.seed,
    )
    return found, surrogate


def _segment_scores(ctx: RunContext, as_of: date) -> dict[int, dict[str, Any]]:
    """The predict stage's per-segment summaries of this run (none when it did not run)."""
    if not ctx.store.exists(Table.SEGMENT_SCORES):
        return {}
    rows = ctx.store.read(Table.SEGMENT_SCORES).filter(where(as_of_date=as_of, run_id=ctx.run_id).column())
    return {int(r["model_segment_id"]): r.asDict() for r in rows.select("model_segment_id", *SCORE_COLUMNS).collect()}


def _profile_rows(
    ctx: RunContext,
    as_of: date,
    found: list[profiles.SegmentProfile],
    names: list[naming.SegmentName],
    surrogate: drivers.Surrogate,
    model: dict[str, Any],
    scores: dict[int, dict[str, Any]],
) -> DataFrame:
    """One ``segment_profiles`` row per segment; a suppressed one keeps counts, name and description only."""
    by_id = {n.segment_id: n for n in names}
    rows = []
    for p in found:
        shown = not p.suppressed
        score = scores.get(p.segment_id, {}) if shown else {}
        rules = [(r.text(), r.precision, r.coverage) for r in surrogate.rules.get(p.segment_id, [])]
        rows.append(
            (
                p.segment_id, by_id[p.segment_id].name, by_id[p.segment_id].description, p.customers, p.share,
                p.revenue_share, p.suppressed,
                {n: asdict(f) for n, f in p.features.items()} if shown else None,
                p.top if shown else None,
                p.rfm_segments if shown else None,
                p.membership or None if shown else None,
                rules if shown else None,
                *(score.get(c) for c in SCORE_COLUMNS),
                surrogate.accuracy, surrogate.importances,
                model["algorithm"], int(model["k"]), model["model_version"], ctx.run_id, as_of,
            )
        )  # fmt: skip
    return ctx.spark.createDataFrame(rows, PROFILE_COLUMNS)
