import json
from datetime import datetime

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from seg_spark.config import (
    ColumnMapping,
    NonProductRules,
    OutlierRule,
    QualitySettings,
    SourceSettings,
    Thresholds,
)
from seg_spark.quality import (
    IngestCounts,
    MappingError,
    QualityThresholdError,
    ReconciliationError,
    check_thresholds,
    ingest,
    quality_rows,
)

CLOCK = datetime(2024, 6, 1)
RAW_SCHEMA = (
    "`Invoice No` string, `Customer ID` string, `Invoice Date` string, Qty string, Price string, StockCode string"
)
MAPPING = ColumnMapping.only(
    customer_id="Customer ID",
    order_id="Invoice No",
    ts="Invoice Date",
    quantity="Qty",
    unit_price="Price",
    product_id="StockCode",
)
SOURCE = SourceSettings(path="inline", format="csv", timestamp_format="yyyy-MM-dd HH:mm", columns=MAPPING)
QUALITY = QualitySettings(clock=CLOCK, min_timestamp="2010-01-01")

ROWS = [
    ("1001", "17850", "2024-01-05 10:00", "2", "3.50", "A"),  # clean
    ("1001", "17850", "2024-01-05 10:00", "2", "3.50", "A"),  # exact duplicate of the line above
    ("1001", "17850", "2024-01-05 10:00", "2", "3.50", "A"),  # and another
    ("C1002", "17850", "2024-01-07 09:00", "-1", "3.50", "A"),  # return: clean, negative amount
    ("1003", None, "2024-01-08 11:00", "1", "2.00", "B"),  # missing customer
    ("1004", "  ", "2024-01-08 11:00", "1", "2.00", "B"),  # blank customer
    ("1005", "13047", "not a date", "1", "2.00", "B"),  # unparseable timestamp
    ("1006", "13047", "2030-01-01 00:00", "1", "2.00", "B"),  # future
    ("1007", "13047", "2001-01-01 00:00", "1", "2.00", "B"),  # before floor
    ("1008", "13047", "2024-02-01 12:00", "two", "2.00", "B"),  # non-numeric quantity
    ("1009", "13047", "2024-02-01 12:00", "1", "0", "B"),  # zero price
    ("1010", "13047", "2024-02-01 12:00", "1", "-5", "B"),  # negative price
    ("1011", "13047", "2024-02-02 12:00", "3", "1.25", "C"),  # clean
    ("1012", "13047", "2024-02-02 12:00", None, "1.25", "C"),  # no quantity: no amount
]


@pytest.fixture(scope="module")
def result(spark):
    raw = spark.createDataFrame(ROWS, RAW_SCHEMA)
    outcome = ingest(raw, SOURCE, QUALITY, run_id="r1")
    clean = outcome.clean.cache()
    quarantine = outcome.quarantine.cache()
    clean.count(), quarantine.count()
    outcome.release()
    return outcome.counts, clean, quarantine


def test_every_row_is_accounted_for(result):
    counts, clean, quarantine = result
    assert counts == IngestCounts(
        input_rows=14,
        clean_rows=3,
        quarantined_rows=9,
        duplicates_removed=2,
        by_reason={
            "missing_customer_id": 2,
            "invalid_timestamp": 1,
            "future_timestamp": 1,
            "before_min_timestamp": 1,
            "invalid_number": 1,
            "missing_amount": 1,
            "non_positive_price": 2,
        },
    )
    assert clean.count() == 3 and quarantine.count() == 9


def test_clean_rows_are_canonical_with_returns_kept_negative(spark, result):
    _, clean, _ = result
    expected = spark.createDataFrame(
        [
            ("17850", "1001", datetime(2024, 1, 5, 10), "A", 2.0, 3.5, 7.0, False),
            ("17850", "C1002", datetime(2024, 1, 7, 9), "A", -1.0, 3.5, -3.5, True),
            ("13047", "1011", datetime(2024, 2, 2, 12), "C", 3.0, 1.25, 3.75, False),
        ],
        "customer_id string, order_id string, ts timestamp, product_id string, quantity double, "
        "unit_price double, amount double, is_return boolean",
    )
    assertDataFrameEqual(clean.select(*expected.columns), expected)
    assert clean.select(F.countDistinct("ingest_run_id")).first()[0] == 1


