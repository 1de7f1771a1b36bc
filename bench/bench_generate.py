"""Time the synthetic log generator at scale and record rows/second.

    .venv/bin/python bench/bench_generate.py --customers 2300000 --out /tmp/seg-bench/gen

Writes a JSON line to bench/results/generate.jsonl.
"""

from __future__ import annotations

import argparse
import shutil
import time
from datetime import date
from pathlib import Path

from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import GeneratorSettings
from seg_spark.session import get_spark
from seg_spark.synth import write_generated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=2_300_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", default="/tmp/seg-bench/gen")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    args = parser.parse_args()

    spark = get_spark()
    settings = GeneratorSettings(customers=args.customers, days=args.days, end_date=date(2026, 1, 1))
    started = time.perf_counter()
    paths = write_generated(spark, settings, args.out)
    seconds = time.perf_counter() - started
    rows = spark.read.parquet(paths["transactions"]).count()
    size = sum(f.stat().st_size for f in Path(paths["transactions"]).rglob("*.parquet"))
    record(
        "generate",
        {
            "customers": args.customers,
            "days": args.days,
            "rows": rows,
            "seconds": round(seconds, 1),
            "rows_per_second": round(rows / seconds),
            "parquet_bytes": size,
        },
    )
    if not args.keep:
        shutil.rmtree(args.out, ignore_errors=True)


if __name__ == "__main__":
    main()
