"""The publish stage on hand-made segment assignments: stable ids, SCD2 history, MERGE counts, reruns."""

import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import pyarrow as pa
import pytest
from pyspark.sql import functions as F

from seg_spark.config import load_config
from seg_spark.context import RunContext
from seg_spark.errors import StageInputError
from seg_spark.pipeline import run_pipeline
from seg_spark.serve import Endpoint, _listening, beeline, existing_tables
from seg_spark.stages.publish.schema import CONSUMER_TABLES
from seg_spark.tables import Table, registration_statements, where

from conftest import SHORT_JVM, in_background
from killing import stage_began, versions, wait_until

pytestmark = pytest.mark.slow

DAY1 = date(2026, 3, 1)
DAY2, DAY3 = DAY1 + timedelta(days=7), DAY1 + timedelta(days=14)
FEATURES = ("recency_days", "frequency", "monetary", "avg_order_value", "tenure_days")
ASSIGNMENTS = (
    "customer_id string, segment_id int, segment_distance double, segment_probability double, "
    "runner_up_segment_id int, runner_up_distance double, runner_up_probability double, "
    "membership array<double>, algorithm string, k int, as_of_date date, run_id string, model_name string, "
    "model_version string"
)


def settings(root: Path, run_id: str, as_of: date):
    return load_config(
        [],
        [
            f"storage.root={root}/warehouse",
            "tracking.enabled=false",
            f"run.run_id={run_id}",
            f"features.as_of_date={as_of}",
        ],
    )


def segmented(spark, root: Path, run_id: str, as_of: date, labels: dict[str, int]) -> None:
    """Record what a segment stage of ``run_id`` would leave: its assignments, features and manifest row."""
    ctx = RunContext.create(spark, settings(root, run_id, as_of))
    record = ctx.manifest.started(run_id, "segment", None, ctx.attempt_id)
    k = max(labels.values()) + 1
    rows = [
        (c, s, float(s), None, (s + 1) % k, float(s) + 1, None, None, "kmeans", k, as_of, run_id, "m", "1")
        for c, s in sorted(labels.items())
    ]
    ctx.store.replace(Table.SEGMENT_ASSIGNMENTS, spark.createDataFrame(rows, ASSIGNMENTS), where(as_of_date=as_of))
    features = [(c, as_of, *(float(s * 10 + i) for i in range(len(FEATURES)))) for c, s in sorted(labels.items())]
    columns = "customer_id string, as_of_date date, " + ", ".join(f"{f} double" for f in FEATURES)
    ctx.store.replace(Table.CUSTOMER_FEATURES, spark.createDataFrame(features, columns), where(as_of_date=as_of))
    ctx.manifest.finished(record, as_of_date=as_of, rows_in=len(labels), rows_out=len(labels))


def publish(spark, root, run_id, as_of):
    return run_pipeline(spark, settings(root, run_id, as_of), ["publish"]).stages["publish"]


def table(spark, root, name):
    return spark.read.format("delta").load(f"{root}/warehouse/{name}")


def current_of(spark, root) -> dict[str, tuple[int, bool]]:
    rows = table(spark, root, "segments_current").collect()
    return {r["customer_id"]: (r["segment_id"], r["is_active"]) for r in rows}


