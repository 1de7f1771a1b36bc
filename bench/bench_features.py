"""Full recompute vs one-day incremental refresh of the feature store, on a generated year.

    .venv/bin/python bench/bench_features.py --customers 220000 --out /tmp/seg-bench/features

Generates a year of transactions (reused when already there), cleans them into a
``transactions_clean`` table holding every day but the last, then times:

* full: aggregate every day into ``customer_daily``, build the per-customer running state
  from every daily row, and derive + write the as-of features;
* incremental: after appending the last day, re-aggregate that day only (replacing its
  rows in its month), advance the state by that day (reading only the days entering and leaving the
  windows), and derive + write the as-of features.

Outside the timings, the incremental features are checked to equal a from-scratch derivation.

Appends a JSON line with both times and their ratio to bench/results/features.jsonl.
"""

from __future__ import annotations

import argparse
import logging
import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from delta.tables import DeltaTable
from pyspark.sql import functions as F
from record import record  # bench/record.py: the script's folder is on sys.path

from seg_spark import quality
from seg_spark.config import FeatureSettings, GeneratorSettings, QualitySettings, SourceSettings, load_config
from seg_spark.features import store
from seg_spark.features.behaviour import derive_features, features_from_state, mix_keys
from seg_spark.session import get_spark
from seg_spark.stages.ingest.stage import CHANGE_FEED
from seg_spark.synth import write_generated
from seg_spark.tables import Table, TableStore

END = date(2026, 1, 1)


def timed(label: str, action) -> float:
    """Run ``action`` and return its wall-clock seconds."""
    started = time.perf_counter()
    action()
    seconds = time.perf_counter() - started
    print(f"{label}: {seconds:.1f}s", flush=True)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=220_000)
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--out", default="/tmp/seg-bench/features")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("py4j").setLevel(logging.WARNING)
    out = Path(args.out)
    spark = get_spark()
    tables = TableStore(spark, load_config([], [f"storage.root={out}/warehouse"]))

    generated = out / "generated"
    if not (generated / "transactions").is_dir():
        generator = GeneratorSettings(customers=args.customers, days=args.days, end_date=END)
        write_generated(spark, generator, str(generated))
    staged = str(out / "new_day")
    last_day = END - timedelta(days=1)
    is_last_day = F.col(store.TX_DATE) == F.lit(last_day)
    if not tables.exists(Table.TRANSACTIONS_CLEAN):
        raw = spark.read.parquet(str(generated / "transactions"))
        result = quality.ingest(
            raw, SourceSettings(), QualitySettings(clock=datetime(2026, 1, 1)), "bench", "transactions", None
        )
        tables.overwrite(Table.TRANSACTIONS_CLEAN, store.with_tx_date(result.clean), partition_by=[store.TX_MONTH])
        result.release()
        tables.set_properties(Table.TRANSACTIONS_CLEAN, CHANGE_FEED)  # as the ingest stage does
        # The last day is held back (staged as Parquet) to be appended as the "new day".
        tables.read(Table.TRANSACTIONS_CLEAN).filter(is_last_day).write.mode("overwrite").parquet(staged)
    # A rerun too: put the clean table back to history only.
    DeltaTable.forPath(spark, tables.path(Table.TRANSACTIONS_CLEAN)).delete(is_last_day)
    held_back = spark.read.parquet(staged)
    day_rows = held_back.count()
    history_rows = tables.read(Table.TRANSACTIONS_CLEAN).count()
    for stale in (Table.CUSTOMER_DAILY, Table.FEATURE_REFRESH_LOG, Table.CUSTOMER_STATE, Table.CUSTOMER_FEATURES):
        shutil.rmtree(tables.path(stale), ignore_errors=True)
    settings = FeatureSettings()

    states = []

    def refresh_and_derive(mode: str, as_of: date) -> None:
        store.refresh_daily(tables, refresh=mode, run_id="bench", now=datetime.now(UTC))
        state, done = store.refresh_state(tables, as_of, settings)
        states.append(done.mode)
        tables.overwrite(
            Table.CUSTOMER_FEATURES, features_from_state(state, as_of, settings, mix_keys(state, settings))
        )

    full = timed("full recompute", lambda: refresh_and_derive("full", last_day))
    append = timed(
        "append the new day", lambda: tables.append(Table.TRANSACTIONS_CLEAN, held_back, partition_by=[store.TX_MONTH])
    )
    incremental = timed("incremental refresh", lambda: refresh_and_derive("incremental", END))
    refreshed = tables.read(Table.FEATURE_REFRESH_LOG).orderBy(F.desc("refreshed_at")).first()
    written = tables.read(Table.CUSTOMER_FEATURES)
    scratch = derive_features(tables.read(Table.CUSTOMER_DAILY), END, settings).select(*written.columns)
    identical = written.exceptAll(scratch).count() == 0 and scratch.exceptAll(written).count() == 0
    record(
        "features",
        {
            "customers": args.customers,
            "history_rows": history_rows,
            "new_day_rows": day_rows,
            "incremental_mode": refreshed.mode,
            "rows_per_day_aggregated": "all" if refreshed.mode == "full" else day_rows,
            "days_refreshed": refreshed.days_refreshed,
            "state_modes": states,
            "incremental_equals_scratch": identical,
            "full_seconds": round(full, 1),
            "append_seconds": round(append, 1),
            "incremental_seconds": round(incremental, 1),
            "ratio": round(incremental / full, 3),
        },
    )


if __name__ == "__main__":
    main()
