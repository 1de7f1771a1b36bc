"""The predict stage on the shared end-to-end run (conftest ``e2e``): scores, models, per-segment views."""

from __future__ import annotations

from datetime import timedelta

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from pyspark.sql import functions as F

from clv_reference import expected_purchases_and_p_alive
from conftest import E2E_END, E2E_RUN


def _read(spark, e2e, table):
    return spark.read.format("delta").load(e2e.tables[table])


def test_every_customer_with_a_purchase_is_scored_once_with_finite_values(spark, e2e):
    scores = _read(spark, e2e, "customer_scores")
    features = _read(spark, e2e, "customer_features").filter("frequency > 0")
    assert scores.count() == scores.select("customer_id").distinct().count() == features.count()
    assert scores.join(features, "customer_id", "left_anti").isEmpty()
    assert scores.select("run_id", "as_of_date", "time_unit").distinct().collect() == [(E2E_RUN, E2E_END, "week")]
    numbers = ["p_alive", "expected_purchases_12m", "expected_order_value", "clv_12m", "churn_probability"]
    invalid = scores.filter(" OR ".join(f"{c} IS NULL OR isnan({c})" for c in numbers))
    assert invalid.isEmpty()
    bounds = scores.agg(*[F.min(c) for c in numbers], F.max("p_alive"), F.max("churn_probability")).first()
    assert min(bounds[: len(numbers)]) >= 0 and bounds[-2] <= 1 and bounds[-1] <= 1
    assert e2e.stages["predict"].rows_out == features.count()


def test_repeat_summaries_count_distinct_purchase_days_before_the_as_of_date(spark, e2e):
    daily = _read(spark, e2e, "customer_daily").filter((F.col("purchase_orders") > 0) & (F.col("day") < E2E_END))
    by_hand = daily.groupBy("customer_id").agg(
        (F.count(F.lit(1)) - 1).alias("x"),
        (F.datediff(F.max("day"), F.min("day")) / 7).alias("t_x"),
        (F.datediff(F.lit(E2E_END - timedelta(days=1)), F.min("day")) / 7).alias("age"),
    )
    scores = _read(spark, e2e, "customer_scores").select(
        "customer_id", F.col("repeat_purchases").alias("x"), F.col("recency").alias("t_x"), "age"
    )
    assert scores.exceptAll(by_hand).isEmpty() and by_hand.exceptAll(scores).isEmpty()


def test_scores_follow_the_recorded_parameters(spark, e2e):
    parameters = _read(spark, e2e, "clv_parameters").collect()
    fits = {}
    for row in parameters:
        fits.setdefault(row["model"], {})[row["parameter"]] = row["value"]
        assert row["std_error"] > 0 and np.isfinite(row["log_likelihood"]) and row["run_id"] == E2E_RUN
    assert set(fits) == {"bgnbd", "gamma_gamma"} and all(r["used"] for r in parameters)
    rows = _read(spark, e2e, "customer_scores").orderBy("customer_id").limit(200).toPandas()
    month = 365.25 / 12 / 7
    cumulative = [
        expected_purchases_and_p_alive(fits["bgnbd"], m * month, rows["repeat_purchases"], rows["recency"], rows["age"])
        for m in range(13)
    ]
    assert np.allclose(rows["expected_purchases_12m"], cumulative[12][0], rtol=1e-8)
    assert np.allclose(rows["p_alive"], cumulative[12][1], rtol=1e-10)
    discounted = sum((cumulative[m][0] - cumulative[m - 1][0]) / 1.01**m for m in range(1, 13))
    assert np.allclose(rows["clv_12m"], rows["expected_order_value"] * discounted, rtol=1e-8)
    p, q, v = (fits["gamma_gamma"][n] for n in ("p", "q", "v"))
    one_time = rows["repeat_purchases"] == 0
    assert np.allclose(rows["expected_order_value"][one_time], p * v / (q - 1))


