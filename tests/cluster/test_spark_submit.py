"""The real spark-submit path: the job must keep the master it is given."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pyspark
from mlflow.tracking import MlflowClient

from seg_spark.tracking import resolve_tracking_uri

REPO = Path(__file__).resolve().parents[2]
DELTA = "io.delta:delta-spark_4.2_2.13:4.4.0"


def _package_zip(target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in (REPO / "seg_spark").rglob("*.py"):
            archive.write(path, path.relative_to(REPO))
    return target


def test_spark_submit_runs_the_job_on_the_given_master(tmp_path):
    spark_submit = shutil.which("spark-submit", path=str(Path(sys.executable).parent)) or str(
        Path(pyspark.__file__).parent / "bin" / "spark-submit"
    )
    root = tmp_path / "lake"
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
        "--py-files",
        str(_package_zip(tmp_path / "seg_spark.zip")),
        str(REPO / "jobs" / "pipeline.py"),
        "--config",
        str(REPO / "conf" / "local.yaml"),
        "--set",
        f"storage.root={root}/warehouse",
        "--set",
        f"tracking.tracking_uri={root}/mlruns",
        "--set",
        f"demo.out={root}/demo",
        "--set",
        "demo.generator.customers=300",
        "--set",
        "demo.generator.end_date=2026-01-01",
        "--set",
        "run.run_id=submitted",
        "--set",
        "model.selection.k_max=3",  # a short sweep (2..3): this test is about the master
        "--set",
        "model.stability.bootstraps=0",
    ]
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    assert "seg-spark run submitted as of 2026-01-01" in done.stdout
    assert "customer_segments" in done.stdout

    client = MlflowClient(tracking_uri=resolve_tracking_uri(f"{root}/mlruns")[0])
    experiment = client.get_experiment_by_name("seg-spark").experiment_id
    # The run itself; its model-selection candidates are nested runs under it.
    (run,) = client.search_runs(experiment, "tags.seg_spark.run_id = 'submitted'")
    assert len(client.search_runs(experiment, f"tags.mlflow.parentRunId = '{run.info.run_id}'")) == 2
    # local.yaml asks for local[*]; spark-submit's --master must win.
    assert run.data.tags["spark.master"] == "local[2]"
    assert run.data.tags["seg_spark.run_id"] == "submitted"
    assert (root / "warehouse" / "customer_segments" / "_delta_log").is_dir()
