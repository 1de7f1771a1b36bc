"""The stages as separate spark-submit jobs (one process each, as a scheduler runs them) give the same
tables as one in-process run, and each job keeps the master it is given."""

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pyspark
import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import MapType

from seg_spark.cli import main
from seg_spark.config import load_config
from seg_spark.pipeline import run_pipeline
from seg_spark.tables import Table, TableStore
from seg_spark.tracking import resolve_tracking_uri

from conftest import BACKGROUND

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DELTA = "io.delta:delta-spark_4.2_2.13:4.4.0"
RUN = "staged"
# Columns that record when or how long, not what: they differ between any two runs.
VOLATILE = {"recorded_at", "refreshed_at", "seconds", "started_at", "ended_at", "mlflow_run_id"}


def _overrides(root: Path, demo: Path) -> list[str]:
    return [
        f"storage.root={root}/warehouse",
        f"tracking.tracking_uri={root}/mlruns",
        f"demo.out={demo}",
        "demo.generator.customers=100",
        "demo.generator.days=30",  # few day partitions: this test is about processes, not volume
        "demo.generator.end_date=2026-01-01",
        "quality.clock=2026-01-01T00:00:00",
        "model.selection.k_max=3",  # a short sweep (2..3): this test is about the stages, not the model
        "model.stability.bootstraps=0",
    ]


def _package_zip(target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in (REPO / "seg_spark").rglob("*.py"):
            archive.write(path, path.relative_to(REPO))
    return target


def _submit(job: str, overrides: list[str], cwd: Path, package: Path) -> subprocess.CompletedProcess:
    spark_submit = shutil.which("spark-submit", path=str(Path(sys.executable).parent)) or str(
        Path(pyspark.__file__).parent / "bin" / "spark-submit"
    )
    command = [
        spark_submit,
        "--master",
        "local[2]",
        "--packages",
        DELTA,
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--conf",
        "spark.default.parallelism=2",
        # A job this short spends much of its CPU compiling hot code with C2: C1 alone costs
        # 15% less CPU over the three jobs (330 against 386 CPU-seconds).
        "--driver-java-options",
        "-XX:TieredStopAtLevel=1",
        "--py-files",
        str(package),
        str(REPO / "jobs" / f"{job}.py"),
        "--config",
        str(REPO / "conf" / "local.yaml"),
        "--run-id",
        RUN,
        *[arg for item in overrides for arg in ("--set", item)],
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def _comparable(df: DataFrame) -> DataFrame:
    """Without the volatile columns, and maps as sorted entry arrays (set operations refuse maps)."""
    df = df.drop(*[c for c in df.columns if c in VOLATILE])
    maps = [f.name for f in df.schema.fields if isinstance(f.dataType, MapType)]
    return df.withColumns({m: F.array_sort(F.map_entries(m)) for m in maps})


def _assert_same_rows(left: DataFrame, right: DataFrame, table: str) -> None:
    left, right = _comparable(left), _comparable(right)
    assert sorted(left.columns) == sorted(right.columns), table
    right = right.select(*left.columns)
    assert left.count() == right.count(), table
    assert left.exceptAll(right).isEmpty() and right.exceptAll(left).isEmpty(), table


def test_a_stage_whose_input_is_missing_names_the_stage_to_run_first(spark, tmp_path, capsys):
    settings = [*_overrides(tmp_path, tmp_path / "demo"), "tracking.enabled=false"]  # MLflow plays no part
    overrides = [arg for item in settings for arg in ("--set", item)]
    assert main(["run", "--stage", "segment", "--run-id", "early", *overrides]) == 3
    message = capsys.readouterr().err
    assert message.startswith(
        "seg-spark: the segment stage needs the as-of date of run early, and pipeline_runs has no features stage"
    )
    assert "Traceback" not in message
    assert main(["run", "--stage", "features", "--run-id", "early", *overrides]) == 3
    assert "transactions_clean does not exist" in capsys.readouterr().err


@dataclass(frozen=True)
class StagedRun:
    root: Path
    demo: Path
    jobs: dict[str, subprocess.CompletedProcess]


def run_stage_jobs() -> StagedRun:
    """ingest, then features, then segment: three spark-submit processes sharing one run id."""
    root = Path(tempfile.mkdtemp(prefix="seg-spark-stage-jobs-"))
    package = _package_zip(root / "seg_spark.zip")
    jobs: dict[str, subprocess.CompletedProcess] = {}
    for stage in ("ingest", "features", "segment"):
        jobs[stage] = _submit(stage, _overrides(root / "jobs", root / "demo"), root, package)
        if jobs[stage].returncode != 0:
            break
    return StagedRun(root, root / "demo", jobs)


@pytest.mark.background.with_args(run_stage_jobs)
def test_three_stage_jobs_equal_one_run(spark: SparkSession, request: pytest.FixtureRequest):
    staged: StagedRun = request.node.stash[BACKGROUND].result(timeout=1800)
    try:
        _check_staged(spark, staged)
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)


def _check_staged(spark: SparkSession, staged: StagedRun) -> None:
    for stage in ("ingest", "features", "segment"):
        done = staged.jobs.get(stage)
        assert done is not None and done.returncode == 0, f"{stage}: {done.stderr[-4000:] if done else 'not run'}"
        assert f"seg-spark run {RUN}" in done.stdout and f": {stage}\n" in done.stdout

    single = load_config([], [*_overrides(staged.root / "single", staged.demo), f"run.run_id={RUN}"])
    run_pipeline(spark, single)
    jobs = TableStore(spark, load_config([], _overrides(staged.root / "jobs", staged.demo)))
    one = TableStore(spark, single)
    written = [t for t in Table if one.exists(t)]
    assert set(written) == {t for t in Table if jobs.exists(t)}
    assert {Table.CUSTOMER_SEGMENTS, Table.MODEL_SELECTION, Table.PIPELINE_RUNS} <= set(written)
    for table in written:
        _assert_same_rows(jobs.read(table), one.read(table), table.value)

    # Every job logged into one MLflow run, and kept the master spark-submit gave it (local.yaml asks local[*]).
    client = MlflowClient(tracking_uri=resolve_tracking_uri(f"{staged.root}/jobs/mlruns")[0])
    experiment = client.get_experiment_by_name("seg-spark").experiment_id
    (run,) = client.search_runs(experiment, f"tags.seg_spark.run_id = '{RUN}'")
    assert run.data.tags["spark.master"] == "local[2]"
    assert {"transactions.input_rows", "silhouette", "feature_refresh_seconds"} <= set(run.data.metrics)
    assert len(client.search_runs(experiment, f"tags.mlflow.parentRunId = '{run.info.run_id}'")) == 2
    assert {r.mlflow_run_id for r in jobs.read(Table.PIPELINE_RUNS).collect()} == {run.info.run_id}
