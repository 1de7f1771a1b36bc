"""Churn propensity: will a customer buy again within the horizon? Trained and judged out of time.

A customer is *churned* at an as-of date when they bought before it and place no purchase
order in the ``horizon_days`` that start on it. Training rows are customers' point-in-time
features at earlier as-of dates, labelled by what they did next; the candidates (Spark ML
logistic regression on standardised features, gradient-boosted trees) are judged on a later
as-of date whose horizon has fully passed, never on a random split across time. Everything is
Spark: the probabilities are read from the model's probability vector with ``vector_to_array``
(a built-in, not a Python UDF), and the decile table comes from approximate quantiles.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import numpy as np
from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.classification import GBTClassifier, LogisticRegression
from pyspark.ml.evaluation import BinaryClassificationEvaluator
from pyspark.ml.feature import StandardScaler, VectorAssembler
from pyspark.ml.functions import vector_to_array
from pyspark.sql import DataFrame
from pyspark.sql import functions as F
from pyspark.sql import types as T

from seg_spark.config import ChurnSettings
from seg_spark.models.clustering import in_parallel

log = logging.getLogger(__name__)

LABEL = "churned"
PROBABILITY = "churn_probability"
DECILES = 10
# Columns of customer_features that are not behaviour to learn from.
NOT_FEATURES = frozenset({"customer_id", "as_of_date", "run_id", "rfm_r", "rfm_f", "rfm_m"})


@dataclass(frozen=True)
class Dates:
    """The as-of dates of one churn model's rows: training, and evaluation."""

    training: tuple[date, ...]
    evaluation: date

    @classmethod
    def before(cls, as_of: date, settings: ChurnSettings) -> Dates:
        """Evaluation ``as_of - horizon``; training ``as_of - 2 horizon`` and every step before it."""
        horizon = timedelta(days=settings.horizon_days)
        latest = as_of - 2 * horizon
        step = timedelta(days=settings.training_step_days)
        training = tuple(latest - i * step for i in reversed(range(settings.training_dates)))
        return cls(training=training, evaluation=as_of - horizon)


@dataclass(frozen=True)
class Evaluation:
    """One candidate judged on the evaluation date."""

    model: str
    auc_roc: float
    auc_pr: float
    top_decile_lift: float
    base_rate: float
    calibration: list[dict[str, Any]]
    importances: list[dict[str, Any]]
    fitted: PipelineModel


def labelled(features: DataFrame, daily: DataFrame, as_of: date, horizon_days: int) -> DataFrame:
    """Customers with a purchase before ``as_of``, with ``churned`` = 1.0 when none follows within the horizon.

    Args:
        features: Point-in-time features as of ``as_of`` (``frequency`` counts purchase orders).
        daily: ``customer_daily`` (``customer_id``, ``day``, ``purchase_orders``).
        as_of: The as-of date of ``features``.
        horizon_days: Length of the label window that starts on ``as_of``.
    """
    window = (F.col("day") >= F.lit(as_of)) & (F.col("day") < F.lit(as_of + timedelta(days=horizon_days)))
    buyers = daily.filter(window & (F.col("purchase_orders") > 0)).select("customer_id").distinct()
    return (
        features.filter(F.col("frequency") > 0)
        .join(buyers.withColumn("_bought", F.lit(True)), "customer_id", "left")
        .withColumn(LABEL, F.when(F.col("_bought"), 0.0).otherwise(1.0))
        .drop("_bought")
    )


def feature_columns(frame: DataFrame) -> list[str]:
    """The numeric behaviour columns of a features frame, in a stable order."""
    numeric = (T.DoubleType, T.FloatType, T.IntegerType, T.LongType, T.DecimalType, T.ShortType)
    return sorted(
        f.name
        for f in frame.schema.fields
        if isinstance(f.dataType, numeric) and f.name not in NOT_FEATURES and f.name != LABEL
    )


def model_input(columns: Sequence[str]) -> Callable[[DataFrame], DataFrame]:
    """Feature columns as doubles, a missing value as 0 (e.g. no inter-purchase gap below two orders)."""

    def transform(frame: DataFrame) -> DataFrame:
        keep = [c for c in frame.columns if c not in columns]
        return frame.select(*keep, *[F.coalesce(F.col(c).cast("double"), F.lit(0.0)).alias(c) for c in columns])

    return transform


def candidate(name: str, columns: Sequence[str], settings: ChurnSettings) -> Pipeline:
    """An unfitted pipeline: assembled (and, for the regression, standardised) features, then the classifier."""
    assemble = VectorAssembler(inputCols=list(columns), outputCol="_raw_features")
    if name == "logistic_regression":
        scale = StandardScaler(inputCol="_raw_features", outputCol="_features", withMean=True, withStd=True)
        model = LogisticRegression(
            featuresCol="_features", labelCol=LABEL, regParam=settings.lr_reg_param, elasticNetParam=0.0, maxIter=100
        )
        return Pipeline(stages=[assemble, scale, model])
    gbt = GBTClassifier(
        featuresCol="_raw_features",
        labelCol=LABEL,
        maxIter=settings.gbt_max_iter,
        maxDepth=settings.gbt_max_depth,
        seed=settings.seed,
    )
    return Pipeline(stages=[assemble, gbt])


