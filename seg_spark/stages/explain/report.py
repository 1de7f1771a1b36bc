"""The run's HTML report: one self-contained file (plots embedded as PNG), built from Delta tables alone.

The explain stage writes it at the end of a run; ``seg-spark report`` rebuilds it for any past
run without refitting anything. Every plot is drawn from small summaries (k rows, the model
selection, the split tree, a k x k' migration) or from a bounded sample (the projection).
"""

from __future__ import annotations

import base64
import html
import io
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark import plots
from seg_spark.config import Settings
from seg_spark.errors import StageInputError
from seg_spark.models import clustering
from seg_spark.preflight import local_folder
from seg_spark.tables import Table, TableStore, where

HEATMAP_FEATURES = 24  # the most distinctive features shown in the heatmap and parallel view


@dataclass(frozen=True)
class Report:
    """A written report: where, its figures (for MLflow) and the run's segment names."""

    path: Path
    run_id: str
    as_of_date: date
    figures: dict[str, Figure]
    names: dict[int, str]


def report_path(settings: Settings, run_id: str) -> Path:
    """``<storage.root>/<explain.report_folder>/<run_id>/report.html`` for a local root.

    A remote root (s3a://, abfss://, dbfs:) is not a file system Python writes to: the report
    goes to a temporary folder then, and reaches readers through MLflow.
    """
    folder = local_folder(settings.storage_path(settings.explain.report_folder))
    if folder is None:
        folder = Path(tempfile.mkdtemp(prefix="seg-spark-report-"))
    return folder.resolve() / run_id / "report.html"


def latest_run(store: TableStore) -> str:
    """The run of the latest as-of date in ``segment_profiles`` (the last written among equals)."""
    profiles = store.require(Table.SEGMENT_PROFILES, "explain")
    row = profiles.select("run_id", "as_of_date").orderBy(F.col("as_of_date").desc()).first()
    if row is None:
        raise StageInputError(f"{store.name(Table.SEGMENT_PROFILES)} is empty: run the explain stage first")
    return str(row["run_id"])


