"""Preparation + clustering as one Spark ML pipeline, saved and logged as a single model."""

from __future__ import annotations

import fnmatch
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pyspark.ml import Pipeline, PipelineModel
from pyspark.ml.clustering import KMeans, KMeansModel
from pyspark.ml.evaluation import ClusteringEvaluator
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from seg_spark.config import ModelSettings
from seg_spark.models.prep import FEATURES_COL, Preparation, plan_preparation

log = logging.getLogger(__name__)

SEGMENT_COL = "segment_id"


class ModelInputError(ValueError):
    """The modelling input cannot support the configured model."""


@dataclass(frozen=True)
class FitResult:
    """A fitted pipeline and its fit metrics."""

    model: PipelineModel
    metrics: dict[str, float]
    segment_sizes: list[int]
    preparation: Preparation


def build_pipeline(settings: ModelSettings, preparation: Preparation) -> Pipeline:
    """The planned preparation stages followed by K-Means."""
    return Pipeline(
        stages=[
            *preparation.stages,
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


def resolve_features(available: Sequence[str], settings: ModelSettings) -> tuple[str, ...]:
    """The configured model features (globs expanded against ``available``), in order, without repeats.

    Raises:
        ModelInputError: A configured feature or pattern matches no column.
    """
    chosen: list[str] = []
    for entry in settings.features:
        matches = [c for c in available if fnmatch.fnmatchcase(c, entry)]
        if not matches:
            raise ModelInputError(
                f"model.features entry {entry!r} matches no column of customer_features "
                f"(is its family in features.families?); columns: {', '.join(available)}"
            )
        chosen += [m for m in matches if m not in chosen]
    return tuple(chosen)


def model_input(features: DataFrame) -> DataFrame:
    """Customers the model segments: those with at least one purchase (missing values are imputed)."""
    return features.filter(F.col("frequency") > 0)


def fit(data: DataFrame, settings: ModelSettings, features: Sequence[str]) -> FitResult:
    """Fit the segmentation pipeline and compute its fit metrics.

    Args:
        data: Model input (see ``model_input``); read several times, so cache it beforehand.
        settings: The ``model`` section of the configuration.
        features: The feature columns (``resolve_features``).

    Returns:
        The fitted pipeline, its metrics (silhouette, WSSSE, customers) and segment sizes.

    Raises:
        ModelInputError: Fewer distinct customers than segments.
    """
    n = data.count()
    if n < settings.k:
        raise ModelInputError(
            f"only {n} customers have a purchase but model.k = {settings.k}: "
            "lower model.k or widen the data (more history, an earlier features.as_of_date)"
        )
    preparation = plan_preparation(data, features, settings.prep)
    model = build_pipeline(settings, preparation).fit(data)
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
    metrics["features_used"] = float(len(preparation.kept))
    return FitResult(model=model, metrics=metrics, segment_sizes=list(summary.clusterSizes), preparation=preparation)
