"""Every source format, side tables, privacy, and the error messages for bad input."""

import hashlib
import hmac
import json
from datetime import date, datetime

import pytest
from pyspark.sql import functions as F

from seg_spark.config import (
    ColumnMapping,
    EventMapping,
    EventSourceSettings,
    PrivacySettings,
    ProfileMapping,
    ProfileSourceSettings,
    QualitySettings,
    SourceSettings,
)
from seg_spark.features.side import with_events, with_profiles
from seg_spark.io import SourceError, read_source
from seg_spark.privacy import PrivacyError, hmac_sha256, pseudonym_key
from seg_spark.quality import MappingError, ingest, ingest_events, ingest_profiles

QUALITY = QualitySettings(clock=datetime(2024, 6, 1))
MAPPING = ColumnMapping.only(
    customer_id="Customer ID",
    order_id="Invoice",
    ts="InvoiceDate",
    quantity="Quantity",
    unit_price="Price",
    country="Country",
)
ROWS = [
    ("1", "17850", "05/01/2024 10:00", "2", "3.5", "Zürich"),
    ("2", "17850", "06/01/2024 11:30", "1", "10", "Zürich"),
    ("3", "13047", "07/01/2024 09:15", "4", "1.25", "Genève"),
]
HEADER = ["Invoice", "Customer ID", "InvoiceDate", "Quantity", "Price", "Country"]


def _csv(path, rows, sep=",", encoding="utf-8"):
    lines = [sep.join(HEADER)] + [sep.join(r) for r in rows]
    path.write_bytes(("\n".join(lines) + "\n").encode(encoding))
    return path


def _source(path, fmt, **extra):
    return SourceSettings(path=str(path), format=fmt, timestamp_format="dd/MM/yyyy HH:mm", columns=MAPPING, **extra)


def _clean(spark, source, **kwargs):
    outcome = ingest(read_source(spark, source, "transactions"), source, QUALITY, run_id="t", **kwargs)
    rows = sorted(
        (r["order_id"], r["customer_id"], r["ts"], r["amount"], r["country"]) for r in outcome.clean.collect()
    )
    quarantine = outcome.quarantine.collect()
    outcome.release()
    return outcome.counts, rows, quarantine


EXPECTED = [
    ("1", "17850", datetime(2024, 1, 5, 10, 0), 7.0, "Zürich"),
    ("2", "17850", datetime(2024, 1, 6, 11, 30), 10.0, "Zürich"),
    ("3", "13047", datetime(2024, 1, 7, 9, 15), 5.0, "Genève"),
]


def test_csv_with_delimiter_and_encoding(spark, tmp_path):
    path = _csv(tmp_path / "tx.csv", ROWS, sep=";", encoding="ISO-8859-1")
    counts, rows, _ = _clean(spark, _source(path, "csv", options={"sep": ";", "encoding": "ISO-8859-1"}))
    assert rows == EXPECTED
    assert counts.input_rows == 3


def test_bytes_the_encoding_cannot_decode_are_counted_and_named(spark, tmp_path, caplog):
    path = _csv(tmp_path / "latin1.csv", ROWS, encoding="ISO-8859-1")  # read as the default UTF-8
    raw = read_source(spark, _source(path, "csv"), "transactions")
    with caplog.at_level("WARNING", logger="seg_spark.quality"):
        outcome = ingest(raw, _source(path, "csv"), QUALITY, run_id="t")
    outcome.release()
    assert outcome.profile[("invalid_encoding", "")] == 3  # Zürich twice, Genève once
    assert "3 rows hold characters that could not be decoded" in caplog.text
    assert "set sources.transactions.options.encoding (e.g. ISO-8859-1" in caplog.text
    right = _source(path, "csv", options={"encoding": "ISO-8859-1"})
    decoded = ingest(read_source(spark, right, "transactions"), right, QUALITY, run_id="t")
    decoded.release()
    assert decoded.profile[("invalid_encoding", "")] == 0


def test_csv_glob_of_files(spark, tmp_path):
    folder = tmp_path / "daily"
    folder.mkdir()
    _csv(folder / "day1.csv", ROWS[:2])
    _csv(folder / "day2.csv", ROWS[2:])
    (folder / "notes.txt").write_text("not part of the log")
    _, rows, _ = _clean(spark, _source(f"{folder}/*.csv", "csv"))
    assert rows == EXPECTED


@pytest.fixture()
def typed_frame(spark):
    return spark.createDataFrame([tuple(r) for r in ROWS], ", ".join(f"`{c}` string" for c in HEADER))


def test_parquet_partitioned_folder(spark, tmp_path, typed_frame):
    typed_frame.write.partitionBy("Country").parquet(str(tmp_path / "pq"))
    _, rows, _ = _clean(spark, _source(tmp_path / "pq", "parquet"))
    assert rows == EXPECTED


