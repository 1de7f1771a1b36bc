"""How the partition layout of transactions_clean costs at write time (run `make run` first).

    .venv/bin/python bench/bench_layout.py [--warehouse seg-spark-local/warehouse] [--repeats 2]

Writes the demo's clean lines (133k) six ways and prints seconds and Parquet files:
by day (the old layout), by day with optimized writes, by month, by month with optimized
writes, the same with statistics only on the columns reads filter on (what seg-spark
writes now), and unpartitioned. ``--layouts month`` keeps the layouts whose name holds "month".
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import SparkSettings
from seg_spark.session import get_spark
from seg_spark.stages.ingest.stage import CLEAN_PROPERTIES

STATS_ONLY = {"delta.dataSkippingStatsColumns": CLEAN_PROPERTIES["delta.dataSkippingStatsColumns"]}


def _timed_write(
    df: DataFrame, target: Path, partition: str | None, optimize: bool, properties: dict[str, str]
) -> tuple[float, int]:
    shutil.rmtree(target, ignore_errors=True)
    writer = df.write.format("delta").option("optimizeWrite", str(optimize).lower())
    for key, value in properties.items():
        writer = writer.option(key, value)
    if partition:
        writer = writer.partitionBy(partition)
    started = time.monotonic()
    writer.save(str(target))
    return time.monotonic() - started, len(list(target.rglob("*.parquet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="seg-spark-local/warehouse")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--layouts", default="", help="only the layouts whose name holds this text")
    args = parser.parse_args()
    spark = get_spark(SparkSettings())
    lines = spark.read.format("delta").load(f"{args.warehouse}/transactions_clean").drop("tx_date", "tx_month")
    # Spread the rows over partitions as the ingest's deduplicating shuffle leaves them
    # (the table's own files are already grouped by month).
    lines = lines.repartition(spark.sparkContext.defaultParallelism).localCheckpoint()
    dated = lines.withColumn("tx_date", F.to_date("ts")).withColumn("tx_month", F.trunc("ts", "month"))
    rows = lines.count()
    print(f"{rows:,} lines in {lines.rdd.getNumPartitions()} partitions")
    target = Path(tempfile.mkdtemp(prefix="seg-spark-layout-")) / "t"
    layouts = [("day", "tx_date", False, {}), ("day, optimized writes", "tx_date", True, {}),
               ("month", "tx_month", False, {}), ("month, optimized writes", "tx_month", True, {}),
               ("month, optimized writes, statistics on customer_id, ts, tx_date", "tx_month", True, STATS_ONLY),
               ("unpartitioned", None, False, {})]  # fmt: skip
    layouts = [layout for layout in layouts if args.layouts in layout[0]]
    for repeat in range(args.repeats):
        for name, column, optimize, properties in layouts:
            seconds, files = _timed_write(dated, target, column, optimize, properties)
            record("layout", {"layout": name, "rows": rows, "run": repeat + 1, "seconds": round(seconds, 2),
                              "files": files})  # fmt: skip
    shutil.rmtree(target.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
