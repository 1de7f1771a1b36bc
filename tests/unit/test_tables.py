"""The table store: slices rendered from typed values, writes, replaces and history through one object."""

from datetime import date

import pytest
from pyspark.sql import functions as F

from seg_spark.config import load_config
from seg_spark.errors import EXIT_CONFIG, ConfigError, StageInputError
from seg_spark.runs import RunManifest
from seg_spark.stages import STAGE_NAMES, ordered
from seg_spark.tables import CommitConflictError, Predicate, Table, TableStore, sql_literal, where, where_in


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
    assert STAGE_NAMES == ("ingest", "features", "segment", "predict", "explain", "publish")
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


def _tagged_store(spark, root, run_id: str, retries: int = 3) -> TableStore:
    settings = load_config([], [f"storage.root={root}", f"storage.commit_retries={retries}"])
    return TableStore(spark, settings, {"run_id": run_id, "attempt_id": "a1"}).tagged(stage="publish")


def test_a_conflicting_commit_is_retried_and_after_the_retries_fails_naming_the_other_run(spark, tmp_path):
    from delta.exceptions import ConcurrentAppendException

    mine, other = _tagged_store(spark, tmp_path, "my-run", retries=1), _tagged_store(spark, tmp_path, "other-run")
    rows = spark.createDataFrame([("a", 1)], "run_id string, n int")
    other.overwrite(Table.MODEL_SELECTION, rows)
    calls = []

    def conflicting_once() -> str:
        calls.append(len(calls))
        if len(calls) == 1:  # as if other-run committed between this commit's read and its write
            other.append(Table.MODEL_SELECTION, rows)
            raise ConcurrentAppendException("Files were added to the root of the table by a concurrent update.")
        return "committed"

    assert mine._committing(Table.MODEL_SELECTION, "append", conflicting_once) == "committed"
    assert calls == [0, 1]

    def always_conflicting() -> str:
        raise ConcurrentAppendException("Files were added to the root of the table by a concurrent update.")

    with pytest.raises(CommitConflictError) as failure:
        mine._committing(Table.MODEL_SELECTION, "merge", always_conflicting)
    message = str(failure.value)
    assert failure.value.exit_code == EXIT_CONFIG
    assert f"table model_selection at {tmp_path}/model_selection: the merge conflicted" in message
    assert "2 time(s), latest commits by run other-run (publish) at versions 1, 0 (" in message
    assert "storage.commit_retries = 1" in message and "max_concurrent_runs" in message


def test_two_writers_merging_into_one_table_at_once_both_land(spark, tmp_path):
    """Two runs (two sessions, as two processes would be) MERGE into one table at the same time: every
    MERGE reads the whole table, so they conflict; the retries land every row once, each commit tagged."""
    import threading

    first = _tagged_store(spark.newSession(), tmp_path, "run-a", retries=10)
    second = _tagged_store(spark.newSession(), tmp_path, "run-b", retries=10)
    first.overwrite(
        Table.SEGMENTS_CURRENT, spark.createDataFrame([("seed", "none")], "customer_id string, run_id string")
    )
    start, failures = threading.Barrier(2), []

    def writer(store: TableStore, run_id: str) -> None:
        start.wait()
        try:
            for batch in range(3):
                source = store.spark.createDataFrame(
                    [(f"{run_id}-{batch}-{i}", run_id) for i in range(5)], "customer_id string, run_id string"
                )
                store.merge(
                    Table.SEGMENTS_CURRENT,
                    source,
                    "t.customer_id = s.customer_id",
                    lambda m: m.whenNotMatchedInsertAll(),
                )
        except Exception as exc:  # noqa: BLE001  (reported by the assertion below)
            failures.append(exc)

    threads = [threading.Thread(target=writer, args=(s, r)) for s, r in ((first, "run-a"), (second, "run-b"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    rows = first.read(Table.SEGMENTS_CURRENT)
    assert rows.count() == 31 and rows.select("customer_id").distinct().count() == 31
    merges = first.history(Table.SEGMENTS_CURRENT).filter(F.col("operation") == "MERGE").collect()
    assert len(merges) == 6
    for merge in merges:
        tagged = merge["userMetadata"]
        written = first.read(Table.SEGMENTS_CURRENT, merge["version"]).subtract(
            first.read(Table.SEGMENTS_CURRENT, merge["version"] - 1)
        )
        assert {r["run_id"] for r in written.collect()} == {"run-a" if '"run-a"' in tagged else "run-b"}