def churn_probability(model: PipelineModel) -> Callable[[DataFrame], DataFrame]:
    """Score rows: ``churn_probability`` from the model's probability vector; the model's own columns dropped."""

    def transform(frame: DataFrame) -> DataFrame:
        probability = vector_to_array(F.col("probability"))[1].alias(PROBABILITY)
        return model.transform(frame).select(*frame.columns, probability)

    return transform


def evaluate_candidates(
    training: DataFrame, evaluation: DataFrame, columns: Sequence[str], settings: ChurnSettings
) -> tuple[Evaluation, ...]:
    """Fit each candidate on the training rows and judge it on the evaluation rows.

    ``settings.parallel_fits`` candidates are fitted at once; each depends only on its rows and
    its seed, so side by side they give what one after another would.

    Returns:
        The evaluations, in the order of ``settings.models``.
    """

    def fit_and_evaluate(name: str) -> Evaluation:
        started = time.monotonic()
        result = evaluate(name, candidate(name, columns, settings).fit(training), evaluation, columns)
        seconds = time.monotonic() - started
        log.info(
            "churn candidate %s: out-of-time AUC-ROC %.3f, AUC-PR %.3f (%.1fs)",
            name,
            result.auc_roc,
            result.auc_pr,
            seconds,
        )
        return result

    return tuple(in_parallel(fit_and_evaluate, list(settings.models), settings.parallel_fits))


def evaluate(name: str, fitted: PipelineModel, evaluation: DataFrame, columns: Sequence[str]) -> Evaluation:
    """AUC-ROC, AUC-PR, top-decile lift and the calibration by decile on the evaluation rows."""
    scored = fitted.transform(evaluation).select(
        F.col(LABEL), "rawPrediction", vector_to_array(F.col("probability"))[1].alias(PROBABILITY)
    )
    scored = scored.cache()
    try:
        metrics = {
            metric: BinaryClassificationEvaluator(
                labelCol=LABEL, rawPredictionCol="rawPrediction", metricName=metric
            ).evaluate(scored)
            for metric in ("areaUnderROC", "areaUnderPR")
        }
        calibration = decile_table(scored)
    finally:
        scored.unpersist()
    customers = sum(row["customers"] for row in calibration)
    base_rate = sum(row["observed"] * row["customers"] for row in calibration) / customers
    top = calibration[-1]
    return Evaluation(
        model=name,
        auc_roc=float(metrics["areaUnderROC"]),
        auc_pr=float(metrics["areaUnderPR"]),
        top_decile_lift=top["observed"] / base_rate if base_rate > 0 else float("nan"),
        base_rate=base_rate,
        calibration=calibration,
        importances=importances(fitted, columns),
        fitted=fitted,
    )


def decile_table(scored: DataFrame) -> list[dict[str, Any]]:
    """Mean predicted and observed churn per decile of the predicted probability (1 = lowest).

    The decile edges are approximate quantiles; a probability equal to an edge falls in the
    lower decile, so tied scores stay together (and a decile may be empty and left out).
    """
    quantiles = [i / DECILES for i in range(1, DECILES)]
    edges = scored.approxQuantile(PROBABILITY, quantiles, 0.001)
    decile = F.lit(1)
    for edge in edges:
        decile = decile + F.when(F.col(PROBABILITY) > F.lit(edge), 1).otherwise(0)
    rows = (
        scored.groupBy(decile.alias("decile"))
        .agg(
            F.count(F.lit(1)).alias("customers"),
            F.avg(PROBABILITY).alias("predicted"),
            F.avg(LABEL).alias("observed"),
        )
        .orderBy("decile")
        .collect()
    )
    return [
        {
            "decile": int(r["decile"]),
            "customers": int(r["customers"]),
            "predicted": float(r["predicted"]),
            "observed": float(r["observed"]),
        }
        for r in rows
    ]


def importances(fitted: PipelineModel, columns: Sequence[str]) -> list[dict[str, Any]]:
    """Features by importance: the trees' impurity importances, or |coefficient| on standardised features."""
    model: Any = fitted.stages[-1]
    if hasattr(model, "featureImportances"):
        values = model.featureImportances.toArray()
    else:
        values = np.abs(model.coefficients.toArray())
    ranked = sorted(zip(columns, map(float, values), strict=True), key=lambda pair: -pair[1])
    return [{"feature": name, "importance": value} for name, value in ranked]
