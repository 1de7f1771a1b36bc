"""The daily per-customer aggregate alone, in a warm session, on a warehouse's clean lines.

    .venv/bin/python bench/bench_daily.py [--warehouse seg-spark-local/warehouse] [--repeats 3]

Aggregates ``transactions_clean`` with ``daily_aggregates`` into Spark's no-op sink (so the
write is not timed) once to warm up, then ``--repeats`` times, and records each time with the
commit of the code measured. For a before/after, put a worktree of the earlier commit first on
``PYTHONPATH`` and run it on the same warehouse.
The warehouse of ``make run`` holds the demo's lines; ``bench/README.md`` shows how to ingest
the harness's 1M log into one.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from record import record  # bench/record.py: the script's folder is on sys.path

import seg_spark
from seg_spark.config import SparkSettings
from seg_spark.features.daily import INPUT_COLUMNS, daily_aggregates
from seg_spark.session import get_spark

# The commit of the seg_spark measured: for a before/after, PYTHONPATH may point at another worktree.
CODE = Path(seg_spark.__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--warehouse", type=Path, default=Path("seg-spark-local/warehouse"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    spark = get_spark(SparkSettings())
    lines = spark.read.format("delta").load(str(args.warehouse / "transactions_clean")).select(*INPUT_COLUMNS)
    rows = lines.count()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=CODE, capture_output=True, text=True)

    def aggregate() -> float:
        started = time.monotonic()
        daily_aggregates(lines).write.format("noop").mode("overwrite").save()
        return time.monotonic() - started

    aggregate()  # compiles the plan's code and warms the JVM
    for repeat in range(args.repeats):
        record(
            "daily",
            {"commit": commit.stdout.strip(), "rows": rows, "run": repeat + 1, "seconds": round(aggregate(), 2)},
        )


if __name__ == "__main__":
    main()
