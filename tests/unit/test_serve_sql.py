"""``seg-spark serve-sql``'s refusals, made before any process starts, and the statements it sends."""

from __future__ import annotations

import socket

from seg_spark import cli
from seg_spark.config import load_config
from seg_spark.errors import EXIT_CONFIG
from seg_spark.serve import database_of, registration_sql


def test_a_port_in_use_a_remote_root_or_an_empty_warehouse_is_refused_with_the_fix(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert cli.main(["serve-sql", "--port", str(port), "--set", f"storage.root={tmp_path}"]) == EXIT_CONFIG
    assert cli.main(["serve-sql", "--port", str(port), "--set", "storage.root=s3a://bucket/wh"]) == EXIT_CONFIG
    assert cli.main(["serve-sql", "--port", str(port), "--set", f"storage.root={tmp_path}"]) == EXIT_CONFIG
    first, remote, empty = capsys.readouterr().err.splitlines()
    assert first == (
        f"seg-spark: cannot serve on 127.0.0.1:{port}: Address already in use. Stop what listens there or "
        "choose another port with --port"
    )
    assert remote.startswith("seg-spark: serve-sql serves a local storage.root, not 's3a://bucket/wh'")
    assert empty == f"seg-spark: storage.root = {tmp_path} holds no seg-spark table yet: run the pipeline first"


def test_tables_are_registered_idempotently_with_their_locations_quoted():
    sql = registration_sql("seg_spark", {"segments_current": "/data/o'brien/segments_current"})
    assert sql.splitlines() == [
        "CREATE DATABASE IF NOT EXISTS `seg_spark`;",
        "CREATE TABLE IF NOT EXISTS `seg_spark`.`segments_current` "
        "USING DELTA LOCATION '/data/o\\'brien/segments_current';",
    ]
    assert database_of(load_config([], [])) == "seg_spark"
    assert database_of(load_config([], ["storage.database=marketing"])) == "marketing"
