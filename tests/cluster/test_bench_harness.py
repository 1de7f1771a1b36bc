"""The benchmark harness (bench/run.py) end to end at its smoke size: both sides run as their own
processes on the same generated log, and agree on every count and feature."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import BACKGROUND, SHORT_JVM

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class HarnessRun:
    done: subprocess.CompletedProcess
    folder: Path


def run_harness() -> HarnessRun:
    """bench/run.py at the smoke size, one run per side, at the lowest priority (it runs beside the suite)."""
    folder = Path(tempfile.mkdtemp(prefix="seg-spark-bench-smoke-"))
    command = ["nice", "-n", "19", sys.executable, str(REPO / "bench" / "run.py"), "--size", "smoke"]
    command += ["--repeats", "1", "--workdir", str(folder / "work"), "--results", str(folder / "results")]
    # The sweep, the stability check and MLflow are tested elsewhere: a short sweep of one K-Means start per
    # candidate, and no tracking, keep the cold runs quick (the suite's CPU is the limit, not its cores).
    quick = ["model.selection.k_max=4", "model.stability.bootstraps=0", "model.kmeans_restarts=1"]
    quick.append("tracking.enabled=false")
    command += ["--threads", "1", *[arg for item in quick for arg in ("--set", item)]]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=1500, env=SHORT_JVM)
    return HarnessRun(done, folder)


@pytest.mark.slow
@pytest.mark.background.with_args(run_harness)
def test_the_harness_times_both_sides_and_finds_them_equal(request: pytest.FixtureRequest):
    run: HarnessRun = request.node.stash[BACKGROUND].result(timeout=1800)
    try:
        assert run.done.returncode == 0, run.done.stdout[-3000:] + run.done.stderr[-3000:]
        result = json.loads((run.folder / "results" / "run-smoke.json").read_text())
        table = (run.folder / "results" / "run-smoke.md").read_text()
    finally:
        shutil.rmtree(run.folder, ignore_errors=True)

    checks = result["checks"]
    assert checks["count_mismatches"] == {}
    # Spark's RFM scores come from approximate quantiles: only those may differ, and are named apart.
    assert all(column.startswith("approximate:") for column in checks["feature_mismatches"])
    assert checks["seg_spark"]["chosen_k"] == checks["reference"]["chosen_k"]

    assert result["lines"] == 4_559 and result["repeats"] == 1
    for side in ("seg_spark", "daily"):
        assert set(result[side]["stages_s"]) == {"ingest", "features", "segment"}
        assert all(seconds > 0 for seconds in result[side]["stages_s"].values())
    for side in ("seg_spark", "reference"):
        run_usage = result[side]["runs"][0]
        assert run_usage["wall_s"] > 0 and run_usage["cpu_s"] > 0
        # The whole tree is measured: seg-spark's JVM as well as its Python driver.
        assert run_usage["peak_rss_mib"] >= run_usage["peak_python_mib"] > 0
    assert result["seg_spark"]["runs"][0]["peak_jvm_mib"] > 0
    assert result["ratios"]["end_to_end"] == pytest.approx(
        result["seg_spark"]["wall_s"] / result["reference"]["wall_s"], abs=0.05
    )
    assert "| end to end, process wall clock |" in table and "quarantine counts differing: none" in table