def test_churn_is_chosen_out_of_time_and_separates_the_lapsing_customers(spark, e2e, e2e_root):
    evaluation = _read(spark, e2e, "churn_evaluation").collect()
    assert sorted(r["model"] for r in evaluation) == ["gbt", "logistic_regression"]
    chosen = [r for r in evaluation if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["auc_pr"] == max(r["auc_pr"] for r in evaluation)
    for row in evaluation:
        assert row["evaluation_date"] == E2E_END - timedelta(days=30)
        assert row["training_dates"] == [E2E_END - timedelta(days=60)]
        assert sum(d["customers"] for d in row["calibration"]) == row["evaluation_rows"]
        assert row["auc_roc"] >= 0.8, row["model"]  # the generator plants lapsing customers
        assert row["top_decile_lift"] > 1 and len(row["importances"]) > 10
    scores = _read(spark, e2e, "customer_scores")
    assert scores.select("churn_model", "churn_model_version").distinct().collect() == [
        (chosen[0]["model"], chosen[0]["model_version"])
    ]
    # The planted lapsing customers score higher than the loyal ones.
    truth = spark.read.parquet(str(e2e_root / "demo" / "truth"))
    by_archetype = dict(
        scores.join(truth, "customer_id").groupBy("archetype").agg(F.avg("churn_probability")).collect()
    )
    assert by_archetype["lapsing"] > 0.5 > by_archetype["loyal_high_value"]


def test_segment_scores_sum_the_customer_scores_of_each_segment(spark, e2e):
    assignments = _read(spark, e2e, "segment_assignments").select(
        "customer_id", F.col("segment_id").alias("model_segment_id")
    )
    by_hand = (
        _read(spark, e2e, "customer_scores")
        .join(assignments, "customer_id")
        .groupBy("model_segment_id")
        .agg(F.count(F.lit(1)).alias("customers"), F.sum("clv_12m").alias("total"), F.avg("churn_probability"))
        .orderBy("model_segment_id")
        .collect()
    )
    written = _read(spark, e2e, "segment_scores").orderBy("model_segment_id").collect()
    assert [r["model_segment_id"] for r in written] == [r[0] for r in by_hand]
    for row, hand in zip(written, by_hand, strict=True):
        assert row["customers"] == hand["customers"]
        assert row["total_clv"] == pytest.approx(hand["total"], rel=1e-9)
        assert row["mean_clv"] == pytest.approx(hand["total"] / hand["customers"], rel=1e-9)
        assert row["mean_churn_probability"] == pytest.approx(hand[3], rel=1e-9)
    assert sum(r["clv_share"] for r in written) == pytest.approx(1.0)
    assert {r["as_of_date"] for r in written} == {E2E_END}


def test_the_models_are_logged_and_the_churn_model_registered(e2e):
    mlflow.set_tracking_uri(e2e.tracking_uri)
    metrics = MlflowClient().get_run(e2e.mlflow_run_id).data.metrics
    for name in ("r", "alpha", "a", "b"):
        assert metrics[f"clv_bgnbd_{name}"] > 0 and metrics[f"clv_bgnbd_{name}_se"] > 0
    assert {
        "clv_bgnbd_log_likelihood",
        "clv_gamma_gamma_q",
        "churn_gbt_auc_roc",
        "churn_logistic_regression_auc_pr",
    } <= set(metrics)
    versions = MlflowClient().search_model_versions("name = 'seg-spark-segments-churn'")
    assert [str(v.version) for v in versions] == [e2e.stages["predict"].churn.model_version]
    logged = mlflow.artifacts.load_dict(f"runs:/{e2e.mlflow_run_id}/churn_evaluation.json")
    assert [c["model"] for c in logged["candidates"]] == ["logistic_regression", "gbt"]
    assert all(sum(d["customers"] for d in c["calibration"]) > 0 and c["importances"] for c in logged["candidates"])