# Day 1: thirty customers in three groups of ten. Day 2: the model numbers the same groups
# differently, c00 moves, c29 is not segmented, c30 is new. Day 3: group 2 is gone (c20-c23
# join group 0, c24-c28 and c30 group 1) and a new group of twelve customers appears.
DAY1_LABELS = {f"c{i:02d}": i // 10 for i in range(30)}
DAY2_LABELS = {c: 2 - s for c, s in DAY1_LABELS.items() if c != "c29"} | {"c00": 1, "c30": 0}
DAY3_LABELS = (
    {f"c{i:02d}": 0 for i in (*range(1, 10), *range(20, 24))}
    | {f"c{i:02d}": 1 for i in (0, *range(10, 20), *range(24, 29), 30)}
    | {f"n{i:02d}": 2 for i in range(12)}
)


# Day 4 (the killed publish): four of group 1 move to the new group 3.
DAY4 = DAY1 + timedelta(days=21)
DAY4_LABELS = DAY3_LABELS | {f"c{i}": 2 for i in range(10, 14)}


@pytest.fixture(scope="session")  # session: the Thrift test, which runs last, reads the same warehouse
def three_days(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("publish")
    results = {}
    for run_id, day, labels in (("r1", DAY1, DAY1_LABELS), ("r2", DAY2, DAY2_LABELS)):
        segmented(spark, root, run_id, day, labels)
        results[run_id] = publish(spark, root, run_id, day)
    results["current_after_day2"] = current_of(spark, root)
    results["rerun"] = publish(spark, root, "r2", DAY2)  # the same run again: nothing changes
    results["counts_after_rerun"] = {d.table.value: table(spark, root, d.table.value).count() for d in CONSUMER_TABLES}
    segmented(spark, root, "r3", DAY3, DAY3_LABELS)
    results["r3"] = publish(spark, root, "r3", DAY3)
    # The Thrift server and beeline are processes of their own: they serve and answer while the other tests run.
    results["served"] = in_background(serve_and_ask, root)
    return root, results


def test_ids_follow_the_groups_not_the_model_numbering(spark, three_days):
    root, results = three_days
    assert {s.model_segment_id: s.segment_id for s in results["r1"].segments} == {0: 0, 1: 1, 2: 2}
    assert {s.model_segment_id: s.segment_id for s in results["r2"].segments} == {2: 0, 1: 1, 0: 2}
    day2 = table(spark, root, "customer_segments").filter(F.col("as_of_date") == DAY2)
    ids = {r["customer_id"]: (r["segment_id"], r["model_segment_id"]) for r in day2.collect()}
    assert ids["c05"] == (0, 2) and ids["c00"] == (1, 1) and ids["c30"] == (2, 0) and "c29" not in ids
    # Day 3: group 2 vanished into 0 and 1; the new group got id 3, never used before.
    r3 = {s.model_segment_id: (s.segment_id, s.status) for s in results["r3"].segments}
    assert r3 == {0: (0, "continued"), 1: (1, "continued"), 2: (3, "new")}
    assert results["r3"].vanished == (2,)
    segments = table(spark, root, "segments").filter(F.col("as_of_date") == DAY3).collect()
    by_id = {r["segment_id"]: r for r in segments}
    assert by_id[2]["status"] == "vanished" and by_id[2]["customers"] == 0 and by_id[2]["model_segment_id"] is None
    assert by_id[3]["customers"] == 12 and by_id[3]["share"] == pytest.approx(12 / 42)
    # Feature means are the segment's mean of each model feature (features are 10 * model id + i).
    assert by_id[3]["feature_means"]["frequency"] == pytest.approx(21.0)
    assert {r["k"] for r in segments} == {3} and {r["run_id"] for r in segments} == {"r3"}


def test_the_merge_touches_only_changed_customers_and_a_rerun_touches_none(spark, three_days):
    root, results = three_days
    assert results["r1"].current_changes["num_inserted_rows"] == 30
    day2 = results["r2"].current_changes
    # c30 inserted; c00 moved and c29 deactivated: the other 28 customers are not rewritten.
    assert (day2["num_inserted_rows"], day2["num_updated_rows"], day2["num_affected_rows"]) == (1, 2, 3)
    assert results["current_after_day2"]["c29"] == (2, False)
    assert results["current_after_day2"]["c00"] == (1, True)
    assert results["rerun"].current_changes["num_affected_rows"] == 0
    assert results["rerun"].history_changes["num_affected_rows"] == 0
    assert results["counts_after_rerun"]["customer_segments"] == 30 + 30


def test_membership_history_is_type_2_with_one_open_row_per_active_customer(spark, three_days):
    root, _ = three_days
    history = table(spark, root, "segment_membership_history")
    rows = sorted(history.collect(), key=lambda r: (r["customer_id"], r["valid_from"]))
    by_customer: dict[str, list] = {}
    for r in rows:
        by_customer.setdefault(r["customer_id"], []).append(r)
    for customer, ranges in by_customer.items():
        for earlier, later in zip(ranges, ranges[1:], strict=False):
            assert earlier["valid_to"] is not None and earlier["valid_to"] <= later["valid_from"], customer
        assert sum(r["is_current"] for r in ranges) <= 1, customer
    active = {c for c, (_, is_active) in current_of(spark, root).items() if is_active}
    assert {c for c, ranges in by_customer.items() if ranges[-1]["is_current"]} == active
    assert [(r["segment_id"], r["valid_from"], r["valid_to"]) for r in by_customer["c00"]] == [
        (0, DAY1, DAY2),
        (1, DAY2, None),
    ]
    assert [(r["segment_id"], r["valid_to"]) for r in by_customer["c29"]] == [(2, DAY2)]
    # c25 was in group 2 until it vanished on day 3, then in group 1.
    assert [(r["segment_id"], r["valid_from"], r["valid_to"]) for r in by_customer["c25"]] == [
        (2, DAY1, DAY3),
        (1, DAY3, None),
    ]
    current = {c: s for c, (s, _) in current_of(spark, root).items()}
    assert table(spark, root, "segments_current").filter("segment_since = DATE'2026-03-15'").count() == 22
    assert current["n00"] == 3


def test_migration_counts_moves_between_consecutive_dates(spark, three_days):
    root, _ = three_days
    day2 = table(spark, root, "segment_migration").filter(F.col("as_of_date") == DAY2).collect()
    moves = {(r["from_segment_id"], r["to_segment_id"]): (r["customers"], r["share_of_from"]) for r in day2}
    assert moves[(0, 0)] == (9, pytest.approx(0.9)) and moves[(0, 1)] == (1, pytest.approx(0.1))
    assert moves[(2, None)] == (1, pytest.approx(0.1)) and moves[(None, 2)] == (1, 1.0)
    assert {r["previous_as_of_date"] for r in day2} == {DAY1}


def test_consumer_tables_carry_comments_constraints_and_a_change_feed(spark, three_days):
    root, _ = three_days
    for definition in CONSUMER_TABLES:
        location = f"delta.`{root}/warehouse/{definition.table.value}`"
        detail = spark.sql(f"DESCRIBE DETAIL {location}").first()
        assert detail["description"] == definition.comment
        properties = dict(spark.sql(f"SHOW TBLPROPERTIES {location}").collect())
        assert properties["delta.enableChangeDataFeed"] == "true"
        assert properties["delta.enableDeletionVectors"] == "false"
        for name, check in definition.constraints.items():
            stored = properties[f"delta.constraints.{name.lower()}"]
            assert stored.replace(" ", "") == check.replace(" ", "")  # Delta re-spaces the expression
        schema = spark.read.format("delta").load(f"{root}/warehouse/{definition.table.value}").schema
        assert all(f.metadata.get("comment") for f in schema.fields), definition.table.value
    bad = spark.createDataFrame(
        [("x", 0, None, DAY1, DAY1, True, "r")],
        "customer_id string, segment_id int, segment_name string, valid_from date, valid_to date, "
        "is_current boolean, run_id string",
    )
    with pytest.raises(Exception, match="(?i)check constraint"):
        bad.write.format("delta").mode("append").save(f"{root}/warehouse/segment_membership_history")


def test_every_consumer_table_reads_the_same_with_delta_rs(spark, three_days):
    deltalake = pytest.importorskip("deltalake")
    root, _ = three_days
    for definition in CONSUMER_TABLES:
        name = definition.table.value
        theirs = deltalake.DeltaTable(f"{root}/warehouse/{name}").to_pyarrow_table()
        maps = {f.name for f in theirs.schema if pa.types.is_map(f.type)}  # Arrow gives key-value pairs
        rows = [{k: dict(v) if k in maps and v is not None else v for k, v in r.items()} for r in theirs.to_pylist()]
        assert sorted(json.dumps(r, sort_keys=True, default=str) for r in rows) == _rows(spark, root, name), name


def test_a_backfill_publishes_its_date_and_leaves_current_and_history_at_the_latest(spark, three_days, tmp_path):
    root = tmp_path / "copy"
    shutil.copytree(three_days[0], root)
    before = {name: table(spark, root, name).collect() for name in ("segments_current", "segment_membership_history")}
    backfill = DAY2 + timedelta(days=1)
    segmented(spark, root, "late", backfill, DAY2_LABELS)
    result = publish(spark, root, "late", backfill)
    assert result.latest_as_of_date == DAY3 and result.previous_as_of_date == DAY2
    assert result.report()[-1].endswith("segment_membership_history stay at 2026-03-15")
    assert {s.model_segment_id: s.segment_id for s in result.segments} == {2: 0, 1: 1, 0: 2}
    for name, rows in before.items():
        assert sorted(table(spark, root, name).collect()) == sorted(rows), name
    assert table(spark, root, "customer_segments").filter(F.col("as_of_date") == backfill).count() == 30


def test_publishing_a_run_whose_segment_stage_did_not_succeed_names_the_stage_to_run(spark, tmp_path):
    with pytest.raises(StageInputError, match="needs the segment stage of run nothing.*--stage segment"):
        publish(spark, tmp_path, "nothing", DAY1)


def _publish_process(root: Path, run_id: str, as_of: date, log: Path) -> subprocess.Popen:
    """``seg-spark run --stage publish`` in its own process (and process group, so a kill reaches its JVM)."""
    overrides = [f"storage.root={root}/warehouse", "tracking.enabled=false", f"features.as_of_date={as_of}"]
    command = [sys.executable, "-m", "seg_spark.cli", "run", "--stage", "publish", "--run-id", run_id]
    command += ["--config", "conf/base.yaml", "--set", "spark.master=local[1]", "--set", "spark.driver_memory=1g"]
    command += ["--set", "spark.shuffle_partitions=2"]  # as in the test session: these tables are tiny
    command += [arg for item in overrides for arg in ("--set", item)]
    with log.open("w") as sink:
        return subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True, env=SHORT_JVM)


def _rows(spark, root: Path, name: str, version: int | None = None) -> list[str]:
    """A table's rows as sorted JSON text (maps with sorted keys): comparable, with nulls."""
    reader = spark.read.format("delta")
    if version is not None:
        reader = reader.option("versionAsOf", version)
    rows = reader.load(f"{root}/warehouse/{name}").collect()
    return sorted(json.dumps(r.asDict(recursive=True), sort_keys=True, default=str) for r in rows)


def test_a_publish_killed_at_any_point_and_rerun_leaves_the_tables_of_an_uninterrupted_one(spark, three_days, tmp_path):
    """SIGKILL after a number of consumer-table commits drawn from the seed (0: after a random delay
    once the stage began); each table is left at its previous version or the finished one, the
    manifest says the run did not succeed, and the rerun gives the uninterrupted run's tables."""
    seed = int(os.environ.get("SEG_SPARK_KILL_SEED", time.time_ns() % 10**6))
    rng = random.Random(seed)
    consumer = [d.table.value for d in CONSUMER_TABLES]
    after_commits, delay = rng.randint(0, len(consumer) - 1), rng.uniform(0, 2)
    where_ = f"seed {seed}: killed after {after_commits} commit(s) / {delay:.2f} s"
    base, killed = tmp_path / "base", tmp_path / "killed"
    shutil.copytree(three_days[0], base)
    segmented(spark, base, "r4", DAY4, DAY4_LABELS)
    shutil.copytree(base, killed)
    warehouse = killed / "warehouse"
    runs_before, started = versions(warehouse)["pipeline_runs"], versions(warehouse)
    proc = _publish_process(killed, "r4", DAY4, tmp_path / "killed.log")
    try:
        publish(spark, base, "r4", DAY4)  # the uninterrupted run, while the process starts
        wait_until(lambda: stage_began(warehouse, runs_before), proc, "the publish stage began")
        if after_commits == 0:
            time.sleep(delay)
        else:

            def committed() -> bool:
                now = versions(warehouse)
                return sum(now[t] > started[t] for t in consumer) >= after_commits

            wait_until(committed, proc, f"{after_commits} consumer-table commits")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"{where_}: {(tmp_path / 'killed.log').read_text()[-3000:]}"

    left = versions(warehouse)
    if after_commits:
        assert sum(left[t] > started[t] for t in consumer) >= after_commits, where_
    (dead,) = [r for r in table(spark, killed, "pipeline_runs").collect() if (r.run_id, r.stage) == ("r4", "publish")]
    assert dead.status == "running", where_  # not succeeded: the process died in it
    for name in consumer:
        as_left = _rows(spark, killed, name)
        assert as_left in (_rows(spark, killed, name, started[name]), _rows(spark, base, name)), f"{where_}: {name}"

    publish(spark, killed, "r4", DAY4)  # the rerun: rolls the dead attempt back, then publishes
    for name in consumer:
        assert _rows(spark, killed, name) == _rows(spark, base, name), f"{where_}: {name}"
    (rerun,) = [r for r in table(spark, killed, "pipeline_runs").collect() if (r.run_id, r.stage) == ("r4", "publish")]
    assert rerun.status == "succeeded" and rerun.attempt_id != dead.attempt_id, where_


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _documented_queries() -> list[str]:
    text = (Path(__file__).resolve().parents[2] / "docs" / "SQL.md").read_text()
    return re.findall(r"```sql\n(.*?)```", text, flags=re.S)


def _csv(value) -> str:
    """A Spark value as beeline's CSV shows it."""
    return "NULL" if value is None else str(value).lower() if isinstance(value, bool) else str(value)


def _beeline_answers(endpoint: Endpoint, queries: list[str]) -> list[list[str]]:
    """Each query's rows (header first) from one beeline session, split at marker queries."""
    script = "".join(f"SELECT 'answer-{i}' AS marker;\n{q.strip()}\n" for i, q in enumerate(queries))
    done = beeline(endpoint, script)
    assert done.returncode == 0, done.stderr[-3000:]
    answers: list[list[str]] = []
    for line in done.stdout.splitlines():
        if re.fullmatch(r"answer-\d+", line):
            answers.append([])
        elif answers and line and line != "marker":
            answers[-1].append(line)
    return answers


@dataclass(frozen=True)
class Served:
    """What ``seg-spark serve-sql`` printed and answered, and how it stopped."""

    endpoint: Endpoint
    banner: list[str]  # the first two lines it printed
    answers: list[list[str]]  # each documented query's rows through beeline
    exit_code: int
    stderr: str
    listening_after: bool


def serve_and_ask(root: Path) -> Served:
    """Start the server on the warehouse, send docs/SQL.md's queries with beeline, stop it with SIGTERM."""
    endpoint = Endpoint("127.0.0.1", _free_port())
    # Lowest priority: it serves beside the in-process tests (nice replaces itself with the server's process).
    command = ["nice", "-n", "19", sys.executable, "-m", "seg_spark.cli", "serve-sql", "--config", "conf/base.yaml"]
    command += ["--port", str(endpoint.port), "--set", f"storage.root={root}/warehouse"]
    command += ["--set", "spark.master=local[1]", "--set", "spark.driver_memory=1g"]
    server = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True, env=SHORT_JVM
    )
    banner, answers = [], []
    try:
        ready, _, _ = select.select([server.stdout], [], [], 240)
        banner.append(server.stdout.readline() if ready else "")
        if banner[0].startswith("serving "):
            banner.append(server.stdout.readline())
            answers = _beeline_answers(endpoint, _documented_queries())
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
        exit_code = server.wait(timeout=60)
    return Served(endpoint, banner, answers, exit_code, server.stderr.read(), _listening(endpoint))


