"""Publish: the run's segments as versioned consumer tables with stable ids, current view and history.

Reads the run's ``segment_assignments`` (written by the segment stage), the names the explain
stage gave its segments (``segment_profiles``, when it ran) and the previous published run;
writes, in this order, each step replacing the as-of date's rows so a rerun never duplicates:

1. ``segments``: every segment with its stable id, size, feature means, and whether it is
   new, continued or vanished (``identity.match_segments``);
2. ``customer_segments``: every customer's stable segment at the as-of date;
3. ``segment_migration``: customers per (from, to) move since the previous published date;
4. ``segment_membership_history``: type-2 history, one MERGE;
5. ``segments_current``: one row per customer, one MERGE that touches only changed customers.

A failure at any step rolls the attempt back with the rest of the run (``seg_spark.recovery``),
so every table is at its previous version or, after a rerun, complete. A date older than the
latest published one (a backfill) gets its rows in the first three tables; the current view
and the history stay at the latest date, since they cannot go back in time.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.context import RunContext
from seg_spark.errors import StageInputError
from seg_spark.models import clustering
from seg_spark.runs import SUCCEEDED
from seg_spark.stages import StageResult, assignments_of, model_of
from seg_spark.stages.publish import history, identity
from seg_spark.stages.publish.schema import CONSUMER_TABLES
from seg_spark.tables import Table, sql_literal, where

log = logging.getLogger(__name__)

SEGMENTS_SCHEMA = (
    "segment_id int, model_segment_id int, status string, matched_from_segment_id int, match_jaccard double, "
    "customers bigint, share double, feature_means map<string, double>, segment_name string, algorithm string"
)


@dataclass(frozen=True, kw_only=True)
class PublishStageResult(StageResult):
    """Stable ids given, and what the MERGEs changed."""

    previous_as_of_date: date | None
    latest_as_of_date: date  # the latest published date: segments_current and the history reflect it
    segments: tuple[identity.SegmentIdentity, ...]
    vanished: tuple[int, ...]
    current_changes: dict[str, int]
    history_changes: dict[str, int]

    def report(self) -> list[str]:
        """The segments' stable ids and what changed since the previous published date."""
        since = f"since {self.previous_as_of_date}" if self.previous_as_of_date else "(no earlier date published)"
        ids = ", ".join(
            f"{s.model_segment_id}->{s.segment_id}" + ("" if s.status == identity.CONTINUED else " new")
            for s in self.segments
        )
        lines = [f"publish: {len(self.segments)} segments {since}: model segment -> stable id {ids}"]
        if self.vanished:
            lines.append(f"         vanished: {', '.join(map(str, self.vanished))}")
        if self.latest_as_of_date != self.as_of_date:
            lines.append(
                f"         a backfill: segments_current and segment_membership_history stay at {self.latest_as_of_date}"
            )
            return lines
        c, h = self.current_changes, self.history_changes
        lines.append(
            f"         segments_current: {c.get('num_inserted_rows', 0):,} inserted, "
            f"{c.get('num_updated_rows', 0):,} updated (moved, returned or inactive); "
            f"history: {h.get('num_inserted_rows', 0):,} memberships opened, {h.get('num_updated_rows', 0):,} changed"
        )
        return lines


def run(ctx: RunContext) -> PublishStageResult:
    """Publish the segments of the run's as-of date to the consumer tables.

    Raises:
        StageInputError: The run's segment stage has not succeeded (its assignments are missing).
    """
    as_of = ctx.as_of_date("publish")
    _require_segmented(ctx)
    assignments = assignments_of(ctx, as_of).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        return _publish(ctx, as_of, assignments)
    finally:
        assignments.unpersist()