def test_json_lines(spark, tmp_path):
    path = tmp_path / "tx.jsonl"
    path.write_text("\n".join(json.dumps(dict(zip(HEADER, r, strict=True)), ensure_ascii=False) for r in ROWS) + "\n")
    _, rows, _ = _clean(spark, _source(path, "json"))
    assert rows == EXPECTED


def test_delta_by_path_and_by_catalog_table(spark, tmp_path, typed_frame):
    # Plain Delta tables allow no spaces in column names.
    frame = typed_frame.withColumnRenamed("Customer ID", "CustomerID")
    mapping = MAPPING.model_copy(update={"customer_id": "CustomerID"})
    frame.write.format("delta").save(str(tmp_path / "delta"))
    by_path = SourceSettings(
        path=str(tmp_path / "delta"), format="delta", timestamp_format="dd/MM/yyyy HH:mm", columns=mapping
    )
    _, rows, _ = _clean(spark, by_path)
    assert rows == EXPECTED
    frame.write.format("delta").mode("overwrite").saveAsTable("default.raw_tx")
    table_source = SourceSettings(table="default.raw_tx", timestamp_format="dd/MM/yyyy HH:mm", columns=mapping)
    _, rows, _ = _clean(spark, table_source)
    assert rows == EXPECTED


def test_typed_sources_with_numeric_ids_and_epoch_seconds(spark):
    raw = spark.createDataFrame([(17850.0, 1704448800, 2, 3.5)], "cid double, epoch long, qty int, price double")
    source = SourceSettings(
        path="inline",
        columns=ColumnMapping.only(customer_id="cid", ts="epoch", quantity="qty", unit_price="price"),
    )
    outcome = ingest(raw, source, QUALITY, run_id="t")
    row = outcome.clean.first()
    outcome.release()
    assert (row.customer_id, row.ts, row.amount) == ("17850", datetime(2024, 1, 5, 10, 0), 7.0)
    assert row.order_id == "17850|2024-01-05 10:00:00"  # no order id: one order per customer and time


def test_malformed_csv_lines_are_quarantined_with_their_text(spark, tmp_path):
    path = tmp_path / "tx.csv"
    _csv(path, ROWS)
    with path.open("a") as out:
        out.write('4,13047,"07/01/2024 09:15,4,1.25,Genève,extra,fields\n')
    counts, rows, quarantine = _clean(spark, _source(path, "csv"))
    assert rows == EXPECTED
    assert counts.by_reason == {"malformed_record": 1}
    assert quarantine[0]["raw_record"].startswith('4,13047,"07/01/2024 09:15')


# ---------------------------------------------------------------------------------------
# Error messages: each names the source, the column or line, what was expected, what to do
# ---------------------------------------------------------------------------------------


def test_error_missing_path(spark, tmp_path):
    with pytest.raises(SourceError) as err:
        read_source(spark, _source(tmp_path / "nope", "parquet"), "transactions")
    message = str(err.value)
    assert f"cannot read sources.transactions at '{tmp_path / 'nope'}' as parquet" in message
    assert "PATH_NOT_FOUND" in message
    assert "Check sources.transactions.path and sources.transactions.format" in message


def test_error_path_not_set(spark):
    with pytest.raises(SourceError, match="sources.profiles.path is not set"):
        read_source(spark, ProfileSourceSettings(), "profiles")


def test_error_missing_catalog_table(spark):
    with pytest.raises(SourceError) as err:
        read_source(spark, SourceSettings(table="nowhere.tx"), "transactions")
    assert "cannot read sources.transactions.table 'nowhere.tx'" in str(err.value)
    assert "TABLE_OR_VIEW_NOT_FOUND" in str(err.value)


def test_error_empty_source(spark, tmp_path):
    path = _csv(tmp_path / "empty.csv", [])
    with pytest.raises(SourceError) as err:
        _clean(spark, _source(path, "csv"))
    assert f"sources.transactions ({path}) has no rows" in str(err.value)
    assert "header line is not the only line" in str(err.value)


def test_error_zero_byte_file_says_empty(spark, tmp_path):
    path = tmp_path / "export.csv"
    path.write_bytes(b"")
    with pytest.raises(SourceError) as err:
        read_source(spark, _source(path, "csv"), "transactions")
    assert str(err.value).startswith(f"sources.transactions at '{path}' is empty (no header line, no rows)")