def test_quarantine_keeps_original_values_and_reason(result):
    _, _, quarantine = result
    rows = {r["raw_record"]: r["reason_code"] for r in quarantine.collect()}
    by_invoice = {json.loads(k)["Invoice No"]: v for k, v in rows.items()}
    assert by_invoice == {
        "1003": "missing_customer_id",
        "1004": "missing_customer_id",
        "1005": "invalid_timestamp",
        "1006": "future_timestamp",
        "1007": "before_min_timestamp",
        "1008": "invalid_number",
        "1009": "non_positive_price",
        "1010": "non_positive_price",
        "1012": "missing_amount",
    }
    original = json.loads(next(k for k in rows if '"1008"' in k))
    assert original == {
        "Invoice No": "1008",
        "Customer ID": "13047",
        "Invoice Date": "2024-02-01 12:00",
        "Qty": "two",
        "Price": "2.00",
        "StockCode": "B",
    }


def test_duplicates_are_kept_when_collapsing_is_off(spark):
    raw = spark.createDataFrame(ROWS[:3], RAW_SCHEMA)
    outcome = ingest(raw, SOURCE, QUALITY.model_copy(update={"drop_exact_duplicates": False}), run_id="r2")
    assert outcome.counts.clean_rows == 3 and outcome.counts.duplicates_removed == 0
    outcome.release()


def test_amount_column_is_used_when_mapped_and_returns_turn_negative(spark):
    raw = spark.createDataFrame(
        [("o1", "c1", "2024-01-01 10:00", "12.5"), ("Co2", "c1", "2024-01-02 10:00", "4")],
        "oid string, cid string, t string, total string",
    )
    source = SourceSettings(
        path="inline",
        timestamp_format="yyyy-MM-dd HH:mm",
        columns=ColumnMapping.only(customer_id="cid", order_id="oid", ts="t", amount="total"),
    )
    outcome = ingest(raw, source, QUALITY, run_id="r3")
    amounts = {r["order_id"]: (r["amount"], r["is_return"]) for r in outcome.clean.collect()}
    outcome.release()
    assert amounts == {"o1": (12.5, False), "Co2": (-4.0, True)}


def test_mapping_to_a_missing_column_names_it_and_the_alternatives(spark):
    raw = spark.createDataFrame([("1", "2")], "cust string, when string")
    source = SourceSettings(path="/data/tx.csv", columns=MAPPING)
    with pytest.raises(MappingError) as err:
        ingest(raw, source, QUALITY, run_id="r4")
    message = str(err.value)
    assert "sources.transactions.columns.customer_id maps to column 'Customer ID'" in message
    assert "Available columns: cust, when" in message
    assert "/data/tx.csv" in message


def test_mapping_without_any_amount_is_rejected(spark):
    raw = spark.createDataFrame([("1", "2")], "cust string, t string")
    columns = ColumnMapping.only(customer_id="cust", ts="t")
    with pytest.raises(MappingError, match="no line amount can be derived"):
        ingest(raw, SourceSettings(path="x", columns=columns), QUALITY, run_id="r5")


def test_reconciliation_failure_is_loud():
    counts = IngestCounts(input_rows=10, clean_rows=5, quarantined_rows=3, duplicates_removed=1)
    with pytest.raises(ReconciliationError, match="10 input rows but 9 accounted for"):
        counts.check("sources.transactions")


def test_quality_rows_report_each_rule_and_the_profile(spark, result):
    counts, clean, _ = result
    outcome_rows = {}
    raw = spark.createDataFrame(ROWS, RAW_SCHEMA)
    outcome = ingest(raw, SOURCE, QUALITY, run_id="r1")
    for r in quality_rows(spark, outcome, "r1").collect():
        outcome_rows[(r["metric"], r["column"])] = r["value"] if r["text"] is None else r["text"]
    outcome.release()
    assert outcome_rows[("input_rows", "")] == 14
    assert outcome_rows[("duplicates_removed", "")] == 2
    assert outcome_rows[("rule", "non_positive_price")] == 2
    assert outcome_rows[("rule_share", "non_positive_price")] == pytest.approx(2 / 14)
    assert outcome_rows[("rule", "missing_amount")] == 1
    assert outcome_rows[("rule", "non_product")] == 0
    # 12 distinct rows; customer id null on two of them, quantity on one
    assert outcome_rows[("null_rate", "customer_id")] == pytest.approx(2 / 12)
    assert outcome_rows[("null_rate", "quantity")] == pytest.approx(2 / 12)  # "two" and None
    assert outcome_rows[("min", "amount")] == -3.5 and outcome_rows[("max", "amount")] == 7.0
    assert outcome_rows[("min", "ts")] == "2024-01-05T10:00:00"
    assert outcome_rows[("max", "ts")] == "2024-02-02T12:00:00"
    assert outcome_rows[("days_covered", "")] == 3
    assert outcome_rows[("customers_in", "")] == 2 and outcome_rows[("customers_clean", "")] == 2
    assert outcome_rows[("returns_kept", "")] == 1


