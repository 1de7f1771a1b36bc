"""seg-spark maintain: compaction keeps the rows, and the retention decides what time travel can still read."""

from pathlib import Path

from seg_spark.cli import main
from seg_spark.config import load_config
from seg_spark.maintenance import TableMaintenance, maintain
from seg_spark.tables import Table, TableStore, where

RETENTION_CHECK = "spark.databricks.delta.retentionDurationCheck.enabled"


def test_compaction_keeps_the_rows_and_the_retention_decides_what_time_travel_keeps(spark, tmp_path):
    store = TableStore(spark, load_config([], [f"storage.root={tmp_path}"]))
    rows = lambda run: spark.createDataFrame(  # noqa: E731
        [(run, "transactions", m, float(i)) for i, m in enumerate(("input_rows", "clean_rows"))],
        "run_id string, source string, metric string, value double",
    )
    # Five runs: one overwrite, three appends, one replaced slice: four current files, five written.
    store.overwrite(Table.DATA_QUALITY, rows("r1"))
    for run in ("r2", "r3", "r4"):
        store.append(Table.DATA_QUALITY, rows(run))
    store.replace(Table.DATA_QUALITY, rows("r2"), where(run_id="r2"))
    path = store.path(Table.DATA_QUALITY)
    current = sorted(store.read(Table.DATA_QUALITY).collect())
    files = list(Path(path).glob("*.parquet"))

    # Delta's default retention: compacted into one new file, nothing old enough to delete.
    (done,) = maintain(store, retention_hours=168)
    (compacted,) = set(Path(path).glob("*.parquet")) - set(files)
    assert done == TableMaintenance(Table.DATA_QUALITY, 4, 1, compacted.stat().st_size)
    assert sorted(store.read(Table.DATA_QUALITY).collect()) == current
    assert len(list(Path(path).glob("*.parquet"))) == len(files) + 1
    assert store.read(Table.DATA_QUALITY, version=0).count() == 2  # time travel still reads the first run

    # No retention: only the current file is left; Delta's minimum-retention check is lifted for the call only.
    (done,) = maintain(store, retention_hours=0)
    assert (done.files_before, done.files_after) == (1, 1)
    assert sorted(store.read(Table.DATA_QUALITY).collect()) == current
    properties = spark.sql(f"SHOW TBLPROPERTIES delta.`{path}`").collect()
    assert {r.key: r.value for r in properties}["delta.deletedFileRetentionDuration"] == "interval 0 hours"
    assert [p.name for p in Path(path).glob("*.parquet")] == [compacted.name]
    assert spark.conf.get(RETENTION_CHECK, None) in (None, "true")


def test_the_command_says_when_there_is_no_table_yet(tmp_path, capsys):
    args = ["maintain", "--set", f"storage.root={tmp_path}", "--set", "storage.retention_hours=24"]
    assert main([*args, "--set", "tracking.enabled=false"]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"seg-spark maintain {tmp_path} (retention 24 h):",
        "  no table yet",
    ]
