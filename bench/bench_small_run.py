"""What a small pipeline run costs in one warm session, with and without given Spark settings.

    .venv/bin/python bench/bench_small_run.py [--customers 400] [--runs 3] [--conf KEY=VALUE ...]

Runs the whole pipeline ``--runs`` times in one ``local[2]`` session (2 shuffle partitions,
as the test suite's session), each into a fresh warehouse over the same generated demo
(180 days, sweep k = 5..7, two stability bootstraps), and records each run's seconds and the
last run's Delta commits by table (read from each table's ``_delta_log``; every run makes the
same). The first run pays the JVM's warm-up; the later ones are what each further run of a test
suite or of a long-lived driver costs. Small runs are dominated by per-query and per-commit
cost, not by data, so this measures the engine's fixed costs.
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from pathlib import Path

from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import SparkSettings, load_config
from seg_spark.pipeline import run_pipeline
from seg_spark.session import get_spark

COMMIT_FILE = re.compile(r"\d{20}\.json")


def commits_by_table(warehouse: Path) -> dict[str, int]:
    """Commits each Delta table under ``warehouse`` holds (one JSON file per commit in its log)."""
    counts = {
        log.parent.name: sum(1 for f in log.iterdir() if COMMIT_FILE.fullmatch(f.name))
        for log in warehouse.glob("*/_delta_log")
    }
    return dict(sorted(counts.items()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=400)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--conf", action="append", default=[], help="a Spark setting KEY=VALUE (repeatable)")
    args = parser.parse_args()
    conf = dict(item.split("=", 1) for item in args.conf)
    root = Path(tempfile.mkdtemp(prefix="seg-spark-small-run-"))
    spark = get_spark(
        SparkSettings(
            app_name="bench-small-run",
            master="local[2]",
            shuffle_partitions=2,
            driver_memory="2g",
            log_level="ERROR",
            conf={"spark.sql.warehouse.dir": str(root / "spark-warehouse"), **conf},
        )
    )
    seconds, commits = [], {}
    for run in range(args.runs):
        settings = load_config(
            [],
            [
                f"storage.root={root}/run{run}/warehouse",
                f"tracking.tracking_uri={root}/run{run}/mlruns",
                f"demo.out={root}/demo",
                f"demo.generator.customers={args.customers}",
                "demo.generator.days=180",
                "demo.generator.end_date=2026-01-01",
                "quality.clock=2026-01-01T00:00:00",
                f"run.run_id=bench-{run}",
                "model.selection.k_min=5",
                "model.selection.k_max=7",
                "model.stability.bootstraps=2",
            ],
        )
        started = time.monotonic()
        run_pipeline(spark, settings)
        seconds.append(round(time.monotonic() - started, 1))
        commits = commits_by_table(root / f"run{run}" / "warehouse")
        print(f"run {run + 1}/{args.runs}: {seconds[-1]} s, {sum(commits.values())} Delta commits", flush=True)
    spark.stop()
    record("small_run", {"customers": args.customers, "conf": conf, "seconds": seconds, "commits": commits})


if __name__ == "__main__":
    main()