@pytest.mark.last
def test_the_documented_queries_answer_through_the_thrift_server_as_in_spark(spark, three_days):
    """``seg-spark serve-sql`` (a process) serves the warehouse; every query of docs/SQL.md, sent with
    beeline, answers what Spark answers in process and what the fixture's moves say; SIGTERM stops it."""
    root, results = three_days
    served: Served = results["served"].result(timeout=900)
    assert served.banner[0].startswith("serving "), served.banner[0] + served.stderr[-3000:]
    assert served.banner[1].startswith(f"JDBC URL: {served.endpoint.url('seg_spark')}")
    assert served.exit_code == 0, served.stderr[-3000:]
    assert "stopped the server" in served.stderr
    assert not served.listening_after
    queries, answers = _documented_queries(), served.answers

    settings = load_config([], [f"storage.root={root}/warehouse"])
    for statement in registration_statements("seg_spark", existing_tables(settings)):
        spark.sql(statement)
    assert len(answers) == len(queries) == 5
    for query, answer in zip(queries, answers, strict=True):
        expected = spark.sql(query.strip().rstrip(";"))
        rows = [",".join(_csv(v) for v in row) for row in expected.collect()]
        assert answer == [",".join(expected.columns), *rows], query
    current, sizes, moves, durations, as_was = answers
    assert current[1:] == ["c00,1,2026-03-08,true,r2"]
    assert len(sizes) == 1 + 3 + 3 + 4  # header, days 1 and 2, day 3 with the vanished segment
    assert [m.split(",")[0] for m in moves[1:]] == ["c24", "c25", "c26", "c27", "c28", "c30"]
    assert all(m.endswith(",2,1,2026-03-15") for m in moves[1:])
    assert durations[0] == "segment_id,memberships,current_members,avg_days_in_segment"
    assert as_was[1:] == ["30,30"]  # version 1: the first publish's MERGE