@pytest.mark.parametrize(("sep", "shown"), [(";", ";"), ("\t", "\\t"), ("|", "|")])
def test_error_another_delimiter_suggests_options_sep(spark, tmp_path, sep, shown):
    path = _csv(tmp_path / "export.csv", ROWS, sep=sep)
    with pytest.raises(SourceError) as err:
        read_source(spark, _source(path, "csv"), "transactions")
    message = str(err.value)
    assert f"has a single column {sep.join(HEADER)!r} that contains '{shown}'" in message
    assert message.endswith(f'Set sources.transactions.options.sep: "{shown}" in your YAML')
    # Told the right delimiter, the same file reads.
    assert read_source(spark, _source(path, "csv", options={"sep": sep}), "transactions").columns[:2] == HEADER[:2]


def test_error_parquet_configured_as_csv_suggests_format(spark, tmp_path, typed_frame):
    folder = tmp_path / "export"
    typed_frame.coalesce(1).write.parquet(str(folder))
    (part,) = folder.glob("part-*.parquet")
    with pytest.raises(SourceError) as err:
        read_source(spark, _source(part, "csv"), "transactions")
    message = str(err.value)
    assert message.startswith(f"sources.transactions at '{part}' does not look like CSV: its first line holds binary")
    assert message.endswith("Set sources.transactions.format to the file's format (parquet, json or delta)")


def test_error_unreadable_file(spark, tmp_path):
    folder = tmp_path / "broken"
    folder.mkdir()
    (folder / "part-0.parquet").write_bytes(b"this is not parquet at all")
    with pytest.raises(SourceError) as err:
        _clean(spark, _source(folder, "parquet"))
    assert "sources.transactions" in str(err.value) and str(folder) in str(err.value)


def test_error_malformed_line_in_fail_mode_names_the_line(spark, tmp_path):
    path = _csv(tmp_path / "tx.csv", ROWS)
    with path.open("a") as out:
        out.write("4,13047,bad,line,with,too,many,fields\n")
    with pytest.raises(SourceError) as err:
        _clean(spark, _source(path, "csv", on_malformed="fail"))
    message = str(err.value)
    assert f"sources.transactions ({path}) could not be read" in message
    assert "Malformed CSV record: 4,13047,bad,line,with,too,many,fields" in message
    assert "on_malformed: quarantine" in message


def test_error_wrong_type_for_timestamp_and_number(spark):
    raw = spark.createDataFrame([("c", True, [1.0], 2.0)], "cid string, when boolean, qty array<double>, price double")
    bad_ts = ColumnMapping.only(customer_id="cid", ts="when", quantity="price", unit_price="price")
    with pytest.raises(MappingError) as err:
        ingest(raw, SourceSettings(path="x.parquet", columns=bad_ts), QUALITY, run_id="t")
    assert "column 'when' (mapped as ts) has type boolean, expected a timestamp" in str(err.value)
    bad_quantity = ColumnMapping.only(customer_id="cid", ts="cid", quantity="qty", unit_price="price")
    with pytest.raises(MappingError) as err:
        ingest(raw, SourceSettings(path="x.parquet", columns=bad_quantity), QUALITY, run_id="t")
    assert "column 'qty' (mapped as quantity) has type array<double>, expected a number" in str(err.value)
    assert "Map sources.transactions.columns.quantity to another column" in str(err.value)


def test_error_drop_columns_names_a_missing_column(spark, typed_frame):
    source = _source("inline", "csv", drop_columns=("Email",))
    with pytest.raises(MappingError) as err:
        ingest(typed_frame, source, QUALITY, run_id="t")
    assert "sources.transactions.drop_columns names ['Email']" in str(err.value)
    assert "Available columns: Invoice, Customer ID" in str(err.value)


def test_error_pseudonymisation_without_a_key(monkeypatch):
    monkeypatch.delenv("SEG_TEST_KEY", raising=False)
    with pytest.raises(PrivacyError, match="environment variable SEG_TEST_KEY is not set"):
        pseudonym_key(PrivacySettings(pseudonymise_customer_id=True, key_env="SEG_TEST_KEY"))
    monkeypatch.setenv("SEG_TEST_KEY", "short")
    with pytest.raises(PrivacyError, match="holds fewer than 16 characters"):
        pseudonym_key(PrivacySettings(pseudonymise_customer_id=True, key_env="SEG_TEST_KEY"))


# ---------------------------------------------------------------------------------------
# Privacy
# ---------------------------------------------------------------------------------------


def test_hmac_matches_the_standard_library(spark):
    key = b"a secret key that is long enough for the test" * 2  # longer than one block
    values = ["17850", "13047", "ü-id"]
    got = [
        r[0]
        for r in spark.createDataFrame([(v,) for v in values], "v string")
        .select(hmac_sha256(F.col("v"), key))
        .collect()
    ]
    assert got == [hmac.new(key, v.encode(), hashlib.sha256).hexdigest() for v in values]
    short = b"0123456789abcdef"
    (one,) = spark.createDataFrame([("x",)], "v string").select(hmac_sha256(F.col("v"), short)).first()
    assert one == hmac.new(short, b"x", hashlib.sha256).hexdigest()


