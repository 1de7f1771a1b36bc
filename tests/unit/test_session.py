import fcntl
import os
from types import SimpleNamespace

import pytest

from seg_spark.config import SparkSettings
from seg_spark.session import (
    LOG4J_PROFILE,
    _jar_cache,
    _resolving,
    cached_jars,
    embedded_conf,
    get_spark,
    launched_by_spark_submit,
    task_slots,
)


def test_embedded_defaults_are_sized_for_the_machine_and_overridable():
    conf = embedded_conf(SparkSettings(), cores=3)
    assert conf["spark.sql.shuffle.partitions"] == "12"
    assert conf["spark.sql.sources.parallelPartitionDiscovery.parallelism"] == "12"
    assert conf["spark.sql.adaptive.enabled"] == "true"
    assert conf["spark.sql.session.timeZone"] == "UTC"
    assert conf["spark.ui.enabled"] == "false"
    assert conf["spark.sql.extensions"] == "io.delta.sql.DeltaSparkSessionExtension"
    custom = embedded_conf(
        SparkSettings(shuffle_partitions=5, ui_enabled=True, conf={"spark.sql.session.timeZone": "Europe/Paris"})
    )
    assert custom["spark.sql.shuffle.partitions"] == "5"
    assert custom["spark.ui.enabled"] == "true"
    assert custom["spark.sql.session.timeZone"] == "Europe/Paris"


def test_spark_submit_is_detected_from_the_gateway(monkeypatch):
    monkeypatch.delenv("PYSPARK_GATEWAY_PORT", raising=False)
    assert not launched_by_spark_submit()
    monkeypatch.setenv("PYSPARK_GATEWAY_PORT", "40000")
    assert launched_by_spark_submit()


def test_an_active_session_is_reused_not_reconfigured(spark):
    again = get_spark(SparkSettings(master="local[1]", conf={"spark.sql.shuffle.partitions": "3"}))
    try:
        assert again is spark
        assert spark.sparkContext.master == "local[2]"
        assert spark.conf.get("spark.sql.shuffle.partitions") == "3"
        assert spark.conf.get("spark.sql.session.timeZone") == "UTC"
        assert spark.conf.get("spark.sql.catalog.spark_catalog").endswith("DeltaCatalog")
    finally:
        spark.conf.set("spark.sql.shuffle.partitions", "2")


def test_the_quiet_log_profile_is_used_unless_spark_output_is_asked_for():
    quiet = embedded_conf(SparkSettings(log_level="WARN"))["spark.driver.extraJavaOptions"]
    assert f"-Dlog4j2.configurationFile={LOG4J_PROFILE}" in quiet and "-Dseg_spark.log_level=WARN" in quiet
    assert LOG4J_PROFILE.is_file() and "seg_spark.log_level" in LOG4J_PROFILE.read_text()
    chatty = embedded_conf(SparkSettings(log_level="INFO"))["spark.driver.extraJavaOptions"]
    assert "log4j2.configurationFile" not in chatty and "-Duser.timezone=UTC" in chatty
    assert "-XX:+UseParallelGC" in quiet and "-XX:+UseParallelGC" in chatty


def test_resolved_jars_are_reused_only_while_every_file_is_there(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    jars = [tmp_path / "a.jar", tmp_path / "b.jar"]
    for jar in jars:
        jar.write_bytes(b"PK")
    assert cached_jars("io.delta:delta-spark_4.2_2.13:4.4.0") is None  # never resolved here
    cache = _jar_cache("io.delta:delta-spark_4.2_2.13:4.4.0")
    cache.parent.mkdir(parents=True)
    cache.write_text(",".join(f"file://{jar}" for jar in jars))
    assert cached_jars("io.delta:delta-spark_4.2_2.13:4.4.0") == f"file://{jars[0]},file://{jars[1]}"
    assert cached_jars("io.delta:delta-spark_4.2_2.13:9.9.9") is None  # another version: resolve it
    jars[1].unlink()  # e.g. the Ivy cache was cleared: resolve again
    assert cached_jars("io.delta:delta-spark_4.2_2.13:4.4.0") is None


def test_a_first_resolution_holds_a_lock_that_a_second_process_waits_for(monkeypatch, tmp_path):
    """Ivy's cache breaks when two processes resolve at once: the first start on a machine holds a lock
    until the JARs are remembered, and a start that already finds them takes no lock."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    packages = "io.delta:delta-spark_4.2_2.13:4.4.0"
    lock = _jar_cache(packages).with_suffix(".lock")

    def lock_is_free() -> bool:
        with lock.open("a") as other:  # another open file description, as another process has
            try:
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False
            fcntl.flock(other, fcntl.LOCK_UN)
            return True

    with _resolving(packages) as cached:
        assert cached is None and not lock_is_free()
        jar = tmp_path / "delta.jar"
        jar.write_bytes(b"PK")
        _jar_cache(packages).write_text(f"file://{jar}")  # what get_spark remembers once resolved
    assert lock_is_free()
    with _resolving(packages) as cached:
        assert cached == f"file://{jar}" and lock_is_free()


@pytest.mark.parametrize(
    ("master", "parallelism", "expected"),
    [("local", 8, 1), ("local[3]", 8, 3), ("local[2,4]", 8, 2), ("local[*]", 8, os.cpu_count()), ("yarn", 64, 64)],
)
def test_task_slots_reads_a_local_masters_threads_and_a_clusters_parallelism(master, parallelism, expected):
    context = SimpleNamespace(master=master, defaultParallelism=parallelism)
    assert task_slots(SimpleNamespace(sparkContext=context)) == expected
