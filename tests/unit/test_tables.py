"""The table store: slices rendered from typed values, writes, replaces and history through one object."""

from datetime import date

import pytest
from pyspark.sql import functions as F

from seg_spark.config import load_config
from seg_spark.errors import ConfigError, StageInputError
from seg_spark.runs import RunManifest
from seg_spark.stages import STAGE_NAMES, ordered
from seg_spark.tables import Predicate, Table, TableStore, sql_literal, where, where_in


@pytest.fixture
def store(spark, tmp_path):
    return TableStore(spark, load_config([], [f"storage.root={tmp_path}", "tables.customer_segments=segs"]))


def test_literals_are_typed_and_escaped():
    assert sql_literal("abc") == "'abc'"
    assert sql_literal("o'neil\\") == "'o\\'neil\\\\'"
    assert sql_literal(date(2026, 1, 2)) == "DATE'2026-01-02'"
    assert (sql_literal(7), sql_literal(True)) == ("7", "true")
    assert where(run_id="r1", source="transactions").sql() == "`run_id` = 'r1' AND `source` = 'transactions'"
    assert where_in("day", [date(2026, 1, 1), date(2026, 1, 3)]).sql() == (
        "`day` IN (DATE'2026-01-01', DATE'2026-01-03')"
    )
    with pytest.raises(ValueError, match="whole table"):
        Predicate().sql()
    with pytest.raises(ValueError, match="selects nothing"):
        where_in("day", []).sql()


def test_a_quote_in_a_value_cannot_widen_a_replaced_slice(spark, store):
    rows = spark.createDataFrame([("a", 1), ("b", 2), ("x' OR '1'='1", 3)], "run_id string, n int")
    store.overwrite(Table.MODEL_SELECTION, rows)
    odd = "x' OR '1'='1"
    store.replace(Table.MODEL_SELECTION, spark.createDataFrame([(odd, 30)], "run_id string, n int"), where(run_id=odd))
    assert sorted(tuple(r) for r in store.read(Table.MODEL_SELECTION).collect()) == [("a", 1), ("b", 2), (odd, 30)]
    assert store.read(Table.MODEL_SELECTION).filter(where(run_id=odd).column()).count() == 1


def test_the_store_names_locates_versions_and_reports_missing_input(spark, store, tmp_path):
    assert store.path(Table.CUSTOMER_SEGMENTS) == f"{tmp_path}/segs" and store.name(Table.CUSTOMER_SEGMENTS) == "segs"
    assert not store.exists(Table.CUSTOMER_SEGMENTS)
    with pytest.raises(StageInputError, match="table segs does not exist .* run the segment stage first"):
        store.require(Table.CUSTOMER_SEGMENTS, "segment")
    day = spark.range(3).select(F.lit(date(2026, 1, 1)).alias("as_of_date"), F.col("id"))
    store.replace(Table.CUSTOMER_SEGMENTS, day, where(as_of_date=date(2026, 1, 1)), partition_by=["as_of_date"])
    other = spark.range(2).select(F.lit(date(2026, 1, 2)).alias("as_of_date"), F.col("id"))
    store.replace(Table.CUSTOMER_SEGMENTS, other, where(as_of_date=date(2026, 1, 2)), partition_by=["as_of_date"])
    assert store.version(Table.CUSTOMER_SEGMENTS) == 1 and store.rows_written(Table.CUSTOMER_SEGMENTS) == 2
    assert store.read(Table.CUSTOMER_SEGMENTS).count() == 5 and store.read(Table.CUSTOMER_SEGMENTS, 0).count() == 3
    assert not store.replaced_between(Table.CUSTOMER_SEGMENTS, 1, 1)  # a slice replace is not a full one
    store.overwrite(Table.CUSTOMER_SEGMENTS, other, partition_by=["as_of_date"], commit_metadata={"as_of": "x"})
    assert store.replaced_between(Table.CUSTOMER_SEGMENTS, 1, 2)
    assert store.commit_metadata(Table.CUSTOMER_SEGMENTS) == {"as_of": "x"}


def test_stages_are_named_and_run_in_pipeline_order():
    assert STAGE_NAMES == ("ingest", "features", "segment", "publish")
    assert ordered(None) == ordered([]) == STAGE_NAMES
    assert ordered(["segment", "ingest", "segment"]) == ("ingest", "segment")
    with pytest.raises(ConfigError, match="unknown stage"):
        ordered(["publish-everything"])


def test_the_manifest_appends_a_new_stage_and_replaces_a_rerun_one_across_processes(store):
    first = RunManifest(store)  # the process that ran ingest
    started = first.started("r1", "ingest", None, "attempt-1")
    first.finished(started, as_of_date=date(2026, 1, 1), rows_in=10, rows_out=9)
    later = RunManifest(store)  # another process, reading the run's rows from the table
    later.started("r1", "features", "mlflow-1", "attempt-2")
    assert [(r.stage, r.status) for r in later.records("r1")] == [("ingest", "succeeded"), ("features", "running")]
    assert later.as_of_date("r1") == date(2026, 1, 1)
    rerun = later.started("r1", "ingest", "mlflow-1", "attempt-2")  # the same stage again: its row is replaced
    later.finished(rerun, as_of_date=date(2026, 1, 2), rows_in=11, rows_out=10)
    rows = store.read(Table.PIPELINE_RUNS).orderBy("stage").collect()
    assert [(r.stage, r.status, r.rows_in) for r in rows] == [
        ("features", "running", None),
        ("ingest", "succeeded", 11),
    ]
    assert RunManifest(store).as_of_date("r1") == date(2026, 1, 2)
