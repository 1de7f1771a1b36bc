"""The real UCI Online Retail log through conf/examples/online_retail.yaml, checked row by row
against counts computed independently with Python's csv module.

The run is ``seg-spark run`` as a process of its own, started at the beginning of the suite beside
the in-process tests (conftest's ``background`` marker); the tests read what it wrote.
"""

import csv
import gzip
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from seg_spark.config import Settings, load_config
from seg_spark.stages.explain.report import report_path

from conftest import BACKGROUND, SHORT_JVM_COMPILED

REPO = Path(__file__).resolve().parents[2]
DATA = REPO.parent / "shared" / "data" / "online_retail.csv.gz"
CONFIG = REPO / "conf" / "examples" / "online_retail.yaml"
NON_PRODUCT = {"POST", "DOT", "M", "m", "C2", "D", "S", "B", "BANK CHARGES", "AMAZONFEE", "CRUK", "PADS"}


def _overrides(root: Path) -> list[str]:
    return [
        f"sources.transactions.path={DATA}",
        f"storage.root={root}/warehouse",
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
    ]


@dataclass(frozen=True)
class RetailRun:
    root: Path
    done: subprocess.CompletedProcess | None  # None: the data is not there

    @property
    def settings(self) -> Settings:
        return load_config([CONFIG], _overrides(self.root))


def run_retail() -> RetailRun:
    """``seg-spark run`` on the real log, at the lowest priority (it runs beside the suite)."""
    root = Path(tempfile.mkdtemp(prefix="seg-spark-retail-"))
    if not DATA.is_file():
        return RetailRun(root, None)
    command = ["nice", "-n", "19", sys.executable, "-m", "seg_spark.cli", "run", "--config", str(CONFIG)]
    command += [arg for item in _overrides(root) for arg in ("--set", item)]
    return RetailRun(root, subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=SHORT_JVM_COMPILED))


pytestmark = [pytest.mark.slow, pytest.mark.background.with_args(run_retail)]


@pytest.fixture(scope="module")
def _cleanup():
    folders: list[Path] = []
    yield folders
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def retail(request, _cleanup, spark) -> RetailRun:
    run: RetailRun = request.node.stash[BACKGROUND].result(timeout=1800)
    _cleanup.append(run.root)
    if run.done is None:
        pytest.skip(f"{DATA} is not there (CI places shared/ beside the repository)")
    assert run.done.returncode == 0, run.done.stdout[-3000:] + run.done.stderr[-3000:]
    return run


def _table(spark, run: RetailRun, name: str):
    return spark.read.format("delta").load(f"{run.root}/warehouse/{name}")


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


def test_every_input_line_is_reconciled(spark, retail, expected):
    dq = {(r["metric"], r["column"]): r["value"] for r in _table(spark, retail, "data_quality").collect()}
    assert dq[("input_rows", "")] == expected["input"] == 541_909
    assert dq[("duplicates_removed", "")] == expected["input"] - expected["distinct"]
    reasons = expected["reasons"]
    assert dq[("clean_rows", "")] == reasons.pop("clean")
    assert {column: value for (metric, column), value in dq.items() if metric == "rule" and value} == dict(reasons)
    assert (
        dq[("input_rows", "")] == dq[("clean_rows", "")] + dq[("quarantined_rows", "")] + dq[("duplicates_removed", "")]
    )


def test_the_quarantine_holds_every_bad_line_and_cancellations_stay_as_returns(spark, retail):
    dq = {(r["metric"], r["column"]): r["value"] for r in _table(spark, retail, "data_quality").collect()}
    assert _table(spark, retail, "transactions_quarantine").count() == dq[("quarantined_rows", "")]
    clean = _table(spark, retail, "transactions_clean")
    returns = (
        clean.filter("is_return")
        .agg(F.count("*"), F.max("amount"), F.sum(F.col("order_id").startswith("C").cast("int")))
        .first()
    )
    assert returns[0] > 8000 and returns[1] < 0 and returns[2] == returns[0]
    assert dq[("returns_kept", "")] == returns[0]


def test_features_and_segments_for_the_real_customers(spark, retail):
    segments = _table(spark, retail, "customer_segments")
    assert [r[0] for r in segments.select("as_of_date").distinct().collect()] == [date(2011, 12, 10)]
    assert segments.select("segment_id").distinct().count() == 4
    assert segments.count() == _table(spark, retail, "segment_assignments").count() > 4000


def test_every_real_customer_with_a_purchase_gets_a_value(spark, retail):
    (predict,) = _table(spark, retail, "pipeline_runs").filter("stage = 'predict'").collect()
    features = _table(spark, retail, "customer_features")
    assert predict["status"] == "succeeded" and predict["rows_out"] == features.filter("frequency > 0").count() > 4000
    scores = _table(spark, retail, "customer_scores")
    numbers = ["p_alive", "expected_purchases_12m", "expected_order_value", "clv_12m"]
    assert scores.filter(" OR ".join(f"{c} IS NULL OR isnan({c})" for c in numbers)).isEmpty()
    fits = _table(spark, retail, "clv_parameters").collect()
    assert {(r["model"], r["used"], r["converged"]) for r in fits} == {
        ("bgnbd", True, True),
        ("gamma_gamma", True, True),
    }
    # A year of real history: the customers who bought most are expected to buy most and are worth most.
    by_frequency = (
        scores.join(features, "customer_id")
        .groupBy(F.col("frequency") >= 5)
        .agg(F.avg("clv_12m"), F.avg("expected_purchases_12m"))
    )
    (few, many) = sorted(by_frequency.collect(), key=lambda r: r[0])
    assert many[1] > 3 * few[1] and many[2] > 3 * few[2]


def test_the_real_segments_are_named_and_the_names_reach_the_published_tables(spark, retail):
    names = [r[0] for r in _table(spark, retail, "segment_profiles").select("segment_name").collect()]
    assert len(names) == len(set(names)) == 4
    assert report_path(retail.settings, "retail").is_file()
    assert "Segments:" in retail.done.stdout and all(name in retail.done.stdout for name in names)
    published = _table(spark, retail, "customer_segments")
    assert sorted(r[0] for r in published.select("segment_name").distinct().collect()) == sorted(names)
