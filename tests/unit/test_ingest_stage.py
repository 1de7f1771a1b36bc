"""The ingest stage validates before it commits: a failed run leaves the tables a consumer reads as they
were, and the quarantine holds the current snapshot's bad rows once."""

import pytest
from mlflow.tracking import MlflowClient
from pyspark.sql import functions as F

from seg_spark import pipeline
from seg_spark.config import load_config
from seg_spark.errors import DataError, StageInputError
from seg_spark.features.store import changed_days
from seg_spark.pipeline import run_pipeline
from seg_spark.quality import QualityThresholdError
from seg_spark.runs import RunManifest
from seg_spark.tables import Table, TableStore
from seg_spark.tracking import configure, resolve_tracking_uri

from conftest import statistics_columns

pytestmark = pytest.mark.slow  # whole ingest runs through the pipeline

HEADER = "order,customer,when,product,qty,price\n"
GOOD = (
    HEADER
    + "".join(f"o{i},c{i % 7},2025-03-{1 + i % 28:02d} 10:00:00,p{i % 5},{1 + i % 3},{2.5 + i}\n" for i in range(40))
    + "o99,,2025-03-02 10:00:00,p1,1,2.0\n"
)  # one row without a customer: quarantined
# The same export with day-first dates: every timestamp is unparseable with the configured format.
DAY_FIRST = HEADER + "".join(f"o{i},c{i % 7},{1 + i % 28:02d}/03/2025 10:00,p{i % 5},1,3.0\n" for i in range(40))


def _settings(tmp_path, source, run_id, *extra):
    return load_config(
        [],
        [
            f"storage.root={tmp_path}/warehouse",
            "tracking.enabled=false",
            f"sources.transactions.path={source}",
            "sources.transactions.format=csv",
            "sources.transactions.timestamp_format=yyyy-MM-dd HH:mm:ss",
            "sources.transactions.columns={customer_id: customer, order_id: order, ts: when, product_id: product, "
            "quantity: qty, unit_price: price, description: null, category: null, channel: null, discount: null, "
            "country: null}",
            "quality.clock=2025-06-01T00:00:00",
            "model.min_customers_per_segment=3",  # seven customers are enough for the ingest stage's check
            f"run.run_id={run_id}",
            *extra,
        ],
    )


def _state(store: TableStore) -> dict[str, tuple[int, int]]:
    """(Delta version, rows) of the tables a consumer reads."""
    tables = (Table.TRANSACTIONS_CLEAN, Table.TRANSACTIONS_QUARANTINE)
    return {t.value: (store.version(t), store.read(t).count()) for t in tables}


def test_a_failed_ingest_changes_nothing_a_consumer_reads_and_the_quarantine_does_not_pile_up(
    spark, tmp_path, monkeypatch
):
    good, bad = tmp_path / "good.csv", tmp_path / "day_first.csv"
    good.write_text(GOOD)
    bad.write_text(DAY_FIRST)
    first = run_pipeline(spark, _settings(tmp_path, good, "good-1"), ["ingest"]).stages["ingest"]
    assert (first.counts.clean_rows, first.counts.quarantined_rows) == (40, 1)
    store = TableStore(spark, _settings(tmp_path, good, "good-1"))
    before = _state(store)
    assert before["transactions_clean"][1] == 40 and before["transactions_quarantine"][1] == 1

    # storage.maintain_after_run: housekeeping after a successful run only (maintain() has its own tests).
    maintained = []
    monkeypatch.setattr(
        pipeline, "maintain", lambda store, hours: maintained.append((store.path(Table.DATA_QUALITY), hours))
    )
    housekeeping = ("storage.maintain_after_run=true", "storage.retention_hours=12")
    with pytest.raises(QualityThresholdError, match="fails its quality thresholds") as failure:
        run_pipeline(spark, _settings(tmp_path, bad, "bad-1", *housekeeping), ["ingest"])
    assert maintained == []
    assert isinstance(failure.value, DataError) and failure.value.exit_code == 3
    assert _state(store) == before
    # The failed run's own data-quality rows stay for diagnosis, next to its failed manifest row.
    dq = store.read(Table.DATA_QUALITY).filter("run_id = 'bad-1' AND metric = 'rule'")
    assert {r.column: r.value for r in dq.collect()}["invalid_timestamp"] == 40
    (manifest,) = store.read(Table.PIPELINE_RUNS).filter("run_id = 'bad-1'").collect()
    assert manifest.status == "failed" and manifest.error.startswith("QualityThresholdError:")

    again = run_pipeline(spark, _settings(tmp_path, good, "good-2", *housekeeping), ["ingest"]).stages["ingest"]
    assert maintained == [(store.path(Table.DATA_QUALITY), 12)]
    assert again.counts == first.counts
    # The same snapshot again: its clean lines are unchanged, so transactions_clean gets no commit.
    assert store.version(Table.TRANSACTIONS_CLEAN) == before["transactions_clean"][0]
    quarantine = store.read(Table.TRANSACTIONS_QUARANTINE).collect()
    assert [(r.source, r.reason_code, r.run_id) for r in quarantine] == [
        ("transactions", "missing_customer_id", "good-2")
    ]
    assert store.read(Table.TRANSACTIONS_CLEAN).count() == 40


