"""Preparation + clustering as one Spark ML pipeline, saved and logged as a single model."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.ml.feature import SQLTransformer, StandardScaler, VectorAssembler
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.config import ModelSettings

log = logging.getLogger(__name__)

FEATURES_COL = "features"
SEGMENT_COL = "segment_id"


class ModelInputError(ValueError):
    """The modelling input cannot support the configured model."""


@dataclass(frozen=True)
class FitResult:
    """A fitted pipeline and its fit metrics."""

    model: PipelineModel
    metrics: dict[str, float]
    segment_sizes: list[int]


def _prep_name(feature: str) -> str:
    return f"{feature}__prep"


def preparation_sql(settings: ModelSettings) -> str:
    """The SQL of the preparation step: log1p of skewed non-negative features."""
    exprs = []
    for feature in settings.features:
        if feature in settings.log1p_features:
            # Net spend can be negative after returns; log1p is defined from 0 up.
            exprs.append(f"log1p(greatest(`{feature}`, 0D)) AS `{_prep_name(feature)}`")
        else:
            exprs.append(f"CAST(`{feature}` AS DOUBLE) AS `{_prep_name(feature)}`")
    return f"SELECT *, {', '.join(exprs)} FROM __THIS__"


def build_pipeline(settings: ModelSettings) -> Pipeline:
    """Preparation (log1p, assemble, standardise) followed by K-Means."""
    prepared = [_prep_name(f) for f in settings.features]
    return Pipeline(
        stages=[
            SQLTransformer(statement=preparation_sql(settings)),
            VectorAssembler(inputCols=prepared, outputCol="features_raw", handleInvalid="error"),
            StandardScaler(inputCol="features_raw", outputCol=FEATURES_COL, withMean=True, withStd=True),
            KMeans(
                featuresCol=FEATURES_COL,
                predictionCol=SEGMENT_COL,
                k=settings.k,
                maxIter=settings.max_iter,
                tol=settings.tol,
                seed=settings.seed,
                initMode="k-means||",
            ),
        ]
    )


def model_input(features: DataFrame, settings: ModelSettings) -> DataFrame:
    """Customers the model can use: every configured feature present and finite."""
    usable = F.lit(True)
    for feature in settings.features:
        usable = usable & F.col(feature).isNotNull() & ~F.isnan(F.col(feature))
    return features.filter(usable)


def fit(data: DataFrame, settings: ModelSettings) -> FitResult:
    """Fit the segmentation pipeline and compute its fit metrics.

    Args:
        data: Model input (see ``model_input``); reused twice, so cache it beforehand
            when it is expensive to recompute.
        settings: The ``model`` section of the configuration.

    Returns:
        The fitted pipeline, its metrics (silhouette, WSSSE, customers) and segment sizes.

    Raises:
        ModelInputError: Fewer distinct customers than segments.
    """
    n = data.count()
    if n < settings.k:
        raise ModelInputError(
            f"only {n} customers have all of {list(settings.features)} but model.k = {settings.k}: "
            "lower model.k or widen the data (more history, an earlier features.as_of_date)"
        )
    model = build_pipeline(settings).fit(data)
    kmeans: KMeansModel = model.stages[-1]
    scored = model.transform(data)
    silhouette = ClusteringEvaluator(
        featuresCol=FEATURES_COL, predictionCol=SEGMENT_COL, metricName="silhouette", distanceMeasure="squaredEuclidean"
    ).evaluate(scored)
    summary = kmeans.summary
    metrics = {
        "silhouette": float(silhouette),
        "wssse": float(summary.trainingCost),
        "customers_modelled": float(n),
        "iterations": float(summary.numIter),
    }
    log.info("fitted k-means k=%s on %s customers: silhouette %.3f", settings.k, n, silhouette)
    return FitResult(model=model, metrics=metrics, segment_sizes=list(summary.clusterSizes))
