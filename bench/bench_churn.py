"""The predict stage with churn at a million customers, on a generated log: what churn adds to CLV.

    .venv/bin/python bench/bench_churn.py [--customers 1000000] [--days 120] [--workdir DIR]

Generates a demo log of ``--customers`` customers over ``--days`` days ending 2026-01-01 (cached in
``--workdir``), runs ingest, features and segment on it (one K-Means fit, k = 6; not timed), then
the predict stage twice in one embedded Spark session (``local[*]``): CLV only, then CLV and
churn. Churn has a 30-day horizon, so its training rows are every customer's point-in-time
features 60 days before the as-of date and its evaluation rows those of 30 days before (at most
``predict.churn.max_training_rows`` training rows, 500,000 by default), and it fits both
candidates (logistic regression, gradient-boosted trees). Records both stage times, their
difference (what churn costs), the rows and the out-of-time AUCs of the chosen model.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from datetime import date
from pathlib import Path

from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark.config import Settings, load_config
from seg_spark.pipeline import run_pipeline
from seg_spark.session import get_spark

END = date(2026, 1, 1)


def _settings(workdir: Path, root: Path, customers: int, days: int, *overrides: str) -> Settings:
    return load_config(
        [],
        [
            f"storage.root={root}/warehouse",
            "tracking.enabled=false",
            "run.run_id=bench",
            f"demo.out={workdir}/log-{customers}c-{days}d",
            f"demo.generator.customers={customers}",
            f"demo.generator.days={days}",
            f"demo.generator.end_date={END}",
            "spark.driver_memory=12g",
            "model.selection.enabled=false",
            "model.k=6",
            "model.stability.bootstraps=0",
            "model.kmeans_restarts=1",
            "predict.churn.horizon_days=30",
            "predict.churn.training_dates=1",
            "explain.enabled=false",
            *overrides,
        ],
    )


def _timed_predict(spark, settings: Settings) -> tuple[float, object]:
    started = time.monotonic()
    result = run_pipeline(spark, settings, ["predict"]).stages["predict"]
    return round(time.monotonic() - started, 1), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=120)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "seg-spark-bench-churn")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seg-spark-bench-churn-"))
    base = _settings(args.workdir, root, args.customers, args.days)
    spark = get_spark(base.spark)
    try:
        started = time.monotonic()
        upstream = run_pipeline(spark, base, ["ingest", "features", "segment"])
        setup = round(time.monotonic() - started, 1)
        clv_only, _ = _timed_predict(
            spark, _settings(args.workdir, root, args.customers, args.days, "predict.churn.enabled=false")
        )
        with_churn, result = _timed_predict(spark, base)
        chosen = result.churn.chosen
        record(
            "churn",
            {
                "customers": args.customers,
                "days": args.days,
                "lines": upstream.stages["ingest"].counts.input_rows,
                "scored": result.rows_out,
                "training_rows": result.churn.training_rows,
                "evaluation_rows": result.churn.evaluation_rows,
                "predict_clv_only_seconds": clv_only,
                "predict_clv_and_churn_seconds": with_churn,
                "churn_seconds": round(with_churn - clv_only, 1),
                "chosen": chosen.model,
                "auc_roc": round(chosen.auc_roc, 3),
                "auc_pr": round(chosen.auc_pr, 3),
                "setup_seconds": setup,
            },
        )
    finally:
        spark.stop()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