def test_non_product_lines_statuses_and_outliers(spark):
    rows = [(str(i), "c1", "2024-01-01 10:00", "1", "2.0", f"P{i % 3}", "ok", "MUG") for i in range(40)]
    rows += [
        ("100", "c1", "2024-01-02 10:00", "1", "5.0", "POST", "ok", "POSTAGE"),
        ("101", "c1", "2024-01-02 10:00", "1", "5.0", "X1", "ok", "Bank charges"),
        ("A102", "c2", "2024-01-02 10:00", "1", "5.0", "B", "ok", "Adjust bad debt"),
        ("103", "c2", "2024-01-03 10:00", "1", "4.0", "P1", "Returned", "MUG"),
        ("104", "c2", "2024-01-03 10:00", "500", "2.0", "P2", "ok", "MUG"),
    ]
    raw = spark.createDataFrame(
        rows, "inv string, cust string, t string, q string, p string, sku string, st string, d string"
    )
    source = SourceSettings(
        path="inline",
        timestamp_format="yyyy-MM-dd HH:mm",
        columns=ColumnMapping.only(
            customer_id="cust",
            order_id="inv",
            ts="t",
            quantity="q",
            unit_price="p",
            product_id="sku",
            description="d",
            status="st",
        ),
    )
    quality = QUALITY.model_copy(
        update={
            "non_product": NonProductRules(
                product_ids=("POST",), description_pattern="(?i)bank charges", order_id_prefixes=("A",)
            ),
            "outliers": OutlierRule(column="amount", quantile=0.9, multiplier=10),
        }
    )
    outcome = ingest(raw, source, quality, run_id="r6")
    assert outcome.counts.by_reason == {"non_product": 3}
    clean = {r["order_id"]: (r["is_return"], r["is_outlier"], r["amount"]) for r in outcome.clean.collect()}
    outcome.release()
    assert clean["103"] == (True, False, -4.0)  # status column marks the return
    assert clean["104"] == (False, True, 1000.0)  # 1000 > 10 x p90 (2.0): flagged, kept
    assert sum(flag for _, flag, _ in clean.values()) == 1
    assert outcome.profile[("outlier_threshold", "")] == 20.0
    assert outcome.profile[("outliers_flagged", "")] == 1


def test_thresholds_stop_the_run_naming_every_breach(spark, result):
    raw = spark.createDataFrame(ROWS, RAW_SCHEMA)
    outcome = ingest(raw, SOURCE, QUALITY, run_id="r7")
    outcome.release()
    check_thresholds(outcome, Thresholds(max_quarantined_share=0.7))
    with pytest.raises(QualityThresholdError) as err:
        check_thresholds(
            outcome,
            Thresholds(max_quarantined_share=0.3, max_rule_share={"missing_customer_id": 0.1}, min_clean_rows=5),
        )
    message = str(err.value)
    assert "64.3% of input rows quarantined (9 of 14)" in message
    assert "more than quality.thresholds.max_quarantined_share = 30.0%" in message
    assert "rule missing_customer_id quarantined 14.3% of input rows" in message
    assert "3 clean rows, fewer than quality.thresholds.min_clean_rows = 5" in message
    assert "nothing was modelled" in message
    # The most frequent rules, each with sample original values and the setting that fixes them.
    top = message.split("Most frequent rules:\n  - ")[1].split("\n  - ")
    reasons = sorted(outcome.counts.by_reason.items(), key=lambda item: (-item[1], item[0]))[:3]
    assert [line.split(":")[0] for line in top] == [rule for rule, _ in reasons]
    first_rule, first_count = reasons[0]
    samples = [r.raw_record for r in outcome.quarantine.filter(f"reason_code = '{first_rule}'").collect()]
    assert top[0].startswith(f"{first_rule}: {first_count:,} rows, e.g. ")
    assert any(sample[:160] in top[0] for sample in samples)
    assert all(" -> " in line for line in top)
    with pytest.raises(QualityThresholdError, match="unknown rule"):
        check_thresholds(outcome, Thresholds(max_rule_share={"typo": 0.1}))
