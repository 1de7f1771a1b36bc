"""Check bench/reference.py against a real seg-spark run on the same generated log.

    .venv/bin/python bench/check_reference.py --customers 1500 --workdir /tmp/ref

1. generates a log (``seg-spark generate``, 365 days, seed 42, fixed end date), once per parameters;
2. runs ``seg-spark run`` on it into a fresh warehouse under ``--workdir``, with ``quality.clock``
   pinned to the log's end so both sides use the same clock;
3. reads seg-spark's Delta tables (``data_quality``, ``transactions_quarantine``,
   ``customer_features``, ``model_selection``, ``segment_assignments``, ``pipeline_runs``) and
   runs ``run_reference`` on the same source and settings;
4. prints every mismatch, and exits 1 on any quarantine-count or (non-approximate) feature
   mismatch. The chosen k, silhouettes, sizes and stability are printed side by side
   (they depend on Spark's approximate quantiles and MLlib's k-means|| starts).
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import time
from datetime import date, datetime
from pathlib import Path

import pandas as pd
from deltalake import DeltaTable
from reference import REASON_CODES, compare_counts, compare_features, run_reference  # bench/ is on sys.path

from seg_spark.config import load_config

REPO = Path(__file__).resolve().parents[1]
CONFIG = "conf/local.yaml"


def _cli(*args: str) -> None:
    command = [str(Path(sys.executable).parent / "seg-spark"), *args]
    print("$", " ".join(command), flush=True)
    subprocess.run(command, cwd=REPO, check=True)


def _generate(workdir: Path, customers: int, days: int, seed: int, end: date) -> Path:
    """The generated log's transactions folder (generated again only when the parameters change)."""
    out = workdir / "log"
    wanted = json.dumps({"customers": customers, "days": days, "seed": seed, "end": end.isoformat()})
    marker = out / "_check_params.json"
    if not (marker.is_file() and marker.read_text() == wanted):
        _cli(
            "generate", "--config", CONFIG, "--customers", str(customers), "--days", str(days),
            "--seed", str(seed), "--end-date", end.isoformat(), "--out", str(out),
        )  # fmt: skip
        marker.write_text(wanted)
    return out / "transactions"


def _table(workdir: Path, name: str) -> pd.DataFrame:
    return DeltaTable(str(workdir / "warehouse" / name)).to_pandas()


def _latest_run(workdir: Path) -> tuple[str, date]:
    runs = _table(workdir, "pipeline_runs")
    segment = runs[(runs["stage"] == "segment") & (runs["status"] == "succeeded")]
    if segment.empty:
        raise SystemExit(f"pipeline_runs of {workdir / 'warehouse'} holds no succeeded segment stage")
    last = segment.sort_values("ended_at").iloc[-1]
    as_of = last["as_of_date"]
    return str(last["run_id"]), as_of if isinstance(as_of, date) else pd.Timestamp(as_of).date()


def _seg_spark_counts(workdir: Path, run_id: str) -> tuple[dict[str, int], dict[str, int]]:
    """Counts from ``data_quality`` (and, as a cross-check, rows per reason in ``transactions_quarantine``)."""
    dq = _table(workdir, "data_quality")
    dq = dq[(dq["run_id"] == run_id) & (dq["source"] == "transactions")]
    counts: dict[str, int] = {}
    for row in dq.itertuples():
        if row.metric in ("input_rows", "clean_rows", "quarantined_rows", "duplicates_removed", "outliers_flagged"):
            counts[row.metric] = int(row.value)
        elif row.metric == "rule":
            counts[row.column] = int(row.value)
    quarantine = _table(workdir, "transactions_quarantine")
    quarantine = quarantine[(quarantine["source"] == "transactions") & (quarantine["run_id"] == run_id)]
    return counts, {str(k): int(v) for k, v in quarantine.groupby("reason_code").size().items()}


