"""Pure transformations behind the consumer tables: stable ids, migration, and the MERGE sources.

Each function takes and returns DataFrames (or builds a MERGE source); the stage writes.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from datetime import date
from itertools import chain
from typing import Any

from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F
from pyspark.sql.window import Window

# What a row of the membership-history MERGE source asks for.
OPEN, KEEP_OPEN, CLOSE = "open", "keep_open", "close"


def _lookup(mapping: Mapping[int, Any], column: str, type_: str = "int") -> Column:
    """``mapping[column]`` as a Spark expression (null for a key it lacks)."""
    pairs = list(chain.from_iterable((F.lit(k), F.lit(v)) for k, v in sorted(mapping.items())))
    return F.element_at(F.create_map(*pairs), F.col(column)) if pairs else F.lit(None).cast(type_)


def with_stable_ids(
    ids: Mapping[int, int], version: Sequence[Column], names: Mapping[int, str] | None = None
) -> Callable[[DataFrame], DataFrame]:
    """Segment assignments -> ``customer_segments`` rows: stable ids, the model's own index, version columns.

    Args:
        ids: Model segment id -> published (stable) segment id.
        version: Literal columns ``run_id``, ``as_of_date``, ``model_name``, ``model_version``, ``k``, ``config_hash``.
        names: Model segment id -> name (the explain stage's), when known.
    """

    def transform(assignments: DataFrame) -> DataFrame:
        return assignments.select(
            "customer_id",
            _lookup(ids, "segment_id").cast("int").alias("segment_id"),
            _lookup(names or {}, "segment_id", "string").cast("string").alias("segment_name"),
            F.col("segment_id").cast("int").alias("model_segment_id"),
            "segment_distance",
            "segment_probability",
            _lookup(ids, "runner_up_segment_id").cast("int").alias("runner_up_segment_id"),
            "runner_up_distance",
            "runner_up_probability",
            "membership",
            "algorithm",
            *version,
        )

    return transform


def migration(previous: DataFrame | None, current: DataFrame) -> DataFrame:
    """Customers per (from segment, to segment) between two snapshots of (customer_id, segment_id).

    A customer only in ``current`` comes from null; one only in ``previous`` goes to null.
    ``share_of_from`` is the move's share of its from group (new customers form one group).
    """
    now = current.select("customer_id", F.col("segment_id").alias("to_segment_id"))
    if previous is None:
        moves = now.select(F.lit(None).cast("int").alias("from_segment_id"), "to_segment_id")
    else:
        before = previous.select("customer_id", F.col("segment_id").alias("from_segment_id"))
        moves = before.join(now, "customer_id", "full_outer").select("from_segment_id", "to_segment_id")
    counted = moves.groupBy("from_segment_id", "to_segment_id").agg(F.count(F.lit(1)).alias("customers"))
    from_group = Window.partitionBy("from_segment_id")
    return counted.withColumn("share_of_from", F.col("customers") / F.sum("customers").over(from_group))


def membership_source(history: DataFrame, snapshot: DataFrame, as_of: date, run_id: str) -> DataFrame:
    """The MERGE source that brings ``segment_membership_history`` to ``snapshot`` at ``as_of``.

    The memberships open just before ``as_of`` (open, or closed at ``as_of`` by an earlier
    attempt of the same date) are compared with the snapshot, customer by customer:
    the same segment keeps its row open; a different segment, or none, closes it at
    ``as_of``; a segment the customer was not in opens a row from ``as_of``. Rows are keyed
    by (customer_id, valid_from), so an earlier attempt's rows of ``as_of`` are updated in place.

    Args:
        history: The membership history (empty before the first publish).
        snapshot: (customer_id, segment_id, segment_name) at ``as_of``.
        as_of: The as-of date being published (no later date may be published yet).
        run_id: The run publishing.

    Returns:
        Rows (customer_id, valid_from, segment_id, segment_name, valid_to, is_current, run_id, action)
        with action ``open``, ``keep_open`` or ``close``.
    """
    new = snapshot.select("customer_id", F.col("segment_id").alias("new_segment"), "segment_name")
    open_before = history.filter(
        (F.col("valid_from") < F.lit(as_of)) & (F.col("valid_to").isNull() | (F.col("valid_to") >= F.lit(as_of)))
    ).select("customer_id", F.col("segment_id").alias("old_segment"), F.col("valid_from").alias("old_from"))
    both = open_before.join(new, "customer_id", "full_outer")
    stays = F.col("old_segment") == F.col("new_segment")
    existing = both.filter(F.col("old_from").isNotNull()).select(
        "customer_id",
        F.col("old_from").alias("valid_from"),
        F.col("old_segment").alias("segment_id"),
        F.lit(None).cast("string").alias("segment_name"),
        F.when(stays, F.lit(None).cast("date")).otherwise(F.lit(as_of)).alias("valid_to"),
        F.coalesce(stays, F.lit(False)).alias("is_current"),
        F.lit(run_id).alias("run_id"),
        F.when(stays, F.lit(KEEP_OPEN)).otherwise(F.lit(CLOSE)).alias("action"),
    )
    opened = both.filter(F.col("new_segment").isNotNull() & ~F.coalesce(stays, F.lit(False))).select(
        "customer_id",
        F.lit(as_of).alias("valid_from"),
        F.col("new_segment").alias("segment_id"),
        "segment_name",
        F.lit(None).cast("date").alias("valid_to"),
        F.lit(True).alias("is_current"),
        F.lit(run_id).alias("run_id"),
        F.lit(OPEN).alias("action"),
    )
    return existing.unionByName(opened)
