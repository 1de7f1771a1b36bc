"""``seg-spark clv-backtest`` on the CDNOW transactions as a configured CSV source (cleaned by the
ingest rules): the published BG/NBD and Gamma-Gamma estimates, and a holdout forecast that equals
an independent computation with SciPy."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pandas as pd
import pytest

from seg_spark import cli
from seg_spark.backtest import clv_backtest
from seg_spark.config import load_config

from clv_reference import CDNOW, expected_purchases_and_p_alive

pytestmark = pytest.mark.slow

MAPPING = (
    "{customer_id: cust, ts: day, quantity: qty, amount: amount, order_id: null, product_id: null, "
    "description: null, category: null, channel: null, unit_price: null, discount: null, country: null}"
)


def _source(tmp_path: Path) -> list[str]:
    """CDNOW_sample.txt (master id, sample id, yyyymmdd, quantity, amount) as a CSV source's overrides."""
    raw = pd.read_csv(CDNOW / "CDNOW_sample.txt", sep=r"\s+", header=None, dtype=str)
    csv = pd.DataFrame(
        {"cust": raw[1], "day": pd.to_datetime(raw[2]).dt.strftime("%Y-%m-%d"), "qty": raw[3], "amount": raw[4]}
    )
    csv.to_csv(tmp_path / "cdnow.csv", index=False)
    return [
        f"sources.transactions.path={tmp_path / 'cdnow.csv'}",
        "sources.transactions.format=csv",
        "sources.transactions.options={header: true}",
        f"sources.transactions.columns={MAPPING}",
        "sources.transactions.timestamp_format=yyyy-MM-dd",
        "quality.clock=1998-07-01T00:00:00",
    ]


def test_the_backtest_on_cdnow_gives_the_published_fit_and_an_exact_holdout_forecast(spark, tmp_path):
    result = clv_backtest(spark, load_config([], _source(tmp_path)), date(1997, 9, 30), date(1998, 6, 30), "week")
    for name, value in {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}.items():
        assert result.bgnbd.params[name] == pytest.approx(value, rel=0.005), name
    assert result.bgnbd.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    # Ingest drops 21 exact duplicate lines, which moves some repeat buyers' mean values a little.
    for name, value in {"p": 6.25, "q": 3.74, "v": 15.44}.items():
        assert result.gamma_gamma.params[name] == pytest.approx(value, rel=0.01), name
    assert result.customers == 2357

    # The forecast, recomputed per customer from the published summaries with SciPy's 2F1.
    summary = pd.read_csv(CDNOW / "cdnow_customers_summary.csv")
    x, t_x, age = (summary[c].to_numpy(float) for c in ("frequency", "recency", "T"))
    expected, _ = expected_purchases_and_p_alive(result.bgnbd.params, 273 / 7, x, t_x, age)  # to 1998-06-30
    # The published summaries round times to 1/100 week; the backtest uses exact days.
    assert result.predicted == pytest.approx(expected.sum(), rel=1e-3)

    raw = pd.read_csv(CDNOW / "CDNOW_sample.txt", sep=r"\s+", header=None, dtype=str)
    later = raw[(raw[2] > "19970930") & (raw[2] <= "19980630")]
    assert result.actual == len(later[[1, 2]].drop_duplicates())  # purchase days in the holdout
    assert sum(row["customers"] for row in result.by_frequency) == 2357
    assert [row["frequency"] for row in result.by_frequency] == ["0", "1", "2", "3", "4", "5", "6", "7+"]
    assert result.by_frequency[0]["customers"] == int((x == 0).sum())
    assert json.loads(json.dumps(result.as_json()))["holdout"] == {
        "predicted": result.predicted,
        "actual": result.actual,
    }


def test_periods_in_the_wrong_order_are_refused(tmp_path, capsys):
    argv = ["clv-backtest", "--calibration-end", "1998-06-30", "--holdout-end", "1997-09-30", "--set"]
    assert cli.main([*argv, f"storage.root={tmp_path}"]) == 2
    assert "--holdout-end (1997-09-30) must be after --calibration-end (1998-06-30)" in capsys.readouterr().err
