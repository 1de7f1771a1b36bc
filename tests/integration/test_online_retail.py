"""The real UCI Online Retail log through conf/examples/online_retail.yaml, checked row by row
against counts computed independently with Python's csv module."""

import csv
import gzip
from collections import Counter
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from seg_spark.config import load_config
from seg_spark.pipeline import run_pipeline

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "online_retail.csv.gz"
NON_PRODUCT = {"POST", "DOT", "M", "m", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}


@pytest.fixture(scope="module")
def expected():
    """Reason per distinct line, by the same rules, in plain Python."""
    with gzip.open(DATA, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.reader(handle)
        next(reader)
        lines = Counter(tuple(row) for row in reader)
    reasons = Counter()
    for invoice, stock, _desc, _qty, _ts, price, customer, _country in lines:
        if not customer.strip():
            reasons["missing_customer_id"] += 1
        elif float(price) <= 0:
            reasons["non_positive_price"] += 1
        elif stock in NON_PRODUCT or stock.startswith("gift_") or invoice.startswith("A"):
            reasons["non_product"] += 1
        else:
            reasons["clean"] += 1
    return {"input": sum(lines.values()), "distinct": len(lines), "reasons": reasons}


@pytest.fixture(scope="module")
def result(spark, tmp_path_factory):
    if not DATA.is_file():
        pytest.skip(f"{DATA} is not there (CI places shared/ beside the repository)")
    root = tmp_path_factory.mktemp("retail")
    settings = load_config(
        [REPO / "conf" / "examples" / "online_retail.yaml"],
        [
            f"sources.transactions.path={DATA}",
            f"storage.root={root}/warehouse",
            f"tracking.tracking_uri={root}/mlruns",
            "run.run_id=retail",
            # The model selection is tested on the demo; here one fit (k = 4) keeps the real log quick.
            "model.selection.enabled=false",
            "model.k=4",
            "model.stability.bootstraps=0",
            "model.kmeans_restarts=1",
            # Product groups on these descriptions are tested in test_product_groups.py.
            "features.product_groups.enabled=never",
            # MLflow logging is tested on the demo runs; the real log is about the data.
            "tracking.enabled=false",
            # CLV on the real log; churn is tested on the demo (its figures on this log: README).
            "predict.churn.enabled=false",
        ],
    )
    return run_pipeline(spark, settings)


def test_every_input_line_is_reconciled(result, expected):
    counts = result.stages["ingest"].counts
    assert counts.input_rows == expected["input"] == 541_909
    assert counts.duplicates_removed == expected["input"] - expected["distinct"]
    reasons = expected["reasons"]
    assert counts.clean_rows == reasons.pop("clean")
    assert counts.by_reason == dict(reasons)
    assert counts.input_rows == counts.clean_rows + counts.quarantined_rows + counts.duplicates_removed


def test_quality_table_reconciles_and_cancellations_stay_as_returns(spark, result):
    dq = {
        (r["metric"], r["column"]): r["value"]
        for r in spark.read.format("delta").load(result.tables["data_quality"]).collect()
    }
    assert (
        dq[("input_rows", "")] == dq[("clean_rows", "")] + dq[("quarantined_rows", "")] + dq[("duplicates_removed", "")]
    )
    assert dq[("rule", "missing_customer_id")] == result.stages["ingest"].counts.by_reason["missing_customer_id"]
    quarantine = spark.read.format("delta").load(result.tables["transactions_quarantine"])
    assert quarantine.count() == dq[("quarantined_rows", "")]
    clean = spark.read.format("delta").load(result.tables["transactions_clean"])
    returns = (
        clean.filter("is_return")
        .agg(F.count("*"), F.max("amount"), F.sum(F.col("order_id").startswith("C").cast("int")))
        .first()
    )
    assert returns[0] > 8000 and returns[1] < 0 and returns[2] == returns[0]
    assert dq[("returns_kept", "")] == returns[0]


def test_features_and_segments_for_the_real_customers(spark, result):
    segment = result.stages["segment"]
    assert segment.as_of_date == date(2011, 12, 10)
    segments = spark.read.format("delta").load(result.tables["customer_segments"])
    assert segment.k == 4 and segments.select("segment_id").distinct().count() == segment.k
    assert segments.count() == int(segment.metrics["customers_modelled"]) > 4000


def test_every_real_customer_with_a_purchase_gets_a_value(spark, result):
    predict = result.stages["predict"]
    features = spark.read.format("delta").load(result.tables["customer_features"])
    assert predict.rows_out == features.filter("frequency > 0").count() > 4000
    scores = spark.read.format("delta").load(result.tables["customer_scores"])
    numbers = ["p_alive", "expected_purchases", "expected_order_value", "clv"]
    assert scores.filter(" OR ".join(f"{c} IS NULL OR isnan({c})" for c in numbers)).isEmpty()
    assert predict.clv.fallback is None and predict.clv.bgnbd.converged
    # A year of real history: the customers who bought most are expected to buy most and are worth most.
    by_frequency = (
        scores.join(features, "customer_id")
        .groupBy(F.col("frequency") >= 5)
        .agg(F.avg("clv"), F.avg("expected_purchases"))
    )
    (few, many) = sorted(by_frequency.collect(), key=lambda r: r[0])
    assert many[1] > 3 * few[1] and many[2] > 3 * few[2]


def test_the_real_segments_are_named_and_the_names_reach_the_published_tables(spark, result):
    explain = result.stages["explain"]
    names = [n.name for n in explain.names]
    assert len(names) == len(set(names)) == result.stages["segment"].k
    assert Path(explain.report_path).is_file()
    published = spark.read.format("delta").load(result.tables["customer_segments"])
    assert sorted(r[0] for r in published.select("segment_name").distinct().collect()) == sorted(names)