def build(store: TableStore, settings: Settings, run_id: str | None = None) -> Report:
    """Draw the plots and write the report of ``run_id`` (the latest run when None).

    Raises:
        StageInputError: The run has no profiles (the message names the stage to run).
    """
    run_id = run_id or latest_run(store)
    profiles = [
        r.asDict(recursive=True)
        for r in store.require(Table.SEGMENT_PROFILES, "explain").filter(where(run_id=run_id).column()).collect()
    ]
    if not profiles:
        raise StageInputError(
            f"{store.name(Table.SEGMENT_PROFILES)} has no rows for run {run_id}: run the explain stage for it "
            f"(seg-spark run --stage explain --run-id {run_id})"
        )
    profiles.sort(key=lambda p: p["model_segment_id"])
    as_of = profiles[0]["as_of_date"]
    names = {p["model_segment_id"]: p["segment_name"] for p in profiles}
    selection = _rows(store, Table.MODEL_SELECTION, run_id)
    figures = _figures(store, settings, run_id, as_of, profiles, selection)
    document = _html(store, run_id, as_of, profiles, selection, figures)
    path = report_path(settings, run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(document, encoding="utf-8")
    return Report(path=path, run_id=run_id, as_of_date=as_of, figures=figures, names=names)


def _rows(store: TableStore, table: Table, run_id: str) -> list[dict[str, Any]]:
    """A run's rows of a small table (none when the table does not exist)."""
    if not store.exists(table):
        return []
    return [r.asDict(recursive=True) for r in store.read(table).filter(where(run_id=run_id).column()).collect()]


def distinctive_features(profiles: Sequence[Mapping[str, Any]], limit: int) -> list[str]:
    """The features whose segment means differ most from the base (largest mean |z| over the segments)."""
    shown = [p for p in profiles if not p["suppressed"]]
    names = sorted({n for p in shown for n in p["features"]})
    spread = {
        n: np.mean([abs(p["features"][n]["std_diff"] or 0.0) for p in shown if n in p["features"]]) for n in names
    }
    return sorted(names, key=lambda n: (-spread[n], n))[:limit]


def _figures(
    store: TableStore,
    settings: Settings,
    run_id: str,
    as_of: date,
    profiles: list[dict[str, Any]],
    selection: list[dict[str, Any]],
) -> dict[str, Figure]:
    labels = [p["segment_name"] for p in profiles]
    figures: dict[str, Figure] = {}
    if selection:
        figures["model_selection"] = plots.selection_curves(selection)
    figures["sizes_and_value"] = plots.sizes_and_value(
        labels, [p["share"] for p in profiles], [p["revenue_share"] for p in profiles]
    )
    shown = [p for p in profiles if not p["suppressed"]]
    features = distinctive_features(profiles, HEATMAP_FEATURES)
    if shown and features:
        z = [[(p["features"].get(f) or {}).get("std_diff") or 0.0 for f in features] for p in shown]
        shown_labels = [p["segment_name"] for p in shown]
        figures["profile_heatmap"] = plots.profile_heatmap(shown_labels, features, z)
        figures["parallel_profiles"] = plots.parallel_profiles(shown_labels, features, z)
    projected = _projection(store, settings, run_id, as_of, profiles)
    if projected is not None:
        figures["projection"] = projected
    hierarchy = _rows(store, Table.SEGMENT_HIERARCHY, run_id)
    if hierarchy:
        figures["split_tree"] = plots.dendrogram(
            hierarchy, {p["model_segment_id"]: p["segment_name"] for p in profiles}
        )
    migration = _migration(store, run_id, as_of, profiles)
    if migration is not None:
        figures["migration"] = migration
    return figures


def _assignments(store: TableStore, run_id: str, as_of: date) -> DataFrame:
    return store.read(Table.SEGMENT_ASSIGNMENTS).filter(where(run_id=run_id, as_of_date=as_of).column())


def _projection(
    store: TableStore, settings: Settings, run_id: str, as_of: date, profiles: list[dict[str, Any]]
) -> Figure | None:
    """PCA of a sample stratified by segment (at most ``explain.plot_sample_rows`` customers), on the driver."""
    shown = {p["model_segment_id"]: p for p in profiles if not p["suppressed"]}
    if not shown or not store.exists(Table.CUSTOMER_FEATURES):
        return None
    features = store.read(Table.CUSTOMER_FEATURES).filter(where(as_of_date=as_of).column())
    columns = list(clustering.resolve_features(features.columns, settings.model))
    per_segment = settings.explain.plot_sample_rows / len(shown)
    fractions = {s: min(1.0, per_segment / p["customers"]) for s, p in shown.items()}
    sample = (
        _assignments(store, run_id, as_of)
        .select("customer_id", "segment_id")
        .sampleBy("segment_id", fractions, seed=settings.model.seed)
        .join(features.select("customer_id", *[F.col(c).cast("double") for c in columns]), "customer_id")
        .orderBy("customer_id")  # the same sample draws the same picture
        .select("segment_id", *columns)
        .collect()
    )
    if len(sample) < 3 or len(columns) < 2:
        return None
    values = np.asarray([[np.nan if v is None else v for v in r[1:]] for r in sample], dtype=float)
    # A missing value takes its column's median in the sample (0 for a column without any).
    values[:, np.isnan(values).all(axis=0)] = 0.0
    values = np.where(np.isnan(values), np.nanmedian(values, axis=0), values)
    std = values.std(axis=0)
    scaled = (values - values.mean(axis=0)) / np.where(std > 0, std, 1.0)
    _, singular, vt = np.linalg.svd(scaled, full_matrices=False)
    explained = (singular**2 / max(float((singular**2).sum()), 1e-12))[:2]
    points = scaled @ vt[:2].T
    return plots.projection(points, [int(r[0]) for r in sample], {s: p["segment_name"] for s, p in shown.items()},
                            explained)  # fmt: skip


@dataclass(frozen=True)
class Migration:
    """Customers per (earlier stable segment, this run's model segment)."""

    previous_as_of_date: date
    previous_names: dict[int, str | None]  # stable id -> its published name
    counts: dict[tuple[int, int], int]  # (stable id before, model segment now) -> customers


def migration(store: TableStore, run_id: str, as_of: date) -> Migration | None:
    """Moves from the latest published date before ``as_of`` to this run's segments (None: no such date)."""
    if not store.exists(Table.CUSTOMER_SEGMENTS):
        return None
    published = store.read(Table.CUSTOMER_SEGMENTS)
    row = published.filter(F.col("as_of_date") < F.lit(as_of)).agg(F.max("as_of_date")).first()
    if row is None or row[0] is None:
        return None
    before = published.filter(where(as_of_date=row[0]).column()).select(
        "customer_id", F.col("segment_id").alias("old"), F.col("segment_name").alias("old_name")
    )
    now = _assignments(store, run_id, as_of).select("customer_id", F.col("segment_id").alias("new"))
    cells = before.join(now, "customer_id").groupBy("old", "old_name", "new").count().collect()  # k x k' rows
    return Migration(
        previous_as_of_date=row[0],
        previous_names={int(c["old"]): c["old_name"] for c in cells},
        counts={(int(c["old"]), int(c["new"])): int(c["count"]) for c in cells},
    )


def _migration(store: TableStore, run_id: str, as_of: date, profiles: list[dict[str, Any]]) -> Figure | None:
    """The migration matrix: earlier stable segments (rows) to this run's named segments (columns)."""
    moves = migration(store, run_id, as_of)
    if moves is None or not moves.counts:
        return None
    old = sorted(moves.previous_names)
    new = [p["model_segment_id"] for p in profiles]
    matrix = [[moves.counts.get((o, n), 0) for n in new] for o in old]
    rows = [f"{moves.previous_names[o] or 'segment'} [{o}]" for o in old]
    title = f"Customers moving from {moves.previous_as_of_date} (rows) to {as_of}"
    return plots.migration_matrix(rows, [p["segment_name"] for p in profiles], matrix, title)


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _number(value: Any, pattern: str = "{:,.2f}") -> str:
    return "" if value is None else pattern.format(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


TITLES = {
    "model_selection": "Model selection over k",
    "sizes_and_value": "Segment sizes and value",
    "profile_heatmap": "Standardised profiles",
    "parallel_profiles": "Profiles side by side",
    "projection": "Customers in two dimensions (PCA of a stratified sample)",
    "split_tree": "Bisecting split tree",
    "migration": "Migration since the previous published date",
}

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; color: #222; max-width: 1200px; }
table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; font-size: 0.9rem; }
th, td { border: 1px solid #ccc; padding: 0.25rem 0.5rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.5rem 0 1.5rem; }
.muted { color: #666; }
"""


def _segments_section(profiles: list[dict[str, Any]]) -> str:
    rows = []
    for p in profiles:
        rules = "; ".join(
            f"{r['rule']} (precision {r['precision']:.0%}, covers {r['coverage']:.0%})" for r in p["rules"] or []
        )
        tops = "; ".join(
            f"{kind}: " + ", ".join(f"{v['value']} {v['share']:.0%}" for v in values)
            for kind, values in sorted((p["top_values"] or {}).items())
            if values
        )
        rows.append(
            [
                p["model_segment_id"], p["segment_name"], p["description"], f"{p['customers']:,}",
                _number(p["share"], "{:.1%}"), _number(p["revenue_share"], "{:.1%}"),
                _number(p["mean_clv"]), _number(p["mean_p_alive"], "{:.2f}"),
                _number(p["mean_churn_probability"], "{:.2f}"), rules, tops,
            ]
        )  # fmt: skip
    header = ["id", "name", "description", "customers", "share", "revenue", "mean CLV", "P(alive)", "churn",
              "rules (surrogate tree)", "top values"]  # fmt: skip
    return "<h2>Segments</h2>" + _table(header, rows)


def _selection_section(selection: list[dict[str, Any]]) -> str:
    if not selection:
        return ""
    rows = [
        [c["algorithm"], c["k"], c["status"], "yes" if c["chosen"] else "", _number(c["silhouette"], "{:.3f}"),
         _number(c["wssse"]), _number(c["bic"]), _number(c["smallest_segment_share"], "{:.1%}")]
        for c in sorted(selection, key=lambda c: (c["algorithm"], c["k"]))
    ]  # fmt: skip
    chosen = next((c for c in selection if c["chosen"]), None)
    stability = ""
    if chosen is not None and chosen.get("stability_mean_ari") is not None:
        per_segment = ", ".join(f"{s}: {v:.2f}" for s, v in sorted((chosen["stability_jaccard"] or {}).items()))
        stability = (
            f"<p>Stability of the chosen model: mean adjusted Rand index {chosen['stability_mean_ari']:.3f} "
            f"over bootstrap refits; mean Jaccard per segment {per_segment}.</p>"
        )
    header = ["algorithm", "k", "status", "chosen", "silhouette", "WSSSE", "BIC", "smallest segment"]
    return "<h2>Model selection</h2>" + _table(header, rows) + stability


def _drivers_section(profiles: list[dict[str, Any]]) -> str:
    first = profiles[0]
    if first["surrogate_accuracy"] is None:
        return ""
    importances = sorted((first["surrogate_importances"] or {}).items(), key=lambda item: -item[1])
    rows = [[name, f"{value:.3f}"] for name, value in importances if value > 0]
    return (
        "<h2>What separates the segments</h2>"
        f"<p>A decision tree trained on the segment labels reproduces them with a held-out accuracy of "
        f"{first['surrogate_accuracy']:.1%}; its rules are listed per segment above. Feature importances:</p>"
        + _table(["feature", "importance"], rows)
    )


def _quality_section(store: TableStore, run_id: str) -> str:
    rows = _rows(store, Table.DATA_QUALITY, run_id)
    kept = [r for r in rows if r["metric"] in ("input_rows", "clean_rows", "quarantined_rows", "duplicates_removed")]
    kept += [r for r in rows if r["metric"] == "rule" and (r["value"] or 0) > 0]
    if not kept:
        return "<h2>Data quality</h2><p class='muted'>No ingest in this run.</p>"
    table_rows = [[r["source"], r["metric"], r["column"], f"{int(r['value']):,}"] for r in kept]
    return "<h2>Data quality</h2>" + _table(["source", "metric", "rule", "rows"], table_rows)


def _html(
    store: TableStore,
    run_id: str,
    as_of: date,
    profiles: list[dict[str, Any]],
    selection: list[dict[str, Any]],
    figures: Mapping[str, Figure],
) -> str:
    first = profiles[0]
    suppressed = [p for p in profiles if p["suppressed"]]
    note = (
        f"<p class='muted'>{len(suppressed)} segment(s) below the minimum profile size: counts only.</p>"
        if suppressed
        else ""
    )
    images = "".join(
        f"<h2>{html.escape(TITLES.get(name, name))}</h2><img alt='{html.escape(name)}' "
        f"src='data:image/png;base64,{_png(figure)}'>"
        for name, figure in figures.items()
    )
    title = f"seg-spark report: run {html.escape(run_id)}, as of {as_of}"
    summary = (
        f"<p>{first['algorithm']} with k = {first['k']} (model version {html.escape(str(first['model_version']))}); "
        f"{sum(p['customers'] for p in profiles):,} customers segmented.</p>"
    )
    return (
        f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{title}</title>"
        f"<style>{STYLE}</style></head><body><h1>{title}</h1>{summary}"
        + _segments_section(profiles)
        + note
        + _drivers_section(profiles)
        + _selection_section(selection)
        + _quality_section(store, run_id)
        + images
        + "</body></html>"
    )