def _publish(ctx: RunContext, as_of: date, assignments: DataFrame) -> PublishStageResult:
    store, settings = ctx.store, ctx.settings
    first = model_of(ctx, as_of, assignments)
    for definition in CONSUMER_TABLES:
        store.create_table(definition)
    previous_as_of, latest = _published_around(ctx, as_of)
    previous = None
    if previous_as_of is not None:
        previous = store.read(Table.CUSTOMER_SEGMENTS).filter(where(as_of_date=previous_as_of).column())
    new_sizes = _sizes(assignments)
    matching = identity.match_segments(
        new_sizes,
        _sizes(previous) if previous is not None else {},
        _overlap(assignments, previous),
        min_jaccard=settings.publish.min_match_jaccard,
        next_id=_next_id(ctx, as_of),
    )
    # The version columns every consumer row carries; k is the model's (a segment may have no customer).
    version = [
        F.lit(ctx.run_id).alias("run_id"),
        F.lit(as_of).alias("as_of_date"),
        F.lit(first["model_name"]).alias("model_name"),
        F.lit(first["model_version"]).alias("model_version"),
        F.lit(int(first["k"])).cast("int").alias("k"),
        F.lit(config_hash(ctx)).alias("config_hash"),
    ]
    this_date = where(as_of_date=as_of)
    names = _segment_names(ctx, as_of)
    segments = _segment_rows(ctx, as_of, assignments, matching, new_sizes, first["algorithm"], names)
    store.replace(Table.SEGMENTS, segments.select("*", *version), this_date)
    published = assignments.transform(history.with_stable_ids(matching.ids(), version, names))
    store.replace(Table.CUSTOMER_SEGMENTS, published, this_date, partition_by=["as_of_date"])
    moves = history.migration(previous, published).select(
        F.lit(previous_as_of).cast("date").alias("previous_as_of_date"),
        "from_segment_id",
        "to_segment_id",
        "customers",
        "share_of_from",
        *version,
    )
    store.replace(Table.SEGMENT_MIGRATION, moves, this_date)
    history_changes: dict[str, int] = {}
    current_changes: dict[str, int] = {}
    if latest == as_of:
        history_changes, current_changes = _merge_memberships(ctx, as_of, published, first["model_version"])
    else:
        log.warning("publish %s is a backfill: the current view and the history stay at %s", as_of, latest)
    return PublishStageResult(
        stage="publish",
        rows_in=sum(new_sizes.values()),
        rows_out=sum(new_sizes.values()),
        tables=tuple(d.table for d in CONSUMER_TABLES),
        as_of_date=as_of,
        metrics={
            "segments_new": float(sum(s.status == identity.NEW for s in matching.segments)),
            "segments_continued": float(sum(s.status == identity.CONTINUED for s in matching.segments)),
            "segments_vanished": float(len(matching.vanished)),
            **{f"current_{name}": float(value) for name, value in current_changes.items()},
        },
        previous_as_of_date=previous_as_of,
        latest_as_of_date=latest,
        segments=matching.segments,
        vanished=matching.vanished,
        current_changes=current_changes,
        history_changes=history_changes,
    )


def _require_segmented(ctx: RunContext) -> None:
    """The run's segment stage must have succeeded (its assignments are the input)."""
    segment = [r for r in ctx.manifest.records(ctx.run_id) if r.stage == "segment"]
    if not segment or segment[-1].status != SUCCEEDED:
        state = segment[-1].status if segment else "not run"
        raise StageInputError(
            f"the publish stage needs the segment stage of run {ctx.run_id}, which is {state}: "
            f"run it first (seg-spark run --stage segment --run-id {ctx.run_id})"
        )


def _published_around(ctx: RunContext, as_of: date) -> tuple[date | None, date]:
    """The latest published as-of date before ``as_of`` (None: none), and the latest of all with ``as_of``."""
    published = sorted(r[0] for r in ctx.store.read(Table.SEGMENTS).select("as_of_date").distinct().collect())
    earlier = [d for d in published if d < as_of]
    return (earlier[-1] if earlier else None), max([*published, as_of])


def _next_id(ctx: RunContext, as_of: date) -> int:
    """The smallest segment id no other published date used (a rerun of ``as_of`` gets the same ids)."""
    others = ctx.store.read(Table.SEGMENTS).filter(F.col("as_of_date") != F.lit(as_of))
    row = others.agg(F.max("segment_id")).first()
    return 0 if row is None or row[0] is None else int(row[0]) + 1


def _segment_names(ctx: RunContext, as_of: date) -> dict[int, str]:
    """Model segment id -> the name the explain stage gave it in this run (none when it did not run)."""
    if not ctx.store.exists(Table.SEGMENT_PROFILES):
        return {}
    rows = ctx.store.read(Table.SEGMENT_PROFILES).filter(where(as_of_date=as_of, run_id=ctx.run_id).column())
    return {int(r[0]): str(r[1]) for r in rows.select("model_segment_id", "segment_name").collect()}


def _sizes(frame: DataFrame) -> dict[int, int]:
    """Customers per segment id (k rows reach the driver)."""
    return {int(r[0]): int(r[1]) for r in frame.groupBy("segment_id").count().collect()}


def _overlap(assignments: DataFrame, previous: DataFrame | None) -> list[tuple[int, int, int]]:
    """(model segment, previous stable segment, customers in both): at most k x k' cells."""
    if previous is None:
        return []
    now = assignments.select("customer_id", F.col("segment_id").alias("new"))
    before = previous.select("customer_id", F.col("segment_id").alias("old"))
    cells = now.join(before, "customer_id").groupBy("new", "old").count().collect()
    return [(int(r["new"]), int(r["old"]), int(r["count"])) for r in cells]


