"""Churn propensity: labels, dates, metrics against scikit-learn, and scoring without Python."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from seg_spark.config import load_config
from seg_spark.models import churn
from seg_spark.session import compacted

AS_OF = date(2026, 6, 1)


def test_a_customer_churned_when_no_purchase_order_falls_in_the_horizon_that_starts_on_the_as_of_date(spark):
    features = spark.createDataFrame(
        [("bought_on_day_one", 3), ("bought_on_the_last_day", 1), ("bought_the_day_after", 2), ("never_bought", 0)],
        "customer_id string, frequency long",
    )
    daily = spark.createDataFrame(
        [
            ("bought_on_day_one", AS_OF, 1),
            ("bought_on_the_last_day", AS_OF + timedelta(days=29), 1),
            ("bought_the_day_after", AS_OF + timedelta(days=30), 1),
            ("bought_the_day_after", AS_OF + timedelta(days=3), 0),  # a return only
            ("bought_the_day_after", AS_OF - timedelta(days=1), 1),  # before the as-of date
            ("never_bought", AS_OF + timedelta(days=1), 1),
        ],
        "customer_id string, day date, purchase_orders int",
    )
    labels = {r["customer_id"]: r[churn.LABEL] for r in churn.labelled(features, daily, AS_OF, 30).collect()}
    # Customers without a purchase before the as-of date are not at risk of churning, so they are left out.
    assert labels == {"bought_on_day_one": 0.0, "bought_on_the_last_day": 0.0, "bought_the_day_after": 1.0}


def test_training_dates_end_before_the_evaluation_horizon_starts():
    settings = load_config(
        [], ["predict.churn.horizon_days=60", "predict.churn.training_dates=3", "predict.churn.training_step_days=14"]
    ).predict.churn
    dates = churn.Dates.before(AS_OF, settings)
    assert dates.evaluation == AS_OF - timedelta(days=60)
    assert dates.training == tuple(AS_OF - timedelta(days=d) for d in (148, 134, 120))
    # The last training labels (120..60 days before) are known before the evaluation window opens.
    assert dates.training[-1] + timedelta(days=60) == dates.evaluation


@pytest.fixture(scope="module")
def frames(spark):
    """Rows whose churn depends on recency (and a little on spend), with noise; a training and a later set."""
    rng = np.random.default_rng(7)

    def rows(n: int, offset: int):
        recency = rng.uniform(1, 200, n)
        spend = rng.gamma(2.0, 50.0, n)
        churned = (rng.uniform(0, 1, n) < 1 / (1 + np.exp(-(recency - 100) / 20 + spend / 400))).astype(float)
        return spark.createDataFrame(
            [
                (f"c{offset + i}", float(r), float(s), float(c))
                for i, (r, s, c) in enumerate(zip(recency, spend, churned, strict=True))
            ],
            f"customer_id string, recency_days double, monetary double, {churn.LABEL} double",
        )

    return rows(600, 0), rows(400, 10_000)


def _candidates(frames, parallel_fits: int) -> tuple[churn.Evaluation, ...]:
    training, evaluation = frames
    overrides = ["predict.churn.gbt_max_iter=5", f"predict.churn.parallel_fits={parallel_fits}"]
    settings = load_config([], overrides).predict.churn
    return churn.evaluate_candidates(training, evaluation, churn.feature_columns(training), settings)


@pytest.fixture(scope="module")
def one_after_another(frames) -> dict[str, churn.Evaluation]:
    """Both candidates fitted and judged one after the other."""
    return {result.model: result for result in _candidates(frames, parallel_fits=1)}


@pytest.mark.parametrize("model", ["logistic_regression", "gbt"])
def test_out_of_time_metrics_equal_scikit_learn_on_the_same_probabilities(spark, frames, one_after_another, model):
    training, evaluation = frames
    columns = churn.feature_columns(training)
    assert columns == ["monetary", "recency_days"]
    result = one_after_another[model]
    fitted = result.fitted

    scored = evaluation.transform(churn.churn_probability(fitted))
    plan = scored._jdf.queryExecution().executedPlan().toString()
    assert "Python" not in plan and "Arrow" not in plan
    assert scored.columns == [*evaluation.columns, churn.PROBABILITY]
    got = scored.toPandas()
    assert result.auc_roc == pytest.approx(roc_auc_score(got[churn.LABEL], got[churn.PROBABILITY]), abs=1e-6)
    assert result.auc_roc > 0.8
    assert sum(d["customers"] for d in result.calibration) == 400
    assert result.base_rate == pytest.approx(got[churn.LABEL].mean())
    top = result.calibration[-1]
    in_top = got[got[churn.PROBABILITY] > got[churn.PROBABILITY].quantile(0.9) - 1e-12]
    assert top["customers"] == pytest.approx(len(in_top), abs=8)  # approximate decile edges
    assert result.top_decile_lift == pytest.approx(top["observed"] / result.base_rate)
    assert result.top_decile_lift > 1.5
    # Predicted and observed churn rise together from the lowest decile to the highest.
    assert result.calibration[0]["observed"] < result.calibration[-1]["observed"]
    assert {i["feature"] for i in result.importances} == set(columns)
    assert result.importances[0]["feature"] == "recency_days"


def test_compacted_rows_give_the_same_models_in_fewer_partitions(spark, frames, one_after_another):
    training, evaluation = frames
    slots = spark.sparkContext.defaultParallelism
    assert training.rdd.getNumPartitions() == slots == 2
    assert compacted(training, 600, 1_000).rdd.getNumPartitions() == 1
    assert compacted(training, 600, 250).rdd.getNumPartitions() == 2  # three wanted, one per slot at most
    settings = load_config([], ["predict.churn.gbt_max_iter=5"]).predict.churn
    compact = churn.evaluate_candidates(
        compacted(training, 600, 1_000),
        compacted(evaluation, 400, 1_000),
        churn.feature_columns(training),
        settings,
    )
    for result in compact:
        alone = one_after_another[result.model]
        assert (result.auc_roc, result.auc_pr) == pytest.approx((alone.auc_roc, alone.auc_pr), rel=1e-9)
        assert [i["feature"] for i in result.importances] == [i["feature"] for i in alone.importances]


def test_candidates_fitted_side_by_side_equal_those_fitted_one_after_another(frames, one_after_another):
    side_by_side = _candidates(frames, parallel_fits=2)
    assert [result.model for result in side_by_side] == ["logistic_regression", "gbt"]  # the configured order
    # Equal up to rounding: Spark sums the tasks' partial results in the order they finish, in either case.
    for result in side_by_side:
        alone = one_after_another[result.model]
        assert (result.auc_roc, result.auc_pr, result.base_rate) == pytest.approx(
            (alone.auc_roc, alone.auc_pr, alone.base_rate), rel=1e-12
        )
        assert [row["customers"] for row in result.calibration] == [row["customers"] for row in alone.calibration]
        for got, want in zip(result.calibration, alone.calibration, strict=True):
            assert got == pytest.approx(want, rel=1e-12)
        assert [i["feature"] for i in result.importances] == [i["feature"] for i in alone.importances]
