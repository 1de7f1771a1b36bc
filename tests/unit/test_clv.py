"""BG/NBD and Gamma-Gamma against the published CDNOW estimates (Fader, Hardie and Lee 2005).

Data: tests/data/cdnow (from the lifetimes wheel, MIT; see its README)."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.image import imread
from mlflow import MlflowClient
from pyspark.sql import functions as F

from seg_spark.backtest import BACKTEST_PLOT, Backtest, log_backtest
from seg_spark.config import load_config
from seg_spark.features.repeat import repeat_summaries
from seg_spark.models.clv import (
    ClvFitError,
    ClvHorizon,
    Fit,
    Summaries,
    bgnbd_log_likelihood,
    clv_scores,
    expected_order_value,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
    triple_forecasts,
)
from seg_spark.tracking import Tracker

from clv_reference import CDNOW, expected_purchases_and_p_alive


@pytest.fixture(scope="module")
def summary() -> pd.DataFrame:
    return pd.read_csv(CDNOW / "cdnow_customers_summary.csv")


@pytest.fixture(scope="module")
def summaries(summary) -> Summaries:
    return Summaries.compress(summary["frequency"], summary["recency"], summary["T"])


def test_bgnbd_on_cdnow_gives_the_published_estimates(summaries):
    fit = fit_bgnbd(summaries)
    published = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    for name, value in published.items():
        assert fit.params[name] == pytest.approx(value, rel=0.005), name
    assert fit.log_likelihood == pytest.approx(-9582.4, abs=0.05)
    assert fit.converged and fit.starts == 3 and fit.observations == 1016
    assert len(summaries.x) == 1016 and summaries.weights.sum() == 2357  # 2,357 customers, 1,016 distinct


def test_the_compressed_likelihood_equals_the_per_customer_one(summary, summaries):
    one_each = Summaries(
        summary["frequency"].to_numpy(float),
        summary["recency"].to_numpy(float),
        summary["T"].to_numpy(float),
        np.ones(len(summary)),
    )
    for params in ((0.243, 4.414, 0.793, 2.426), (1.0, 2.0, 0.5, 3.0)):
        assert bgnbd_log_likelihood(params, summaries) == pytest.approx(
            bgnbd_log_likelihood(params, one_each), rel=1e-12
        )


def test_standard_errors_shrink_with_the_square_root_of_the_customers(summaries):
    once = fit_bgnbd(summaries)
    twice = fit_bgnbd(Summaries(summaries.x, summaries.t_x, summaries.age, 2 * summaries.weights))
    for name in once.params:
        assert twice.params[name] == pytest.approx(once.params[name], rel=1e-3)
        assert np.isfinite(once.std_errors[name]) and once.std_errors[name] > 0
        assert twice.std_errors[name] == pytest.approx(once.std_errors[name] / np.sqrt(2), rel=0.02), name


def test_a_penalizer_pulls_the_parameters_towards_zero(summaries):
    free, penalized = fit_bgnbd(summaries), fit_bgnbd(summaries, penalizer=10.0)
    norm = lambda fit: sum(v**2 for v in fit.params.values())  # noqa: E731
    assert norm(penalized) < norm(free)
    assert penalized.log_likelihood < free.log_likelihood


def test_gamma_gamma_on_cdnow_repeat_buyers_gives_the_published_estimates():
    buyers = pd.read_csv(CDNOW / "cdnow_customers_summary_with_transactions.csv")
    fit = fit_gamma_gamma(buyers["x"], buyers["zbar"])
    for name, value in {"p": 6.25, "q": 3.74, "v": 15.44}.items():
        assert fit.params[name] == pytest.approx(value, rel=0.01), name
    assert fit.converged


def test_data_without_repeat_buyers_is_refused_with_the_reason():
    with pytest.raises(ClvFitError, match="every customer bought once"):
        fit_bgnbd(Summaries.compress([0, 0], [0, 0], [10, 20]))
    with pytest.raises(ClvFitError, match="at least 10 repeat buyers .* found 2"):
        fit_gamma_gamma([1, 2, 0], [10.0, 20.0, 5.0])


def _cdnow_lines(spark):
    """CDNOW_sample.txt (master id, sample id 1..2,357, yyyymmdd, quantity, amount) as purchase lines."""
    text = spark.read.text(str(CDNOW / "CDNOW_sample.txt"))
    fields = F.split(F.trim("value"), r"\s+")
    return text.select(
        fields[1].alias("customer_id"),
        F.to_timestamp(fields[2], "yyyyMMdd").alias("ts"),
        fields[4].cast("double").alias("amount"),
    )


def test_repeat_summaries_built_in_spark_equal_the_published_cdnow_summaries(spark):
    built = (
        _cdnow_lines(spark)
        .transform(repeat_summaries(date(1997, 9, 30), 7, holdout_end=date(1998, 6, 30)))
        .orderBy("customer_id")
        .toPandas()
    )
    # The published files' ID is the sample id (zero-padded in the text, so its order is the same).
    published = pd.read_csv(CDNOW / "cdnow_customers_summary_with_transactions.csv").sort_values("ID")
    assert len(built) == len(published) == 2357
    assert (built["x"].to_numpy() == published["x"].to_numpy()).all()
    assert np.allclose(built["t_x"].round(2), published["t_x"]) and np.allclose(built["age"].round(2), published["T"])
    repeat = published["x"].to_numpy() > 0
    # zbar is published to the cent, rounded half up (22.345 -> 22.35)
    assert np.allclose(built["m_x"].to_numpy()[repeat], published["zbar"].to_numpy()[repeat], rtol=0, atol=0.005 + 1e-9)
    assert built["m_x"][~repeat].isna().all()
    # Holdout: 39 weeks to 1998-06-30; every purchase day of the sample falls in one of the two periods.
    days = _cdnow_lines(spark).select("customer_id", F.to_date("ts").alias("day")).distinct()
    assert int(built["x"].sum() + len(built) + built["x_holdout"].sum()) == days.count()


def test_scoring_in_spark_equals_the_reference_with_scipy_and_runs_no_python(spark, summary):
    params = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    gamma_gamma = {"p": 6.25, "q": 3.74, "v": 15.44}
    rows = spark.createDataFrame(
        [
            (float(f), float(r), float(t), 20.0 if f else None)
            for f, r, t in summary[["frequency", "recency", "T"]].values
        ],
        "x double, t_x double, age double, m_x double",
    )
    scored = rows.select(
        "*",
        p_alive(params).alias("p_alive"),
        expected_purchases(params, 39.0, terms=200).alias("purchases"),
        expected_order_value(gamma_gamma).alias("order_value"),
    )
    plan = scored._jdf.queryExecution().executedPlan().toString()
    assert "Python" not in plan and "Arrow" not in plan
    got = scored.select("x", "t_x", "age", "p_alive", "purchases.*", "order_value").toPandas()
    purchases, alive = expected_purchases_and_p_alive(params, 39.0, got["x"], got["t_x"], got["age"])
    assert np.allclose(got["value"], purchases, rtol=1e-9) and np.allclose(got["p_alive"], alive, rtol=1e-12)
    assert got["last_term"].abs().max() < 1e-12  # the series converged
    # The paper's example customer: 2 repeat purchases, the last at 30.43 weeks, observed for 38.86.
    example = got[(got["x"] == 2) & (got["t_x"] == 30.43) & (got["age"] == 38.86)]
    assert example["value"].iloc[0] == pytest.approx(1.226, abs=0.001)
    repeat = got["x"] > 0
    assert np.allclose(
        got["order_value"][repeat], 6.25 * (15.44 + got["x"][repeat] * 20.0) / (6.25 * got["x"][repeat] + 2.74)
    )
    assert np.allclose(got["order_value"][~repeat], 6.25 * 15.44 / 2.74)


def test_clv_discounts_each_months_expected_purchases_and_runs_no_python(spark):
    params = {"r": 0.243, "alpha": 4.414, "a": 0.793, "b": 2.426}
    gamma_gamma = {"p": 6.25, "q": 3.74, "v": 15.44}
    customers = [("a", 2, 30.43, 38.86, 20.0, 18.0), ("b", 0, 0.0, 12.0, None, 35.0), ("c", 7, 35.0, 36.0, 41.5, 40.0)]
    # A frequent buyer seen for three weeks and a one-time buyer of yesterday, a year ahead: eq. 10's own
    # series needs 415 terms for the first (the transformed one, 9).
    customers += [("e", 20, 2.9, 3.0, 25.0, 25.0), ("f", 0, 0.0, 1 / 7, None, 10.0)]
    # Two customers share a triple: the forecasts are computed per distinct triple and joined back.
    customers.append(("d", *customers[0][1:]))
    summaries = spark.createDataFrame(
        customers, "customer_id string, x long, t_x double, age double, m_x double, mean_value double"
    )
    horizon = ClvHorizon(months=12, monthly_discount_rate=0.02, time_unit_days=7, series_terms=200)
    forecasts = summaries.transform(triple_forecasts(params, horizon))
    assert forecasts.count() == 5
    assert forecasts.agg(F.max("series_last_term")).first()[0] < 1e-9
    scored = summaries.transform(clv_scores(forecasts, gamma_gamma))
    plan = scored._jdf.queryExecution().executedPlan().toString()
    assert "Python" not in plan and "Arrow" not in plan
    got = {r["customer_id"]: r for r in scored.collect()}
    for customer_id, x, t_x, age, m_x, _ in customers:
        cumulative = [
            float(expected_purchases_and_p_alive(params, m * 365.25 / 12 / 7, np.float64(x), t_x, age)[0])
            for m in range(13)
        ]
        discounted = sum((cumulative[m] - cumulative[m - 1]) / 1.02**m for m in range(1, 13))
        p, q, v = gamma_gamma.values()
        value = p * (v + x * m_x) / (p * x + q - 1) if x else p * v / (q - 1)
        row = got[customer_id]
        assert row["expected_purchases"] == pytest.approx(cumulative[12], rel=1e-9)
        assert row["expected_order_value"] == pytest.approx(value, rel=1e-12)
        assert row["clv"] == pytest.approx(value * discounted, rel=1e-9)
    # Without Gamma-Gamma each customer's own mean purchase-day value stands in.
    fallback = {r["customer_id"]: r for r in summaries.transform(clv_scores(forecasts, None)).collect()}
    assert fallback["b"]["expected_order_value"] == 35.0
    assert fallback["b"]["clv"] == pytest.approx(got["b"]["clv"] / got["b"]["expected_order_value"] * 35.0)


def test_a_backtest_is_logged_to_mlflow_with_its_table_and_plot(tmp_path):
    settings = load_config([], [f"storage.root={tmp_path}", f"tracking.tracking_uri={tmp_path}/ml"])
    bgnbd = Fit(
        {"r": 0.24, "alpha": 4.4, "a": 0.79, "b": 2.4},
        -9582.4,
        dict.fromkeys(["r", "alpha", "a", "b"], 0.1),
        True,
        "",
        3,
    )
    table = [
        {"frequency": "0", "customers": 1411, "predicted_mean": 0.225, "actual_mean": 0.237},
        {"frequency": "1+", "customers": 946, "predicted_mean": 1.41, "actual_mean": 1.64},
    ]
    result = Backtest(date(1997, 9, 30), date(1998, 6, 30), "week", 2357, bgnbd, None, 1653.4, 1882, table)
    run_id = log_backtest(Tracker(settings), result)

    client = MlflowClient(f"sqlite:///{tmp_path}/ml/mlflow.db")
    metrics = client.get_run(run_id).data.metrics
    assert (metrics["bgnbd_r"], metrics["holdout_predicted"], metrics["holdout_actual"]) == (0.24, 1653.4, 1882)
    logged = json.loads(Path(client.download_artifacts(run_id, "backtest.json", str(tmp_path))).read_text())
    assert logged["by_frequency"] == table and logged["holdout"] == {"predicted": 1653.4, "actual": 1882}
    png = Path(client.download_artifacts(run_id, BACKTEST_PLOT, str(tmp_path)))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    height, width, _ = imread(png).shape
    assert (width, height) == (700, 450)