def test_a_stage_left_running_by_a_dead_process_is_marked_abandoned(spark, tmp_path):
    good = tmp_path / "good.csv"
    good.write_text(GOOD)
    settings = _settings(tmp_path, good, "after-kill", "tracking.enabled=true", f"tracking.tracking_uri={tmp_path}/ml")
    # What a process killed during its features stage leaves: a running manifest row and a RUNNING MLflow run.
    configure(settings.tracking)
    client = MlflowClient()
    dead = client.create_run(client.get_experiment_by_name(settings.tracking.experiment).experiment_id)
    store = TableStore(spark, settings)
    RunManifest(store).started("killed", "features", dead.info.run_id, "dead-attempt")

    run_pipeline(spark, settings, ["ingest"])
    rows = {(r.run_id, r.stage): r for r in store.read(Table.PIPELINE_RUNS).collect()}
    abandoned = rows[("killed", "features")]
    assert abandoned.status == "abandoned" and abandoned.ended_at is not None
    assert "found running when run after-kill started; rolled back: nothing had been committed" in abandoned.error
    assert rows[("after-kill", "ingest")].status == "succeeded"
    assert client.get_run(dead.info.run_id).info.status == "FAILED"


def test_a_run_failing_in_features_rolls_back_its_ingest_and_is_recorded_with_its_error(spark, tmp_path):
    good, later = tmp_path / "good.csv", tmp_path / "later.csv"
    good.write_text(GOOD)
    later.write_text(GOOD + "o77,c1,2025-04-02 10:00:00,p1,1,2.0\n")  # a new month: the failing run's ingest commits
    run_pipeline(spark, _settings(tmp_path, good, "good-1"), ["ingest"])
    tracked = ("tracking.enabled=true", f"tracking.tracking_uri={tmp_path}/ml", "features.as_of_date=2024-06-01")
    settings = _settings(tmp_path, later, "fails", *tracked, "features.product_groups.enabled=never")
    store = TableStore(spark, settings)
    clean_version = store.version(Table.TRANSACTIONS_CLEAN)
    with pytest.raises(DataError, match="on or before the first clean transaction"):
        run_pipeline(spark, settings)
    rows = store.read(Table.PIPELINE_RUNS).filter("run_id = 'fails'").collect()
    by_stage = {r.stage: r for r in sorted(rows, key=lambda r: r.started_at)}
    assert list(by_stage) == ["ingest", "features"]  # the segment stage never started
    failed = by_stage["features"]
    assert failed.status == "failed" and failed.ended_at >= failed.started_at
    assert failed.error.startswith("DataError: as-of date 2024-06-01 is on or before the first clean transaction")
    # Its ingest had replaced transactions_clean and its features created the daily aggregates: undone.
    rollback = failed.error.splitlines()[-1]
    assert rollback == (
        f"rolled back: transactions_clean to version {clean_version}; transactions_quarantine to version 0; "
        "customer_daily removed (the attempt created it); feature_refresh_log removed (the attempt created it)"
    )
    assert by_stage["ingest"].status == "rolled_back" and by_stage["ingest"].error == rollback
    clean = store.read(Table.TRANSACTIONS_CLEAN)
    assert [r[0] for r in clean.select("ingest_run_id").distinct().collect()] == ["good-1"] and clean.count() == 40
    assert store.history(Table.TRANSACTIONS_CLEAN, 1).first().operation == "RESTORE"
    assert not store.exists(Table.CUSTOMER_DAILY)
    client = MlflowClient(tracking_uri=resolve_tracking_uri(settings.tracking.tracking_uri)[0])
    assert client.get_run(failed.mlflow_run_id).info.status == "FAILED"
    # A later stage of the same run would read the previous run's tables: refused.
    with pytest.raises(StageInputError, match="the ingest stage of run fails was rolled back"):
        run_pipeline(spark, settings, ["features"])


