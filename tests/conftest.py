"""Shared fixtures: one SparkSession for the whole suite (local[2], 2 shuffle partitions, UTC, UI off,
Delta, temporary warehouse), MLflow kept off the developer's store, and one shared end-to-end run."""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from datetime import date
from pathlib import Path

import mlflow
import pytest
from pyspark.sql import SparkSession

from seg_spark.config import Settings, SparkSettings, load_config
from seg_spark.pipeline import PipelineResult, run_pipeline
from seg_spark.session import get_spark

E2E_END = date(2026, 1, 1)
E2E_RUN = "e2e-run-1"
# Reruns that test other things fit the model directly (no sweep, no bootstraps).
# One K-Means start: these tests are about what the run writes, not how good the fit is.
FAST = ("model.selection.enabled=false", "model.stability.bootstraps=0", "model.kmeans_restarts=1")
# Runs that test other things than the predict stage leave it out (it is tested on the shared run).
NO_PREDICT = ("predict.clv.enabled=false", "predict.churn.enabled=false")
# Runs that test other things than the explain stage leave it out too (it is tested on the shared run).
NO_EXPLAIN = ("explain.enabled=false",)


# Expressions interpreted, not compiled, in every JVM of the suite: its tables are a few thousand rows,
# and its JVMs run hundreds of distinct queries, each compiled by Janino and then by the JIT before it
# pays back. A cold 400-customer ``seg-spark run``: 137 CPU-seconds against 176; the shared end-to-end
# run's tests in process: 390 against 452. The product keeps code generation on.
NO_CODEGEN = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}
# The same settings as spark-submit arguments.
NO_CODEGEN_ARGS = [arg for key, value in NO_CODEGEN.items() for arg in ("--conf", f"{key}={value}")]

# Subprocess JVMs in the suite are short: C1 alone costs less CPU than tiered compilation (its code
# cache sized back up to the default, which Spark fills; the stage jobs pass the same options to
# spark-submit: 15% less CPU). The in-process session is long-lived and keeps tiered compilation
# (C1 alone made 17 of its tests 34% slower: 301 s against 224 s).
# The parallel collector, as in the in-process session: G1's concurrent threads cost CPU the suite lacks.
SHORT_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:ReservedCodeCacheSize=240m -XX:+UseParallelGC"
# A subprocess on real volume (the Online Retail log, 541,909 lines) keeps code generation: its
# interpreted expressions cost more than compiling them (cold runs: 202 CPU-seconds with C1 and code
# generation, 314 with SHORT_JVM, 232 with the JVM's defaults).
SHORT_JVM_COMPILED = {**os.environ, "JAVA_TOOL_OPTIONS": SHORT_JVM_OPTIONS}
SHORT_JVM = {
    **SHORT_JVM_COMPILED,
    # Read by PySpark when it launches its JVM: the ``seg-spark`` processes (the harness's runs, the Thrift
    # server, the killed publish).
    "PYSPARK_SUBMIT_ARGS": " ".join([*NO_CODEGEN_ARGS, "pyspark-shell"]),
}

# Subprocess jobs (spark-submit, the benchmark harness) spend most of their time starting JVMs; they
# run in these threads, side by side and at the lowest priority, while the in-process tests run,
# and the tests that check them run last.
BACKGROUND = pytest.StashKey[Future]()
# Enough threads that every job starts at once: at nice 19 they share what CPU the tests leave idle.
_background = ThreadPoolExecutor(max_workers=6, thread_name_prefix="background-jobs")


def in_background(job: Callable[..., object], *args: object) -> Future:
    """Start ``job(*args)`` beside the tests (e.g. a server a fixture's data feeds); a ``last`` test reads it."""
    return _background.submit(job, *args)


class _StuckFits(logging.Handler):
    """Keeps the warnings of fits cancelled past ``model.fit_timeout_seconds``, with their JVM task threads.

    A stuck fit is started again and its test passes, so pytest would show nothing of it: the
    session's summary prints them, the only evidence such a hang leaves in a CI log.
    """

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "ran past" in record.getMessage():
            self.records.append(self.format(record))

    @contextmanager
    def expected(self) -> Iterator[list[str]]:
        """A block whose cancelled fits are a test's own: yields the records it adds, kept out of the summary."""
        before = len(self.records)
        own: list[str] = []
        try:
            yield own
        finally:
            own.extend(self.records[before:])
            del self.records[before:]


STUCK_FITS = _StuckFits()
logging.getLogger("seg_spark.models.clustering").addHandler(STUCK_FITS)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    for record in STUCK_FITS.records:
        terminalreporter.write_sep("=", "a fit cancelled past its time limit (started again)")
        terminalreporter.write_line(record)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: end-to-end runs and subprocesses (skipped by make test-fast)")
    config.addinivalue_line(
        "markers", "last: runs after the other tests (it reads what a fixture started with in_background)"
    )
    config.addinivalue_line(
        "markers",
        "background(start): start(): run once at the start of the session beside the other tests (once for "
        "all the tests naming it); the tests run last and read the outcome from item.stash[BACKGROUND]",
    )