def test_pseudonymised_ids_and_dropped_pii_never_reach_the_tables(spark):
    key = b"0123456789abcdef-key"
    raw = spark.createDataFrame(
        [("1", " 17850 ", "05/01/2024 10:00", "2", "3.5", "x@y.z"), ("2", "13047", "bad", "1", "1", "a@b.c")],
        "Invoice string, `Customer ID` string, InvoiceDate string, Quantity string, Price string, Email string",
    )
    mapping = MAPPING.model_copy(update={"country": None})
    source = SourceSettings(
        path="inline", timestamp_format="dd/MM/yyyy HH:mm", columns=mapping, drop_columns=("Email",)
    )
    outcome = ingest(raw, source, QUALITY, run_id="t", pseudonym_key=key)
    clean, quarantined = outcome.clean.collect(), outcome.quarantine.collect()
    outcome.release()
    assert clean[0]["customer_id"] == hmac.new(key, b"17850", hashlib.sha256).hexdigest()
    assert "Email" not in outcome.clean.columns
    record = json.loads(quarantined[0]["raw_record"])
    assert "Email" not in record
    assert record["Customer ID"] == hmac.new(key, b"13047", hashlib.sha256).hexdigest()
    assert "13047" not in quarantined[0]["raw_record"] + quarantined[0]["canonical_record"]


# ---------------------------------------------------------------------------------------
# Side tables
# ---------------------------------------------------------------------------------------


def test_profiles_one_row_per_customer_and_joined_to_features(spark):
    raw = spark.createDataFrame(
        [
            ("17850", "35-44", "F", "2023-05-01", "UK", "London"),
            ("17850", "35-44", "F", "2023-05-02", "UK", "London"),  # conflicting second row
            ("13047", "25-34", "M", "not a date", "UK", "Leeds"),
            (None, "18-24", "M", "2023-01-01", "FR", "Paris"),
            ("99999", None, None, "2024-02-01", "DE", "Berlin"),
        ],
        "cust string, age string, sex string, since string, ctry string, town string",
    )
    source = ProfileSourceSettings(
        path="inline",
        timestamp_format="yyyy-MM-dd",
        columns=ProfileMapping(
            customer_id="cust", age_band="age", gender="sex", signup_date="since", country="ctry", city="town"
        ),
    )
    outcome = ingest_profiles(raw, source, run_id="t")
    profiles = outcome.clean.cache()
    assert outcome.counts.by_reason == {"duplicate_customer": 1, "invalid_date": 1, "missing_customer_id": 1}
    assert sorted(r["customer_id"] for r in profiles.collect()) == ["17850", "99999"]
    features = spark.createDataFrame([("17850", 3.0), ("55555", 1.0)], "customer_id string, frequency double")
    joined = {r["customer_id"]: r for r in with_profiles(features, profiles, date(2024, 1, 1)).collect()}
    outcome.release()
    assert joined["17850"]["profile_city"] == "London"
    assert joined["17850"]["days_since_signup"] == 245.0  # 2023-05-01 to 2024-01-01
    assert joined["55555"]["profile_city"] is None


def test_events_cleaned_and_aggregated_point_in_time(spark):
    raw = spark.createDataFrame(
        [
            ("c1", "2024-01-01 10:00:00", "s1", "page_view"),
            ("c1", "2024-01-01 10:05:00", "s1", "page_view"),
            ("c1", "2024-01-03 08:00:00", "s2", "add_to_cart"),
            ("c1", "2024-02-01 08:00:00", "s3", "page_view"),  # after as-of: not counted
            ("c1", "2030-01-01 08:00:00", "s9", "page_view"),  # future: quarantined
            (None, "2024-01-01 10:00:00", "s4", "page_view"),
        ],
        "user string, at string, sess string, kind string",
    )
    source = EventSourceSettings(
        path="inline", columns=EventMapping(customer_id="user", ts="at", session_id="sess", event_type="kind")
    )
    outcome = ingest_events(raw, source, QUALITY, run_id="t")
    assert outcome.counts.by_reason == {"future_timestamp": 1, "missing_customer_id": 1}
    events = outcome.clean.cache()
    features = spark.createDataFrame([("c1",), ("c2",)], "customer_id string")
    joined = {r["customer_id"]: r for r in with_events(features, events, date(2024, 1, 10)).collect()}
    outcome.release()
    assert (joined["c1"]["web_events"], joined["c1"]["web_sessions"], joined["c1"]["days_since_last_event"]) == (
        3.0,
        2.0,
        7.0,
    )
    assert (joined["c2"]["web_events"], joined["c2"]["web_sessions"]) == (0.0, 0.0)
