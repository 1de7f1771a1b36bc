"""The stages as separate spark-submit jobs (one process each, as a scheduler runs them) give the same
tables as one in-process run, and each job keeps the master it is given.

Before one of the jobs, the same stage's process is killed (SIGKILL) at a random point: every table
stays readable, the job's start rolls the killed attempt back (each table it changed goes back to the
version the stage began with), and the jobs then give the same tables as the uninterrupted in-process
run. Each stage is killed in turn, each at a point drawn from the seed (``SEG_SPARK_KILL_SEED`` replays
a run; ``SEG_SPARK_KILL_STAGES=features`` kills only the stages it names)."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass, field
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
from seg_spark.recovery import KEPT
from seg_spark.session import cached_jars, delta_packages
from seg_spark.tables import Table, TableStore
from seg_spark.tracking import resolve_tracking_uri

from conftest import BACKGROUND, NO_CODEGEN_ARGS, SHORT_JVM_OPTIONS
from killing import commit_info, stage_began, versions, wait_until

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
RUN = "staged"
STAGES = ("ingest", "features", "segment")
# Columns that record when or how long, not what: they differ between any two runs.
VOLATILE = {"recorded_at", "refreshed_at", "seconds", "started_at", "ended_at", "mlflow_run_id", "attempt_id"}
# Commits each stage makes to the tables a rollback restores (pipeline_runs and data_quality aside).
STAGE_COMMITS = {"ingest": 2, "features": 4, "segment": 2}


def _overrides(root: Path, demo: Path) -> list[str]:
    return [
        f"storage.root={root}/warehouse",
        f"tracking.tracking_uri={root}/mlruns",
        f"demo.out={demo}",
        "demo.generator.customers=100",
        "demo.generator.days=30",  # few day partitions: this test is about processes, not volume
        "demo.generator.end_date=2026-01-01",
        "quality.clock=2026-01-01T00:00:00",
        # This test is about processes, not the model or the features: three feature families
        # (those of the model's features) and one fit of k = 3 cost each cold JVM a third less.
        "features.families=[rfm,value,cadence]",
        "model.selection.enabled=false",
        "model.k=3",
        "model.stability.bootstraps=0",
        "model.kmeans_restarts=1",
    ]


def _package_zip(target: Path) -> Path:
    with zipfile.ZipFile(target, "w") as archive:
        for path in (REPO / "seg_spark").rglob("*.py"):
            archive.write(path, path.relative_to(REPO))
    return target


def _delta_jars() -> list[str]:
    """The Delta JARs an earlier start resolved (skips Ivy's resolution in each job).

    On a machine that never resolved them, one embedded start resolves them first: under get_spark's
    lock, so it waits for (or takes the place of) the suite's own session resolving them at the same time.
    """
    packages = delta_packages()
    if cached_jars(packages) is None:
        resolve = "from seg_spark.session import get_spark; get_spark().stop()"
        subprocess.run([sys.executable, "-c", resolve], cwd=REPO, env=ENV, check=True, capture_output=True)
    jars = cached_jars(packages)
    assert jars, f"Delta's JARs ({packages}) could not be resolved"
    return ["--jars", jars]


def _command(job: str, run_id: str, overrides: list[str], package: Path) -> list[str]:
    spark_submit = shutil.which("spark-submit", path=str(Path(sys.executable).parent)) or str(
        Path(pyspark.__file__).parent / "bin" / "spark-submit"
    )
    command = [
        # Lowest priority: these jobs run beside the in-process tests, and take only the CPU those
        # leave idle (the driver's planning between Spark jobs leaves much of it); they still end first.
        "nice",
        "-n",
        "19",
        spark_submit,
        "--master",
        # One core: these jobs run beside the in-process tests, which need both cores more.
        "local[1]",
        *_delta_jars(),
        "--conf",
        "spark.ui.enabled=false",
        # As in the test session (conftest): one K-Means start reads rows in the order the plan
        # leaves them, so the jobs and the in-process run must plan alike to give equal segments.
        "--conf",
        "spark.sql.adaptive.enabled=false",
        "--conf",
        "spark.sql.shuffle.partitions=2",
        "--conf",
        "spark.default.parallelism=2",
        *NO_CODEGEN_ARGS,
        # A job this short spends much of its CPU compiling hot code with C2: C1 alone costs
        # 15% less CPU over the three jobs (330 against 386 CPU-seconds). C1 alone also shrinks
        # the code cache to 48 MB, which Spark fills ("CodeCache is full. Compiler has been
        # disabled"), so it gets the tiered default back.
        "--driver-java-options",
        SHORT_JVM_OPTIONS,
        "--py-files",
        str(package),
        str(REPO / "jobs" / f"{job}.py"),
        "--config",
        str(REPO / "conf" / "local.yaml"),
        "--run-id",
        run_id,
        *[arg for item in overrides for arg in ("--set", item)],
    ]
    return command


ENV = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable}


def _submit(job: str, overrides: list[str], cwd: Path, package: Path) -> subprocess.CompletedProcess:
    command = _command(job, RUN, overrides, package)
    return subprocess.run(command, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=900)


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


@dataclass
class Kill:
    """One stage process killed at a random point: before its first commit (after a random delay) or
    right after its n-th commit to a table a rollback restores."""

    stage: str
    after_commits: int
    delay: float
    started: dict[str, int] = field(default_factory=dict)  # versions when the stage began
    killed: dict[str, int] = field(default_factory=dict)  # versions right after the kill
    attempt_id: str | None = None
    error: str | None = None
    log: str = ""

    def changed(self) -> list[str]:
        """Tables the killed process committed to (pipeline_runs and data_quality aside)."""
        kept = {t.value for t in KEPT}
        return [t for t, v in self.killed.items() if t not in kept and v > self.started.get(t, -1)]


def _kill_during(stage: str, overrides: list[str], root: Path, package: Path, rng: random.Random) -> Kill:
    kill = Kill(stage, rng.randint(0, STAGE_COMMITS[stage] - 1), round(rng.uniform(0, 2), 2))
    warehouse = root / "jobs" / "warehouse"
    runs = versions(warehouse).get("pipeline_runs", -1)
    out = root / f"killed-{stage}.log"
    with out.open("w") as sink:
        proc = subprocess.Popen(
            _command(stage, RUN, overrides, package),
            cwd=root,
            env=ENV,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kill reaches the JVM and the Python driver
        )
        try:
            wait_until(lambda: stage_began(warehouse, runs), proc, f"the {stage} stage began")
            kill.started = versions(warehouse)
            info = json.loads(commit_info(warehouse, "pipeline_runs", kill.started["pipeline_runs"])["userMetadata"])
            kill.attempt_id = info["attempt_id"]
            if kill.after_commits == 0:
                time.sleep(kill.delay)
            else:
                probe = Kill(stage, 0, 0, kill.started)

                def committed() -> bool:
                    return len(_changed_now(probe, warehouse)) >= kill.after_commits

                wait_until(committed, proc, "the commits wanted")
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=60)
            kill.killed = versions(warehouse)
        except AssertionError as exc:
            kill.error = str(exc)
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=60)
    kill.log = out.read_text()[-4000:]
    return kill


def _changed_now(probe: Kill, warehouse: Path) -> list[str]:
    probe.killed = versions(warehouse)
    return probe.changed()


@dataclass(frozen=True)
class StagedRun:
    root: Path
    demo: Path
    jobs: dict[str, subprocess.CompletedProcess]
    kills: list[Kill]
    seed: int


def run_stage_jobs() -> StagedRun:
    """ingest, then features, then segment: three spark-submit processes sharing one run id; the process
    of the stage to kill (one drawn from the seed, or those SEG_SPARK_KILL_STAGES names) is started and
    killed just before that stage's job."""
    root = Path(tempfile.mkdtemp(prefix="seg-spark-stage-jobs-"))
    package = _package_zip(root / "seg_spark.zip")
    overrides = _overrides(root / "jobs", root / "demo")
    seed = int(os.environ.get("SEG_SPARK_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    # One stage per suite run, drawn from the seed (each is a cold JVM more, beside the in-process
    # tests); SEG_SPARK_KILL_STAGES=ingest,features,segment kills each in turn.
    killing = [s for s in os.environ.get("SEG_SPARK_KILL_STAGES", "").split(",") if s] or [rng.choice(STAGES)]
    jobs: dict[str, subprocess.CompletedProcess] = {}
    kills: list[Kill] = []
    for stage in STAGES:
        if stage in killing:
            # MLflow plays no part in a rollback; without it the killed process starts sooner.
            kills.append(_kill_during(stage, [*overrides, "tracking.enabled=false"], root, package, rng))
        jobs[stage] = _submit(stage, overrides, root, package)
        if jobs[stage].returncode != 0:
            break
    return StagedRun(root, root / "demo", jobs, kills, seed)


@pytest.mark.background.with_args(run_stage_jobs)
def test_three_stage_jobs_equal_one_run(spark: SparkSession, request: pytest.FixtureRequest):
    staged: StagedRun = request.node.stash[BACKGROUND].result(timeout=1800)
    try:
        _check_staged(spark, staged)
        _check_kills(spark, staged)
    finally:
        shutil.rmtree(staged.root, ignore_errors=True)


def _check_staged(spark: SparkSession, staged: StagedRun) -> None:
    for stage in ("ingest", "features", "segment"):
        done = staged.jobs.get(stage)
        assert done is not None and done.returncode == 0, f"{stage}: {done.stderr[-4000:] if done else 'not run'}"
        assert f"seg-spark run {RUN}" in done.stdout and f": {stage}\n" in done.stdout

    single = load_config([], [*_overrides(staged.root / "single", staged.demo), f"run.run_id={RUN}"])
    run_pipeline(spark, single, STAGES)  # publish as a job is left out: two more cold JVMs per suite run
    jobs = TableStore(spark, load_config([], _overrides(staged.root / "jobs", staged.demo)))
    one = TableStore(spark, single)
    written = [t for t in Table if one.exists(t)]
    assert set(written) == {t for t in Table if jobs.exists(t)}
    assert {Table.SEGMENT_ASSIGNMENTS, Table.MODEL_SELECTION, Table.PIPELINE_RUNS} <= set(written)
    for table in written:
        _assert_same_rows(jobs.read(table), one.read(table), table.value)

    # Every job logged into one MLflow run, and kept the master spark-submit gave it (local.yaml asks local[*]).
    client = MlflowClient(tracking_uri=resolve_tracking_uri(f"{staged.root}/jobs/mlruns")[0])
    experiment = client.get_experiment_by_name("seg-spark").experiment_id
    (run,) = client.search_runs(experiment, f"tags.seg_spark.run_id = '{RUN}'")
    assert run.data.tags["spark.master"] == "local[1]"
    assert {"transactions.input_rows", "silhouette", "feature_refresh_seconds"} <= set(run.data.metrics)
    # No sweep here (model.selection.enabled=false), so no nested candidate run: the e2e tests check those.
    assert client.search_runs(experiment, f"tags.mlflow.parentRunId = '{run.info.run_id}'") == []
    assert {r.mlflow_run_id for r in jobs.read(Table.PIPELINE_RUNS).collect()} == {run.info.run_id}


def _check_kills(spark: SparkSession, staged: StagedRun) -> None:
    """Each killed process left readable tables, and the next job's start rolled its attempt back: each
    table it had changed was restored to the version the stage began with, or removed if it created it.
    (That the jobs after it equal the uninterrupted run is ``_check_staged``.)"""
    warehouse = staged.root / "jobs" / "warehouse"
    jobs = TableStore(spark, load_config([], _overrides(staged.root / "jobs", staged.demo)))
    assert staged.kills
    for kill in staged.kills:
        where = f"seed {staged.seed}: {kill.stage} killed after {kill.after_commits} commit(s) / {kill.delay} s"
        assert kill.error is None and kill.attempt_id, f"{where}: {kill.error}\n{kill.log}"
        assert len(kill.changed()) >= kill.after_commits, where
        for table in kill.changed():
            history = [commit_info(warehouse, table, v) for v in range(versions(warehouse)[table] + 1)]
            if table not in kill.started:  # created by the killed attempt: removed, then created by the job
                assert all(json.loads(c["userMetadata"] or "{}").get("attempt_id") != kill.attempt_id for c in history)
                continue
            jobs.read(Table(table), version=kill.killed[table]).count()  # readable as the kill left it
            restores = [c for c in history[kill.killed[table] + 1 :] if c["operation"] == "RESTORE"]
            assert any(
                json.loads(c["userMetadata"])["rollback_of"] == kill.attempt_id
                and int(c["operationParameters"]["version"]) == kill.started[table]
                for c in restores
            ), f"{where}: {table} was not restored to version {kill.started[table]}"
        (row,) = [r for r in jobs.read(Table.PIPELINE_RUNS).collect() if r.stage == kill.stage]
        assert row.status == "succeeded" and row.attempt_id != kill.attempt_id, where  # the job's row replaced it
