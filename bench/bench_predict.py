"""The predict stage's CLV at a million and ten million customers: the compression pass, the fit, the rest.

    .venv/bin/python bench/bench_predict.py [--customers 1000000 10000000] [--time-unit week]

For each size, writes what the features and segment stages would leave for that many customers
over a year (``customer_daily``: each customer buys on 1 to 12 distinct days drawn from a hash,
values from a hash; ``customer_features`` and ``segment_assignments`` with k = 6), then runs the
predict stage with churn off (``predict.churn.enabled=false``) in one embedded Spark session
(``local[*]``) and records, from the stage's own metrics: the compression pass (purchase days to
one (x, t_x, T) summary per customer, cached), the fit (distinct summaries to the driver, BG/NBD
and Gamma-Gamma), the distinct summaries, and the whole stage (scoring and the four writes
included). The fit's time should not grow with the customers beyond the compression pass.
Churn is measured by ``bench_churn.py`` on a generated log (its point-in-time rows need the full daily schema).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from pyspark.sql import SparkSession
from pyspark.sql import functions as F
from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import Settings, load_config
from seg_spark.pipeline import run_pipeline
from seg_spark.session import get_spark
from seg_spark.tables import Table, TableStore, where

AS_OF = date(2026, 1, 1)
DAYS = 365
MAX_PURCHASE_DAYS = 12
K = 6


def _settings(root: Path, time_unit: str) -> Settings:
    return load_config(
        [],
        [
            f"storage.root={root}/warehouse",
            "tracking.enabled=false",
            "run.run_id=bench",
            f"features.as_of_date={AS_OF}",
            "predict.churn.enabled=false",
            f"predict.clv.time_unit={time_unit}",
        ],
    )


def _warehouse(spark: SparkSession, store: TableStore, customers: int) -> int:
    """Write the daily purchases, features and assignments of ``customers`` customers; return the daily rows."""
    ids = spark.range(customers).select(
        F.format_string("C%09d", "id").alias("customer_id"),
        (1 + F.abs(F.xxhash64("id", F.lit("n"))) % MAX_PURCHASE_DAYS).alias("purchase_days"),
        (F.col("id") % K).cast("int").alias("segment_id"),
    )
    offsets = F.sequence(F.lit(1), F.col("purchase_days"))
    days = ids.select("customer_id", F.explode(offsets).alias("n")).select(
        "customer_id",
        F.date_sub(F.lit(AS_OF), (1 + F.abs(F.xxhash64("customer_id", "n")) % DAYS).cast("int")).alias("day"),
        F.lit(1).alias("purchase_orders"),
        (5 + F.abs(F.xxhash64("customer_id", "n", F.lit("v"))) % 20_000 / 100).cast("decimal(18,2)").alias("gross"),
    )
    daily = days.dropDuplicates(["customer_id", "day"]).withColumn("month", F.trunc("day", "month"))
    store.overwrite(Table.CUSTOMER_DAILY, daily, partition_by=["month"])
    frequency = store.read(Table.CUSTOMER_DAILY).groupBy("customer_id").agg(F.count(F.lit(1)).alias("frequency"))
    lineage = [F.lit(AS_OF).alias("as_of_date"), F.lit("bench").alias("run_id")]
    store.replace(Table.CUSTOMER_FEATURES, frequency.select("*", *lineage), where(as_of_date=AS_OF))
    store.replace(Table.SEGMENT_ASSIGNMENTS, ids.select("customer_id", "segment_id", *lineage), where(as_of_date=AS_OF))
    return store.read(Table.CUSTOMER_DAILY).count()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--time-unit", choices=("day", "week"), default="week")
    args = parser.parse_args()
    for customers in args.customers:
        root = Path(tempfile.mkdtemp(prefix="seg-spark-bench-predict-"))
        settings = _settings(root, args.time_unit)
        spark = get_spark(settings.spark)
        try:
            started = time.monotonic()
            daily_rows = _warehouse(spark, TableStore(spark, settings), customers)
            written = time.monotonic() - started
            started = time.monotonic()
            result = run_pipeline(spark, settings, ["predict"]).stages["predict"]
            stage = time.monotonic() - started
            m = result.metrics
            record(
                "predict",
                {
                    "customers": customers,
                    "daily_rows": daily_rows,
                    "time_unit": args.time_unit,
                    "distinct_summaries": int(m["clv_distinct_summaries"]),
                    "compression_seconds": round(m["clv_summaries_seconds"], 1),
                    "fit_seconds": round(m["clv_fit_seconds"], 1),
                    "stage_seconds": round(stage, 1),
                    "fit_share": round(m["clv_fit_seconds"] / stage, 3),
                    "setup_seconds": round(written, 1),
                    "bgnbd": {k: round(v, 4) for k, v in result.clv.bgnbd.params.items()},
                },
            )
        finally:
            spark.stop()
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
