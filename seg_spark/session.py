"""The one SparkSession factory.

Two situations, told apart without guessing from paths:

* **A session is active** (Databricks, a notebook, a test): reuse it as it is; only
  runtime-modifiable settings from ``spark.conf`` are applied.
* **A master is given** (a Python driver launched by ``spark-submit``, which sets
  ``PYSPARK_GATEWAY_PORT``): create the session without touching master, resources or
  JARs (those are the launcher's, e.g. ``--packages`` for Delta); only the Delta SQL
  extension and catalog, UTC and ``spark.conf`` from config are set.
* **Nothing is given** (a laptop, a test, a notebook): start the embedded default,
  ``local[*]`` with Delta Lake (JARs resolved from Maven Central on first use and cached
  in the Ivy cache; the resolved list is remembered, so later starts load those files
  without resolving again), AQE, shuffle partitions sized for the machine, UTC, UI off,
  and seg-spark's log4j2 profile (no start-up notices; ``spark.log_level`` from the start).

Everything set here can be overridden with ``spark.conf`` in config.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from seg_spark.config import SparkSettings

log = logging.getLogger(__name__)

DELTA_SQL_CONF = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
}


def launched_by_spark_submit() -> bool:
    """True when this Python driver runs inside a JVM started by spark-submit/pyspark."""
    return "PYSPARK_GATEWAY_PORT" in os.environ


def embedded_conf(settings: SparkSettings, cores: int | None = None) -> dict[str, str]:
    """Spark settings for the embedded local default, config overrides applied last.

    Args:
        settings: The ``spark`` section of the configuration.
        cores: Cores to size for; defaults to this machine's.

    Returns:
        A flat mapping of Spark configuration keys to values.
    """
    cores = cores or os.cpu_count() or 2
    # The parallel collector: the embedded driver is one batch JVM on few cores, where G1's
    # concurrent threads compete with the tasks (a warm demo run: 13% less CPU, 11% less time).
    java_options = f"-Duser.timezone=UTC -XX:+UseParallelGC -Dseg_spark.log_level={settings.log_level}"
    if settings.log_level.upper() not in ("INFO", "DEBUG", "TRACE", "ALL"):  # those want the notices too
        java_options += f" -Dlog4j2.configurationFile={LOG4J_PROFILE}"
    conf = {
        **DELTA_SQL_CONF,
        "spark.sql.adaptive.enabled": "true",
        "spark.sql.adaptive.coalescePartitions.enabled": "true",
        "spark.sql.shuffle.partitions": str(settings.shuffle_partitions or 4 * cores),
        "spark.default.parallelism": str(settings.shuffle_partitions or 4 * cores),
        "spark.sql.session.timeZone": "UTC",
        "spark.driver.extraJavaOptions": java_options,
        "spark.executor.extraJavaOptions": "-Duser.timezone=UTC",
        "spark.ui.enabled": "true" if settings.ui_enabled else "false",
        "spark.ui.showConsoleProgress": "false",
        # Delta's small metadata tables do not need a 200-partition shuffle per commit.
        "spark.databricks.delta.snapshotPartitions": "2",
        "spark.sql.sources.partitionOverwriteMode": "dynamic",
        # Spark lists folders (VACUUM, partition discovery) with up to 10,000 tasks by default:
        # a VACUUM of a 4-file table took 25 s here, 3.5 s with a task or four per core.
        "spark.sql.sources.parallelPartitionDiscovery.parallelism": str(4 * cores),
    }
    if settings.driver_memory:
        conf["spark.driver.memory"] = settings.driver_memory
    conf.update(settings.conf)
    return conf


LOG4J_PROFILE = Path(__file__).with_name("log4j2.properties")


def task_slots(spark: SparkSession) -> int:
    """Tasks the session runs at once: a local master's threads, otherwise the default parallelism.

    The embedded default sets ``spark.default.parallelism`` to four tasks per core (AQE
    coalesces shuffles), so in local mode the threads are read from the master itself.
    """
    master = spark.sparkContext.master or ""
    local = re.fullmatch(r"local(?:\[(\*|\d+)(?:,\d+)?\])?", master)
    if local is None:
        return max(spark.sparkContext.defaultParallelism, 1)
    threads = local.group(1)
    if threads is None:
        return 1
    return os.cpu_count() or 1 if threads == "*" else max(int(threads), 1)


def compacted(frame: DataFrame, rows: int, rows_per_partition: int) -> DataFrame:
    """``frame`` (about ``rows`` rows) in one partition per ``rows_per_partition`` rows, at most one per task slot.

    MLlib runs a job per iteration (or per tree level) of one task per partition: on a few
    thousand rows the tasks, not the arithmetic, are the cost (the demo's 4,288 churn training
    rows in sixteen partitions: 23 s and 35 s to fit, in one 8 s and 17 s, the same models).
    """
    return frame.coalesce(max(1, min(task_slots(frame.sparkSession), -(-rows // rows_per_partition))))


def _jar_cache(packages: str) -> Path:
    """Where the local JAR files resolved for ``packages`` are remembered."""
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return home / "seg-spark" / f"jars-{hashlib.sha256(packages.encode()).hexdigest()[:16]}.txt"


def cached_jars(packages: str) -> str | None:
    """The JAR files resolved for ``packages`` by an earlier start, when they are all still there."""
    try:
        jars = _jar_cache(packages).read_text().strip()
    except OSError:
        return None
    paths = [jar.removeprefix("file://") for jar in jars.split(",") if jar]
    return jars if paths and all(Path(p).is_file() for p in paths) else None


def _remember_jars(packages: str, spark: SparkSession) -> None:
    """Record the JAR files Ivy resolved, so the next start skips resolving (and its output)."""
    jars = spark.sparkContext.getConf().get("spark.jars")
    if not jars:
        return
    cache = _jar_cache(packages)
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        cache.write_text(jars)
    except OSError as exc:  # a read-only home: resolve again next time
        log.debug("could not remember the resolved JARs in %s: %s", cache, exc)


def delta_packages() -> str:
    """The Maven coordinate of the Delta JAR matching the installed delta-spark/pyspark."""
    from delta import configure_spark_with_delta_pip

    builder = configure_spark_with_delta_pip(SparkSession.builder)
    return builder._options["spark.jars.packages"]  # noqa: SLF001 - the helper's only output


def get_spark(settings: SparkSettings | None = None) -> SparkSession:
    """Return the SparkSession for seg-spark, reusing a given one.

    Args:
        settings: The ``spark`` section of the configuration (defaults when None).

    Returns:
        An active SparkSession with Delta Lake enabled where seg-spark started it.
    """
    settings = settings or SparkSettings()
    active = SparkSession.getActiveSession()
    if active is not None:
        # Only runtime-settable options can change on a running session (Databricks, notebooks).
        for key, value in settings.conf.items():
            if active.conf.isModifiable(key):
                active.conf.set(key, value)
        log.info("reusing the active Spark session (master %s)", active.sparkContext.master)
        return active

    builder = SparkSession.builder.appName(settings.app_name)
    if launched_by_spark_submit():
        # The launcher owns master, resources and JARs (--packages); add only what seg-spark
        # needs from the session itself, then the user's own settings.
        conf = {**DELTA_SQL_CONF, "spark.sql.session.timeZone": "UTC", **settings.conf}
        where = "the master given to spark-submit"
    else:
        builder = builder.master(settings.master or "local[*]")
        conf = embedded_conf(settings)
        where = f"embedded Spark ({settings.master or 'local[*]'})"
        if settings.delta_packages and not {"spark.jars.packages", "spark.jars"} & set(settings.conf):
            packages = delta_packages()
            with _resolving(packages) as cached:
                if cached:
                    conf["spark.jars"] = cached
                else:
                    conf["spark.jars.packages"] = packages
                spark = _start(builder, conf, settings, where)
                if not cached:
                    _remember_jars(packages, spark)
                return spark
    return _start(builder, conf, settings, where)


def _start(builder: SparkSession.Builder, conf: dict[str, str], settings: SparkSettings, where: str) -> SparkSession:
    """Start the session ``builder`` describes, with ``conf``, at the configured log level."""
    for key, value in conf.items():
        builder = builder.config(key, value)
    log.info("starting %s", where)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(settings.log_level)
    return spark


@contextmanager
def _resolving(packages: str) -> Iterator[str | None]:
    """The JARs an earlier start resolved, or None while this process holds the right to resolve them.

    Ivy's cache is not safe for two processes resolving at once (downloads fail half-written), so a
    first start on a machine takes a file lock; a process that waited then finds the JARs resolved.
    """
    cached = cached_jars(packages)
    if cached:
        yield cached
        return
    lock = _jar_cache(packages).with_suffix(".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        handle = lock.open("a")
    except OSError as exc:  # a read-only home: resolve without the lock
        log.debug("could not lock %s: %s", lock, exc)
        yield None
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield cached_jars(packages)
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def conf_set(spark: SparkSession, key: str, value: str) -> Iterator[None]:
    """Set a session conf for the block only; its earlier value (or its absence) comes back after."""
    previous = spark.conf.get(key, None)
    spark.conf.set(key, value)
    try:
        yield
    finally:
        if previous is None:
            spark.conf.unset(key)
        else:
            spark.conf.set(key, previous)
