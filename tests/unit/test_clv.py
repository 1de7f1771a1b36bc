"""BG/NBD and Gamma-Gamma against the published CDNOW estimates (Fader, Hardie and Lee 2005).

Data: tests/data/cdnow (from the lifetimes wheel, MIT; see its README)."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from seg_spark.features.repeat import repeat_summaries
from seg_spark.models.clv import (
    ClvFitError,
    Summaries,
    bgnbd_log_likelihood,
    expected_order_value,
    expected_purchases,
    fit_bgnbd,
    fit_gamma_gamma,
    p_alive,
)

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
    assert fit.converged and fit.starts == 3
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
