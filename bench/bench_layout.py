"""How the partition layout of transactions_clean costs at write time (run `make run` first).

    .venv/bin/python bench/bench_layout.py [--warehouse seg-spark-local/warehouse] [--repeats 2]

Writes the demo's clean lines (133k) five ways and prints seconds and Parquet files:
by day (the old layout), by day with optimized writes, by month, by month with optimized
writes (the layout seg-spark uses now), and unpartitioned.
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


def _timed_write(df: DataFrame, target: Path, partition: str | None, optimize: bool) -> tuple[float, int]:
    shutil.rmtree(target, ignore_errors=True)
    writer = df.write.format("delta").option("optimizeWrite", str(optimize).lower())
    if partition:
        writer = writer.partitionBy(partition)
    started = time.monotonic()
    writer.save(str(target))
    return time.monotonic() - started, len(list(target.rglob("*.parquet")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", default="seg-spark-local/warehouse")
    parser.add_argument("--repeats", type=int, default=2)
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
    layouts = [("day", "tx_date", False), ("day, optimized writes", "tx_date", True), ("month", "tx_month", False),
               ("month, optimized writes", "tx_month", True), ("unpartitioned", None, False)]  # fmt: skip
    for repeat in range(args.repeats):
        for name, column, optimize in layouts:
            seconds, files = _timed_write(dated, target, column, optimize)
            record("layout", {"layout": name, "rows": rows, "run": repeat + 1, "seconds": round(seconds, 2),
                              "files": files})  # fmt: skip
    shutil.rmtree(target.parent, ignore_errors=True)


if __name__ == "__main__":
    main()