def _segment_rows(
    ctx: RunContext,
    as_of: date,
    assignments: DataFrame,
    matching: identity.Matching,
    sizes: dict[int, int],
    algorithm: str,
    names: dict[int, str],
) -> DataFrame:
    """One row per segment of the new model (with feature means) and per vanished id."""
    features = ctx.store.require(Table.CUSTOMER_FEATURES, "features").filter(where(as_of_date=as_of).column())
    modelled = clustering.resolve_features(features.columns, ctx.settings.model)
    means = (
        assignments.select("customer_id", "segment_id")
        .join(features.select("customer_id", *modelled), "customer_id")
        .groupBy("segment_id")
        .agg(*[F.avg(name).alias(name) for name in modelled])
        .collect()
    )
    by_segment = {int(r["segment_id"]): {n: r[n] for n in modelled if r[n] is not None} for r in means}
    total = sum(sizes.values())
    rows: list[tuple[Any, ...]] = [
        (s.segment_id, s.model_segment_id, s.status, s.segment_id if s.status == identity.CONTINUED else None,
         s.jaccard, sizes[s.model_segment_id], sizes[s.model_segment_id] / total,
         by_segment.get(s.model_segment_id, {}), names.get(s.model_segment_id), algorithm)
        for s in matching.segments
    ]  # fmt: skip
    rows += [(v, None, identity.VANISHED, None, None, 0, 0.0, {}, None, algorithm) for v in matching.vanished]
    return ctx.spark.createDataFrame(rows, SEGMENTS_SCHEMA)


def _merge_memberships(
    ctx: RunContext, as_of: date, snapshot: DataFrame, model_version: str
) -> tuple[dict[str, int], dict[str, int]]:
    """MERGE the snapshot into the type-2 history, then into the current view; the rows each MERGE reports."""
    store = ctx.store
    members = snapshot.select("customer_id", "segment_id", "segment_name")
    history_table = store.read(Table.SEGMENT_MEMBERSHIP_HISTORY)
    source = history.membership_source(history_table, members, as_of, ctx.run_id)
    source = source.persist(StorageLevel.MEMORY_AND_DISK)
    try:
        history_changes = store.merge(
            Table.SEGMENT_MEMBERSHIP_HISTORY,
            source,
            "t.customer_id = s.customer_id AND t.valid_from = s.valid_from",
            _history_clauses(as_of),
        )
        current = source.filter(F.col("is_current")).select(
            "customer_id", "segment_id", "segment_name", F.col("valid_from").alias("segment_since")
        )
        changed_by = {
            "changed_as_of_date": sql_literal(as_of),
            "changed_run_id": sql_literal(ctx.run_id),
            "model_version": sql_literal(model_version),
        }
        current_changes = store.merge(
            Table.SEGMENTS_CURRENT, current, "t.customer_id = s.customer_id", _current_clauses(changed_by)
        )
    finally:
        source.unpersist()
    return history_changes, current_changes


def _history_clauses(as_of: date) -> Callable[[Any], Any]:
    """The history MERGE: open or correct the memberships of ``as_of``, close or reopen earlier ones.

    Rows of ``as_of`` that an earlier attempt of the date wrote and this one does not want are deleted.
    """
    opened = f"s.action = '{history.OPEN}'"
    differs = "t.segment_id <> s.segment_id OR t.valid_to IS NOT NULL OR NOT (t.segment_name <=> s.segment_name)"

    def clauses(merge: Any) -> Any:
        return (
            merge.whenMatchedUpdate(
                condition=f"{opened} AND ({differs})",
                set={c: f"s.{c}" for c in ("segment_id", "segment_name", "valid_to", "is_current", "run_id")},
            )
            .whenMatchedUpdate(
                condition=f"NOT {opened} AND NOT (t.valid_to <=> s.valid_to)",
                set={"valid_to": "s.valid_to", "is_current": "s.is_current"},
            )
            .whenNotMatchedInsert(condition=opened, values={c: f"s.{c}" for c in HISTORY_COLUMNS})
            .whenNotMatchedBySourceDelete(condition=f"t.valid_from >= {sql_literal(as_of)}")
        )

    return clauses


def _current_clauses(changed_by: dict[str, str]) -> Callable[[Any], Any]:
    """The current-view MERGE: only customers whose segment, name, start or activity changed are written."""
    membership = ("segment_id", "segment_name", "segment_since")
    differs = (
        "t.segment_id <> s.segment_id OR NOT t.is_active OR t.segment_since <> s.segment_since "
        "OR NOT (t.segment_name <=> s.segment_name)"
    )
    active = {**{c: f"s.{c}" for c in membership}, "is_active": "true", **changed_by}

    def clauses(merge: Any) -> Any:
        return (
            merge.whenMatchedUpdate(condition=differs, set=active)
            .whenNotMatchedInsert(values={"customer_id": "s.customer_id", **active})
            .whenNotMatchedBySourceUpdate(condition="t.is_active", set={"is_active": "false", **changed_by})
        )

    return clauses


HISTORY_COLUMNS = ("customer_id", "segment_id", "segment_name", "valid_from", "valid_to", "is_current", "run_id")


def config_hash(ctx: RunContext) -> str:
    """A short SHA-256 of the feature and model configuration (the as-of date excluded: it is a column)."""
    settings = ctx.settings
    configuration = {
        "features": settings.features.model_dump(mode="json", exclude={"as_of_date"}),
        "model": settings.model.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(configuration, sort_keys=True).encode()).hexdigest()[:16]
