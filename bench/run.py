"""seg-spark next to DuckDB + scikit-learn on the same generated log: time, CPU, memory, equal results.

    .venv/bin/python bench/run.py --size 1m            # 1,034,212 lines, 3 runs each side (medians)
    .venv/bin/python bench/run.py --size 10m           # 10,259,436 lines, 1 run each side
    .venv/bin/python bench/run.py --size smoke --repeats 1 --workdir /tmp/bench   # what the suite runs

For each size the log is generated once (``seg-spark generate``, seed 42, 365 days ending
2026-01-01) and cached under ``--workdir``; its last day is split off, so each repeat times:

1. ``seg-spark run`` on the history (a snapshot), as its own process, as a user runs it;
2. the daily incremental run: ``seg-spark run`` again with the last day as an append source;
3. the reference (``bench/reference.py``: DuckDB for cleaning and features, scikit-learn for the
   preparation, sweep, stability and final fit) on the same history, as its own process.

Each process tree (the Python driver and its JVM) is sampled from ``/proc`` every 0.2 s for its
peak resident memory and CPU seconds. Stage times come from seg-spark's ``pipeline_runs`` table.
After the runs the harness checks that both sides counted the same quarantined lines per reason
and computed the same feature values for every customer (Spark's approximate RFM quantiles are
reported apart), and reports both sides' chosen k and silhouettes. Results go to
``bench/results/run-<size>.json`` (one JSON object) and ``bench/results/run-<size>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
END = date(2026, 1, 1)  # the generated log ends the day before: a fixed end keeps the cache valid
SEED = 42
SIZES = {  # customers, days: lines are about 47 per customer-year
    "smoke": (300, 120),
    "1m": (22_000, 365),
    "10m": (220_000, 365),
    "100m": (2_200_000, 365),
}
STAGES = ("ingest", "features", "segment")
REFERENCE_STAGES = {"ingest": "clean", "features": "features", "segment": "segment"}
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass
class TreeUsage:
    """What one process tree used: wall seconds, CPU seconds, peak memory (whole tree and per kind)."""

    wall: float = 0.0
    cpu: float = 0.0
    peak_rss: int = 0
    peak_python: int = 0
    peak_jvm: int = 0
    at_peak: dict[str, int] = field(default_factory=dict)  # resident bytes by process name at the peak
    _cpu_by_pid: dict[int, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        mib = 1 << 20
        return {
            "wall_s": round(self.wall, 2),
            "cpu_s": round(self.cpu, 2),
            "peak_rss_mib": round(self.peak_rss / mib, 1),
            "peak_python_mib": round(self.peak_python / mib, 1),
            "peak_jvm_mib": round(self.peak_jvm / mib, 1),
            "at_peak_mib": {name: round(size / mib, 1) for name, size in self.at_peak.items()},
        }


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:  # ended meanwhile
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(entry.name))
    return tree


def _sample(root: int, usage: TreeUsage) -> None:
    """Add one /proc reading of the tree under ``root`` to ``usage``."""
    tree, pending, by_name = _children(), [root], dict[str, int]()
    while pending:
        pid = pending.pop()
        pending.extend(tree.get(pid, []))
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            resident = int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE
            name = Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            continue
        # utime and stime are fields 14 and 15 of stat; the split starts at field 3.
        usage._cpu_by_pid[pid] = (int(fields[11]) + int(fields[12])) / _TICKS
        by_name[name] = by_name.get(name, 0) + resident
    rss = sum(by_name.values())
    if rss > usage.peak_rss:
        usage.peak_rss, usage.at_peak = rss, by_name
    usage.peak_python = max(usage.peak_python, sum(v for n, v in by_name.items() if n.startswith("python")))
    usage.peak_jvm = max(usage.peak_jvm, by_name.get("java", 0))
    usage.cpu = sum(usage._cpu_by_pid.values())


def measured(command: list[str], log: Path, interval: float = 0.2) -> TreeUsage:
    """Run ``command`` to its end, its output to ``log``, sampling its process tree.

    Raises:
        SystemExit: The command failed (its log's tail is printed).
    """
    usage = TreeUsage()
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        done = threading.Event()

        def sampler() -> None:
            while not done.wait(interval):
                _sample(process.pid, usage)

        thread = threading.Thread(target=sampler, daemon=True)
        thread.start()
        code = process.wait()
        done.set()
        thread.join()
    usage.wall = time.monotonic() - started
    if code != 0:
        sys.exit(f"{' '.join(command[:4])} ... failed with exit code {code}:\n{log.read_text()[-3000:]}")
    return usage


def generated_log(size: str, workdir: Path) -> tuple[Path, Path, int]:
    """The cached log of ``size`` split into (history, last day, lines); generated on first use."""
    customers, days = SIZES[size]
    folder = workdir / f"log-{customers}c-{days}d-seed{SEED}"
    history, last_day, marker = folder / "history.parquet", folder / "last_day.parquet", folder / "split.json"
    if not marker.exists():
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        print(f"generating {customers:,} customers x {days} days into {folder}", flush=True)
        command = [*_seg_spark("generate"), "--customers", str(customers), "--days", str(days)]
        command += ["--seed", str(SEED), "--end-date", END.isoformat(), "--out", str(folder / "generated")]
        measured(command, folder / "generate.log")
        _split(folder / "generated" / "transactions", history, last_day)
        marker.write_text(json.dumps({"lines": _lines(history) + _lines(last_day)}))
    return history, last_day, json.loads(marker.read_text())["lines"]


def _split(source: Path, history: Path, last_day: Path) -> None:
    """Write the log without its last day, and that day, each as one Parquet file both sides read."""
    import duckdb

    cut = datetime.combine(END - timedelta(days=1), datetime.min.time())
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        scan = f"read_parquet('{source}/**/*.parquet')"
        bounds = [cut, datetime.combine(END, datetime.min.time())]
        # Lines with a null or future timestamp stay in the history, where the ingest quarantines them.
        kept = "ts IS NULL OR ts < ? OR ts >= ?"
        con.execute(f"COPY (SELECT * FROM {scan} WHERE {kept}) TO '{history}' (FORMAT parquet)", bounds)
        con.execute(f"COPY (SELECT * FROM {scan} WHERE ts >= ? AND ts < ?) TO '{last_day}' (FORMAT parquet)", bounds)


def _lines(path: Path) -> int:
    import duckdb

    with duckdb.connect() as con:
        return int(con.execute(f"SELECT count(*) FROM read_parquet('{path}')").fetchone()[0])


def _seg_spark(command: str) -> list[str]:
    return [sys.executable, "-m", "seg_spark.cli", command, "--config", str(REPO / "conf" / "local.yaml")]


def _stages() -> list[str]:
    """The stages the reference reproduces (publish, which it has no counterpart for, is left out)."""
    return [arg for stage in STAGES for arg in ("--stage", stage)]


def _overrides(root: Path, source: Path, extra: list[str]) -> list[str]:
    return [
        f"storage.root={root}/warehouse",
        f"tracking.tracking_uri={root}/mlruns",
        f"demo.out={root}/demo",
        f"sources.transactions.path={source}",
        "sources.transactions.format=parquet",
        f"quality.clock={END.isoformat()}T00:00:00",
        *extra,
    ]


def _sets(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _delta(path: Path) -> pd.DataFrame:
    from deltalake import DeltaTable

    return DeltaTable(str(path)).to_pandas()


def seg_spark_runs(history: Path, last_day: Path, root: Path, extra: list[str]) -> dict[str, Any]:
    """One full run on the history and one daily run on the last day, into a fresh warehouse under ``root``."""
    full = _overrides(root, history, extra)
    full_usage = measured([*_seg_spark("run"), *_stages(), *_sets([*full, "run.run_id=full"])], root / "full.log")
    daily = _overrides(root, last_day, [*extra, "sources.transactions.mode=append", "run.run_id=daily"])
    daily_usage = measured([*_seg_spark("run"), *_stages(), *_sets(daily)], root / "daily.log")
    runs = _delta(root / "warehouse" / "pipeline_runs")
    stage_seconds = {
        run: {row.stage: round(float(row.seconds), 2) for row in runs[runs.run_id == run].itertuples()}
        for run in ("full", "daily")
    }
    return {
        "full": {**full_usage.as_dict(), "stages_s": stage_seconds["full"]},
        "daily": {**daily_usage.as_dict(), "stages_s": stage_seconds["daily"]},
    }


def reference_run(history: Path, root: Path, extra: list[str], threads: int) -> dict[str, Any]:
    """The reference as its own process (``--reference-child``), its results under ``root``."""
    command = [sys.executable, str(Path(__file__).resolve()), "--reference-child", str(history), str(root)]
    command += ["--threads", str(threads), *_sets(extra)]
    usage = measured(command, root / "reference.log")
    outcome = json.loads((root / "reference.json").read_text())
    return {**usage.as_dict(), **outcome}


def _reference_child(history: Path, root: Path, extra: list[str], threads: int) -> None:
    """Run the reference and write its outcome (reference.json, reference_features.parquet) under ``root``."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference import run_reference

    from seg_spark.config import load_config

    settings = load_config([str(REPO / "conf" / "local.yaml")], _overrides(root, history, extra))
    result = run_reference(history, settings, threads=threads)
    result.features.to_parquet(root / "reference_features.parquet")
    outcome = {
        "stages_s": {name: round(seconds, 3) for name, seconds in result.seconds.items()},
        "counts": result.counts,
        "as_of_date": result.as_of_date.isoformat(),
        "chosen_k": result.chosen_k,
        "chosen_silhouette": result.chosen_silhouette,
        "final_silhouette": result.final_silhouette,
        "segment_sizes": result.segment_sizes,
        "selection": result.selection,
    }
    (root / "reference.json").write_text(json.dumps(outcome, default=str))


def seg_spark_outcome(root: Path) -> dict[str, Any]:
    """What the full run counted, computed and chose, read from its Delta tables."""
    warehouse = root / "warehouse"
    quality = _delta(warehouse / "data_quality")
    quality = quality[(quality.run_id == "full") & (quality.source == "transactions")]
    # A rule's count is keyed by its reason code (column), a total by its metric name.
    key = quality.column.where(quality.metric == "rule", quality.metric)
    wanted = (quality.metric == "rule") | quality.metric.isin(["input_rows", "clean_rows", "duplicates_removed"])
    counts = {str(k): int(v) for k, v in zip(key[wanted], quality.value[wanted], strict=True)}
    selection = _delta(warehouse / "model_selection")
    selection = selection[selection.run_id == "full"]
    chosen = selection[selection.chosen].iloc[0]
    segments = _delta(warehouse / "segment_assignments")
    segments = segments[segments.run_id == "full"]
    return {
        "counts": counts,
        "chosen_k": int(chosen.k),
        "chosen_silhouette": float(chosen.silhouette),
        "segment_sizes": sorted(segments.groupby("segment_id").size().tolist(), reverse=True),
        "sample_rows": int(chosen.sample_rows),
    }


def seg_spark_features(root: Path, as_of: date) -> pd.DataFrame:
    """The full run's features (the daily run added the next as-of date to the same table)."""
    features = _delta(root / "warehouse" / "customer_features")
    return features[pd.to_datetime(features.as_of_date).dt.date == as_of].drop(columns=["as_of_date"])


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return round(statistics.median(r[key] for r in runs), 2)


def _stage_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    stages = runs[0]["stages_s"]
    return {s: round(statistics.median(r["stages_s"].get(s, float("nan")) for r in runs), 2) for s in stages}


def summarise(size: str, lines: int, full: list[dict], daily: list[dict], ref: list[dict], checks: dict) -> dict:
    """The JSON object of one harness run: medians, ratios, checks and the machine."""
    seg = {"runs": full, "wall_s": _median(full, "wall_s"), "cpu_s": _median(full, "cpu_s"),
           "peak_rss_mib": _median(full, "peak_rss_mib"), "stages_s": _stage_medians(full)}  # fmt: skip
    inc = {"runs": daily, "wall_s": _median(daily, "wall_s"), "cpu_s": _median(daily, "cpu_s"),
           "stages_s": _stage_medians(daily)}  # fmt: skip
    reference = {"runs": [{k: v for k, v in r.items() if k != "selection"} for r in ref],
                 "wall_s": _median(ref, "wall_s"), "cpu_s": _median(ref, "cpu_s"),
                 "peak_rss_mib": _median(ref, "peak_rss_mib"), "stages_s": _stage_medians(ref)}  # fmt: skip
    ratios = {
        "end_to_end": round(seg["wall_s"] / reference["wall_s"], 1),
        **{
            stage: round(seg["stages_s"][stage] / reference["stages_s"][REFERENCE_STAGES[stage]], 1)
            for stage in STAGES
            if stage in seg["stages_s"] and reference["stages_s"].get(REFERENCE_STAGES[stage])
        },
        "daily_over_full": round(inc["wall_s"] / seg["wall_s"], 3),
    }
    return {
        "bench": "run",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": _machine(),
        "commit": _commit(),
        "size": size,
        "customers": SIZES[size][0],
        "days": SIZES[size][1],
        "lines": lines,
        "repeats": len(full),
        "seg_spark": seg,
        "daily": inc,
        "reference": reference,
        "ratios": ratios,
        "checks": checks,
    }


def compare(root: Path, reference_root: Path) -> dict[str, Any]:
    """Both sides' counts, features and model choice on the same history."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference import compare_counts, compare_features

    ours = seg_spark_outcome(root)
    theirs = json.loads((reference_root / "reference.json").read_text())
    as_of = date.fromisoformat(theirs["as_of_date"])
    reference_features = pd.read_parquet(reference_root / "reference_features.parquet")
    features = compare_features(seg_spark_features(root, as_of), reference_features)
    return {
        "count_mismatches": {k: list(v) for k, v in compare_counts(ours["counts"], theirs["counts"]).items()},
        "feature_mismatches": features,
        "seg_spark": {k: ours[k] for k in ("chosen_k", "chosen_silhouette", "segment_sizes", "sample_rows")},
        # The chosen candidate is the final model: its silhouette on the sample is the final one.
        "seg_spark_final_silhouette": ours["chosen_silhouette"],
        "reference": {k: theirs[k] for k in ("chosen_k", "chosen_silhouette", "final_silhouette", "segment_sizes")},
    }


def markdown(result: dict[str, Any]) -> str:
    """The result as a Markdown table (bench/results/run-<size>.md)."""
    seg, ref, ratios, checks = result["seg_spark"], result["reference"], result["ratios"], result["checks"]
    ours, theirs = checks["seg_spark"], checks["reference"]
    rows = [
        (f"{s} / {theirs_s}", seg["stages_s"].get(s), ref["stages_s"].get(theirs_s), ratios.get(s))
        for s, theirs_s in REFERENCE_STAGES.items()
    ]
    rows.append(("end to end, process wall clock", seg["wall_s"], ref["wall_s"], ratios["end_to_end"]))
    rows.append(("CPU seconds, process tree", seg["cpu_s"], ref["cpu_s"], round(seg["cpu_s"] / ref["cpu_s"], 1)))
    rows.append(("peak memory MiB, process tree", seg["peak_rss_mib"], ref["peak_rss_mib"],
                 round(seg["peak_rss_mib"] / ref["peak_rss_mib"], 1)))  # fmt: skip
    lines = [
        f"# `bench/run.py --size {result['size']}`: {result['lines']:,} lines, {result['customers']:,} customers",
        "",
        f"{result['when']}, commit {result['commit']}, {result['machine']['cores']} cores; medians of "
        f"{result['repeats']} run(s) each side.",
        "",
        "| stage | seg-spark s | DuckDB + scikit-learn s | ratio |",
        "|---|---|---|---|",
        *[f"| {name} | {a} | {b} | {c}x |" for name, a, b, c in rows],
        "",
        f"Peak memory of seg-spark's driver: Python {_median(seg['runs'], 'peak_python_mib')} MiB, "
        f"JVM {_median(seg['runs'], 'peak_jvm_mib')} MiB (driver and executors in local mode).",
        "",
        f"Daily incremental run (one day appended): {result['daily']['wall_s']} s, "
        f"{ratios['daily_over_full']:.1%} of the full run; stages {result['daily']['stages_s']}.",
        "",
        f"Checks: quarantine counts differing: {checks['count_mismatches'] or 'none'}; "
        f"feature columns differing: {checks['feature_mismatches'] or 'none'}.",
        f"Chosen k: seg-spark {ours['chosen_k']} (silhouette {ours['chosen_silhouette']:.4f} on its sample of "
        f"{ours['sample_rows']:,}; the final model is that fit), reference {theirs['chosen_k']} (chosen "
        f"{theirs['chosen_silhouette']:.4f}, final {theirs['final_silhouette']:.4f}).",
        "",
    ]
    return "\n".join(lines)


def _machine() -> dict[str, Any]:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    cpu = [line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")]
    memory = [line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal")]
    return {
        "cores": os.cpu_count(),
        "cpu": cpu[0] if cpu else platform.processor(),
        "memory_gib": round(int(memory[0]) / (1 << 20), 1),
        "python": platform.python_version(),
    }


def _commit() -> str:
    done = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return done.stdout.strip() or "unknown"


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SIZES, default="1m")
    parser.add_argument("--repeats", type=int, help="runs per side (default 3 at smoke and 1m, else 1)")
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / ".cache", help="generated logs and runs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where run-<size>.json/.md go")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="the reference's threads")
    parser.add_argument("--set", action="append", default=[], dest="overrides", help="a seg-spark config override")
    parser.add_argument("--reference-child", nargs=2, metavar=("HISTORY", "ROOT"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.reference_child:
        _reference_child(Path(args.reference_child[0]), Path(args.reference_child[1]), args.overrides, args.threads)
        return None
    repeats = args.repeats or (3 if args.size in ("smoke", "1m") else 1)
    history, last_day, lines = generated_log(args.size, args.workdir)
    full, daily, ref = [], [], []
    runs = Path(tempfile.mkdtemp(prefix=f"runs-{args.size}-", dir=args.workdir))
    for repeat in range(repeats):
        root = runs / f"seg-spark-{repeat}"
        root.mkdir()
        spark_runs = seg_spark_runs(history, last_day, root, args.overrides)
        full.append(spark_runs["full"])
        daily.append(spark_runs["daily"])
        reference_root = runs / f"reference-{repeat}"
        reference_root.mkdir()
        ref.append(reference_run(history, reference_root, args.overrides, args.threads))
        print(f"repeat {repeat + 1}/{repeats}: seg-spark {full[-1]['wall_s']} s (daily {daily[-1]['wall_s']} s), "
              f"reference {ref[-1]['wall_s']} s", flush=True)  # fmt: skip
    checks = compare(runs / "seg-spark-0", runs / "reference-0")
    result = summarise(args.size, lines, full, daily, ref, checks)
    args.results.mkdir(parents=True, exist_ok=True)
    (args.results / f"run-{args.size}.json").write_text(json.dumps(result, indent=1, default=str) + "\n")
    (args.results / f"run-{args.size}.md").write_text(markdown(result))
    print(markdown(result), flush=True)
    shutil.rmtree(runs, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
