"""Rolling back a failed attempt: each table it committed to goes back to the version before its first
commit, a table it created goes away, the diagnostic tables stay, a second rollback changes nothing, and
the registry versions it registered are deleted."""

from datetime import UTC, date, datetime
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import SparkSession

from seg_spark.config import load_config
from seg_spark.recovery import rollback_attempt
from seg_spark.runs import RUNS_SCHEMA, RunManifest
from seg_spark.tables import Table, TableStore, where
from seg_spark.tracking import ATTEMPT_TAG, Tracker, configure


def _rows(spark: SparkSession, ids: range, as_of: date):
    return spark.createDataFrame([(i, as_of) for i in ids], "customer_id long, as_of_date date")


def _ids(store: TableStore, table: Table) -> list[int]:
    return sorted(r.customer_id for r in store.read(table).collect())


def test_a_failed_attempt_is_undone_table_by_table_and_only_once(spark, tmp_path: Path):
    base = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    earlier = base.tagged(run_id="r1", attempt_id="a1", stage="features")
    day1, day2 = date(2026, 1, 1), date(2026, 1, 2)
    earlier.replace(Table.CUSTOMER_FEATURES, _rows(spark, range(3), day1), where(as_of_date=day1))
    earlier.overwrite(Table.CUSTOMER_STATE, _rows(spark, range(3), day1), commit_metadata={"as_of": "2026-01-01"})

    failed = base.tagged(run_id="r2", attempt_id="a2", stage="segment")
    failed.replace(Table.CUSTOMER_FEATURES, _rows(spark, range(10, 14), day2), where(as_of_date=day2))
    failed.replace(Table.CUSTOMER_FEATURES, _rows(spark, range(20, 22), day1), where(as_of_date=day1))
    failed.overwrite(Table.CUSTOMER_STATE, _rows(spark, range(5), day2), commit_metadata={"as_of": "2026-01-02"})
    failed.replace(Table.CUSTOMER_SEGMENTS, _rows(spark, range(4), day2), where(as_of_date=day2))  # creates it
    failed.append(Table.DATA_QUALITY, _rows(spark, range(1), day2))  # diagnosis: kept

    undone = rollback_attempt(base, "a2")
    assert undone.restored == {"customer_features": 0, "customer_state": 0}
    assert undone.removed == ["customer_segments"] and undone.refused == {}
    assert undone.summary().startswith("rolled back: customer_features to version 0; customer_state to version 0;")
    assert _ids(base, Table.CUSTOMER_FEATURES) == [0, 1, 2] and _ids(base, Table.CUSTOMER_STATE) == [0, 1, 2]
    assert not base.exists(Table.CUSTOMER_SEGMENTS)
    assert base.read(Table.DATA_QUALITY).count() == 1
    # The restore commit carries the restored version's own metadata (the running state reads it).
    assert base.commit_metadata(Table.CUSTOMER_STATE) == {"as_of": "2026-01-01", "rollback_of": "a2"}
    versions = {t: base.version(t) for t in (Table.CUSTOMER_FEATURES, Table.CUSTOMER_STATE)}
    # Incremental readers of the change feed must start over after a restore.
    restored = versions[Table.CUSTOMER_FEATURES]
    assert base.replaced_between(Table.CUSTOMER_FEATURES, restored, restored)

    assert rollback_attempt(base, "a2").summary() == "rolled back: nothing had been committed"
    assert {t: base.version(t) for t in versions} == versions
    # a1's commits now have a2's after them: rolling a1 back would undo a2's history too, so it is refused.
    refused = rollback_attempt(base, "a1")
    assert set(refused.refused) == {"customer_features", "customer_state"}
    assert "attempt(s) a2 committed to it afterwards" in refused.refused["customer_features"]
    assert _ids(base, Table.CUSTOMER_FEATURES) == [0, 1, 2]


def test_the_next_start_rolls_back_a_dead_attempt_and_marks_its_stages(spark, tmp_path: Path):
    base = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    day = date(2026, 1, 1)
    base.tagged(attempt_id="old").replace(Table.CUSTOMER_FEATURES, _rows(spark, range(2), day), where(as_of_date=day))
    dead = RunManifest(base)  # a process that finished ingest, then died in features
    ingest = dead.started("r9", "ingest", None, "dead")
    dead.finished(ingest, as_of_date=None, rows_in=5, rows_out=5)
    dead.started("r9", "features", None, "dead")
    base.tagged(attempt_id="dead").replace(Table.CUSTOMER_FEATURES, _rows(spark, range(7), day), where(as_of_date=day))

    changed = RunManifest(base).abandon_unfinished("r10", lambda a: rollback_attempt(base, a).summary())
    assert {(r.stage, r.status) for r in changed} == {("ingest", "rolled_back"), ("features", "abandoned")}
    rows = {r.stage: r for r in base.read(Table.PIPELINE_RUNS).collect()}
    rollback = "rolled back: customer_features to version 0"
    assert rows["features"].error.endswith(f"found running when run r10 started; {rollback}")
    assert rows["ingest"].error == "rolled back: customer_features to version 0" and rows["ingest"].rows_in == 5
    assert _ids(base, Table.CUSTOMER_FEATURES) == [0, 1]
    assert RunManifest(base).rolled_back("r9", ["ingest"]).stage == "ingest"
    assert RunManifest(base).abandon_unfinished("r11", lambda a: rollback_attempt(base, a).summary()) == []


def test_a_rollback_deletes_the_registry_versions_its_attempt_registered(tmp_path: Path):
    settings = load_config([], [f"storage.root={tmp_path}", f"tracking.tracking_uri={tmp_path}/ml", "model.name=m"])
    tracker = Tracker(settings)
    configure(settings.tracking)
    client = MlflowClient()
    for name in ("m", "m-churn"):
        client.create_registered_model(name)
    for attempt in ("kept", "failed", "failed"):
        client.create_model_version("m", f"{tmp_path}/model", tags={ATTEMPT_TAG: attempt})
    client.create_model_version("m-churn", f"{tmp_path}/churn", tags={ATTEMPT_TAG: "failed"})
    assert tracker.delete_model_versions("failed") == ["m version 2", "m version 3", "m-churn version 1"]
    assert [str(v.version) for v in client.search_model_versions("name = 'm'")] == ["1"]
    assert client.search_model_versions("name = 'm-churn'") == []
    assert tracker.delete_model_versions("failed") == []


def test_a_running_row_from_before_attempts_were_recorded_is_abandoned_without_a_rollback(spark, tmp_path: Path):
    base = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    old_schema = RUNS_SCHEMA.removesuffix(", attempt_id string")
    row = ("r0", "features", "running", None, datetime(2026, 1, 1, tzinfo=UTC), *[None] * 6)
    base.append(Table.PIPELINE_RUNS, spark.createDataFrame([row], old_schema))

    (changed,) = RunManifest(base).abandon_unfinished("r1", lambda a: pytest.fail(f"rolled back {a}"))
    assert (changed.stage, changed.status, changed.attempt_id) == ("features", "abandoned", None)
    assert changed.error.endswith("not rolled back: written before attempts were recorded")
