"""How the warehouse grows when the demo is run again and again, and what each rerun costs.

    .venv/bin/python bench/bench_reruns.py [--runs 6] [--config conf/local.yaml]

Runs ``seg-spark run`` ``--runs`` times, each as its own process (as ``make run`` would), into
one fresh folder, and records after each run its wall-clock seconds, the size of the Delta
warehouse and of the MLflow store, and the Parquet files of ``transactions_clean``. The
snapshot source is the same each time, so every run after the first should commit nothing to
``transactions_clean`` and leave the daily aggregates unchanged (issue: five reruns within
twice one run's size, with the default retention and no maintenance).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from record import record  # bench/record.py: the script's folder is on sys.path

REPO = Path(__file__).resolve().parents[1]


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--config", default=str(REPO / "conf" / "local.yaml"))
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seg-spark-reruns-"))
    overrides = [f"storage.root={root}/warehouse", f"tracking.tracking_uri={root}/mlruns", f"demo.out={root}/demo"]
    command = [
        str(Path(sys.executable).parent / "seg-spark"),
        "run",
        "--config",
        args.config,
        *[arg for item in overrides for arg in ("--set", item)],
    ]
    runs = []
    for run in range(args.runs):
        started = time.monotonic()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        runs.append(
            {
                "seconds": round(time.monotonic() - started, 1),
                "warehouse_bytes": _size(root / "warehouse"),
                "mlflow_bytes": _size(root / "mlruns"),
                "clean_parquet_files": len(list((root / "warehouse" / "transactions_clean").rglob("*.parquet"))),
            }
        )
        print(f"run {run + 1}/{args.runs}: {runs[-1]}", flush=True)
    growth = round(runs[-1]["warehouse_bytes"] / runs[0]["warehouse_bytes"], 2)
    record("reruns", {"config": args.config, "runs": runs, "last_over_first": growth})


if __name__ == "__main__":
    main()