def test_appended_batches_get_the_change_feed_and_statistics_a_snapshot_gets(spark, tmp_path):
    first, second = tmp_path / "day-1.csv", tmp_path / "day-2.csv"
    first.write_text(GOOD)
    second.write_text(
        HEADER + "".join(f"b{i},c{i % 7},2025-04-{1 + i % 20:02d} 09:00:00,p{i % 3},1,{4.0 + i}\n" for i in range(20))
    )
    for source, run_id in ((first, "day-1"), (second, "day-2")):
        run_pipeline(spark, _settings(tmp_path, source, run_id, "sources.transactions.mode=append"), ["ingest"])
    store = TableStore(spark, _settings(tmp_path, second, "day-2"))
    path = store.path(Table.TRANSACTIONS_CLEAN)
    # One commit per batch: the first created the table with its properties, the second appended.
    assert store.version(Table.TRANSACTIONS_CLEAN) == 1
    assert [r.operation for r in store.history(Table.TRANSACTIONS_CLEAN, 2).collect()] == ["WRITE", "WRITE"]
    assert dict(spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect())["delta.enableChangeDataFeed"] == "true"
    assert [statistics_columns(spark, path, v) for v in (0, 1)] == [{"customer_id", "ts", "tx_date"}] * 2
    assert store.read(Table.TRANSACTIONS_CLEAN).count() == 60
    assert {d.month for d in changed_days(store, 1, 1)} == {4}  # the second batch's days, from the change feed


def test_a_snapshot_rewrites_only_the_months_whose_lines_changed(spark, tmp_path):
    source = tmp_path / "snapshot.csv"
    april = "".join(f"a{i},c{i % 7},2025-04-{1 + i % 20:02d} 09:00:00,p{i % 3},1,{4.0 + i}\n" for i in range(20))
    source.write_text(GOOD + april)
    run_pipeline(spark, _settings(tmp_path, source, "snap-1"), ["ingest"])
    store = TableStore(spark, _settings(tmp_path, source, "snap-1"))
    first = store.version(Table.TRANSACTIONS_CLEAN)
    assert first == 0  # created with its change feed on in the same commit (changed_days below reads it)
    path = store.path(Table.TRANSACTIONS_CLEAN)
    assert statistics_columns(spark, path, first) == {"customer_id", "ts", "tx_date"}  # what reads filter on
    # The next export, under a new file name, changes one April line.
    renamed = tmp_path / "snapshot-2.csv"
    renamed.write_text(GOOD + april.replace("a3,c3,2025-04-04 09:00:00,p0,1,7.0", "a3,c3,2025-04-04 09:00:00,p0,2,7.0"))
    run_pipeline(spark, _settings(tmp_path, renamed, "snap-2"), ["ingest"])
    last = store.version(Table.TRANSACTIONS_CLEAN)
    assert last == first + 1
    commit = store.history(Table.TRANSACTIONS_CLEAN, 1).first()
    assert commit.operation == "WRITE" and "tx_month" in commit.operationParameters["predicate"]
    assert statistics_columns(spark, path, last) == {"customer_id", "ts", "tx_date"}  # the table keeps its setting
    clean = store.read(Table.TRANSACTIONS_CLEAN)
    months = clean.select("tx_month", "ingest_run_id", F.element_at(F.split("source_file", "/"), -1)).distinct()
    lineage = {(r[0].month, r[1], r[2]) for r in months.collect()}
    assert lineage == {(3, "snap-1", "snapshot.csv"), (4, "snap-2", "snapshot-2.csv")}  # March was left as it was
    assert clean.count() == 60 and clean.filter("order_id = 'a3'").first().quantity == 2.0
    # The change feed, which the incremental feature refresh reads, names April's days only.
    days = changed_days(store, first + 1, last)
    assert {d.month for d in days} == {4} and len(days) == 20

    source.write_text(GOOD)  # April leaves the snapshot: its lines leave the table
    run_pipeline(spark, _settings(tmp_path, source, "snap-3"), ["ingest"])
    assert store.read(Table.TRANSACTIONS_CLEAN).count() == 40
    assert {d.month for d in changed_days(store, last + 1, store.version(Table.TRANSACTIONS_CLEAN))} == {4}