def _fmt(value: float | None) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--customers", type=int, default=1500)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/seg-spark-reference-check"))
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--end-date", type=date.fromisoformat, default=date(2026, 1, 1), help="first day after the log")
    parser.add_argument("--threads", type=int, default=2, help="the reference's DuckDB / scikit-learn threads")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="extra KEY=VALUE for both sides")
    parser.add_argument("--reuse-run", action="store_true", help="compare with the warehouse already in --workdir")
    args = parser.parse_args()

    from seg_spark import quality  # imports pyspark; only to keep the reference's code list honest

    if tuple(quality.REASON_CODES) != REASON_CODES:
        print(f"reason codes differ: seg-spark {quality.REASON_CODES}, reference {REASON_CODES}")
        return 1
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    source = _generate(workdir, args.customers, args.days, args.seed, args.end_date)
    clock = datetime.combine(args.end_date, datetime.min.time())
    overrides = [
        f"storage.root={workdir / 'warehouse'}",
        f"tracking.tracking_uri={workdir / 'mlruns'}",
        f"demo.out={workdir / 'demo'}",
        f"sources.transactions.path={source}",
        f"quality.clock={clock.isoformat()}",
        *args.overrides,
    ]
    spark_seconds = None
    if not args.reuse_run:
        for folder in ("warehouse", "mlruns"):
            shutil.rmtree(workdir / folder, ignore_errors=True)
        started = time.perf_counter()
        _cli("run", "--config", CONFIG, *[item for o in overrides for item in ("--set", o)])
        spark_seconds = time.perf_counter() - started

    run_id, as_of = _latest_run(workdir)
    counts, quarantined = _seg_spark_counts(workdir, run_id)
    features = _table(workdir, "customer_features")
    features = features[pd.to_datetime(features["as_of_date"]).dt.date == as_of]
    selection = _table(workdir, "model_selection")
    selection = selection[selection["run_id"] == run_id].sort_values("k")
    segments = _table(workdir, "segment_assignments")
    segments = segments[(segments["run_id"] == run_id)]

    settings = load_config([REPO / CONFIG], overrides)
    result = run_reference(source, settings, threads=args.threads)

    failed = False
    print(f"\nseg-spark run {run_id} as of {as_of}; reference as of {result.as_of_date}")
    if result.as_of_date != as_of:
        print("  as-of dates differ")
        failed = True

    count_diff = compare_counts(counts, result.counts)
    quarantine_diff = {
        code: (quarantined.get(code, 0), result.counts[code])
        for code in REASON_CODES
        if quarantined.get(code, 0) != result.counts[code]
    }
    print("\ncounts (seg-spark data_quality = reference):")
    for key, value in result.counts.items():
        theirs = counts.get(key)
        print(f"  {key:<22} {theirs!s:>10} {value:>10}  {'MISMATCH' if key in count_diff else ''}")
    if count_diff or quarantine_diff:
        print(f"  count mismatches: {count_diff}; transactions_quarantine rows vs reference: {quarantine_diff}")
        failed = True

    feature_diff = compare_features(features.reset_index(drop=True), result.features)
    exact = {k: v for k, v in feature_diff.items() if not k.startswith("approximate:")}
    approximate = {k: v for k, v in feature_diff.items() if k.startswith("approximate:")}
    print(f"\nfeatures: {len(features)} customers x {features.shape[1] - 3} columns (seg-spark), "
          f"{len(result.features)} x {result.features.shape[1] - 1} (reference)")  # fmt: skip
    print(f"  mismatching customers per column (1e-9 relative): {exact or 'none'}")
    print(f"  approximate-quantile columns (RFM scores): {approximate or 'none'}")
    if exact:
        failed = True

    print("\nmodel selection  k: silhouette seg-spark / reference, smallest share seg-spark / reference")
    ours = {c["k"]: c for c in result.selection}
    for row in selection.itertuples():
        mine = ours.get(int(row.k), {})
        print(
            f"  k={row.k:<3} {_fmt(row.silhouette)} / {_fmt(mine.get('silhouette'))}   "
            f"{_fmt(row.smallest_segment_share)} / {_fmt(mine.get('smallest_segment_share'))}"
            f"{'   <- seg-spark' if row.chosen else ''}{'   <- reference' if int(row.k) == result.chosen_k else ''}"
        )
    chosen = selection[selection["chosen"]]
    spark_k = int(chosen["k"].iloc[0]) if not chosen.empty else None
    spark_silhouette = float(chosen["silhouette"].iloc[0]) if not chosen.empty else float("nan")
    print(f"  chosen k: seg-spark {spark_k}, reference {result.chosen_k}; silhouette {_fmt(spark_silhouette)} / "
          f"{_fmt(result.chosen_silhouette)} (reference final {_fmt(result.final_silhouette)})")  # fmt: skip
    spark_sizes = sorted(segments.groupby("segment_id").size().tolist(), reverse=True)
    print(f"  segment sizes (sorted): seg-spark {spark_sizes}, reference {sorted(result.segment_sizes, reverse=True)}")
    jaccard = {k: round(v, 3) for k, v in result.stability.get("jaccard", {}).items()}
    print(f"  reference stability: mean ARI {_fmt(result.stability.get('mean_ari'))}, Jaccard {jaccard}")
    print(f"  reference sample: {result.details['sample_rows']} rows, every customer: "
          f"{result.details['sample_is_every_customer']}; {result.details['silhouette']}")  # fmt: skip

    seconds = ", ".join(f"{k} {v:.2f}s" for k, v in result.seconds.items())
    print(f"\nreference seconds: {seconds}" + (f"; seg-spark run {spark_seconds:.1f}s" if spark_seconds else ""))
    print("FAILED: count or feature mismatches" if failed else "OK: counts and features equal")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
