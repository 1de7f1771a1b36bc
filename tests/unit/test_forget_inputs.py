"""What ``seg-spark forget`` is given: the ids file, pseudonymised ids, and the rows an id matches."""

from __future__ import annotations

import pytest
from pyspark.sql import functions as F

from seg_spark import cli
from seg_spark.config import Settings
from seg_spark.errors import EXIT_CONFIG
from seg_spark.forget import IdsFileError, _matches_per_id, ids_frame, read_ids_file, stored_ids
from seg_spark.privacy import hmac_sha256
from seg_spark.quality import MALFORMED_RECORD
from seg_spark.tables import Table


def test_ids_file_one_per_line_skipping_blanks_and_comments(tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("# from the DPO, week 48\n  C-1 \n\nC-2\r\nalice@example.com\nC-1\n", encoding="utf-8")
    assert read_ids_file(path) == ["C-1", "C-2", "alice@example.com", "C-1"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"C-1\nC-2, C-3\n", "line 2: 'C-2, C-3' holds more than one value; write one customer id per line"),
        (b"C-1\nC 2\n", "line 2: 'C 2' holds more than one value"),
        (b"C-1\n\xff\xfe\n", "line 2: not UTF-8 text"),
        (b"# nothing yet\n\n", "holds no customer id"),
    ],
)
def test_a_malformed_ids_file_is_refused_naming_the_line(tmp_path, content, message):
    path = tmp_path / "ids.txt"
    path.write_bytes(content)
    with pytest.raises(IdsFileError, match=message):
        read_ids_file(path)


def test_the_cli_refuses_a_bad_ids_file_before_starting_anything(tmp_path, capsys):
    path = tmp_path / "ids.txt"
    path.write_text("C-1\nC-2;C-3\n", encoding="utf-8")
    missing = tmp_path / "missing.txt"
    assert cli.main(["forget", "--file", str(path), "--set", f"storage.root={tmp_path}/w"]) == EXIT_CONFIG
    assert cli.main(["forget", "--file", str(missing), "--set", f"storage.root={tmp_path}/w"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert f"{path} line 2: 'C-2;C-3' holds more than one value" in err
    assert f"cannot read the ids file {missing}: No such file or directory" in err
    assert (
        cli.main(["forget", "--customer-id", "C-1", "--customer-id", " ", "--set", f"storage.root={tmp_path}/w"]) == 2
    )
    assert "an empty customer id was given" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()


def test_pseudonymised_ids_are_hashed_as_ingest_hashes_them(spark, monkeypatch):
    monkeypatch.setenv("SEG_SPARK_PSEUDONYM_KEY", "a-secret-of-sufficient-length")
    settings = Settings.model_validate({"privacy": {"pseudonymise_customer_id": True}})
    ids = ["17850", "C-2", "élise"]
    by_spark = spark.createDataFrame([(i,) for i in ids], "id string").select(
        "id", hmac_sha256(F.col("id"), b"a-secret-of-sufficient-length").alias("hashed")
    )
    assert stored_ids(settings, ids) == {r["id"]: r["hashed"] for r in by_spark.collect()}
    assert stored_ids(Settings(), ids) == {i: i for i in ids}


def test_a_quarantined_row_matches_by_its_canonical_id_or_as_a_word_of_a_malformed_line(spark):
    quarantine = spark.createDataFrame(
        [
            ("non_positive_price", '{"customer_id":" 123 "}', '{"customer_id":"123"}'),
            ("non_positive_price", '{"customer_id":"1234"}', '{"customer_id":"1234"}'),
            (MALFORMED_RECORD, '2025-01-01,"123",x', '{"customer_id":null}'),
            (MALFORMED_RECORD, "2025-01-01,51234,x", '{"customer_id":null}'),
            (MALFORMED_RECORD, "a.b@x.com;3", '{"customer_id":null}'),
            (MALFORMED_RECORD, "axb@x.com;3", '{"customer_id":null}'),
        ],
        "reason_code string, raw_record string, canonical_record string",
    )
    ids = ids_frame(spark, {"123": "123", "a.b@x.com": "a.b@x.com"})
    counts = {r["raw_id"]: r["rows"] for r in _matches_per_id(quarantine, ids, Table.TRANSACTIONS_QUARANTINE).collect()}
    assert counts == {"123": 2, "a.b@x.com": 1}