@pytest.hookimpl(trylast=True)  # after -m / -k deselection: start only what will run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in [item for item in items if item.get_closest_marker("last")]:
        items.remove(item)
        items.append(item)
    if config.option.collectonly:  # nothing will run: start nothing (the session would wait for it at exit)
        return
    waiting = [item for item in items if item.get_closest_marker("background")]
    started: dict[Callable[[], object], Future] = {}  # tests of one module may share one start
    for item in waiting:
        items.remove(item)
        items.append(item)
        start = item.get_closest_marker("background").args[0]
        if start not in started:
            started[start] = _background.submit(start)
        item.stash[BACKGROUND] = started[start]


@pytest.fixture(scope="session")
def spark(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkSession]:
    warehouse = tmp_path_factory.mktemp("spark-warehouse")
    settings = SparkSettings(
        app_name="seg-spark-tests",
        master="local[2]",
        shuffle_partitions=2,
        driver_memory="2g",
        log_level="ERROR",
        conf={
            "spark.sql.warehouse.dir": str(warehouse),
            # The parallel collector, as the product's embedded default sets (session.embedded_conf).
            "spark.driver.extraJavaOptions": f"-Dderby.system.home={warehouse} -Duser.timezone=UTC -XX:+UseParallelGC",
            # The suite runs the same pipeline's queries many times: keep more of their compiled
            # code than Spark's 100 entries (warm 400-customer runs: 38 and 33 s against 42 and 37 s).
            "spark.sql.codegen.cache.maxEntries": "2000",
            # The suite's tables are a few thousand rows in two shuffle partitions: adaptive
            # execution has nothing to coalesce or re-plan, and planning each query stage by stage
            # cost a quarter of every run (warm 400-customer runs: 24-26 s against 33-35 s).
            # The product keeps it on by default.
            "spark.sql.adaptive.enabled": "false",
            **NO_CODEGEN,
        },
    )
    session = get_spark(settings)
    yield session
    session.stop()


@pytest.fixture(autouse=True)
def _mlflow_default_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Runs that do not configure a tracking URI land in a temporary store, never in ./mlruns."""
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path_factory.getbasetemp() / 'default-mlflow.db'}")
    yield
    if mlflow.active_run() is not None:
        mlflow.end_run()


def e2e_settings(root: Path, *overrides: str) -> Settings:
    """The shared end-to-end configuration: a 1,500-customer demo of 180 days ending on E2E_END, under ``root``."""
    return load_config(
        [],
        [
            f"storage.root={root}/warehouse",
            f"tracking.tracking_uri={root}/mlruns",
            f"demo.out={root}/demo",
            "demo.generator.customers=1500",
            "demo.generator.days=180",  # half a year tells the six archetypes apart at half the lines
            f"demo.generator.end_date={E2E_END}",
            "quality.clock=2026-01-01T00:00:00",
            "storage.database=seg_e2e",
            f"run.run_id={E2E_RUN}",
            "model.stability.bootstraps=2",
            # Six archetypes are planted: a sweep around them (5..7) is a real choice at a third of the cost of 2..10.
            "model.selection.k_min=5",
            "model.selection.k_max=7",
            # Half a year of history: a 30-day churn horizon leaves a training date 60 days back
            # and an evaluation date 30 days back; ten boosting rounds separate the lapsing customers.
            "predict.churn.horizon_days=30",
            "predict.churn.training_dates=1",
            "predict.churn.gbt_max_iter=10",
            # Every fit here takes seconds: a stuck one is cancelled and started again after a minute, not 30.
            "model.fit_timeout_seconds=60",
            *overrides,
        ],
    )


def statistics_columns(spark: SparkSession, table_path: str, version: int) -> set[str]:
    """The columns a Delta commit's added files carry min/max statistics for."""
    commit = spark.read.json(f"{table_path}/_delta_log/{version:020d}.json").where("add IS NOT NULL")
    return {name for row in commit.select("add.stats").collect() for name in json.loads(row.stats)["minValues"]}


@pytest.fixture(scope="session")
def e2e_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def e2e(spark: SparkSession, e2e_root: Path) -> PipelineResult:
    """One end-to-end run of every stage (sweep k = 5..7, two stability bootstraps), shared by the
    tests that need one. Tests must not change its warehouse: use ``e2e_copy`` for that."""
    return run_pipeline(spark, e2e_settings(e2e_root))


@pytest.fixture
def e2e_copy(e2e: PipelineResult, e2e_root: Path, tmp_path: Path) -> Path:
    """A private copy of the shared run's warehouse and demo log, for tests that write (with
    ``e2e_settings(copy, "storage.database=", ...)``; MLflow starts empty there)."""
    for name in ("warehouse", "demo"):
        shutil.copytree(e2e_root / name, tmp_path / name, symlinks=True)
    return tmp_path
