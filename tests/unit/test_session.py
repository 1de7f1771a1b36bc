from seg_spark.config import SparkSettings
from seg_spark.session import embedded_conf, get_spark, launched_by_spark_submit


def test_embedded_defaults_are_sized_for_the_machine_and_overridable():
    conf = embedded_conf(SparkSettings(), cores=3)
    assert conf["spark.sql.shuffle.partitions"] == "12"
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
