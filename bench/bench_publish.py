"""The publish stage at a million customers, and its MERGE into segments_current against a full overwrite.

    .venv/bin/python bench/bench_publish.py [--customers 1000000] [--change 0.05]

Writes what a segment stage would leave for ``--customers`` customers on two dates a week apart
(k = 6; on the second date the model numbers its segments differently and a share ``--change``
of the customers move to another segment), then, in one embedded Spark session (``local[*]``):

1. publishes the first date (the consumer tables are created; every customer is inserted);
2. publishes the second date (stable ids matched, history and current view MERGEd);
3. overwrites a copy of ``segments_current`` as the first publish left it with the rows the
   second publish's MERGE left (read once into memory first, so the overwrite's time is a lower
   bound: only the write), the alternative to the MERGE;
4. counts the rows each of the two commits put in the table's change data feed.

The MERGE's time is Delta's own ``executionTimeMs`` of that commit. Target (issue 12): the
MERGE at most half the overwrite's time.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import Settings, load_config
from seg_spark.context import RunContext
from seg_spark.pipeline import run_pipeline
from seg_spark.session import get_spark
from seg_spark.tables import Table, where

K = 6
DAY1 = date(2026, 3, 1)
DAY2 = DAY1 + timedelta(days=7)


def _settings(root: Path, run_id: str, as_of: date) -> Settings:
    return load_config(
        [],
        [
            f"storage.root={root}/warehouse",
            "tracking.enabled=false",
            f"run.run_id={run_id}",
            f"features.as_of_date={as_of}",
        ],
    )


def _assignments(spark: SparkSession, customers: int, as_of: date, run_id: str, change: float) -> DataFrame:
    """Customer i is in group i % K; on the second date a share ``change`` moves to the next group, and
    the model numbers group g as (g + 2) % K."""
    group = F.col("id") % K
    if change:
        moved = F.abs(F.xxhash64("id")) % 10_000 < int(change * 10_000)
        group = F.when(moved, (group + 1) % K).otherwise(group)
        group = (group + 2) % K
    return spark.range(customers).select(
        F.format_string("C%08d", "id").alias("customer_id"),
        group.cast("int").alias("segment_id"),
        F.rand(7).alias("segment_distance"),
        F.lit(None).cast("double").alias("segment_probability"),
        ((group + 1) % K).cast("int").alias("runner_up_segment_id"),
        (F.rand(8) + 1).alias("runner_up_distance"),
        F.lit(None).cast("double").alias("runner_up_probability"),
        F.lit(None).cast("array<double>").alias("membership"),
        F.lit("kmeans").alias("algorithm"),
        F.lit(K).alias("k"),
        F.lit(as_of).alias("as_of_date"),
        F.lit(run_id).alias("run_id"),
        F.lit("bench-model").alias("model_name"),
        F.lit("1").alias("model_version"),
    )


def _segmented(spark: SparkSession, root: Path, run_id: str, as_of: date, customers: int, change: float) -> None:
    """Leave what a segment stage of ``run_id`` leaves: assignments, features and its manifest row."""
    settings = _settings(root, run_id, as_of)
    ctx = RunContext.create(spark, settings)
    record_ = ctx.manifest.started(run_id, "segment", None, ctx.attempt_id)
    assignments = _assignments(spark, customers, as_of, run_id, change)
    ctx.store.replace(Table.SEGMENT_ASSIGNMENTS, assignments, where(as_of_date=as_of), partition_by=["as_of_date"])
    features = spark.range(customers).select(
        F.format_string("C%08d", "id").alias("customer_id"),
        F.lit(as_of).alias("as_of_date"),
        *[(F.rand(i) * 100).alias(name) for i, name in enumerate(settings.model.features)],
    )
    ctx.store.replace(Table.CUSTOMER_FEATURES, features, where(as_of_date=as_of), partition_by=["as_of_date"])
    ctx.manifest.finished(record_, as_of_date=as_of, rows_in=customers, rows_out=customers)


def _publish(spark: SparkSession, root: Path, run_id: str, as_of: date) -> float:
    started = time.monotonic()
    run_pipeline(spark, _settings(root, run_id, as_of), ["publish"])
    return round(time.monotonic() - started, 1)


def _merge_commit(spark: SparkSession, path: str) -> dict[str, int]:
    """The operation metrics of the table's last MERGE."""
    from delta.tables import DeltaTable

    row = DeltaTable.forPath(spark, path).history().filter("operation = 'MERGE'").orderBy(F.desc("version")).first()
    assert row is not None, f"no MERGE in {path}"
    return {k: int(v) for k, v in row["operationMetrics"].items()}


def _change_rows(spark: SparkSession, path: str) -> int:
    """Rows the table's last commit recorded in its change data feed (what a change-feed reader gets)."""
    from delta.tables import DeltaTable

    version = DeltaTable.forPath(spark, path).history(1).first()["version"]
    return (
        spark.read.format("delta")
        .option("readChangeFeed", "true")
        .option("startingVersion", version)
        .load(path)
        .count()
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--change", type=float, default=0.05, help="share of customers moving on the second date")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seg-spark-bench-publish-"))
    spark = get_spark(_settings(root, "b1", DAY1).spark)
    current, copy = f"{root}/warehouse/segments_current", root / "current_after_first"
    try:
        _segmented(spark, root, "b1", DAY1, args.customers, 0.0)
        first = _publish(spark, root, "b1", DAY1)
        shutil.copytree(current, copy)
        _segmented(spark, root, "b2", DAY2, args.customers, args.change)
        second = _publish(spark, root, "b2", DAY2)
        merge = _merge_commit(spark, current)
        final = spark.read.format("delta").load(current).cache()
        final.count()
        started = time.monotonic()
        final.write.format("delta").mode("overwrite").save(str(copy))
        overwrite = round(time.monotonic() - started, 1)
        final.unpersist()
        feed = {name: _change_rows(spark, path) for name, path in (("merge", current), ("overwrite", str(copy)))}
        merge_seconds = round(merge["executionTimeMs"] / 1000, 1)
        record(
            "publish",
            {
                "customers": args.customers,
                "change": args.change,
                "publish_first_date_seconds": first,
                "publish_second_date_seconds": second,
                "current_merge_seconds": merge_seconds,
                "current_merge_rows_updated": merge["numTargetRowsUpdated"],
                "current_merge_rows_inserted": merge["numTargetRowsInserted"],
                "current_overwrite_seconds": overwrite,
                "merge_over_overwrite": round(merge_seconds / overwrite, 2),
                "change_feed_rows_merge": feed["merge"],
                "change_feed_rows_overwrite": feed["overwrite"],
            },
        )
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
